"""Byte tunnels: two connections spliced together (raw TCP, upgraded HTTP connections).

A `Tunnel` owns two `End`s, each an asyncio Protocol over one transport. Bytes read on one
end are written to the other as they come (no task, no per-chunk await). Backpressure: when
an end's write buffer passes its high-water mark, reading the other end pauses until it
drains, so a fast sender crosses the proxy holding about one read's worth of bytes.

Half close: a FIN read on one end becomes a FIN written on the other (`write_eof`); the
tunnel closes once both directions have ended, so a client that shuts down its sending side
still gets the whole response. asyncio's TLS transports cannot half close (`write_eof` is
not supported over TLS), so between two plait proxies a TCP tunnel is *framed* (ALPN
`plait-tcp`): each chunk travels as a 4-byte big-endian length and its payload, and a zero
length is the FIN. `FrameDecoder` is the sans-I/O half of that.

Idle timeout: a timer per tunnel (not per chunk) compares the byte counts with those of its
previous run; no progress for `idle_timeout` closes both ends.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

__all__ = ["END_FRAME", "End", "FrameDecoder", "FrameError", "Tunnel", "frame"]

_LENGTH = struct.Struct("!I")
END_FRAME = _LENGTH.pack(0)  # the FIN of a framed tunnel
WRITE_HIGH_WATER = 64 * 1024
# How often the byte counters reach the metrics while a long tunnel runs.
REPORT_INTERVAL = 5.0


def frame(data: bytes) -> bytes:
    return _LENGTH.pack(len(data))


class FrameError(ValueError):
    """Bytes after the FIN frame: the peer does not speak the framing."""


class FrameDecoder:
    """Length-prefixed frames -> payload pieces. A frame's payload is passed on as it
    arrives (never buffered whole); only a split 4-byte header is kept between feeds."""

    __slots__ = ("_header", "_remaining", "eof")

    def __init__(self) -> None:
        self._header = b""
        self._remaining = 0
        self.eof = False

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        view = memoryview(data)
        i, n = 0, len(data)
        while i < n:
            if self.eof:
                raise FrameError("data after the end of a framed tunnel")
            remaining = self._remaining
            if remaining:
                take = min(remaining, n - i)
                out.append(data[i : i + take] if take != n else data)
                self._remaining = remaining - take
                i += take
                continue
            need = 4 - len(self._header)
            header = self._header + bytes(view[i : i + need])
            i += need
            if len(header) < 4:
                self._header = header
                break
            self._header = b""
            length = _LENGTH.unpack(header)[0]
            if length == 0:
                self.eof = True
            self._remaining = length
        return out


class End(asyncio.Protocol):
    """One side of a tunnel. `framed`: the transport carries plait-tcp frames."""

    __slots__ = (
        "tunnel",
        "transport",
        "framed",
        "decoder",
        "read_bytes",
        "eof_read",
        "eof_sent",
        "closed",
        "peer",
        "pending",
        "paused",
        "ssl",
    )

    def __init__(self, tunnel: Tunnel, framed: bool = False) -> None:
        self.tunnel = tunnel
        self.transport: Any = None
        self.framed = framed
        self.decoder = FrameDecoder() if framed else None
        self.read_bytes = 0  # payload bytes read from this end
        self.eof_read = False
        self.eof_sent = False
        self.closed = False
        self.peer: End | None = None
        self.pending: list[bytes] = []  # read before the other end is connected
        self.paused = False
        self.ssl = False

    # asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH_WATER)  # type: ignore[attr-defined]
        self.ssl = transport.get_extra_info("ssl_object") is not None

    def data_received(self, data: bytes) -> None:
        decoder = self.decoder
        if decoder is not None:
            try:
                pieces = decoder.feed(data)
            except FrameError:
                self.tunnel.fail("UPE" if self is self.tunnel.upstream else "DPE")
                return
            for piece in pieces:
                self._forward(piece)
            if decoder.eof and not self.eof_read:
                self._ended()
            return
        self._forward(data)

    def _forward(self, data: bytes) -> None:
        self.read_bytes += len(data)
        peer = self.peer
        if peer is None:
            self.pending.append(data)
            self.pause()
            return
        peer.send(data)

    def eof_received(self) -> bool | None:
        if self.framed:
            # A framed peer ends with its FIN frame; a bare close before it is an abort.
            if not self.eof_read:
                self.tunnel.fail("UC" if self is self.tunnel.upstream else "DC")
            return None
        self._ended()
        # Keep our sending side open (a half-closed TCP connection); TLS cannot do that.
        return None if self.ssl else True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        tunnel = self.tunnel
        if self is tunnel.downstream or self is tunnel.upstream:  # not a failed connect
            tunnel.end_lost(self, exc)

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume()

    # the tunnel's side ---------------------------------------------------------------
    def _ended(self) -> None:
        self.eof_read = True
        if self.peer is not None:
            self.peer.send_eof()
        self.tunnel.direction_ended()

    def attach(self, peer: End) -> None:
        """Connect this end to its peer and pass on what was read meanwhile."""
        self.peer = peer
        pending, self.pending = self.pending, []
        for data in pending:
            peer.send(data)
        if self.eof_read:
            peer.send_eof()
        if not peer.transport.is_closing():
            self.resume()

    def send(self, data: bytes) -> None:
        if self.closed or self.eof_sent:
            return
        if self.framed:
            self.transport.writelines((_LENGTH.pack(len(data)), data))
        else:
            self.transport.write(data)

    def send_eof(self) -> None:
        if self.closed or self.eof_sent:
            return
        self.eof_sent = True
        transport = self.transport
        if self.framed:
            transport.write(END_FRAME)
        elif transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()  # TLS without framing (an upgraded HTTP connection)

    def pause(self) -> None:
        if not self.paused and not self.closed and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.abort()


class Tunnel:
    """Two ends spliced; `on_close(tunnel)` runs once when it ends (metrics, log, release).

    `downstream` is the end that was accepted, `upstream` the one this proxy connected (None
    until it is). `flags` says why it ended when that was not a clean close of both sides.
    """

    __slots__ = (
        "downstream",
        "upstream",
        "flags",
        "finished",
        "on_close",
        "on_progress",
        "idle_timeout",
        "timer",
        "loop",
        "_seen",
        "_idle_since",
        "reported",
    )

    def __init__(
        self,
        idle_timeout: float,
        on_close: Callable[[Tunnel], None],
        on_progress: Callable[[Tunnel], None] | None = None,
    ) -> None:
        self.downstream: End | None = None
        self.upstream: End | None = None
        self.flags = ""
        self.finished = False
        self.on_close = on_close
        self.on_progress = on_progress
        self.idle_timeout = idle_timeout
        self.loop = asyncio.get_running_loop()
        self._seen = -1
        self._idle_since = self.loop.time()
        self.reported = (0, 0)  # (sent, received) already given to the metrics
        self.timer: asyncio.TimerHandle | None = self.loop.call_later(
            min(idle_timeout, REPORT_INTERVAL), self._tick
        )

    def accept(self, transport: Any, framed: bool, first: bytes = b"") -> End:
        """Make the accepted connection (whose protocol is being replaced) the downstream end;
        `first` are the bytes already read from it."""
        end = End(self, framed)
        self.downstream = end
        transport.set_protocol(end)
        end.connection_made(transport)
        if first:
            end.data_received(first)
        return end

    def connected(self, upstream: End) -> None:
        """The upstream end is connected: splice the two."""
        down = self.downstream
        assert down is not None
        self.upstream = upstream
        upstream.attach(down)
        down.attach(upstream)

    @property
    def received(self) -> int:
        """Payload bytes read from the downstream (Istio's received: 'during request')."""
        return self.downstream.read_bytes if self.downstream is not None else 0

    @property
    def sent(self) -> int:
        """Payload bytes read from the upstream, i.e. sent to the downstream."""
        return self.upstream.read_bytes if self.upstream is not None else 0

    def direction_ended(self) -> None:
        down, up = self.downstream, self.upstream
        if down is not None and up is not None and down.eof_read and up.eof_read:
            down.close()
            up.close()

    def end_lost(self, end: End, exc: Exception | None) -> None:
        """One end's connection is gone: close the other (after what is queued for it);
        the tunnel is finished when both are."""
        if exc is not None and not self.flags:
            self.flags = "UC" if end is self.upstream else "DC"
        other = self.upstream if end is self.downstream else self.downstream
        if other is not None and not other.closed:
            other.close()
            return
        self.finish()

    def fail(self, flags: str) -> None:
        """Abort both ends (bad bytes, a peer gone mid-stream)."""
        if not self.flags:
            self.flags = flags
        for end in (self.downstream, self.upstream):
            if end is not None:
                end.abort()

    def close(self, flags: str = "") -> None:
        """End the tunnel from outside (idle timeout, shutdown, no upstream)."""
        if flags and not self.flags:
            self.flags = flags
        for end in (self.downstream, self.upstream):
            if end is not None:
                end.close()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.on_close(self)

    def _tick(self) -> None:
        self.timer = None
        if self.finished:
            return
        now = self.loop.time()
        progress = self.sent + self.received
        if progress != self._seen:
            self._seen = progress
            self._idle_since = now
            if self.on_progress is not None:
                self.on_progress(self)
        elif now - self._idle_since >= self.idle_timeout:
            self.close("IDLE")  # plait's flag; Envoy counts these in idle_timeout stats
            return
        self.timer = self.loop.call_later(min(self.idle_timeout, REPORT_INTERVAL), self._tick)
