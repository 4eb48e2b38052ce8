"""Metrics recorded into plain Python data on the hot path; exposition renders them on scrape.

Theory of operation: everything that does not change per request (reporter, workloads,
service, protocol, security policy) is bound ONCE into a series handle; per request the
proxy calls `series.record(...)`, which costs one dict lookup keyed by the few per-request
labels plus integer adds into bucket arrays (no label parsing, no locks, no allocation
after the first request of a kind). Counts are non-cumulative per bucket; exposition
accumulates them at scrape time. One event loop writes; a scrape from another thread may
see a count and its buckets one request apart, which Prometheus tolerates.

Names, labels and buckets are Istio's so its Grafana dashboards and alerts work unchanged:
https://istio.io/latest/docs/reference/config/metrics/ (names and labels) and
istio/proxy source/extensions/filters/http/istio_stats/istio_stats.cc (label order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol, TypeVar

__all__ = [
    "BYTES_BUCKETS",
    "DURATION_BUCKETS",
    "Collector",
    "Counter",
    "EndpointSeries",
    "Gauge",
    "HistogramData",
    "IstioMetrics",
    "Labels",
    "MetricFamily",
    "Peer",
    "ProxyMetrics",
    "Registry",
    "RequestSeries",
    "TcpSeries",
    "UpstreamMetrics",
    "Value",
    "bucket",
]

# Envoy's default histogram buckets (HistogramSettingsImpl::defaultBuckets in
# source/common/stats/histogram_impl.cc). Istio sets no buckets of its own: its bootstrap
# adds `histogram_bucket_settings` only when a pod has the `sidecar.istio.io/
# statsHistogramBuckets` annotation, so a stock sidecar exports these for ALL istio_*
# histograms, the byte-size ones included.
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)  # fmt: skip
BYTES_BUCKETS: Final[tuple[float, ...]] = DURATION_BUCKETS

UNKNOWN: Final = "unknown"
Labels = tuple[tuple[str, str], ...]


class HistogramData(NamedTuple):
    """One histogram series at scrape time: per-bucket counts, the last one is +Inf."""

    bounds: tuple[float, ...]
    counts: list[int]
    sum: float


class MetricFamily(NamedTuple):
    """What a collector hands to exposition: a name, a type and its series."""

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    series: list[tuple[Labels, float | HistogramData]]


class Collector(Protocol):
    """Anything the registry can scrape."""

    @property
    def names(self) -> tuple[str, ...]: ...

    def collect(self) -> Iterable[MetricFamily]: ...


# --- Istio standard metrics ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Peer:
    """One side of a request as Istio labels it; "unknown" where the mesh cannot tell."""

    workload: str = UNKNOWN
    namespace: str = UNKNOWN
    principal: str = UNKNOWN
    app: str = UNKNOWN
    version: str = UNKNOWN
    canonical_service: str = UNKNOWN
    canonical_revision: str = "latest"  # Istio's default when the label is absent
    cluster: str = UNKNOWN


UNKNOWN_PEER: Final = Peer()


def _static_labels(
    reporter: str,
    source: Peer,
    destination: Peer,
    service: str,
    service_name: str,
    service_namespace: str,
    protocol: str,
) -> Labels:
    return (
        ("reporter", reporter),
        ("source_workload", source.workload),
        ("source_workload_namespace", source.namespace),
        ("source_principal", source.principal),
        ("source_app", source.app),
        ("source_version", source.version),
        ("source_canonical_service", source.canonical_service),
        ("source_canonical_revision", source.canonical_revision),
        ("source_cluster", source.cluster),
        ("destination_workload", destination.workload),
        ("destination_workload_namespace", destination.namespace),
        ("destination_principal", destination.principal),
        ("destination_app", destination.app),
        ("destination_version", destination.version),
        ("destination_service", service),
        ("destination_service_name", service_name),
        ("destination_service_namespace", service_namespace),
        ("destination_canonical_service", destination.canonical_service),
        ("destination_canonical_revision", destination.canonical_revision),
        ("destination_cluster", destination.cluster),
        ("request_protocol", protocol),
    )


def bucket(bounds: tuple[float, ...], value: float) -> int:
    """`bisect.bisect_left(bounds, value)`, written out: compiled, it runs natively, where a
    call to bisect would box the value and go through a generic call."""
    lo, hi = 0, len(bounds)
    while lo < hi:
        mid = (lo + hi) // 2
        if bounds[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


class _RequestCell:
    """Counts for one (response code, flags, gRPC status) under one static label set."""

    def __init__(self, labels: Labels, duration_buckets: int, bytes_buckets: int) -> None:
        self.labels = labels
        self.count = 0
        self.duration_sum = 0.0
        self.duration_counts = [0] * (duration_buckets + 1)
        self.request_sum = 0
        self.request_counts = [0] * (bytes_buckets + 1)
        self.response_sum = 0
        self.response_counts = [0] * (bytes_buckets + 1)


class RequestSeries:
    """A pre-bound handle for one static label set; get it once per connection or endpoint."""

    def __init__(
        self,
        static: Labels,
        security_policy: str,
        duration_buckets: tuple[float, ...],
        bytes_buckets: tuple[float, ...],
    ) -> None:
        self.static = static
        self.security_policy = security_policy
        self._cells: dict[tuple[int, str, str], _RequestCell] = {}
        self._plain: dict[int, _RequestCell] = {}  # the same cells without flags or gRPC status
        self._duration = duration_buckets
        self._bytes = bytes_buckets

    def record(
        self,
        status: int,
        flags: str,
        grpc_status: str,
        duration_ms: float,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        """Count one finished request: no allocation once its cell exists (and for the common
        case, no key tuple to build and hash)."""
        plain = not flags and not grpc_status
        cell = self._plain.get(status) if plain else self._cells.get((status, flags, grpc_status))
        if cell is None:
            cell = self._add_cell(status, flags, grpc_status)
            if plain:
                self._plain[status] = cell
        cell.count += 1
        cell.duration_sum += duration_ms
        cell.duration_counts[bucket(self._duration, duration_ms)] += 1
        cell.request_sum += request_bytes
        cell.request_counts[bucket(self._bytes, request_bytes)] += 1
        cell.response_sum += response_bytes
        cell.response_counts[bucket(self._bytes, response_bytes)] += 1

    def _add_cell(self, status: int, flags: str, grpc_status: str) -> _RequestCell:
        labels = (
            *self.static,
            ("response_code", str(status)),
            ("grpc_response_status", grpc_status),
            ("response_flags", flags or "-"),  # Envoy's %RESPONSE_FLAGS% prints "-" for none
            ("connection_security_policy", self.security_policy),
        )
        cell = _RequestCell(labels, len(self._duration), len(self._bytes))
        self._cells[(status, flags, grpc_status)] = cell
        return cell

    def cells(self) -> list[_RequestCell]:
        return list(self._cells.values())


class _TcpCell:
    def __init__(self, labels: Labels) -> None:
        self.labels = labels
        self.opened = 0
        self.closed = 0
        self.sent = 0
        self.received = 0


class TcpSeries:
    """A pre-bound handle for the TCP metrics of one static label set (per connection)."""

    def __init__(self, static: Labels, security_policy: str) -> None:
        self.static = static
        self.security_policy = security_policy
        self._cells: dict[str, _TcpCell] = {}
        self.clean = self._cell("")

    def opened(self) -> None:
        self.clean.opened += 1

    def transferred(self, sent: int, received: int) -> None:
        """Bytes sent to and received from the downstream, as they flow (not only at close)."""
        cell = self.clean
        cell.sent += sent
        cell.received += received

    def closed(self, flags: str = "") -> None:
        self._cell(flags).closed += 1

    def _cell(self, flags: str) -> _TcpCell:
        cell = self._cells.get(flags)
        if cell is None:
            labels = (
                *self.static,
                ("response_flags", flags or "-"),
                ("connection_security_policy", self.security_policy),
            )
            cell = self._cells[flags] = _TcpCell(labels)
        return cell

    def cells(self) -> list[_TcpCell]:
        return list(self._cells.values())


class IstioMetrics:
    """The Istio standard metric set; series are interned so equal labels share one handle."""

    names = (
        "istio_requests_total",
        "istio_request_duration_milliseconds",
        "istio_request_bytes",
        "istio_response_bytes",
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
    )

    def __init__(
        self,
        duration_buckets: tuple[float, ...] = DURATION_BUCKETS,
        bytes_buckets: tuple[float, ...] = BYTES_BUCKETS,
    ) -> None:
        self.duration_buckets = tuple(sorted(float(b) for b in duration_buckets))
        self.bytes_buckets = tuple(sorted(float(b) for b in bytes_buckets))
        self._requests: dict[tuple[Labels, str], RequestSeries] = {}
        self._tcp: dict[tuple[Labels, str], TcpSeries] = {}

    def request_series(
        self,
        reporter: str,
        source: Peer = UNKNOWN_PEER,
        destination: Peer = UNKNOWN_PEER,
        service: str = UNKNOWN,
        service_name: str = UNKNOWN,
        service_namespace: str = UNKNOWN,
        protocol: str = "http",
        security_policy: str = UNKNOWN,
    ) -> RequestSeries:
        """The handle for these labels (created on first use); call per connection/endpoint."""
        static = _static_labels(
            reporter, source, destination, service, service_name, service_namespace, protocol
        )
        series = self._requests.get((static, security_policy))
        if series is None:
            series = RequestSeries(
                static, security_policy, self.duration_buckets, self.bytes_buckets
            )
            self._requests[(static, security_policy)] = series
        return series

    def tcp_series(
        self,
        reporter: str,
        source: Peer = UNKNOWN_PEER,
        destination: Peer = UNKNOWN_PEER,
        service: str = UNKNOWN,
        service_name: str = UNKNOWN,
        service_namespace: str = UNKNOWN,
        security_policy: str = UNKNOWN,
    ) -> TcpSeries:
        static = _static_labels(
            reporter, source, destination, service, service_name, service_namespace, "tcp"
        )
        series = self._tcp.get((static, security_policy))
        if series is None:
            series = self._tcp[(static, security_policy)] = TcpSeries(static, security_policy)
        return series

    def collect(self) -> Iterator[MetricFamily]:
        cells = [cell for s in list(self._requests.values()) for cell in s.cells()]
        d, b = self.duration_buckets, self.bytes_buckets
        yield MetricFamily(
            "istio_requests_total",
            "counter",
            "Requests handled by the proxy.",
            [(c.labels, c.count) for c in cells],
        )
        yield MetricFamily(
            "istio_request_duration_milliseconds",
            "histogram",
            "Duration of requests in milliseconds.",
            [(c.labels, HistogramData(d, c.duration_counts, c.duration_sum)) for c in cells],
        )
        yield MetricFamily(
            "istio_request_bytes",
            "histogram",
            "HTTP request body sizes in bytes.",
            [(c.labels, HistogramData(b, c.request_counts, c.request_sum)) for c in cells],
        )
        yield MetricFamily(
            "istio_response_bytes",
            "histogram",
            "HTTP response body sizes in bytes.",
            [(c.labels, HistogramData(b, c.response_counts, c.response_sum)) for c in cells],
        )
        tcp = list(self._tcp.values())
        # Opened and byte counts live on the flag-less cell; a close carries its flags.
        for name, help_text, attr in (
            ("istio_tcp_sent_bytes_total", "Bytes sent during response.", "sent"),
            ("istio_tcp_received_bytes_total", "Bytes received during request.", "received"),
            ("istio_tcp_connections_opened_total", "TCP connections opened.", "opened"),
        ):
            yield MetricFamily(
                name, "counter", help_text, [(t.clean.labels, getattr(t.clean, attr)) for t in tcp]
            )
        yield MetricFamily(
            "istio_tcp_connections_closed_total",
            "counter",
            "TCP connections closed.",
            [(c.labels, c.closed) for t in tcp for c in t.cells()],
        )


# --- per-endpoint metrics --------------------------------------------------------------

_CODE_CLASSES: Final = ("", "1xx", "2xx", "3xx", "4xx", "5xx")


class EndpointSeries:
    """Request count by code class and latency of one (cluster, endpoint)."""

    def __init__(self, labels: Labels, bounds: tuple[float, ...]) -> None:
        self.labels = labels
        self.by_class = [0] * 6
        self.time_counts = [0] * (len(bounds) + 1)
        self.time_sum = 0.0
        self._bounds = bounds

    def record(self, status: int, duration_ms: float) -> None:
        """One upstream attempt; no status (reset, timeout) counts as the endpoint's 5xx."""
        klass = status // 100
        self.by_class[klass if 0 < klass < 6 else 5] += 1
        self.time_counts[bucket(self._bounds, duration_ms)] += 1
        self.time_sum += duration_ms


class UpstreamMetrics:
    """`plait_upstream_rq_total` and `plait_upstream_rq_time_milliseconds` per endpoint."""

    names = ("plait_upstream_rq_total", "plait_upstream_rq_time_milliseconds")

    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._endpoints: dict[tuple[str, str], EndpointSeries] = {}

    def endpoint(self, cluster: str, endpoint: str) -> EndpointSeries:
        """The handle of one endpoint; keep it beside the endpoint in the cluster."""
        series = self._endpoints.get((cluster, endpoint))
        if series is None:
            labels = (("cluster", cluster), ("endpoint", endpoint))
            series = self._endpoints[(cluster, endpoint)] = EndpointSeries(labels, self.buckets)
        return series

    def collect(self) -> Iterator[MetricFamily]:
        endpoints = list(self._endpoints.values())
        counts: list[tuple[Labels, float | HistogramData]] = []
        for e in endpoints:
            for i in range(1, 6):
                if e.by_class[i]:
                    labels = (*e.labels, ("response_code_class", _CODE_CLASSES[i]))
                    counts.append((labels, e.by_class[i]))
        yield MetricFamily(
            "plait_upstream_rq_total", "counter", "Upstream requests per endpoint.", counts
        )
        yield MetricFamily(
            "plait_upstream_rq_time_milliseconds",
            "histogram",
            "Upstream request time per endpoint in milliseconds.",
            [(e.labels, HistogramData(self.buckets, e.time_counts, e.time_sum)) for e in endpoints],
        )


# --- generic counters and gauges for plait's own metrics -------------------------------


class Value:
    """One labelled child: a plain number the owner adds to or sets."""

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = labelnames
        self.names = (name,)
        self._children: dict[tuple[str, ...], Value] = {}
        self._fn: Callable[[], float] | None = None
        if not labelnames:
            self.labels()  # an unlabelled metric shows 0 from the start, so rate() works

    def labels(self, *values: str) -> Value:
        """The child for these label values; call once and keep it where it is used."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = Value()
        return child

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def collect(self) -> Iterator[MetricFamily]:
        if self._fn is not None:
            series: list[tuple[Labels, float | HistogramData]] = [((), self._fn())]
        else:
            series = [
                (tuple(zip(self.labelnames, values, strict=True)), child.value)
                for values, child in list(self._children.items())
            ]
        yield MetricFamily(self.name, self.kind, self.help, series)


class Counter(_Metric):
    """A monotonic count (name it `*_total`)."""

    kind = "counter"


class Gauge(_Metric):
    """A value that goes up and down, or is computed at scrape time by `set_function`."""

    kind = "gauge"

    def set(self, value: float) -> None:
        self.labels().set(value)

    def set_function(self, fn: Callable[[], float]) -> None:
        """Evaluate `fn` on each scrape (unlabelled gauges only), e.g. time left on a cert."""
        if self.labelnames:
            raise ValueError(f"{self.name}: set_function needs an unlabelled gauge")
        self._fn = fn


# --- the registry ----------------------------------------------------------------------

C = TypeVar("C", bound=Collector)


class Registry:
    """Collectors in registration order; a family name may be registered once."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []
        self._names: set[str] = set()

    def register(self, collector: C) -> C:
        taken = self._names.intersection(collector.names)
        if taken:
            raise ValueError(f"metric already registered: {sorted(taken)}")
        self._names.update(collector.names)
        self._collectors.append(collector)
        return collector

    def counter(self, name: str, help_text: str, labelnames: tuple[str, ...] = ()) -> Counter:
        return self.register(Counter(name, help_text, labelnames))

    def gauge(self, name: str, help_text: str, labelnames: tuple[str, ...] = ()) -> Gauge:
        return self.register(Gauge(name, help_text, labelnames))

    def collect(self) -> Iterator[MetricFamily]:
        for collector in list(self._collectors):
            yield from collector.collect()


class ProxyMetrics:
    """Everything one proxy process records; one per process, owned by the proxy app."""

    def __init__(
        self,
        duration_buckets: tuple[float, ...] = DURATION_BUCKETS,
        bytes_buckets: tuple[float, ...] = BYTES_BUCKETS,
    ) -> None:
        r = self.registry = Registry()
        self.istio = r.register(IstioMetrics(duration_buckets, bytes_buckets))
        self.upstream = r.register(UpstreamMetrics(duration_buckets))
        self.config_version = r.gauge(
            "plait_config_version", "Version of the configuration snapshot in use."
        )
        self.certificate_expiry = r.gauge(
            "plait_certificate_expiry_seconds", "Seconds until the workload certificate expires."
        )
        cluster = ("cluster",)
        self.outlier_ejections = r.counter(
            "plait_outlier_ejections_total", "Endpoints ejected by outlier detection.", cluster
        )
        self.retries = r.counter("plait_retries_total", "Request retries.", cluster)
        self.retry_budget_exhausted = r.counter(
            "plait_retry_budget_exhausted_total", "Retries refused by the retry budget.", cluster
        )
        self.circuit_breaker_overflow = r.counter(
            "plait_circuit_breaker_overflow_total",
            "Requests refused by an open circuit breaker.",
            cluster,
        )
        self.authz_denied = r.counter(
            "plait_authz_denied_total", "Requests denied by authorization policy."
        )
        self.tls_handshakes = r.counter(
            "plait_tls_handshakes_total", "TLS handshakes by result.", ("result",)
        )
