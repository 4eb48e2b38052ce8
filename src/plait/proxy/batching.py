"""Write batching: while one socket event is handled, writes are collected per socket and
sent once at the end — one system call and, on TLS, one record, instead of one per piece
(the head, the body, the last chunk). Like TCP_CORK, but in user space and per event.

Only the two `data_received` callbacks open a batch; a write made anywhere else (a timer,
a connect task) goes out at once, so nothing can be left waiting for a flush.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

from plait.proto.h2.connection import H2Connection

__all__ = [
    "STREAMS_PER_WRITE",
    "Batchable",
    "BatchedWriter",
    "Connection",
    "MultiplexedWriter",
    "begin",
    "end",
    "is_active",
    "pending",
]

# A multiplexed (HTTP/2) connection sends what its streams queued at the end of the event-loop
# iteration, or sooner, once this many streams have queued their last frame. Why sooner: with
# 32 clients, one iteration moves dozens of streams, and if all of them leave in one write the
# peer proxy waits for the whole batch, then this proxy waits for the peer's: on two cores the
# pair sat 20 % idle. A write per 12 streams keeps the records few and the peer busy
# (bench/RESULTS.md, "Fourth round").
STREAMS_PER_WRITE: Final = 12


class Batchable(Protocol):
    out: list[bytes]

    def flush_out(self) -> None: ...


pending: list[Batchable] = []
_active = False


def is_active() -> bool:
    return _active


def begin() -> bool:
    """Open a batch; False if one is already open (the caller must then not close it)."""
    global _active
    if _active:
        return False
    _active = True
    return True


def end() -> None:
    """Send everything collected, one write per socket, and close the batch."""
    global _active
    _active = False
    if pending:
        batch = pending[:]
        pending.clear()
        for sock in batch:
            sock.flush_out()


class Connection:
    """Base of the proxy's connections: asyncio protocols by duck typing, not by subclassing
    `asyncio.Protocol` (an interpreted base would keep them from compiling as native
    classes: plait.native_core), so what that base gave them is here."""

    def eof_received(self) -> bool | None:
        """The peer half-closed: close our side too (what asyncio.Protocol's default does)."""
        return None


class BatchedWriter(Connection):
    """Base of an HTTP/1.1 connection (with `transport`, `closed` and `out`): writes join
    the open batch, or go out at once when none is open."""

    transport: asyncio.Transport | None
    closed: bool
    out: list[bytes]

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            return
        if _active:
            if not self.out:
                pending.append(self)
            self.out.append(data)
        else:
            self.transport.write(data)

    def flush_out(self) -> None:
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            if not self.closed and self.transport is not None:
                self.transport.write(data)


class MultiplexedWriter(Connection):
    """Base of an HTTP/2 connection (with `codec`, `transport`, `closed` and `loop`): what
    its streams queue in the codec leaves in one write at the end of the event-loop
    iteration, or once `STREAMS_PER_WRITE` streams have queued their last frame."""

    scheduled: bool  # a flush is due at the end of this iteration
    streams_unsent: int  # streams whose last frame is queued, not yet written
    codec: H2Connection
    transport: asyncio.Transport | None
    closed: bool
    loop: asyncio.AbstractEventLoop

    def kick(self, stream_sent: bool = False) -> None:
        """Send what the codec queued at the end of this event-loop iteration: the frames of
        every stream that moved in it (many sockets were ready at once) share one write and,
        over TLS, one record, instead of one each. `stream_sent`: a stream's last frame is
        queued; after `STREAMS_PER_WRITE` of them the frames so far go at once, so the peer
        starts on them while this proxy goes on."""
        if self.closed:
            return
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush_out)
        if stream_sent:
            self.streams_unsent += 1
            if self.streams_unsent >= STREAMS_PER_WRITE:
                self.write_queued()

    def flush_out(self) -> None:
        self.scheduled = False
        self.write_queued()

    def write_queued(self) -> None:
        self.streams_unsent = 0
        data = self.codec.data_to_send()
        if data and not self.closed and self.transport is not None:
            self.transport.write(data)
