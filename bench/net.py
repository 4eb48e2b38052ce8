"""Small network helpers: free ports, waiting for a listener, one HTTP request."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["answers_200", "free_port", "get", "wait_until"]

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """The first truthy value of `predicate()`; raises TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def get(
    port: int, path: str = "/", host: str | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """One GET to 127.0.0.1:port on a fresh connection: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def answers_200(port: int, path: str = "/", host: str | None = None) -> bool:
    try:
        return get(port, path, host, timeout=2)[0] == 200
    except OSError:
        return False
