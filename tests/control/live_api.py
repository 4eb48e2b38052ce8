"""A live config API for tests: the real app under a real uvicorn server, in a thread.

Ownership: a `LiveApi` runs uvicorn on a port-0 socket in a daemon thread with its own uvloop
event loop and a fresh MemoryStore (use the store from that loop: `loop`); leaving its `with`
block stops the server, joins the thread and closes the socket.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn
import uvloop

from plait.control.api import create_app
from plait.control.config_service import ConfigService
from plait.control.store import MemoryStore

__all__ = ["TOKEN", "LiveApi"]

TOKEN = "test-admin-token"


class LiveApi:
    """The app under a real uvicorn server on a free port, in a background thread."""

    def __init__(self, **options: Any) -> None:
        self.store = MemoryStore()
        self.config = ConfigService(self.store)
        app = create_app(self.config, TOKEN, **options)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        try:
            self.loop.run_until_complete(self.server.serve(sockets=[self.sock]))
        finally:
            self.loop.close()

    def __enter__(self) -> LiveApi:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
