"""The control plane's HTTP API (FastAPI): apply, get, list, delete, watch and analyze
resources, and list the connected proxies. Reads are open; writes need the admin token.

Errors are always `{"error": {"message": ..., "errors": [{file, document, line, field,
reason}]}}` with a 4xx for bad input (a 5xx only for the server's own faults: 503 when the
store is unavailable). The app owns no tasks beyond its requests: a watch stream ends when
its client disconnects (Starlette cancels it), its timeout passes, or the store closes.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations at runtime.

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from plait.config.errors import ConfigError, ConfigErrors
from plait.control import api_models as m
from plait.control.apply_body import MEDIA_TYPES, media_type, parse_body
from plait.control.auth import check_token
from plait.control.config_service import CONFIG_PREFIX, REGISTRY_PREFIX, ConfigService
from plait.control.kinds import API_VERSIONS, KIND_NAMES, MODELS, UnknownKind, resolve_kind
from plait.control.store import Compacted, Event, StoreError
from plait.control.vips import DEFAULT_SERVICE_CIDR, allocate_vips

__all__ = ["ApiError", "create_app"]

log = logging.getLogger("plait.control.api")

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a few thousand resources; the API server's limit is 3 MiB
WATCH_PREFIXES = (CONFIG_PREFIX, REGISTRY_PREFIX)  # what the open, tokenless watch may read
KIND_CHOICES = sorted({*MODELS, *KIND_NAMES})
MAX_REVISION = 2**53  # JSON-safe; larger is never a real revision
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"

Kind = Annotated[
    str,
    Path(
        description="a kind, as kubectl takes it (case-insensitive; also `KIND.GROUP`)",
        json_schema_extra={"enum": KIND_CHOICES},
    ),
]
Namespace = Annotated[str, Path(max_length=63)]
Name = Annotated[str, Path(max_length=253)]


class ApiError(Exception):
    """An error reply: status, summary, and the problems with the input."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: Sequence[dict[str, Any]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = list(errors)
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "errors": self.errors}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def create_app(
    config: ConfigService,
    token: str,
    proxies: Callable[[], list[dict[str, Any]]] = lambda: [],
    max_body_bytes: int = MAX_BODY_BYTES,
    tokens: Callable[[str, str, float, str | None], dict[str, str]] | None = None,
    ca_roots: Callable[[], list[dict[str, Any]]] | None = None,
    ca_rotate: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    service_cidr: str = DEFAULT_SERVICE_CIDR,
) -> FastAPI:
    """The API over `config`; `proxies()` lists the connected proxies (the push server's)."""
    app = FastAPI(
        title="plait control plane",
        version="1",
        description="Configure the mesh: apply, get, delete, watch and analyze resources.",
    )
    _install_error_handlers(app)
    bearer = HTTPBearer(
        auto_error=False, description="the admin token (`plait control` prints where)"
    )

    async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if not check_token(credentials.credentials if credentials else None, token):
            reason = "wrong admin token" if credentials else "missing admin token"
            raise ApiError(
                401,
                f"{reason}: send `Authorization: Bearer TOKEN` (the CLI reads PLAIT_TOKEN)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    writes = [Depends(require_token)]

    @app.get("/healthz", response_model=m.Health, responses=m.error_responses(), tags=["health"])
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "revision": await config.revision()}

    @app.post(
        "/api/v1/apply",
        response_model=m.ApplyResponse,
        responses=m.error_responses(400, 401, 413, 415),
        openapi_extra=m.APPLY_BODY,
        tags=["resources"],
        dependencies=writes,
    )
    async def apply(
        request: Request,
        namespace: Annotated[
            str, Query(pattern=_DNS_LABEL, description="for resources that name none")
        ] = "default",
        dry_run: Annotated[bool, Query(description="validate and report; store nothing")] = False,
    ) -> dict[str, Any]:
        """Create or update resources, all under one revision (or nothing, on any error)."""
        media = media_type(request.headers.get("content-type"))
        if media not in MEDIA_TYPES:
            raise ApiError(
                415, f"unsupported content type {media!r}; send one of {', '.join(MEDIA_TYPES)}"
            )
        body = await _read_body(request, max_body_bytes)
        try:
            resources = await run_in_threadpool(parse_body, body, media, namespace=namespace)
            results = await config.apply(resources, dry_run=dry_run)
        except (ConfigError, ConfigErrors) as e:
            raise _invalid(e) from None
        changed = [x.revision for x in results if x.action != "unchanged"]
        revision = changed[0] if changed and not dry_run else await config.revision()
        return {"results": [x.to_dict() for x in results], "revision": revision, "dryRun": dry_run}

    @app.get(
        "/api/v1/resources",
        response_model=m.ResourceList,
        responses=m.error_responses(400),
        tags=["resources"],
    )
    async def list_all(namespace: str | None = None) -> dict[str, Any]:
        """Every resource, optionally of one namespace."""
        items, revision = await config.list_at(None, namespace)
        return {"items": [x.to_dict() for x in items], "revision": revision}

    @app.get(
        "/api/v1/resources/{kind}",
        response_model=m.ResourceList,
        responses=m.error_responses(400),
        tags=["resources"],
    )
    async def list_kind(kind: Kind, namespace: str | None = None) -> dict[str, Any]:
        """The resources of one kind, optionally of one namespace."""
        items, revision = await config.list_at(_kind(kind), namespace)
        return {"items": [x.to_dict() for x in items], "revision": revision}

    @app.get(
        "/api/v1/resources/{kind}/{namespace}/{name}",
        response_model=m.ResourceItem,
        responses=m.error_responses(400, 404),
        tags=["resources"],
    )
    async def get_one(kind: Kind, namespace: Namespace, name: Name) -> dict[str, Any]:
        found = await config.get(_kind(kind), namespace, name)
        if found is None:
            raise _not_found(_kind(kind), namespace, name)
        return found.to_dict()

    @app.delete(
        "/api/v1/resources/{kind}/{namespace}/{name}",
        response_model=m.DeleteResponse,
        responses=m.error_responses(400, 401, 404),
        tags=["resources"],
        dependencies=writes,
    )
    async def delete_one(kind: Kind, namespace: Namespace, name: Name) -> dict[str, Any]:
        canonical = _kind(kind)
        revision = await config.delete(canonical, namespace, name)
        if revision is None:
            raise _not_found(canonical, namespace, name)
        return {
            "apiVersion": API_VERSIONS[canonical],
            "kind": canonical,
            "namespace": namespace,
            "name": name,
            "revision": revision,
        }

    @app.get(
        "/api/v1/watch",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "NDJSON: one event per line, until the timeout or disconnect",
                "content": {"application/x-ndjson": {"schema": m.WatchEvent.model_json_schema()}},
            },
            **m.error_responses(400),
        },
        tags=["resources"],
    )
    async def watch(
        prefix: Annotated[str, Query(description="under /config/ or /registry/")] = CONFIG_PREFIX,
        from_revision: Annotated[
            int | None, Query(ge=0, le=MAX_REVISION, description="default: the next write")
        ] = None,
        timeout_seconds: Annotated[
            float | None, Query(gt=0, le=86_400, description="end the stream after this long")
        ] = None,
    ) -> StreamingResponse:
        """Changes under a prefix, from a revision on (as `etcdctl watch --rev`)."""
        if not prefix.startswith(WATCH_PREFIXES):
            raise ApiError(
                400,
                f"prefix must start with {' or '.join(WATCH_PREFIXES)}",
                [{"field": "prefix", "reason": f"{prefix!r} is outside the readable keys"}],
            )
        start = await config.revision() + 1 if from_revision is None else from_revision
        loop = asyncio.get_running_loop()
        deadline = None if timeout_seconds is None else loop.time() + timeout_seconds
        lines = _watch_lines(config, prefix, start, deadline)
        return StreamingResponse(lines, media_type="application/x-ndjson")

    @app.post(
        "/api/v1/tokens",
        response_model=m.TokenResponse,
        responses=m.error_responses(401, 404),
        tags=["identity"],
        dependencies=writes,
    )
    async def create_token(request: m.TokenRequest) -> dict[str, str]:
        """A single-use join token: a proxy presents it once to get its first certificate."""
        if tokens is None:
            raise ApiError(404, "this control plane issues no certificates")
        return tokens(
            request.service, request.namespace, float(request.ttlSeconds), request.serviceAccount
        )

    @app.get("/api/v1/ca", response_model=list[dict[str, Any]], tags=["identity"])
    async def ca_status() -> list[dict[str, Any]]:
        """The trusted roots: fingerprint, state (pending, signing, previous), expiry."""
        return ca_roots() if ca_roots is not None else []

    @app.post(
        "/api/v1/ca/rotate",
        response_model=dict[str, Any],
        responses=m.error_responses(401, 404, 409),
        tags=["identity"],
        dependencies=writes,
    )
    async def ca_rotate_now() -> dict[str, Any]:
        """Rotate the root CA with no dropped connection (bundle first, then signing)."""
        if ca_rotate is None:
            raise ApiError(404, "this control plane issues no certificates")
        try:
            return await ca_rotate()
        except (TimeoutError, RuntimeError, ValueError) as e:
            raise ApiError(409, f"CA rotation did not complete: {e}") from None

    @app.get("/api/v1/services/vips", response_model=dict[str, Any], tags=["resources"])
    async def service_vips() -> dict[str, Any]:
        """Each Service's VIP (what mesh DNS answers), as the compiler allocates it."""
        items, revision = await config.list_at("Service", None)
        keys = [(x.resource.metadata.namespace, x.resource.metadata.name) for x in items]
        vips = allocate_vips(keys, service_cidr)
        return {
            "serviceCIDR": service_cidr,
            "items": [{"namespace": k[0], "name": k[1], "vip": vips[k]} for k in keys],
            "revision": revision,
        }

    @app.get("/api/v1/proxies", response_model=list[dict[str, Any]], tags=["proxies"])
    async def list_proxies() -> list[dict[str, Any]]:
        """The connected proxies: identity, addresses, acked and latest config version."""
        return proxies()

    @app.get(
        "/api/v1/analyze",
        response_model=m.AnalyzeResponse,
        responses=m.error_responses(),
        tags=["resources"],
    )
    async def analyze() -> dict[str, Any]:
        """What is stored but will not work: dangling references, selectors selecting nothing."""
        revision = await config.revision()
        findings = [f.to_dict() for f in await config.analyze()]
        errors = sum(f["level"] == "Error" for f in findings)
        return {
            "findings": findings,
            "errors": errors,
            "warnings": len(findings) - errors,
            "revision": revision,
        }

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed `limit`."""
    declared = request.headers.get("content-length")
    too_large = ApiError(413, f"the body is over the limit of {limit} bytes")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked, or a lying Content-Length
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _watch_lines(
    config: ConfigService, prefix: str, start: int, deadline: float | None
) -> AsyncIterator[bytes]:
    """The NDJSON stream of a watch; owns the store watch and closes it however it ends."""
    batches = config.watch(prefix, start)
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):  # only the wait, never a yield
                    batch = await anext(batches)
            except (StopAsyncIteration, TimeoutError):
                return
            except StoreError as e:  # compacted, fell behind, closed: the client re-lists
                status = 410 if isinstance(e, Compacted) else 503
                oldest = e.revision if isinstance(e, Compacted) else 0
                error = {"message": str(e), "errors": [{"reason": f"HTTP {status}"}]}
                yield _line({"type": "ERROR", "revision": oldest, "error": error})
                return
            yield b"".join(_line(_event(e)) for e in batch)
    finally:
        await batches.aclose()


def _event(e: Event) -> dict[str, Any]:
    try:
        value = json.loads(e.value) if e.type == "PUT" else None
    except ValueError:
        value = None
    return {"type": e.type, "key": e.key, "revision": e.revision, "value": value}


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def _kind(text: str) -> str:
    try:
        return resolve_kind(text)
    except UnknownKind as e:
        raise ApiError(400, str(e), [{"field": "kind", "reason": str(e)}]) from None


def _not_found(kind: str, namespace: str, name: str) -> ApiError:
    return ApiError(404, f"{kind} {namespace}/{name} not found")


def _invalid(e: ConfigError | ConfigErrors) -> ApiError:
    found = e.errors if isinstance(e, ConfigErrors) else [e]
    items = [
        {
            "file": x.file,
            "document": x.document,
            "line": x.line,
            "field": x.field,
            "reason": x.reason,
        }
        for x in found
    ]
    summary = str(found[0]) if len(found) == 1 else f"{len(found)} problems with the resources"
    return ApiError(400, summary, items)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error, FastAPI's and Starlette's own included, in the one JSON shape."""

    async def api_error(_: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, ApiError)
        return e.response()

    async def validation_error(_: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, RequestValidationError)
        items = [
            {"field": ".".join(str(p) for p in err["loc"]), "reason": err["msg"]}
            for err in e.errors()
        ]
        summary = "; ".join(f"{x['field']}: {x['reason']}" for x in items)
        return ApiError(400, f"invalid request: {summary}", items).response()

    async def http_error(request: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, StarletteHTTPException)
        message = f"{e.detail}: {request.method} {request.url.path}"
        return ApiError(e.status_code, message, headers=e.headers).response()

    async def store_error(_: Request, e: Exception) -> JSONResponse:
        log.warning("store unavailable: %s", e)
        return ApiError(503, f"the store is unavailable: {e}").response()

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(StoreError, store_error)
