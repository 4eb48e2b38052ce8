"""Prometheus text format 0.0.4, rendered from a registry on scrape (never on the hot path).

Format: https://prometheus.io/docs/instrumenting/exposition_formats/ ("Text format
details"): HELP escapes backslash and newline; label values also escape the double
quote; histogram buckets are cumulative, end with `le="+Inf"` and come with `_sum` and
`_count`. Floats are written the way Go (and so Prometheus and prometheus_client) write
them, so `le` values match what other exporters produce.
"""

from __future__ import annotations

from collections.abc import Iterable

from plait.telemetry.metrics import HistogramData, Labels, MetricFamily, Registry

__all__ = ["CONTENT_TYPE", "format_float", "render", "render_families"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_HELP_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n"})
_LABEL_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", '"': '\\"'})


def format_float(value: float) -> str:
    """Go's shortest float text: 1 -> "1.0", 1e6 -> "1e+06", inf -> "+Inf"."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to an exponent at 1e21; Prometheus at 1e6
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def _value(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    return format_float(value)


def _pairs(labels: Labels) -> str:
    return ",".join(f'{name}="{value.translate(_LABEL_ESCAPES)}"' for name, value in labels)


def _braced(pairs: str) -> str:
    return "{" + pairs + "}" if pairs else ""


def _histogram(out: list[str], name: str, labels: Labels, data: HistogramData) -> None:
    pairs = _pairs(labels)
    le = f"{{{pairs},le=" if pairs else "{le="
    cumulative = 0
    for bound, count in zip(data.bounds, data.counts, strict=False):
        cumulative += count
        out.append(f'{name}_bucket{le}"{format_float(bound)}"}} {cumulative}')
    cumulative += data.counts[-1]
    out.append(f'{name}_bucket{le}"+Inf"}} {cumulative}')
    out.append(f"{name}_sum{_braced(pairs)} {_value(data.sum)}")
    out.append(f"{name}_count{_braced(pairs)} {cumulative}")


def render_families(families: Iterable[MetricFamily]) -> bytes:
    """The exposition of `families`: HELP and TYPE once per family, then its samples."""
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {family.help.translate(_HELP_ESCAPES)}")
        out.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.series:
            if isinstance(value, HistogramData):
                _histogram(out, family.name, labels, value)
            else:
                out.append(f"{family.name}{_braced(_pairs(labels))} {_value(value)}")
    out.append("")
    return "\n".join(out).encode()


def render(registry: Registry) -> bytes:
    """What `/stats/prometheus` serves (with `CONTENT_TYPE`)."""
    return render_families(registry.collect())
