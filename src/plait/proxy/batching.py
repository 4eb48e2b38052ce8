"""Write batching: while one socket event is handled, writes are collected per socket and
sent once at the end — one system call and, on TLS, one record, instead of one per piece
(the head, the body, the last chunk). Like TCP_CORK, but in user space and per event.

Only the two `data_received` callbacks open a batch; a write made anywhere else (a timer,
a connect task) goes out at once, so nothing can be left waiting for a flush.
"""

from __future__ import annotations

from typing import Protocol

__all__ = [
    "STREAMS_PER_WRITE",
    "Batchable",
    "BatchedWriter",
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
STREAMS_PER_WRITE = 12


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


class BatchedWriter:
    """Mixin for a Protocol with `transport`, `closed` and `out`: writes join the open batch,
    or go out at once when none is open."""

    __slots__ = ()
    transport: object
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
            self.transport.write(data)  # type: ignore[attr-defined]

    def flush_out(self) -> None:
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            if not self.closed and self.transport is not None:
                self.transport.write(data)  # type: ignore[attr-defined]
