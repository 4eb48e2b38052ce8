"""The dashboard at `/ui` and the telemetry API it and the CLI read (`/api/v1/telemetry/*`,
`/api/v1/tap`). Reads, like the rest of the API's reads, need no token.

The UI is three static files shipped in `plait.control.dashboard` (no CDN, no build step),
served from package data. The router owns no task: a tap stream's per-proxy readers belong
to the stream and end with it (client gone, or the control plane closing).
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations at runtime.

import contextlib
import json
import time
from datetime import datetime
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from plait.control.tap_fanin import TOP_WINDOW, tap_stream
from plait.control.telemetry import DEFAULT_WINDOW, graph, stat
from plait.control.telemetry_service import Telemetry

__all__ = ["telemetry_router"]

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
STAT_KINDS = ("service", "workload", "route")
LISTENERS = ("inbound", "outbound", "gateway")

Window = Annotated[
    float, Query(ge=4, le=120, description="seconds of history the rates and quantiles cover")
]


def telemetry_router(telemetry: Telemetry) -> APIRouter:
    """Routes over one `Telemetry` service; `app.include_router(telemetry_router(t))`."""
    router = APIRouter()

    @router.get("/ui", include_in_schema=False)
    async def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @router.get("/ui/", include_in_schema=False)
    async def ui_index() -> Response:
        return _asset("index.html")

    @router.get("/ui/{name}", include_in_schema=False)
    async def ui_asset(name: str) -> Response:
        return _asset(name)

    @router.get("/api/v1/telemetry/graph", tags=["telemetry"])
    async def telemetry_graph(window: Window = DEFAULT_WINDOW) -> dict[str, Any]:
        """Services (golden metrics, sparklines) and the traffic between them."""
        return graph(telemetry.rollup, telemetry.proxy_infos(), window)

    @router.get("/api/v1/telemetry/stat", tags=["telemetry"])
    async def telemetry_stat(
        kind: Annotated[str, Query(pattern="^(service|workload|route)$")] = "service",
        window: Window = DEFAULT_WINDOW,
    ) -> dict[str, Any]:
        """Rows of `plait stat`: success rate, RPS and latency quantiles per service,
        workload or route (routes: from taps, collected while someone asks)."""
        if kind == "route":
            collecting = telemetry.paths.ask()
            rows = telemetry.paths.route_stats(min(window, TOP_WINDOW))
            return {"kind": kind, "window": window, "collecting_for": collecting, "rows": rows}
        rows = stat(telemetry.rollup, telemetry.proxy_infos(), kind, window)
        return {"kind": kind, "window": window, "rows": rows}

    @router.get("/api/v1/telemetry/top", tags=["telemetry"])
    async def telemetry_top(
        window: Annotated[float, Query(ge=1, le=TOP_WINDOW)] = TOP_WINDOW,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> dict[str, Any]:
        """The busiest paths (from taps of every proxy, collected while someone asks)."""
        collecting = telemetry.paths.ask()
        rows = telemetry.paths.top(window, limit)
        return {"window": window, "collecting_for": collecting, "rows": rows}

    @router.get("/api/v1/telemetry/proxies", tags=["telemetry"])
    async def telemetry_proxies() -> list[dict[str, Any]]:
        """Each proxy: config version and sync state, certificate expiry, last scrape."""
        now = time.time()
        return [_proxy_row(p, telemetry, now) for p in telemetry.proxies()]

    @router.get(
        "/api/v1/tap",
        tags=["telemetry"],
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "NDJSON: one request per line, until disconnect",
                "content": {"application/x-ndjson": {}},
            }
        },
    )
    async def tap(
        service: Annotated[str, Query(min_length=1, max_length=253)],
        namespace: Annotated[str | None, Query(max_length=63)] = None,
        path: Annotated[str, Query(max_length=2048, description="path prefix")] = "",
        listener: Annotated[str | None, Query(pattern="^(inbound|outbound|gateway)$")] = None,
    ) -> StreamingResponse:
        """Requests passing every proxy of a service, live: metadata and headers, no bodies."""

        def wanted(p: dict[str, Any]) -> bool:
            same_ns = namespace is None or p.get("namespace") == namespace
            return p.get("service") == service and same_ns

        if not any(wanted(p) for p in telemetry.proxies()):
            raise HTTPException(404, f"no proxy of service {service!r} is connected")
        records = tap_stream(telemetry.proxies, wanted, path, listener, telemetry.closing)
        return StreamingResponse(_lines(records), media_type="application/x-ndjson")

    return router


async def _lines(records: Any) -> Any:
    try:
        async for record in records:
            yield b"\n" if record is None else json.dumps(record).encode() + b"\n"
    finally:
        await records.aclose()


def _asset(name: str) -> Response:
    media = ASSETS.get(name)
    if media is None:
        raise HTTPException(404, "Not Found")
    body = resources.files("plait.control.dashboard").joinpath(name).read_bytes()
    return Response(body, media_type=media, headers={"cache-control": "no-cache"})


def _proxy_row(p: dict[str, Any], telemetry: Telemetry, now: float) -> dict[str, Any]:
    cert = p.get("certificate") or {}
    expires_in = None
    if cert.get("not_after"):
        with contextlib.suppress(ValueError):  # an unreadable date shows as unknown
            expires_in = datetime.fromisoformat(str(cert["not_after"])).timestamp() - now
    scrape = telemetry.scrapes.get(str(p.get("name")))
    labels = p.get("labels") or {}
    return {
        "name": p.get("name"),
        "service": p.get("service"),
        "namespace": p.get("namespace"),
        "version": labels.get("version"),
        "kind": "gateway" if "gateway" in (p.get("addresses") or {}) else "sidecar",
        "health": p.get("health"),
        "acked_version": p.get("acked_version"),
        "latest_version": p.get("latest_version"),
        "synced": p.get("synced"),
        "last_nack": p.get("last_nack"),
        "identity": p.get("identity"),
        "certificate_serial": cert.get("serial"),
        "certificate_not_after": cert.get("not_after"),
        "certificate_expires_in": expires_in,
        "connected_since": p.get("connected_since"),
        "admin": (p.get("addresses") or {}).get("admin"),
        "scrape_error": scrape.error if scrape else None,
        "scraped_at": scrape.time if scrape else None,
    }
