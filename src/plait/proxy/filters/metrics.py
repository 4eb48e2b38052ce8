"""Request metrics for one listener, in Istio's names and labels.

The expensive part (building 25 labels) happens once per destination host (outbound:
reporter "source") or per calling identity (inbound: reporter "destination"); the result is
a pre-bound series cached on a dict, so recording a request is a lookup and
`RequestSeries.record` (under a microsecond). Per-endpoint volume and latency go to the
host's own series, which is what the mission's "request volume per target" shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from plait.config.snapshot import Node
from plait.identity.spiffe import SpiffeId
from plait.telemetry.metrics import UNKNOWN, Peer, ProxyMetrics, RequestSeries, TcpSeries

if TYPE_CHECKING:
    from plait.proxy.certificates import CertificateManager
    from plait.proxy.downstream import Stream
    from plait.proxy.upstream import ClusterRuntime, Host

__all__ = ["ListenerMetrics"]


def _principal_namespace(principal: str) -> str:
    try:
        return SpiffeId.parse(principal).namespace
    except ValueError:
        return UNKNOWN


class ListenerMetrics:
    """Records each finished stream of one listener into the proxy's metrics."""

    def __init__(
        self, metrics: ProxyMetrics, kind: str, node: Node, certs: CertificateManager | None
    ) -> None:
        self.metrics = metrics
        # Istio: the client side's proxy (and a gateway) reports "source", the server's
        # "destination".
        self.reporter = "destination" if kind == "inbound" else "source"
        self.node = node
        self.certs = certs
        self._series: dict[object, RequestSeries] = {}
        self._endpoints: dict[tuple[str, str], object] = {}
        self._tcp: dict[object, TcpSeries] = {}

    def _own(self) -> Peer:
        labels = self.node.labels
        principal = self.certs.identity.spiffe_id if self.certs and self.certs.identity else UNKNOWN
        app = labels.get("app", self.node.service or UNKNOWN)
        return Peer(
            workload=self.node.name,
            namespace=self.node.namespace,
            principal=principal,
            app=app,
            version=labels.get("version", UNKNOWN),
            canonical_service=app,
            canonical_revision=labels.get("version", "latest"),
        )

    def _outbound_labels(
        self, cluster: ClusterRuntime | None, host: Host | None
    ) -> tuple[Peer, Peer, str, str, str, str]:
        """(source, destination, service, name, namespace, security policy) of a call."""
        if cluster is not None:
            name, ns = cluster.name, cluster.namespace
            service = f"{name}.{ns}.svc.cluster.local"
        else:
            name = ns = service = UNKNOWN
        destination = UNKNOWN_DESTINATION
        if host is not None:
            app = host.labels.get("app", name)
            destination = Peer(
                workload=host.workload or UNKNOWN,
                namespace=ns,
                principal=host.identity or UNKNOWN,
                app=app,
                version=host.labels.get("version", UNKNOWN),
                canonical_service=app,
                canonical_revision=host.labels.get("version", "latest"),
            )
        policy = "mutual_tls" if host is not None and host.identity and self.certs else "none"
        return self._own(), destination, service, name, ns, policy

    def _inbound_labels(self, peer_id: str) -> tuple[Peer, Peer, str, str, str, str]:
        source = (
            Peer(principal=peer_id, namespace=_principal_namespace(peer_id)) if peer_id else Peer()
        )
        name, ns = self.node.service or UNKNOWN, self.node.namespace
        policy = "mutual_tls" if peer_id else "none"
        return source, self._own(), f"{name}.{ns}.svc.cluster.local", name, ns, policy

    def _outbound_series(self, cluster: ClusterRuntime | None, host: Host | None) -> RequestSeries:
        key = (cluster.name if cluster else "", cluster.namespace if cluster else "", host)
        series = self._series.get(key)
        if series is None:
            source, destination, service, name, ns, policy = self._outbound_labels(cluster, host)
            series = self._series[key] = self.metrics.istio.request_series(
                self.reporter, source, destination, service, name, ns, "http", policy
            )
        return series

    def _inbound_series(self, peer_id: str) -> RequestSeries:
        series = self._series.get(peer_id)
        if series is None:
            source, own, service, name, ns, policy = self._inbound_labels(peer_id)
            series = self._series[peer_id] = self.metrics.istio.request_series(
                self.reporter, source, own, service, name, ns, "http", policy
            )
        return series

    def tcp_series(
        self, cluster: ClusterRuntime | None, host: Host | None, peer_id: str
    ) -> TcpSeries:
        """The TCP series of one proxied connection (Istio's istio_tcp_*), with the labels
        of the HTTP series: the caller (inbound) or the destination host (outbound)."""
        inbound = self.reporter == "destination"
        key: object = (
            peer_id
            if inbound
            else (cluster.name if cluster else "", cluster.namespace if cluster else "", host)
        )
        series = self._tcp.get(key)
        if series is None:
            labels = (
                self._inbound_labels(peer_id) if inbound else self._outbound_labels(cluster, host)
            )
            series = self._tcp[key] = self.metrics.istio.tcp_series(self.reporter, *labels)
        return series

    def record(self, stream: Stream, duration_ms: float) -> None:
        host = stream.host
        if self.reporter == "destination":
            series = self._inbound_series(stream.down.peer_id)
        else:
            series = self._outbound_series(stream.cluster, host)
        series.record(
            stream.status,
            stream.flags or "-",
            "",
            duration_ms,
            stream.bytes_received,
            stream.bytes_sent,
        )
        if host is not None and stream.cluster is not None:
            key = (stream.cluster.name, host.label)
            endpoint = self._endpoints.get(key)
            if endpoint is None:
                endpoint = self._endpoints[key] = self.metrics.upstream.endpoint(*key)
            endpoint.record(stream.status, duration_ms)  # type: ignore[attr-defined]


UNKNOWN_DESTINATION: Final = Peer()
