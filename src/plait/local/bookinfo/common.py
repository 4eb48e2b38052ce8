"""What every Bookinfo app shares: settings, request/response values, routing, header propagation.

Apps are functions from a ``Request`` to a ``Response``; ``server.py`` does the socket work, so
the apps themselves only decide what to answer.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any
from urllib.parse import urlsplit

# Headers Istio's sample apps copy from each incoming request onto their outgoing calls, so
# traces join up and user-based routing (end-user) works on every hop.
PROPAGATED_HEADERS = (
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "end-user",
    "user-agent",
)
VERSIONS = ("v1", "v2", "v3")


def propagated_headers(incoming: Message) -> dict[str, str]:
    """The trace and user headers of ``incoming`` that must travel on every outgoing call."""
    return {name: value for name in PROPAGATED_HEADERS if (value := incoming.get(name)) is not None}


@dataclass(frozen=True)
class Settings:
    """One app's configuration, read once from the environment at start."""

    service: str
    port: int
    host: str = "127.0.0.1"
    version: str = "v1"
    proxy: tuple[str, int] | None = None
    details_url: str = "http://details:9080"
    reviews_url: str = "http://reviews:9080"
    ratings_url: str = "http://ratings:9080"

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str] = os.environ) -> Settings:
        """Read PORT (required), HOST, SERVICE_VERSION, HTTP_PROXY and the *_URL variables."""
        if not env.get("PORT", "").isdigit():
            raise ValueError("PORT must be set to a port number")
        version = env.get("SERVICE_VERSION") or "v1"
        if version not in VERSIONS:
            raise ValueError(
                f"SERVICE_VERSION must be one of {', '.join(VERSIONS)}, not {version!r}"
            )
        return cls(
            service=service,
            port=int(env["PORT"]),
            host=env.get("HOST") or cls.host,
            version=version,
            proxy=_parse_proxy(env.get("HTTP_PROXY", "")),
            details_url=(env.get("DETAILS_URL") or cls.details_url).rstrip("/"),
            reviews_url=(env.get("REVIEWS_URL") or cls.reviews_url).rstrip("/"),
            ratings_url=(env.get("RATINGS_URL") or cls.ratings_url).rstrip("/"),
        )


def _parse_proxy(value: str) -> tuple[str, int] | None:
    """HTTP_PROXY as (host, port); accepts ``http://host:port`` or a bare ``host:port``."""
    if not value:
        return None
    parts = urlsplit(value if "://" in value else f"http://{value}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"HTTP_PROXY must look like http://host:port, not {value!r}")
    return parts.hostname, parts.port or 80


@dataclass(frozen=True)
class Request:
    """An incoming request, read whole (the demo bodies are tiny)."""

    method: str
    path: str
    query: dict[str, str]
    headers: Message
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    """What an app answers; the server adds Content-Length so connections stay reusable."""

    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response."""
    body = json.dumps(data).encode()
    return Response(status, body, "application/json", headers or {})


def html_response(text: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """An HTML response."""
    return Response(status, text.encode(), "text/html; charset=utf-8", headers or {})


def redirect(location: str, headers: dict[str, str] | None = None) -> Response:
    """A 303 See Other, so a browser follows a form POST with a GET."""
    return Response(303, b"", "text/plain", {"Location": location, **(headers or {})})


App = Callable[[Request], Response]


class Router:
    """Maps a method and a path pattern to a handler; ``GET /health`` is always there.

    Capture groups in patterns are product ids: they match digits and reach the handler as ints.
    """

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Response]]] = []
        self.add("GET", "/health", lambda request: json_response({"status": "ok"}))

    def add(self, method: str, pattern: str, handler: Callable[..., Response]) -> None:
        """Route ``method`` requests whose whole path matches ``pattern`` to ``handler``."""
        self._routes.append((method, re.compile(pattern), handler))

    def __call__(self, request: Request) -> Response:
        """Dispatch ``request``: 404 for an unknown path, 405 for a known path and wrong method."""
        allowed = []
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            if method == request.method:
                return handler(request, *(int(group) for group in match.groups()))
            allowed.append(method)
        if allowed:
            return json_response(
                {"error": "method not allowed"}, 405, {"Allow": ", ".join(allowed)}
            )
        return json_response({"error": f"no route for {request.path}"}, 404)
