"""The two sides of a `Stream`, as it sees them.

Downstream: the HTTP/1.1 client connection (`downstream.DownstreamConnection`), or one
stream of an HTTP/2 client connection (`h2_downstream.H2DownStream`). Upstream: an HTTP/1.1
connection to the endpoint (`upstream.UpstreamConnection`), or one stream of an HTTP/2
connection to it (`h2_upstream.H2UpStream`). A stream talks to either kind through the same
methods; what only one kind has, it reaches through a cast after checking `Stream.h2` /
`Stream.up_h2`.

Why mypyc traits: compiled (plait.native_core), a call through a trait is a native call
(about 20 ns), where the same call on a duck-typed `Any` is a generic lookup and call
(about 120 ns), and a stream makes a dozen of them per request. Run as Python, a trait is
an ordinary base class.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from typing import TYPE_CHECKING

from mypy_extensions import trait

if TYPE_CHECKING:
    from plait.proxy.downstream import Stream
    from plait.proxy.listener import ListenerContext

__all__ = ["Downstream", "Upstream"]


@trait
class Downstream:
    """Where a stream's request came from, and its response goes."""

    ctx: ListenerContext
    peer: str  # "address:port" of the client
    peer_id: str  # the client's SPIFFE ID, once mTLS proved it
    original_dst: bytes  # "vip:port" before an iptables redirect, when looked up
    transport: asyncio.Transport | None
    write_paused: bool
    closed: bool

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def pause_reading(self, bit: int) -> None: ...

    @abstractmethod
    def resume_reading(self, bit: int) -> None: ...

    @abstractmethod
    def stream_done(self, stream: Stream, keep_alive: bool) -> None: ...


@trait
class Upstream:
    """Where a stream's current try went."""

    reused: bool  # it served a request before: a stale socket may fail (replayable)
    got_bytes: bool  # the endpoint answered something on it

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def pause_reading(self) -> None: ...

    @abstractmethod
    def resume_reading(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...
