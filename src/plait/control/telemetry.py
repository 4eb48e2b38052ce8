"""Telemetry roll-up: the whole mesh's golden metrics, from every proxy's own Prometheus text.

Theory of operation. Every 2 s the `Telemetry` service (`telemetry_service`) scrapes each
connected proxy's admin `/stats/prometheus` and hands the parsed series to a `Rollup`. The
roll-up keeps, per proxy, the last values of each series; the difference to the previous
scrape (a counter that went down means the proxy restarted: its new value is the
increment) is classified and summed into one *round* of increments per view key:

    service  requests INTO a service, counted once: by the caller's proxy (reporter=source)
             where the caller is meshed, by the callee's proxy (reporter=destination) where
             it is not (a client outside the mesh); a gateway's traffic is what it sent
    edge     caller service -> called service, with the same once-only rule
    workload requests into (or, for a gateway, out of) one workload instance

The last 60 rounds (2 minutes) are kept: rates and latency quantiles over a window are sums
of round increments, and sparklines are the rounds themselves. Totals (every request ever
counted) are kept apart and never go down. Latency quantiles interpolate inside histogram
buckets exactly as Prometheus' `histogram_quantile` does.

This module is pure (no I/O, time passed in); `plait.control.telemetry_service` scrapes.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Agg",
    "ProxyInfo",
    "Rollup",
    "Series",
    "graph",
    "histogram_quantile",
    "parse_prometheus",
    "proxy_series",
    "stat",
]

RING = 60  # rounds kept: 2 minutes at 2 s, the sparklines' length
DEFAULT_WINDOW = 30.0  # s: rates and quantiles over the last 30 s
# 10 min: a vanished proxy's last values are kept this long, because a reconnect to the
# control plane is not a restart of its counters (a real restart shows as a counter reset).
FORGET_AFTER = 600.0
UNKNOWN = "unknown"

REQUESTS = "istio_requests_total"
DURATION_BUCKET = "istio_request_duration_milliseconds_bucket"
GAUGES = ("plait_config_version", "plait_certificate_expiry_seconds")
WANTED = frozenset({REQUESTS, DURATION_BUCKET, *GAUGES})
# The labels that place a request in the views; the rest (bytes, protocol...) are summed over.
KEY_LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_canonical_service",
    "destination_workload",
    "destination_service_name",
    "destination_service_namespace",
)

# --- parsing -----------------------------------------------------------------------------

_LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(.)")


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return _ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_prometheus(
    text: str, wanted: frozenset[str] = WANTED
) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of each sample in text format 0.0.4 whose name is `wanted`.

    Lines of other metrics are skipped by their name alone, before any regex runs: a proxy's
    exposition is mostly byte-size histograms the roll-up does not use."""
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        end = line.find("{")
        name = line[:end] if end > 0 else line.split(" ", 1)[0]
        if name not in wanted:
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = {k: _unescape(v) for k, v in _LABEL.findall(m.group(2) or "")}
        yield name, labels, value


# --- aggregates and the quantile math ----------------------------------------------------


@dataclass(slots=True)
class Agg:
    """Requests, 5xx among them, and cumulative latency buckets (upper bound -> count)."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def add(self, other: Agg) -> None:
        self.requests += other.requests
        self.errors += other.errors
        for le, count in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + count

    def since(self, before: Agg | None) -> Agg:
        """The increment from `before` to self; all of self if the counter was reset."""
        if before is None or self.requests < before.requests:
            return Agg(self.requests, self.errors, dict(self.buckets))
        return Agg(
            self.requests - before.requests,
            max(0.0, self.errors - before.errors),
            {le: max(0.0, c - before.buckets.get(le, 0.0)) for le, c in self.buckets.items()},
        )

    def quantile(self, q: float) -> float | None:
        return histogram_quantile(q, self.buckets)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of cumulative `buckets` (upper bound -> count, with +Inf), as
    Prometheus' histogram_quantile (promql/quantile.go): linear interpolation inside the
    bucket holding the rank; the lowest bucket starts at 0; a rank in the +Inf bucket
    answers the highest finite bound. None where Prometheus answers NaN (no observations,
    no +Inf bucket, fewer than two buckets)."""
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    bounds = sorted(buckets)
    if len(bounds) < 2 or not math.isinf(bounds[-1]):
        return None
    counts, highest = [], 0.0
    for le in bounds:  # ensureMonotonic: a scrape torn between buckets never goes backwards
        highest = max(highest, buckets[le])
        counts.append(highest)
    total = counts[-1]
    if total == 0:
        return None
    rank = q * total
    b = next((i for i in range(len(bounds) - 1) if counts[i] >= rank), len(bounds) - 1)
    if b == len(bounds) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, below = (0.0, 0.0) if b == 0 else (bounds[b - 1], counts[b - 1])
    in_bucket = counts[b] - below
    if in_bucket == 0:
        return bounds[b]
    return start + (bounds[b] - start) * (rank - below) / in_bucket


# --- series and their classification -----------------------------------------------------

SeriesKey = tuple[str, ...]  # KEY_LABELS values, then response_code


@dataclass(slots=True)
class Series:
    """One proxy's request series, reduced to the labels the views need."""

    labels: dict[str, str]
    agg: Agg


def proxy_series(text: str) -> tuple[dict[SeriesKey, Series], dict[str, float]]:
    """A scrape parsed into request series (summed over labels the views ignore) and the
    plait gauges (config version, certificate expiry)."""
    series: dict[SeriesKey, Series] = {}
    gauges: dict[str, float] = {}
    for name, labels, value in parse_prometheus(text):
        if name in GAUGES:
            gauges[name] = value
            continue
        key = (*(labels.get(k, UNKNOWN) for k in KEY_LABELS), labels.get("response_code", ""))
        found = series.get(key)
        if found is None:
            kept = {k: labels.get(k, UNKNOWN) for k in KEY_LABELS}
            found = series[key] = Series(kept, Agg())
        if name == REQUESTS:
            found.agg.requests += value
            if (
                labels.get("response_code", "").startswith("5")
                or labels.get("response_code") == "0"
            ):
                found.agg.errors += value
        else:
            le = float(labels.get("le", "+Inf"))
            found.agg.buckets[le] = found.agg.buckets.get(le, 0.0) + value
    return series, gauges


def _service_of_principal(principal: str) -> str:
    """`spiffe://td/ns/NS/sa/SA` -> `NS/SA` (plait names a service's account after it)."""
    parts = principal.split("/")
    if len(parts) == 7 and parts[3] == "ns" and parts[5] == "sa":
        return f"{parts[4]}/{parts[6]}"
    return UNKNOWN


@dataclass(frozen=True, slots=True)
class Flow:
    """Where one series' requests go in the views; None fields are left out of them."""

    source: str | None  # caller service "ns/name" (or "unknown"): edges and inbound
    destination: str | None  # called service "ns/name"
    destination_workload: str | None
    sender: str | None  # the reporting caller "ns/name": its outbound (gateways)
    sender_workload: str | None


def classify(labels: Mapping[str, str], meshed: frozenset[str]) -> Flow:
    """Istio's reporters, counted once: a source report always; a destination report only
    when its caller has no proxy of ours (so no source report of the same request)."""
    dst_name = labels["destination_service_name"]
    dst_ns = labels["destination_service_namespace"]
    destination = f"{dst_ns}/{dst_name}" if dst_name != UNKNOWN else None
    dst_wl = labels["destination_workload"]
    dst_workload = dst_wl if dst_wl != UNKNOWN and destination else None
    if labels["reporter"] == "source":
        sender = f"{labels['source_workload_namespace']}/{labels['source_canonical_service']}"
        return Flow(sender, destination, dst_workload, sender, labels["source_workload"])
    principal = labels["source_principal"]
    if principal != UNKNOWN and principal in meshed:
        return Flow(None, None, None, None, None)  # its caller's proxy reported it
    return Flow(_service_of_principal(principal), destination, dst_workload, None, None)


# --- the roll-up -------------------------------------------------------------------------


@dataclass(slots=True)
class Round:
    """The increments of one scrape round, per view key."""

    time: float
    seconds: float
    inbound: dict[str, Agg] = field(default_factory=dict)
    outbound: dict[str, Agg] = field(default_factory=dict)
    edges: dict[tuple[str, str], Agg] = field(default_factory=dict)
    workloads_in: dict[tuple[str, str], Agg] = field(default_factory=dict)
    workloads_out: dict[tuple[str, str], Agg] = field(default_factory=dict)


def _bump(table: dict[Any, Agg], key: Any, agg: Agg) -> None:
    found = table.get(key)
    if found is None:
        table[key] = Agg(agg.requests, agg.errors, dict(agg.buckets))
    else:
        found.add(agg)


def golden(agg: Agg | None, seconds: float) -> dict[str, float | None]:
    """RPS, success rate and latency quantiles of an increment over `seconds`."""
    if agg is None or agg.requests <= 0 or seconds <= 0:
        return {"rps": 0.0, "success": None, "p50": None, "p95": None, "p99": None}
    return {
        "rps": agg.requests / seconds,
        "success": (agg.requests - agg.errors) / agg.requests,
        "p50": agg.quantile(0.5),
        "p95": agg.quantile(0.95),
        "p99": agg.quantile(0.99),
    }


class Rollup:
    """Rounds of increments and running totals; pure (the caller supplies scrapes and time)."""

    def __init__(self, ring: int = RING) -> None:
        self.rounds: deque[Round] = deque(maxlen=ring)
        self.totals = Round(0.0, 0.0)
        self._last: dict[str, dict[SeriesKey, Agg]] = {}
        self._seen: dict[str, float] = {}
        self._time: float | None = None

    def ingest(
        self,
        now: float,
        scrapes: Mapping[str, Mapping[SeriesKey, Series] | None],
        meshed: frozenset[str],
    ) -> Round:
        """One round: `scrapes` maps each proxy to its series (None: the scrape failed)."""
        seconds = now - self._time if self._time is not None else 0.0
        self._time = now
        current = Round(now, seconds)
        for proxy, series in scrapes.items():
            if series is None:
                continue  # its increments arrive with its next good scrape
            before = self._last.get(proxy)
            values: dict[SeriesKey, Agg] = {}
            for key, s in series.items():
                values[key] = s.agg
                if before is None:
                    total = s.agg.since(None)  # first sight: counts for totals, not rates
                    self._add(self.totals, classify(s.labels, meshed), total)
                    continue
                increment = s.agg.since(before.get(key))
                if increment.requests > 0:
                    flow = classify(s.labels, meshed)
                    self._add(current, flow, increment)
                    self._add(self.totals, flow, increment)
            self._last[proxy] = values
            self._seen[proxy] = now
        for proxy in [p for p, t in self._seen.items() if now - t > FORGET_AFTER]:
            del self._seen[proxy], self._last[proxy]
        if seconds > 0:
            self.rounds.append(current)
        return current

    @staticmethod
    def _add(target: Round, flow: Flow, agg: Agg) -> None:
        if flow.destination is not None and flow.source is not None:
            _bump(target.inbound, flow.destination, agg)
            _bump(target.edges, (flow.source, flow.destination), agg)
            if flow.destination_workload is not None:
                _bump(target.workloads_in, (flow.destination, flow.destination_workload), agg)
        if flow.sender is not None:
            _bump(target.outbound, flow.sender, agg)
            if flow.sender_workload is not None:
                _bump(target.workloads_out, (flow.sender, flow.sender_workload), agg)

    def window(self, seconds: float = DEFAULT_WINDOW) -> tuple[Round, float]:
        """The increments of the last rounds within `seconds`, summed, and their span."""
        summed, span = Round(self._time or 0.0, 0.0), 0.0
        for r in reversed(self.rounds):
            if span + r.seconds > seconds + 0.5 * r.seconds:  # the round that half fits is in
                break
            span += r.seconds
            for name in ("inbound", "outbound", "edges", "workloads_in", "workloads_out"):
                table = getattr(summed, name)
                for key, agg in getattr(r, name).items():
                    _bump(table, key, agg)
        summed.seconds = span
        return summed, span

    def sparkline(self, table: str, key: Any) -> dict[str, list[float | None]]:
        """Per round: rps, success rate and p99 of one key (for the dashboard's polylines)."""
        points = [golden(getattr(r, table).get(key), r.seconds) for r in self.rounds]
        return {
            "time": [r.time for r in self.rounds],
            "rps": [p["rps"] for p in points],
            "success": [p["success"] for p in points],
            "p99": [p["p99"] for p in points],
        }


# --- views -------------------------------------------------------------------------------


def _metrics(window: Round, totals: Round, table: str, key: Any) -> dict[str, Any]:
    total = getattr(totals, table).get(key)
    return {
        **golden(getattr(window, table).get(key), window.seconds),
        "requests": total.requests if total else 0.0,
        "errors": total.errors if total else 0.0,
    }


def _split(key: str) -> tuple[str, str]:
    ns, _, name = key.rpartition("/")
    return ns, name


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """What the roll-up needs to know of a connected proxy (from the push server)."""

    name: str
    service: str  # "ns/name"
    gateway: bool


def graph(rollup: Rollup, proxies: Iterable[ProxyInfo], window: float) -> dict[str, Any]:
    """Nodes (services, with golden metrics and sparklines) and edges (caller -> callee)."""
    proxies = list(proxies)
    summed, span = rollup.window(window)
    gateways = {p.service for p in proxies if p.gateway}
    meshed = {p.service for p in proxies}
    keys = set(meshed)
    for seen in (rollup.totals.edges, summed.edges):
        for src, dst in seen:
            keys.update((src, dst))
    nodes = []
    for key in sorted(keys):
        table = "outbound" if key in gateways else "inbound"
        ns, name = _split(key)
        kind = "gateway" if key in gateways else "service" if key in meshed else "external"
        if key == UNKNOWN:
            kind, ns, name = "external", "", UNKNOWN
        nodes.append(
            {
                "id": key,
                "name": name,
                "namespace": ns,
                "kind": kind,
                "proxies": sum(p.service == key for p in proxies),
                **_metrics(summed, rollup.totals, table, key),
                "series": rollup.sparkline(table, key),
            }
        )
    edge_keys = sorted(set(rollup.totals.edges) | set(summed.edges))
    edges = [
        {"source": s, "target": d, **_metrics(summed, rollup.totals, "edges", (s, d))}
        for s, d in edge_keys
    ]
    return {
        "time": rollup.totals.time or summed.time,
        "window": span,
        "nodes": nodes,
        "edges": edges,
    }


def stat(
    rollup: Rollup, proxies: Iterable[ProxyInfo], kind: str, window: float
) -> list[dict[str, Any]]:
    """Rows of `plait stat`: per service or per workload (routes come from the tap)."""
    proxies = list(proxies)
    summed, _ = rollup.window(window)
    gateways = {p.service for p in proxies if p.gateway}
    rows = []
    if kind == "service":
        keys = {p.service for p in proxies} | set(rollup.totals.inbound)
        for key in sorted(keys):
            table = "outbound" if key in gateways else "inbound"
            ns, name = _split(key)
            meshed = sum(p.service == key for p in proxies)
            row = {"namespace": ns, "name": name, "meshed": meshed}
            rows.append({**row, **_metrics(summed, rollup.totals, table, key)})
        return rows
    wl_keys = {(p.service, p.name) for p in proxies} | set(rollup.totals.workloads_in)
    for service, workload in sorted(wl_keys):
        table = "workloads_out" if service in gateways else "workloads_in"
        ns, name = _split(service)
        row = {
            "namespace": ns,
            "name": workload,
            "service": name,
            "meshed": int(any(p.name == workload for p in proxies)),
        }
        rows.append({**row, **_metrics(summed, rollup.totals, table, (service, workload))})
    return rows
