"""Certificate service: issues workload certificates at bootstrap (join token) and renewal
(current certificate), and the control plane's own serving certificate.

Who decides an identity: at bootstrap, the redeemed join token's claims (service, namespace,
service account); at renewal, the SPIFFE ID of the client certificate on the push
connection, which TLS already verified against the trust bundle. The CSR only proves
possession of the key. A token is single use: its id is recorded in the store with a
create-only write, so two control planes sharing a store cannot both accept it.
Metrics-worthy outcomes are counted in `counters`.
"""

from __future__ import annotations

import logging
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from plait.control.store import Conflict, Store
from plait.identity.ca import CaError, CertificateAuthority, CsrError
from plait.identity.csr import generate_key, key_to_pem, make_csr, write_file_atomic
from plait.identity.spiffe import SpiffeId
from plait.identity.tls import Identity, RotatingServerContext
from plait.identity.tokens import JoinClaims, TokenError, TokenIssuer, load_or_create_secret

__all__ = ["CONTROL_NAMESPACE", "CaService", "TokenError"]

log = logging.getLogger("plait.control.ca")

# The control plane's own identity: spiffe://<td>/ns/plait-system/sa/plait-control.
CONTROL_NAMESPACE = "plait-system"
CONTROL_ACCOUNT = "plait-control"
USED_TOKENS = "/tokens/used/"
# 24 h: Istio's default workload certificate lifetime; short enough that revocation is rare.
DEFAULT_CERT_TTL = timedelta(hours=24)


class CaService:
    """Owns the CA files under `<data_dir>/ca` and the join-token secret."""

    def __init__(
        self,
        data_dir: Path,
        store: Store,
        trust_domain: str = "cluster.local",
        cert_ttl: timedelta = DEFAULT_CERT_TTL,
        ca_cert: Path | None = None,
        ca_key: Path | None = None,
        ca_chain: Path | None = None,
    ) -> None:
        self.store = store
        self.cert_ttl = cert_ttl
        if ca_cert is not None and ca_key is not None:
            self.ca = CertificateAuthority.from_files(
                ca_cert, ca_key, ca_chain, trust_domain=trust_domain
            )
        else:
            self.ca = CertificateAuthority.load_or_create(data_dir / "ca", trust_domain)
        self.trust_domain = trust_domain
        self.tokens = TokenIssuer(load_or_create_secret(data_dir / "join-secret"))
        self.bundle_path = data_dir / "trust-bundle.pem"
        self.publish_bundle()
        self.counters = {"issued": 0, "renewed": 0, "token_rejected": 0, "csr_rejected": 0}
        self._serving: RotatingServerContext | None = None
        self._serving_renew_at = 0.0

    @property
    def control_id(self) -> SpiffeId:
        return SpiffeId(self.trust_domain, CONTROL_NAMESPACE, CONTROL_ACCOUNT)

    def bundle(self) -> bytes:
        return self.ca.trust_bundle_pem()

    def publish_bundle(self) -> None:
        """Write the current trust bundle where operators and new proxies read it."""
        write_file_atomic(self.bundle_path, self.ca.trust_bundle_pem(), 0o644)

    def retire_expired_roots(self) -> list[str]:
        """Drop previous roots whose certificates can no longer be valid; their fingerprints."""
        retired = []
        for root in self.ca.roots():
            if root.state == "previous":
                try:
                    self.ca.retire(root.fingerprint)
                except CaError:
                    continue
                retired.append(root.fingerprint)
        if retired:
            self.publish_bundle()
        return retired

    def roots(self) -> list[dict[str, str | None]]:
        return [
            {
                "fingerprint": r.fingerprint,
                "state": r.state,
                "notAfter": r.not_after.isoformat(),
                "maxLeafExpiry": r.max_leaf_expiry.isoformat() if r.max_leaf_expiry else None,
            }
            for r in self.ca.roots()
        ]

    def create_token(
        self,
        service: str,
        namespace: str,
        ttl: timedelta = timedelta(hours=1),
        service_account: str | None = None,
    ) -> str:
        return self.tokens.create(service, namespace, ttl, service_account)

    async def redeem(self, token: str) -> JoinClaims:
        """Verify and spend a join token; raises TokenError naming why it is refused."""
        try:
            claims = self.tokens.verify(token)
        except TokenError:
            self.counters["token_rejected"] += 1
            raise
        ttl_key = f"{USED_TOKENS}{claims.jti}"
        try:
            await self.store.txn(
                [(ttl_key, claims.expires_at.isoformat().encode())], expect={ttl_key: 0}
            )
        except Conflict:
            self.counters["token_rejected"] += 1
            raise TokenError("join token already used") from None
        return claims

    def issue(self, csr_pem: bytes, spiffe_id: SpiffeId, renewal: bool = False) -> bytes:
        """Sign a CSR for an identity the caller authenticated; raises CsrError."""
        try:
            chain = self.ca.sign_csr(csr_pem, spiffe_id, self.cert_ttl)
        except CsrError:
            self.counters["csr_rejected"] += 1
            raise
        self.counters["renewed" if renewal else "issued"] += 1
        log.info("%s certificate for %s", "renewed" if renewal else "issued", spiffe_id)
        return chain

    def serving_context(self) -> ssl.SSLContext:
        """TLS for the push channel: our own certificate, renewed by `renew_serving()`; client
        certificates optional (a bootstrapping proxy has none yet) but verified when presented."""
        self._serving = RotatingServerContext(
            self._serving_identity(), require_client_cert=False, alpn=("plait-push",)
        )
        return self._serving.context

    def renew_serving(self, now: float | None = None, force: bool = False) -> None:
        """Re-issue our own certificate at half its lifetime (the push server calls this every
        second), so proxies that connect later never meet an expired control plane; `force`
        after a CA rotation step (new bundle to verify callers with, or a new signing root)."""
        if self._serving is None:
            return
        if force or (now or time.time()) >= self._serving_renew_at:
            self._serving.update(self._serving_identity())
            log.info("renewed the push channel's certificate")

    def _serving_identity(self) -> Identity:
        key = generate_key()
        chain = self.ca.sign_csr(make_csr(key, self.control_id), self.control_id, self.cert_ttl)
        identity = Identity.from_pem(chain, key_to_pem(key), self.bundle())
        now = time.time()
        self._serving_renew_at = now + (identity.not_after.timestamp() - now) / 2
        return identity

    async def prune_used_tokens(self) -> None:
        """Forget spent tokens that have expired anyway (they can no longer verify)."""
        items, _ = await self.store.range(USED_TOKENS)
        now = datetime.now(UTC)
        for kv in items:
            try:
                expired = datetime.fromisoformat(kv.value.decode()) < now
            except ValueError:
                expired = True
            if expired:
                await self.store.delete(kv.key)
