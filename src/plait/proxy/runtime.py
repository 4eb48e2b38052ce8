"""The proxy's live configuration: one immutable `Runtime` per applied snapshot.

A `Runtime` is built once from a validated snapshot (route table + clusters over shared
hosts) and swapped in whole by `ConfigHolder.apply`. A stream captures the runtime's
cluster when it starts and finishes on it, so a swap never disturbs requests in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from plait.config.snapshot import Cluster, Endpoint, Snapshot
from plait.proxy.filters.audit import AuditLog
from plait.proxy.filters.inbound_policy import InboundPolicy
from plait.proxy.filters.jwt_authn import KeySet
from plait.proxy.routing import RouteTable
from plait.proxy.upstream import ClusterRuntime, HostRegistry

__all__ = ["ConfigHolder", "Runtime", "APP_CLUSTER"]

APP_CLUSTER = ("inbound", "app")


@dataclass(frozen=True, slots=True)
class Runtime:
    snapshot: Snapshot
    table: RouteTable
    clusters: dict[tuple[str, str], ClusterRuntime]
    # The inbound security chain (None without an app, i.e. no inbound listener).
    inbound_policy: InboundPolicy | None = None


class ConfigHolder:
    """Holds the current Runtime and the hosts it shares with earlier ones."""

    def __init__(
        self,
        snapshot: Snapshot,
        app: tuple[str, int] | None = None,
        audit: AuditLog | None = None,
        jwks: Callable[[str], KeySet | None] | None = None,
    ) -> None:
        self.hosts = HostRegistry()
        self.app = app
        self.audit = audit
        self.jwks = jwks
        self.current = self._build(snapshot)

    def _build(self, snapshot: Snapshot) -> Runtime:
        previous = self.current.clusters if hasattr(self, "current") else {}
        clusters = {
            (c.namespace, c.name): ClusterRuntime.from_cluster(
                c, self.hosts, previous.get((c.namespace, c.name))
            )
            for c in snapshot.clusters
        }
        if self.app is not None:
            # Inbound traffic goes to the local app only: one host, pooled like any other.
            app_cluster = Cluster(
                name="app", namespace="inbound", endpoints=(Endpoint(self.app[0], self.app[1]),)
            )
            clusters[APP_CLUSTER] = ClusterRuntime.from_cluster(app_cluster, self.hosts)
        policy = None
        if self.app is not None:
            # Built here, not per request: a policy the proxy cannot run fails the snapshot
            # (NACK, last good config kept) instead of failing requests.
            policy = InboundPolicy(snapshot.policies, self.audit, self.app[1], self.jwks)
        return Runtime(snapshot, RouteTable(snapshot), clusters, policy)

    def apply(self, snapshot: Snapshot) -> Runtime:
        """Swap in a new snapshot atomically; hosts no longer listed are dropped."""
        runtime = self._build(snapshot)
        self.current = runtime
        self.hosts.retain(h for c in runtime.clusters.values() for h in c.hosts)
        return runtime
