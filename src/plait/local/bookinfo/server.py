"""The HTTP/1.1 shell around an app: keep-alive, Content-Length on every reply, quiet logs.

The mesh proxy pools connections to the app, so every response is length-delimited and the
connection stays open unless the client asks otherwise. One thread per connection; threads are
daemons, so SIGTERM/SIGINT end the process at once with exit code 0.
"""

from __future__ import annotations

import signal
import socket
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from plait.local.bookinfo.common import App, Request, Response, Settings, json_response


class _Server(ThreadingHTTPServer):
    """Thread-per-connection server carrying the app; client disconnects are routine."""

    daemon_threads = True

    def __init__(self, settings: Settings, app: App) -> None:
        super().__init__((settings.host, settings.port), _Handler)
        self.app = app
        self.label = f"{settings.service}-{settings.version}"

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        """Drop resets and broken pipes silently; anything else is a bug worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Reads one request, asks the app, writes the response with a Content-Length."""

    protocol_version = "HTTP/1.1"
    server_version = "bookinfo"
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # The demo bodies are tiny; refusing chunked keeps the reader simple (RFC 9110 §15.5.12).
            self.close_connection = True
            self._send(json_response({"error": "Content-Length required"}, 411))
            return
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit():
            self.close_connection = True
            self._send(json_response({"error": "bad Content-Length"}, 400))
            return
        url = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=url.path,
            query=dict(parse_qsl(url.query)),
            headers=self.headers,
            body=self.rfile.read(int(length)),
        )
        try:
            response = self.server.app(request)
        except Exception:
            traceback.print_exc()
            response = json_response({"error": "internal error"}, 500)
        self._send(response)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:
        """One line per request on stderr, tagged with the app so `plait up` output is readable."""
        sys.stderr.write(f"{self.server.label} {self.address_string()} {format % args}\n")


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(settings: Settings, app: App) -> None:
    """Serve ``app`` on HOST:PORT until SIGTERM or SIGINT, which exit with code 0."""
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)
    with _Server(settings, app) as server:
        host, port = server.server_address[:2]
        print(f"{server.label} listening on http://{host!s}:{port}", file=sys.stderr, flush=True)
        server.serve_forever()
