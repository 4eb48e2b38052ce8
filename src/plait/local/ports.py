"""Free TCP ports on one local address for `plait up`, each handed out at most once.

The kernel picks free ports when we bind port 0; the sockets are closed before returning, so a
port is only *probably* still free when its user binds it (another program could take it in
between: the usual, accepted race of this technique). Remembering what we gave keeps our own
processes from colliding.
"""

from __future__ import annotations

import socket

__all__ = ["PortAllocator"]


class PortAllocator:
    """Hands out distinct free ports on `host`; owns no socket beyond a call."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._given: set[int] = set()

    def allocate(self, n: int = 1) -> list[int]:
        """`n` distinct free ports never returned before by this allocator."""
        ports: list[int] = []
        sockets: list[socket.socket] = []
        try:
            while len(ports) < n:
                # Holding every socket open until the end stops the kernel repeating a port.
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind((self.host, 0))
                port = sock.getsockname()[1]
                if port not in self._given:
                    ports.append(port)
        finally:
            for sock in sockets:
                sock.close()
        self._given.update(ports)
        return ports

    def reserve(self, port: int) -> int:
        """Claim a fixed port (a user's choice); 0 allocates one. Raises OSError naming the
        port if something else listens there or it was handed out already."""
        if port == 0:
            return self.allocate()[0]
        if port in self._given:
            raise OSError(f"port {self.host}:{port} is already assigned")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # SO_REUSEADDR as a server would set it: a TIME_WAIT leftover is no conflict.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, port))
            except OSError as e:
                raise OSError(f"port {self.host}:{port} is not free: {e.strerror}") from e
        self._given.add(port)
        return port
