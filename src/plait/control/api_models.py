"""The config API's wire shapes, as pydantic models, so `/openapi.json` describes every reply.

Field names are the JSON names (camelCase, as the resources themselves are).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from plait.config.resources import KINDS
from plait.control.apply_body import JSON_TYPES, YAML_TYPES

__all__ = [
    "APPLY_BODY",
    "error_responses",
    "AnalyzeResponse",
    "ApplyResponse",
    "DeleteResponse",
    "ErrorBody",
    "Health",
    "ResourceItem",
    "ResourceList",
    "WatchEvent",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorItem(_Model):
    """One problem with the input; unknown parts are null."""

    file: str | None = None
    document: int | None = None  # 0-based, set when the body held several documents
    line: int | None = None
    field: str | None = None
    reason: str


class ErrorDetail(_Model):
    message: str
    errors: list[ErrorItem] = []


class ErrorBody(_Model):
    """Every error reply: a summary, and one item per problem with the input."""

    error: ErrorDetail


class TokenRequest(_Model):
    """A join token for one workload's proxy: who it will be."""

    service: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    serviceAccount: str | None = Field(
        default=None, pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
    )
    ttlSeconds: int = Field(default=3600, ge=1, le=7 * 86400)


class TokenResponse(_Model):
    token: str
    spiffeId: str
    expiresAt: str


class Health(_Model):
    status: Literal["ok"]
    revision: int


class ApplyResultItem(_Model):
    apiVersion: str
    kind: str
    namespace: str
    name: str
    action: Literal["created", "configured", "unchanged"]
    revision: int


class ApplyResponse(_Model):
    results: list[ApplyResultItem]
    revision: int
    dryRun: bool = False


class ResourceItem(_Model):
    """A stored resource: `object` is the resource itself, re-appliable as it is."""

    kind: str
    namespace: str
    name: str
    revision: int
    createRevision: int
    version: int
    object: dict[str, Any]


class ResourceList(_Model):
    items: list[ResourceItem]
    revision: int


class DeleteResponse(_Model):
    apiVersion: str
    kind: str
    namespace: str
    name: str
    revision: int


class FindingItem(_Model):
    level: Literal["Error", "Warning"]
    code: str
    kind: str
    namespace: str
    name: str
    field: str | None
    message: str


class AnalyzeResponse(_Model):
    findings: list[FindingItem]
    errors: int
    warnings: int
    revision: int


class WatchEvent(_Model):
    """One line of the watch stream; `ERROR` ends it (e.g. the history was compacted: 410)."""

    type: Literal["PUT", "DELETE", "ERROR"]
    key: str | None = None
    revision: int
    value: Any = None  # the stored JSON; null for DELETE
    error: ErrorDetail | None = None


_ERRORS = {
    400: "invalid input: the errors name document, line and field",
    401: "missing or wrong admin token",
    404: "no such resource",
    409: "the operation could not complete in the current state",
    413: "body over the size limit",
    415: "not YAML or JSON",
    503: "the store is unavailable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` entries of these error statuses (and 503: the store's)."""
    return {c: {"model": ErrorBody, "description": _ERRORS[c]} for c in (*codes, 503)}


_RESOURCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "a resource in its standard shape (apiVersion, kind, metadata, spec)",
    "required": ["apiVersion", "kind", "metadata"],
    "properties": {
        "apiVersion": {"type": "string", "enum": sorted({v for v, _ in KINDS})},
        "kind": {"type": "string", "enum": [k for _, k in KINDS]},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
        },
        "spec": {"type": "object"},
    },
}

# The apply body is read raw (YAML keeps its line numbers), so its schema is declared here.
APPLY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "resources: multi-document YAML, or JSON (an object, a list, or items)",
        "content": {
            **{t: {"schema": _RESOURCE_SCHEMA} for t in YAML_TYPES},
            **{
                t: {
                    "schema": {
                        "oneOf": [
                            _RESOURCE_SCHEMA,
                            {"type": "array", "items": _RESOURCE_SCHEMA},
                            {
                                "type": "object",
                                "required": ["items"],
                                "properties": {
                                    "items": {"type": "array", "items": _RESOURCE_SCHEMA}
                                },
                            },
                        ]
                    }
                }
                for t in JSON_TYPES
            },
        },
    }
}
