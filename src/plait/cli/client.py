"""A client for the control plane's config API, on the standard library only (urllib).

Errors::

    ClientError       the call failed; str() is a sentence for the user
     +-- Unreachable  no connection to the control plane (refused, timed out, bad name)
     +-- ApiError     the API answered with an error: .status, .message, .errors
"""

from __future__ import annotations

import builtins
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["ApiClient", "ApiError", "ClientError", "Unreachable"]

TIMEOUT = 30.0  # seconds per request: an apply of thousands of resources takes a few


class ClientError(Exception):
    """A failed call; the message says what to do about it."""


class Unreachable(ClientError):
    """The control plane could not be reached."""


class ApiError(ClientError):
    """An error reply: `errors` are dicts with file, document, line, field and reason."""

    def __init__(self, status: int, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


class ApiClient:
    """Calls the API at `server`; sends the admin token when it has one. Holds no connection."""

    def __init__(self, server: str, token: str | None = None, timeout: float = TIMEOUT) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    def apply(
        self,
        body: bytes,
        content_type: str = "application/yaml",
        *,
        namespace: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        query = {"namespace": namespace, "dry_run": "true" if dry_run else None}
        return self._call("POST", "/api/v1/apply", query, body, content_type)

    def list(self, kind: str | None = None, namespace: str | None = None) -> dict[str, Any]:
        path = "/api/v1/resources" + (f"/{_segment(kind)}" if kind else "")
        return self._call("GET", path, {"namespace": namespace})

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return self._call("GET", _resource_path(kind, namespace, name))

    def service_vips(self) -> dict[str, Any]:
        """Every Service's VIP: {"serviceCIDR": ..., "items": [{namespace, name, vip}]}."""
        return self._call("GET", "/api/v1/services/vips")

    def delete(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return self._call("DELETE", _resource_path(kind, namespace, name))

    def create_token(
        self, service: str, namespace: str, ttl_seconds: int, service_account: str | None = None
    ) -> dict[str, Any]:
        body = {"service": service, "namespace": namespace, "ttlSeconds": ttl_seconds}
        if service_account:
            body["serviceAccount"] = service_account
        return self._call(
            "POST", "/api/v1/tokens", None, json.dumps(body).encode(), "application/json"
        )

    def ca_roots(self) -> builtins.list[dict[str, Any]]:
        return self._call("GET", "/api/v1/ca")

    def ca_rotate(self) -> dict[str, Any]:
        return self._call("POST", "/api/v1/ca/rotate", None, b"", "application/json")

    def proxies(self) -> builtins.list[dict[str, Any]]:
        return self._call("GET", "/api/v1/proxies")

    def analyze(self) -> dict[str, Any]:
        return self._call("GET", "/api/v1/analyze")

    def _call(
        self,
        method: str,
        path: str,
        query: dict[str, str | None] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> Any:
        params = {k: v for k, v in (query or {}).items() if v is not None}
        url = self.server + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            request = urllib.request.Request(url, data=body, method=method)
        except ValueError:
            raise ClientError(
                f"invalid server URL {self.server!r}: expected http://HOST:PORT"
            ) from None
        request.add_header("Accept", "application/json")
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return _json(response.read(), url)
        except urllib.error.HTTPError as e:
            raise _api_error(e, url) from None
        except urllib.error.URLError as e:
            raise self._unreachable(e.reason) from None
        except (TimeoutError, ConnectionError) as e:  # a reply cut short or too slow
            raise self._unreachable(e) from None

    def _unreachable(self, reason: object) -> Unreachable:
        return Unreachable(
            f"cannot reach the control plane at {self.server} ({_describe(reason)}) "
            "— is it running? (plait control / plait up)"
        )


def _segment(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _resource_path(kind: str, namespace: str, name: str) -> str:
    return f"/api/v1/resources/{_segment(kind)}/{_segment(namespace)}/{_segment(name)}"


def _json(raw: bytes, url: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise ClientError(f"{url}: the reply is not JSON; is this a plait control plane?") from None


def _api_error(e: urllib.error.HTTPError, url: str) -> ApiError:
    try:
        error = json.loads(e.read())["error"]
        return ApiError(e.code, str(error["message"]), list(error.get("errors") or []))
    except (ValueError, KeyError, TypeError, OSError):
        return ApiError(e.code, f"{url}: HTTP {e.code} {e.reason}", [])


def _describe(reason: object) -> str:
    """`[Errno 111] Connection refused` -> `connection refused`."""
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, socket.gaierror):
        return f"unknown host: {reason.strerror}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)
