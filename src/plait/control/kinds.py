"""Resource kinds by every name a kubectl user types: `svc`, `httproutes`, `dr`, `Gateway`.

Also the canonical stored form of a resource: the validated model as plain JSON data that
validates back to the same model (durations are written back as `1h30m`-style strings, since
the models hold them as milliseconds).
"""

from __future__ import annotations

import functools
import json
from typing import Any, get_args

from pydantic import BaseModel

from plait.config import resources as r

__all__ = [
    "API_VERSIONS",
    "format_duration",
    "KIND_NAMES",
    "MODELS",
    "UnknownKind",
    "decode",
    "encode",
    "group_of",
    "resolve_kind",
    "to_data",
]

MODELS: dict[str, type[r.Resource]] = {kind: model for (_, kind), model in r.KINDS.items()}
API_VERSIONS: dict[str, str] = {kind: api for (api, kind) in r.KINDS}

# kubectl / istioctl short names (Istio's `dr`, `pa`, `gw`; the Gateway API's `gtw`).
_SHORT_NAMES = {
    "svc": "Service",
    "wl": "Workload",
    "we": "Workload",
    "gtw": "Gateway",
    "gw": "Gateway",
    "dr": "DestinationRule",
    "ap": "AuthorizationPolicy",
    "pa": "PeerAuthentication",
    "ra": "RequestAuthentication",
    "tp": "TrafficPolicy",
}


def _plural(kind: str) -> str:
    lower = kind.lower()
    return lower[:-1] + "ies" if lower.endswith("y") else lower + "s"


KIND_NAMES: dict[str, str] = {
    **{kind.lower(): kind for kind in MODELS},
    **{_plural(kind): kind for kind in MODELS},
    **_SHORT_NAMES,
}


class UnknownKind(ValueError):
    """A kind name that names no resource kind; the message lists the known ones."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(f"unknown kind {text!r}; known kinds: {', '.join(MODELS)}")


def group_of(kind: str) -> str:
    """The API group of a kind: `HTTPRoute` -> `gateway.networking.k8s.io`."""
    return API_VERSIONS[kind].rpartition("/")[0]


def resolve_kind(text: str) -> str:
    """`httproutes`, `HTTPRoute`, `svc`, `dr.networking.istio.io` -> the canonical kind name."""
    name, _, group = text.strip().lower().partition(".")
    kind = KIND_NAMES.get(name)
    if kind is None or (group and group != group_of(kind)):
        raise UnknownKind(text)
    return kind


# --- the stored form ------------------------------------------------------------------------

_DURATIONS = (r.Duration, r.IstioDuration)
_UNITS = (("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1))


def format_duration(ms: int) -> str:
    """Milliseconds as the Gateway API (GEP-2257) writes them, which Istio also reads: `1h30m`."""
    parts = []
    for unit, size in _UNITS:
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


@functools.cache
def _duration_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of `model` typed as a duration (alone or in a union with None)."""
    # A bare `Duration` field keeps its validator in `metadata`; `Duration | None` in the type.
    return frozenset(
        name
        for name, info in model.model_fields.items()
        if any(
            get_args(d)[1] in info.metadata or d in get_args(info.annotation) for d in _DURATIONS
        )
    )


def to_data(value: Any) -> Any:
    """A model as JSON-ready data, by alias and without None fields (like `model_dump`), but
    with durations as strings, so that the result validates back to the same model."""
    if isinstance(value, BaseModel):
        model = type(value)
        durations = _duration_fields(model)
        out: dict[str, Any] = {}
        for name, info in model.model_fields.items():
            item = getattr(value, name)
            if item is not None:
                key = info.alias or name
                out[key] = format_duration(item) if name in durations else to_data(item)
        return out
    if isinstance(value, tuple | list):
        return [to_data(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_data(v) for k, v in value.items()}  # JSON keys are strings
    return value


def encode(resource: r.Resource) -> bytes:
    """The canonical stored bytes: sorted keys, no spaces, so equal resources are equal bytes."""
    return json.dumps(to_data(resource), sort_keys=True, separators=(",", ":")).encode()


def decode(kind: str, value: bytes) -> r.Resource:
    """A stored value back as its model (JSON mode: `"8080"` keys are ports again)."""
    return MODELS[kind].model_validate_json(value)
