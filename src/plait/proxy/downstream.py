"""Downstream side: the HTTP/1.1 connection manager and the life of one stream.

`DownstreamConnection` is an asyncio Protocol (no reader task): `data_received` feeds the h1
codec and dispatches its events. A `Stream` is one request/response exchange; it routes the
request, picks a host, attaches a pooled upstream connection (connecting if none is idle),
pipes the body both ways with backpressure, and finishes with one access-log entry.

Backpressure: each socket's write buffer has an explicit high-water mark. When the upstream
socket is full we pause reading the downstream socket, and vice versa, so a 1 GiB body
crosses the proxy holding about one read's worth of bytes.

Failures become Envoy-style local replies with a response flag (see `local_reply`).
Pipelined requests wait in `queued` until the response before them is complete.
"""

from __future__ import annotations

import asyncio
import random
from time import monotonic
from typing import TYPE_CHECKING, Final, cast

from plait.proto import grpc
from plait.proto.errors import ProtocolError
from plait.proto.events import (
    CHUNKED,
    END_OF_STREAM,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Data,
    Headers,
    RequestHead,
    ResponseHead,
    Trailers,
)
from plait.proto.h1 import (
    HOP_BY_HOP,
    LAST_CHUNK,
    RequestReader,
    chunk,
    last_chunk,
    request_head_bytes,
    response_head_bytes,
)
from plait.proxy import batching, h2_upstream
from plait.proxy.balance import hash_key
from plait.proxy.filters.mirror import mirror_requests
from plait.proxy.filters.path_normalize import InvalidPath, normalize_path
from plait.proxy.filters.route_filters import edit_headers
from plait.proxy.local_reply import local_reply_bytes
from plait.proxy.resilience import (
    CONNECT_FAILURE,
    DEFAULT_RETRY_POLICY,
    REFUSED_STREAM,
    CircuitBreaker,
    Outcome,
    may_retry,
)
from plait.proxy.routing import Decision
from plait.proxy.sides import Downstream, Upstream
from plait.proxy.trailers import accepts_trailers
from plait.proxy.trailers import clean as clean_trailers
from plait.proxy.upgrade import keep_upgrade, upgraded
from plait.proxy.upstream import WRITE_HIGH_WATER, Host, UpstreamConnection
from plait.telemetry.tracing import Span, extract, inject

if TYPE_CHECKING:
    from plait.proxy.h2_downstream import H2DownStream
    from plait.proxy.h2_upstream import H2UpStream, H2UpstreamConnection
    from plait.proxy.listener import ListenerContext
    from plait.proxy.upstream import ClusterRuntime

__all__ = ["DownstreamConnection", "Stream"]

# Request bodies up to this size are kept so a stale pooled connection can be retried.
REPLAY_LIMIT: Final = 64 * 1024
# Reasons to stop reading the downstream socket (a bit each; read resumes when none is left).
PAUSE_PIPELINE: Final = 1  # a later request waits for the current response
PAUSE_UPSTREAM: Final = 2  # the upstream socket's write buffer is full
PAUSE_CONNECTING: Final = 4  # body bytes wait for an upstream connection
# 8: PAUSE_UPGRADE (plait.proxy.upgrade), bytes after an upgrade request wait for its answer
# RFC 9110 section 9.2.2: methods a client may repeat without changing the outcome.
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# Retry back-off jitter (full jitter); a module-level generator, seeded by the OS.
_RNG: Final = random.Random()


OVERLOADED: Final = b"x-plait-overloaded: true\r\n"
DEADLINE: Final = b"x-plait-deadline"
GRPC_TIMEOUT: Final = b"grpc-timeout"
# An HTTP/1.1 request carried over the HTTP/2 connection between proxies (h2UpgradePolicy).
UPGRADED: Final = b"x-plait-h2-upgraded"
ATTEMPT: Final = b"x-plait-attempt-count"
# The start of the HTTP/2 client preface: an h2c connection with prior knowledge.
H2_PREFACE_START: Final = b"PRI * HTTP/2.0\r\n"
_H2_PROTOCOLS: Final = ("http2", "grpc", "h2c", "h2")


def _deadline_ms(headers: Headers) -> int:
    """The time budget a previous hop passed on (ms), or 0 for none (or a malformed one)."""
    for name, value in headers:
        if name == DEADLINE:
            return int(value) if value.isdigit() and len(value) < 10 else 0
    return 0


# A peer proxy's local replies that prove the request never reached its app.
_NEVER_SENT: Final = (b"UF", b"UH")


def _grpc_deadline(forward: Headers, deadline_ms: int) -> tuple[Headers, int]:
    """gRPC's own deadline (`grpc-timeout`) joins the budget; the next hop gets what is left
    of the smaller one, in both headers (issue 4, deadline propagation)."""
    grpc_ms = 0
    for name, value in forward:
        if name == GRPC_TIMEOUT:
            grpc_ms = grpc.parse_timeout(value) or 0
            break
    if grpc_ms and (not deadline_ms or grpc_ms < deadline_ms):
        deadline_ms = grpc_ms
    if deadline_ms:
        # The next hop gets a little less (1/20, 2-50 ms): it times out first and says so
        # itself (504 UT, DEADLINE_EXCEEDED) rather than being cancelled by us a moment later.
        margin = min(max(deadline_ms // 20, 2), 50)
        forward = [f for f in forward if f[0] != GRPC_TIMEOUT]
        forward.append((GRPC_TIMEOUT, grpc.format_timeout(max(deadline_ms - margin, 1))))
    return forward, deadline_ms


def _grpc_status(headers: Headers) -> int:
    for name, value in headers:
        if name == b"grpc-status":
            return int(value) if value.isdigit() and len(value) < 4 else -1
    return -1


def _peer_never_sent(headers: Headers) -> bool:
    for name, value in headers:
        if name == b"x-plait-response-flags":
            return value in _NEVER_SENT
    return False


def _pending(breaker: CircuitBreaker) -> bool:
    """Take a pending-request slot, giving back the connection slot if there is none."""
    if breaker.try_acquire_pending():
        return True
    breaker.release_connection()
    return False


# RFC 9562 section 5.4: version 4 in bits 48-51, variant 0b10 in bits 64-65 (from the left).
_UUID_CLEAR: Final = ~((0xF << 76) | (0x3 << 62))
_UUID_SET: Final = (0x4 << 76) | (0x2 << 62)
_getrandbits: Final = _RNG.getrandbits


def _request_id() -> bytes:
    """A random (version 4) UUID, built without the uuid module's overhead (and without a
    system call: request ids need uniqueness, not secrecy); ~0.9 us."""
    h = (_getrandbits(128) & _UUID_CLEAR | _UUID_SET).to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()


class DownstreamConnection(batching.BatchedWriter, Downstream):
    """One client connection on a listener; owns at most one active stream at a time."""

    def __init__(self, ctx: ListenerContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader(ctx.settings.max_head_bytes, ctx.settings.max_headers)
        self.stream: Stream | None = None
        self.queued: list[object] = []
        self.pause_bits = 0
        self.deadline = 0.0
        self.deadline_kind = 0  # 1: request head due (408), 2: idle keep-alive (close)
        self.closed = False
        self.peer = ""
        self.write_paused = False
        self.deferred_error: ProtocolError | None = None
        self.peer_id = ""  # the caller's SPIFFE ID, once mTLS proved it
        self.out: list[bytes] = []  # writes batched during one socket event (see batching)
        # "vip:port" before an iptables redirect (transparent capture): set by the detecting
        # acceptor when it looked, else looked up on a route miss (see Stream.start).
        self.original_dst = b""

    # asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER)  # type: ignore[union-attr]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else ""
        ctx = self.ctx
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            peer_id = ctx.peer_identity(ssl_object)
            if peer_id is None:
                self.closed = True
                self.transport.abort()  # type: ignore[union-attr]
                return
            self.peer_id = peer_id
            if ssl_object.selected_alpn_protocol() == "h2":
                self.hand_over_h2(None)
                return
        ctx.connections.add(self)
        ctx.stats.cx_total += 1
        # A new connection must send a request head within the header timeout (slowloris).
        self.deadline = ctx.loop.time() + ctx.settings.header_timeout
        self.deadline_kind = 1

    def data_received(self, data: bytes) -> None:
        started = batching.begin()
        try:
            self._received(data)
        finally:
            if started:
                batching.end()

    def _received(self, data: bytes) -> None:
        if self.deadline_kind == 1 and data[:16] == H2_PREFACE_START and self.stream is None:
            # h2c with prior knowledge (RFC 9113 section 3.3), when no detection ran before us.
            self.ctx.connections.discard(self)
            self.ctx.stats.cx_total -= 1
            self.hand_over_h2(data)
            return
        if self.stream is None and self.deadline_kind == 2:
            # First bytes of a new request on an idle connection: the head is now due.
            self.deadline = self.ctx.loop.time() + self.ctx.settings.header_timeout
            self.deadline_kind = 1
        try:
            events = self.reader.feed(data)
        except ProtocolError as exc:
            # Answer the requests completed before the bad bytes first (in order); then
            # refuse the bad one and close (see stream_done).
            self.deferred_error = exc
            self.pause_reading(PAUSE_PIPELINE)
            events = exc.events
        if self.queued:
            self.queued.extend(events)
        else:
            self.dispatch(events)
        error = self.deferred_error
        if error is not None and not self.closed:
            stream = self.stream
            if stream is None:
                self.refuse(error)
            elif not stream.request_complete:
                stream.request_broken(error)  # its body can never complete: do not wait for it

    def hand_over_h2(self, data: bytes | None) -> None:
        """This connection speaks HTTP/2: its transport goes to an HTTP/2 protocol."""
        transport = self.transport
        assert transport is not None
        self.closed = True
        h2 = self.ctx.h2_protocol_factory()
        h2.peer_id = self.peer_id
        h2.original_dst = self.original_dst
        transport.set_protocol(h2)  # type: ignore[arg-type]  # a protocol by duck typing
        h2.connection_made(transport)
        if data:
            h2.data_received(data)

    def drain(self) -> None:
        """Drain: an idle keep-alive connection closes now; a busy one after its response."""
        if self.stream is None:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        stream = self.stream
        if stream is not None:
            self.stream = None
            stream.downstream_closed()

    def pause_writing(self) -> None:
        self.write_paused = True
        stream = self.stream
        if stream is not None and stream.upstream is not None:
            stream.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        stream = self.stream
        if stream is not None and stream.upstream is not None:
            stream.upstream.resume_reading()

    # dispatch ------------------------------------------------------------------------
    def dispatch(self, events: list[object]) -> None:
        for i, event in enumerate(events):
            stream = self.stream
            if type(event) is RequestHead:
                if stream is not None:
                    # Pipelined: wait until the response before it has been written.
                    self.queued = events[i:]
                    self.pause_reading(PAUSE_PIPELINE)
                    return
                self.deadline_kind = 0
                self.stream = Stream(self, event)
                self.stream.start()
            elif stream is not None:
                if type(event) is Data:
                    stream.request_data(event.data)
                elif event is END_OF_STREAM:
                    stream.request_end()
                elif type(event) is Trailers:  # a chunked body's; END_OF_STREAM follows
                    stream.request_trailers(event.headers)
            if self.closed:
                return

    def stream_done(self, stream: Stream, keep_alive: bool) -> None:
        """Called once per stream when both request and response are complete."""
        if self.stream is not stream:
            return
        self.stream = None
        if self.closed:
            return
        ctx = self.ctx
        if not keep_alive or ctx.draining:
            # Draining: a response whose head went out before the drain began carried no
            # `Connection: close`; closing now beats a request racing the final close.
            self.close()
            return
        self.deadline = ctx.loop.time() + ctx.settings.idle_timeout
        self.deadline_kind = 2
        if self.queued:
            queued, self.queued = self.queued, []
            self.dispatch(queued)
        if self.deferred_error is not None:
            # Bytes after the requests answered so far were refused: say so once they are done.
            if self.stream is None and not self.closed:
                self.refuse(self.deferred_error)
            return
        if not self.queued:
            self.resume_reading(PAUSE_PIPELINE)

    # helpers -------------------------------------------------------------------------
    def refuse(self, exc: ProtocolError) -> None:
        """A request we will not parse further: local reply, then close (RFC 9112 s. 9.6)."""
        ctx = self.ctx
        ctx.stats.downstream_protocol_errors += 1
        self.write(local_reply_bytes(exc.status, "DPE", exc.reason.encode(), close=True))
        ctx.log_refusal(self, exc.status, exc.reason)
        self.close()

    def on_deadline(self, now: float) -> None:
        """The ticker calls this when `deadline` has passed."""
        if self.deadline_kind == 1:
            self.ctx.stats.downstream_rq_timeout += 1
            self.write(
                local_reply_bytes(408, "DPE", b"request head not received in time", close=True)
            )
            self.ctx.log_refusal(self, 408, "request header timeout")
        self.close()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.flush_out()  # a reply written in this batch goes out before the close
            self.closed = True
            self.transport.close()

    def pause_reading(self, bit: int) -> None:
        if not self.pause_bits and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.pause_bits |= bit

    def resume_reading(self, bit: int) -> None:
        if not self.pause_bits & bit:
            return
        self.pause_bits &= ~bit
        if not self.pause_bits and self.transport is not None and not self.closed:
            self.transport.resume_reading()


class Stream:
    """One request/response exchange, from head received to access-log entry written."""

    def __init__(self, down: Downstream, head: RequestHead) -> None:
        # `down` is the HTTP/1.1 connection, or an HTTP/2 stream handle (`h2` is then True):
        # the methods both have are plait.proxy.sides.Downstream's.
        self.down: Downstream = down
        self.ctx: ListenerContext = down.ctx  # typed: the compiled stream reaches it natively
        self.head = head
        self.method = head.method
        self.authority = b""
        self.path = b""
        self.cluster: ClusterRuntime | None = None
        self.host: Host | None = None
        self.upstream: Upstream | None = None  # the current try's connection or stream handle
        self.tried: tuple[Host, ...] = ()
        self.up_head = b""
        self.pending_body: list[bytes] = []
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        self.request_complete = head.framing == NO_BODY
        self.response_started = False
        self.response_complete = False
        self.response_chunked = False
        self.down_keep_alive = head.keep_alive
        self.up_keep_alive = True
        self.status = 0
        self.flags = ""
        # monotonic(), not loop.time(): uvloop's clock is cached at millisecond resolution.
        self.started = monotonic()
        self.bytes_received = 0
        self.bytes_sent = 0
        self.timer: asyncio.TimerHandle | None = None
        self.request_id = b""
        self.route = ""
        self.finished = False
        self.connecting = False
        self.response_framing = NO_BODY
        self.span: Span | None = None
        self.try_started = 0.0  # when the current attempt was sent (balancer latency)
        self.breaker_held = False  # holds one of the cluster's max_requests slots
        self.decision: Decision | None = None
        self.try_timer: asyncio.TimerHandle | None = None  # timeouts.backendRequest, back-off
        self.retries_done = 0
        self.retry_slot = False  # holds one of the cluster's maxRetries slots
        self.hash_key: bytes | None = None  # consistent hashing (RING_HASH) key
        self.h2 = head.version == b"2"  # the request came over HTTP/2
        self.up_h2 = False  # ... and goes upstream over HTTP/2 (decided once routed)
        self.up_chunked = head.framing == CHUNKED  # body pieces go upstream chunked
        self.up_fields: Headers = []  # the upstream request's fields (HTTP/2 upstreams)
        self.trailers: Headers | None = None  # the response's trailers
        self.req_trailers: Headers | None = None  # the request's, to end its upstream body
        self.grpc = False  # a gRPC call (HTTP/2 only): gRPC-shaped local replies

    # request side --------------------------------------------------------------------
    def start(self) -> None:
        down = self.down
        ctx = self.ctx
        ctx.stats.rq_total += 1
        head = self.head
        target = head.target
        host_header = b""
        forward: Headers = []
        connection_tokens: tuple[bytes, ...] = ()
        request_id = b""
        for name, value in head.headers:
            if name == b"host":
                host_header = value
            elif name == b"connection":
                if value != b"keep-alive":  # the common value: hop-by-hop already
                    connection_tokens += tuple(t.strip().lower() for t in value.split(b","))
            elif name == b"x-request-id":
                request_id = value
        if target[:1] == b"/":
            self.authority, self.path = host_header, target
        elif target[:7].lower() == b"http://":
            # Absolute form (a client using us as HTTP_PROXY): the URL's authority wins
            # over Host (RFC 9112 section 3.2.2) and origin form goes upstream.
            # The authority ends at the first "/" or "?" (RFC 3986 section 3.2); an empty
            # path is "/" in origin form (RFC 9112 section 3.2.1).
            rest = target[7:]
            end = len(rest)
            for sep in (b"/", b"?"):
                i = rest.find(sep)
                if 0 <= i < end:
                    end = i
            path = rest[end:]
            self.authority, self.path = rest[:end], path if path[:1] == b"/" else b"/" + path
            host_header = self.authority
        else:
            self.local_reply(400, "DPE", b"unsupported request target")
            return
        if self.h2:
            for name, value in head.headers:
                if name == b"content-type":
                    self.grpc = grpc.is_grpc(value)
                    break
        if not host_header and head.version == b"1.1":
            self.local_reply(400, "DPE", b"missing Host header")  # RFC 9112 section 3.2
            return
        drop = ctx.drop_headers.union(connection_tokens) if connection_tokens else ctx.drop_headers
        te = False
        for name, value in head.headers:
            if name in drop or name == b"host" or name == b"content-length":
                te = te or name == b"te"  # hop-by-hop; said again to a peer proxy (below)
                continue
            forward.append((name, value))
        if head.upgrade:
            keep_upgrade(self, forward)  # WebSocket & co (plait.proxy.upgrade)
        if not request_id:
            request_id = _request_id()
            forward.append((b"x-request-id", request_id))
        self.request_id = request_id
        forward.insert(0, (b"host", host_header))
        if head.framing == LENGTH:
            for name, value in head.headers:
                if name == b"content-length":
                    forward.append((b"content-length", value))
                    break
        elif head.framing == CHUNKED:
            forward.append((b"transfer-encoding", b"chunked"))
        ctx.add_request_headers(self, forward)
        tracer = ctx.tracer
        if tracer is not None:
            # Continue the caller's trace (W3C or B3) or start one; pass ours on downstream.
            self.span = span = tracer.start_span(
                extract(head.headers), ctx.span_kind, self.authority, self.path, head.method
            )
            inject(forward, span)
        query = self.path.find(b"?")
        path = self.path if query < 0 else self.path[:query]
        policy = ctx.inbound_policy()
        if policy is not None:
            # Inbound security: match and forward the normalized path (Istio's
            # DECODE_AND_MERGE_SLASHES), then JWT authentication and authorization.
            try:
                path = normalize_path(path)
            except InvalidPath as exc:
                self.local_reply(400, "DPE", str(exc).encode())
                return
            self.path = path if query < 0 else path + self.path[query:]
            if policy.enabled:
                verdict = policy.check(
                    head.method,
                    self.authority,
                    path,
                    self.path[len(path) + 1 :] if query >= 0 else b"",
                    forward,
                    down.peer_id,
                    down.peer.rpartition(":")[0],
                    request_id,
                )
                if verdict is not None:
                    if verdict[1] == "RBAC" and ctx.metrics is not None:
                        ctx.metrics.metrics.authz_denied.inc()
                    self.local_reply(*verdict)
                    return
        query_bytes = self.path[query + 1 :] if query >= 0 else b""
        routed = ctx.route(self.authority, head.method, path, forward, query_bytes)
        if routed is None and ctx.captures and down.transport is not None:
            # Captured (iptables REDIRECT): a Host naming no service (missing, an IP) routes
            # by the VIP the app dialled. Asked only on a miss: the syscall costs ~8 us.
            original = down.original_dst or ctx.original_authority(down.transport)
            down.original_dst = original
            if original:
                routed = ctx.route(original, head.method, path, forward, query_bytes)
        if routed is None:
            self.local_reply(404, "NR")
            return
        cluster, decision = routed
        self.route = decision.route
        self.decision = decision
        if cluster is not None and (self.h2 or cluster.h2_check or not cluster.protocol):
            self.up_h2 = self.wants_h2(cluster)
            self.up_chunked = self.up_chunked and not self.up_h2
        if te and not self.up_h2 and cluster is not None and accepts_trailers(head.headers):
            hosts = cluster.hosts
            if hosts and hosts[0].identity:
                # The next proxy passes a response's trailers to us only if we ask for them
                # as its client does (RFC 9110 10.1.4); an app never sees our TE.
                forward.append((b"te", b"trailers"))
        if decision.request_headers:
            forward = edit_headers(forward, decision.request_headers)
        if decision.authority is not None:
            forward[0] = (b"host", decision.authority)  # URLRewrite hostname
        if decision.path is not None:
            self.path = decision.path  # URLRewrite path (query included)
        if decision.delay_ms:
            # Fault injection: wait first; as in Envoy the request timeout starts after it.
            self.flags = "DI"
            self.timer = ctx.loop.call_later(
                decision.delay_ms / 1000, self.send_routed, cluster, decision, forward
            )
            return
        self.send_routed(cluster, decision, forward)

    def wants_h2(self, cluster: ClusterRuntime) -> bool:
        """Whether the request goes upstream over HTTP/2 (issue 8 items 1-2)."""
        ctx = self.ctx
        inbound = ctx.kind == "inbound"
        if not cluster.protocol:  # once per cluster and snapshot
            cluster.resolve_protocol(ctx.app_protocol() if inbound else "")
        if self.head.upgrade:
            return False  # WebSocket and friends: HTTP/1.1 between proxies (then tunnelled)
        declared = cluster.protocol
        if not inbound:
            hosts = cluster.hosts
            if (
                hosts
                and hosts[0].identity
                and ctx.certs is not None
                and cluster.policy.tls_mode in ("AUTO", "ISTIO_MUTUAL")
            ):
                # Another proxy, over mTLS: HTTP/2 requests always, HTTP/1.1 if upgraded (or,
                # by default, if others to the cluster are in flight: it joins them).
                return (
                    self.h2
                    or cluster.h2_upgrade
                    or (cluster.h2_multiplex and cluster.breaker.requests > 0)
                )
        if declared in _H2_PROTOCOLS:
            return True  # the app says it speaks HTTP/2
        if declared != "-":
            return False  # it declared HTTP/1.1 (or something else): downgrade
        if inbound:
            # As the request came to the mesh (an upgraded HTTP/1.1 request is downgraded).
            return self.h2 and not any(name == UPGRADED for name, _ in self.head.headers)
        return False  # an app outside the mesh that declared nothing: HTTP/1.1 is the safe bet

    def send_routed(
        self, cluster: ClusterRuntime | None, decision: Decision, forward: Headers
    ) -> None:
        """Send the routed request upstream (or answer it locally, as the route says)."""
        self.timer = None
        if self.finished:
            return
        if cluster is not None:
            self.cluster = cluster  # metrics and logs name the routed service, replies too
        reply = decision.reply
        if reply is not None:
            # Redirect (DR), fault abort (FI), or a rule without live backends (NC).
            extra = b"".join(b"%b: %b\r\n" % field for field in reply.headers)
            self.local_reply(reply.status, reply.flag, reply.body, extra=extra)
            return
        if cluster is None:
            self.local_reply(503, "UH")
            return
        ctx = self.ctx
        self.cluster = cluster
        cluster.budget.deposit()  # every request earns retry budget (Linkerd's semantics)
        if not cluster.breaker.try_acquire_request():
            self.overflow()
            return
        self.breaker_held = True
        lb = cluster.policy.load_balancer
        if lb.kind == "RING_HASH":
            query = self.path.partition(b"?")[2]
            self.hash_key = hash_key(lb, forward, self.down.peer.rpartition(":")[0], query)
        # Deadline propagation (plait's): the time left travels as `x-plait-deadline` (ms,
        # relative: no clock skew), and no hop waits longer than what it was given.
        deadline_ms = _deadline_ms(forward)
        if decision.timeout_ms and (not deadline_ms or decision.timeout_ms < deadline_ms):
            deadline_ms = decision.timeout_ms
            forward = [f for f in forward if f[0] != DEADLINE]
            forward.append((DEADLINE, b"%d" % deadline_ms))
        if self.grpc:
            forward, deadline_ms = _grpc_deadline(forward, deadline_ms)
        if self.up_h2:
            if not self.h2:
                forward.append((UPGRADED, b"1"))  # the server side downgrades it again
            elif self.grpc:
                forward.append((b"te", b"trailers"))  # gRPC servers require it
            self.up_fields = forward
        else:
            self.up_head = request_head_bytes(self.method, self.path, forward)
        if decision.mirrors:
            body = (
                b"".join(self.replay) if self.request_complete and self.replay is not None else None
            )
            mirror_requests(ctx, decision.mirrors, self.method, self.path, forward, body)
        if deadline_ms:
            self.timer = ctx.loop.call_later(deadline_ms / 1000, self.on_timeout)
        self.pick_and_send()

    def pick_and_send(self, fresh: bool = False) -> None:
        """Pick a host and send on an idle pooled connection, or connect (`fresh`: always)."""
        cluster = self.cluster
        assert cluster is not None
        host = cluster.pick(self.tried, self.hash_key)
        if host is None:
            self.local_reply(503, "UH")
            return
        conn: UpstreamConnection | H2UpstreamConnection | None = None
        if not fresh:
            conn = host.take_h2() if self.up_h2 else host.take_idle()
        breaker = cluster.breaker
        # Another stream is opening an HTTP/2 connection to the host: wait for it (holding a
        # pending-request slot, as a connecting stream does, but no connection slot).
        waits = conn is None and self.up_h2 and not fresh and host.h2_waiting is not None
        if waits:
            if not breaker.try_acquire_pending():
                self.overflow()
                return
        elif conn is None and not (breaker.try_acquire_connection() and _pending(breaker)):
            # A new connection would pass maxConnections / http1MaxPendingRequests: refuse
            # at once rather than queue (Envoy's circuit breaking).
            self.overflow()
            return
        self.host = host
        self.tried += (host,)
        host.active += 1
        host.rq_total += 1
        cluster.balancer.on_start(host)
        self.try_started = monotonic()
        if conn is not None:
            if self.up_h2:
                self.attach_h2(conn)  # type: ignore[arg-type]
            else:
                self.attach(conn)  # type: ignore[arg-type]
            return
        self.connecting = True
        ctx = self.ctx
        if not self.request_complete:
            self.down.pause_reading(PAUSE_CONNECTING)
        if waits:
            host.h2_waiting.append(self)  # type: ignore[union-attr]
            return
        opens_h2 = self.up_h2 and host.h2_waiting is None
        if opens_h2:
            host.h2_waiting = []  # later streams to the host wait for this connection
        ctx.spawn(self.connect(host, opens_h2))

    def h2_ready(self, conn: H2UpstreamConnection | None) -> None:
        """The connection this stream waited for is up (None: it failed)."""
        assert self.cluster is not None
        self.cluster.breaker.release_pending()
        if conn is not None and conn.available() and not self.finished:
            self.connecting = False
            self.attach_h2(conn)
            return
        self.unconnected()

    def end_try(self) -> None:
        """The current try is over without an answer: its host and the balancer know."""
        host = self.host
        if host is not None:
            self.host = None
            host.active -= 1
            if self.try_started and self.cluster is not None:
                self.cluster.balancer.on_finish(host, None, monotonic())
        self.try_started = 0.0

    def unconnected(self) -> None:
        """The try never got a connection: retry as the policy allows (nothing was written,
        so whatever the method, RFC 9110 section 9.2.2), else answer 503 UF."""
        self.connecting = False
        self.end_try()
        if self.finished:
            return
        outcome = Outcome(failure=CONNECT_FAILURE, reached_upstream=False, replayable=True)
        if not self.schedule_retry(outcome):
            self.local_reply(503, "UF")

    async def connect(self, host: Host, opens_h2: bool = False) -> None:
        try:
            await self._connect(host)
        finally:
            if opens_h2:
                waiting, host.h2_waiting = host.h2_waiting or [], None
                for stream in waiting:
                    # The new connection (None if it failed; another if it is full).
                    stream.h2_ready(host.take_h2())

    async def _connect(self, host: Host) -> None:
        ctx = self.ctx
        cluster = self.cluster
        assert cluster is not None
        breaker = cluster.breaker
        conn: UpstreamConnection | H2UpstreamConnection
        try:
            tls, expected, sni = ctx.upstream_tls(host, cluster)
            if self.up_h2:
                tls = h2_upstream.h2_client_context(ctx.certs, tls)
                conn = await host.open_h2_connection(
                    ctx.settings.connect_timeout, tls, expected, sni
                )
            else:
                conn = await host.open_connection(ctx.settings.connect_timeout, tls, expected, sni)
        except (OSError, TimeoutError):
            breaker.release_pending()
            breaker.release_connection()
            if cluster.detector is not None:
                cluster.detector.record(host, None, None, monotonic())  # a gateway error
            if not self.finished:
                ctx.stats.upstream_cx_connect_fail += 1
            self.unconnected()
            return
        breaker.release_pending()
        conn.breaker = breaker  # its connection slot is released when it closes
        self.connecting = False
        if self.finished:
            host.active -= 1
            cluster.balancer.on_finish(host, None, monotonic())
            if not self.up_h2:
                host.put_idle(conn, ctx.loop.time())  # type: ignore[arg-type]
            return
        if self.up_h2:
            self.attach_h2(conn)  # type: ignore[arg-type]
        else:
            self.attach(conn)  # type: ignore[arg-type]

    def attach(self, conn: UpstreamConnection) -> None:
        decision = self.decision
        if decision is not None and decision.backend_timeout_ms:
            self.try_timer = self.ctx.loop.call_later(
                decision.backend_timeout_ms / 1000, self.on_timeout
            )
        self.upstream = conn
        conn.stream = self
        conn.reader.expect(self.method)
        pending = self.pending_body
        if pending:
            self.pending_body = []
            conn.write(self.up_head + b"".join(pending))
        else:
            conn.write(self.up_head)
        if self.down.write_paused:
            conn.pause_reading()
        self.down.resume_reading(PAUSE_CONNECTING)

    def attach_h2(self, conn: H2UpstreamConnection) -> None:
        """Send the request on a new stream of a multiplexed HTTP/2 connection."""
        decision = self.decision
        if decision is not None and decision.backend_timeout_ms:
            self.try_timer = self.ctx.loop.call_later(
                decision.backend_timeout_ms / 1000, self.on_timeout
            )
        pending = self.pending_body
        self.pending_body = []
        trailers = self.req_trailers
        end = self.request_complete and not pending and trailers is None
        head = RequestHead(self.method, self.path, self.up_fields)
        cluster = self.cluster
        tls = cluster is not None and self.host is not None and self.host.identity
        handle = conn.open_stream(self, head, end, b"https" if tls else b"http")
        if handle is None:
            self.local_reply(503, "UF")
            return
        self.upstream = handle
        for piece in pending:
            handle.write(piece)
        if self.request_complete and not end:
            handle.end(trailers)
        if self.down.write_paused:
            handle.pause_reading()
        self.down.resume_reading(PAUSE_CONNECTING)

    def request_data(self, data: bytes) -> None:
        self.bytes_received += len(data)
        if self.finished:
            return
        piece = chunk(data) if self.up_chunked else data
        if self.replay is not None:
            self.replay_size += len(piece)
            if self.replay_size <= REPLAY_LIMIT:
                self.replay.append(piece)
            else:
                self.replay = None
        upstream = self.upstream
        if upstream is not None:
            upstream.write(piece)
        else:
            self.pending_body.append(piece)

    def request_trailers(self, fields: Headers) -> None:
        """The request's trailer section (END_OF_STREAM follows): kept, replays included, for
        an upstream leg that can carry it (HTTP/2, or chunked HTTP/1.1); else dropped."""
        if self.up_chunked or self.up_h2:
            self.req_trailers = clean_trailers(fields, self.ctx.drop_headers)

    def request_end(self) -> None:
        self.request_complete = True
        if self.up_chunked and not self.finished:
            end = LAST_CHUNK if self.req_trailers is None else last_chunk(self.req_trailers)
            if self.replay is not None:
                self.replay.append(end)
            upstream = self.upstream
            if upstream is not None:
                upstream.write(end)
            else:
                self.pending_body.append(end)
        elif self.up_h2 and not self.finished and self.upstream is not None:
            cast("H2UpStream", self.upstream).end(self.req_trailers)
        if self.response_complete or self.finished:
            self.done()

    # response side -------------------------------------------------------------------
    def on_upstream_event(self, conn: Upstream, event: object) -> None:
        down = self.down
        kind = type(event)
        if kind is Data:
            data = cast(Data, event).data
            self.bytes_sent += len(data)
            down.write(chunk(data) if self.response_chunked else data)
        elif kind is ResponseHead:
            self.response_head(event)  # type: ignore[arg-type]
        elif event is END_OF_STREAM and self.response_started:
            self.response_end()
        elif kind is Trailers:
            self.trailers = clean_trailers(cast(Trailers, event).headers)

    def response_head(self, head: ResponseHead) -> None:
        status = head.status
        down = self.down
        if status < 200:
            if status == 101 and self.head.upgrade:
                upgraded(self, head)  # the connections become a byte tunnel
                return
            if status == 100 and self.head.version == b"1.1":
                down.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return  # interim responses: wait for the final one
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        self.status = status
        cluster, host = self.cluster, self.host
        if cluster is not None and host is not None:
            now = monotonic()
            latency = now - self.try_started
            cluster.balancer.on_finish(host, latency, now)
            self.try_started = 0.0
            if cluster.detector is not None:
                cluster.detector.record(host, status, latency, now)
            decision = self.decision
            outcome = None
            if status == 503 and host.identity and _peer_never_sent(head.headers):
                # The callee's proxy says it never reached its app (UF/UH): for the mesh this
                # is a connect failure, safe to retry on another endpoint whatever the method.
                outcome = Outcome(
                    failure=CONNECT_FAILURE,
                    reached_upstream=False,
                    replayable=self.replay is not None,
                )
            elif decision is not None and status in decision.retry.statuses:
                outcome = Outcome(
                    status=status,
                    idempotent=self.method in IDEMPOTENT,
                    replayable=self.replay is not None,
                )
            elif self.grpc and head.framing == NO_BODY and decision is not None:
                # A trailers-only gRPC answer whose grpc-status the route retries on.
                retry_on = decision.retry.grpc_statuses
                code = _grpc_status(head.headers) if retry_on else -1
                if code in retry_on:
                    outcome = Outcome(
                        status=status, grpc_status=code, replayable=self.replay is not None
                    )
            if outcome is not None and self.schedule_retry(outcome):
                # This try's response is dropped unseen; the next try answers instead.
                conn = self.upstream
                self.upstream = None
                if conn is not None:
                    conn.abort()
                host.active -= 1
                self.host = None
                self.status = 0
                return
        self.response_started = True
        self.up_keep_alive = head.keep_alive
        headers: Headers = []
        connection_tokens: tuple[bytes, ...] = ()
        for name, value in head.headers:
            if name == b"connection" and value != b"keep-alive":  # that one is hop-by-hop
                connection_tokens += tuple(t.strip().lower() for t in value.split(b","))
        drop = HOP_BY_HOP.union(connection_tokens) if connection_tokens else HOP_BY_HOP
        for item in head.headers:
            if item[0] not in drop:
                headers.append(item)
        decision = self.decision
        if decision is not None and decision.response_headers:
            headers = edit_headers(headers, decision.response_headers)
        framing = self.response_framing = head.framing
        if self.h2:
            if not self.request_complete:
                self.up_keep_alive = False
            cast("H2DownStream", down).send_head(status, headers, framing == NO_BODY)
            if framing == NO_BODY:
                self.response_end()
            return
        if (
            self.up_h2
            and framing == NO_BODY
            and status not in (204, 304)
            and self.method != b"HEAD"
            and not any(n == b"content-length" for n, _ in headers)
        ):
            headers.append((b"content-length", b"0"))  # HTTP/1.1 needs the length said
        client_11 = self.head.version == b"1.1"
        if framing in (CHUNKED, UNTIL_CLOSE):
            if client_11:
                headers.append((b"transfer-encoding", b"chunked"))
                self.response_chunked = True
            else:
                self.down_keep_alive = False  # HTTP/1.0 client: the close delimits the body
        if not self.request_complete:
            # The upstream answered before the body was sent (a 413, say): the rest of the
            # request body cannot be skipped safely on a reused connection.
            self.down_keep_alive = False
            self.up_keep_alive = False
        ctx = self.ctx
        if not self.down_keep_alive or ctx.draining:
            self.down_keep_alive = False
            headers.append((b"connection", b"close"))
        elif not client_11:
            headers.append((b"connection", b"keep-alive"))
        down.write(response_head_bytes(status, headers))
        if framing == NO_BODY:
            self.response_end()

    def response_end(self) -> None:
        self.response_complete = True
        if self.response_chunked:
            trailers = self.trailers  # only to a client that said `TE: trailers` (RFC 9110 10.1.4)
            if trailers is None or not accepts_trailers(self.head.headers):
                self.down.write(LAST_CHUNK)
            else:
                self.down.write(last_chunk(trailers))
        elif self.h2:
            cast("H2DownStream", self.down).send_end(self.trailers)
        if not self.h2 and not self.up_h2:
            # A response from an HTTP/1.1 upstream is alone in its read event: it leaves now,
            # not at the end of the event, and the pool and telemetry bookkeeping below and in
            # done() overlap with the client reading it (one connection: +3-4 % req/s).
            # Responses from a multiplexed upstream keep to the batch: flushed one by one,
            # they cost 5 us more per request at 32 connections (-11 % req/s).
            cast(DownstreamConnection, self.down).flush_out()
        upstream = self.upstream
        self.upstream = None
        if self.up_h2:
            if upstream is not None:
                cast("H2UpStream", upstream).finish(self.request_complete)
        elif upstream is not None:
            conn = cast(UpstreamConnection, upstream)
            conn.served += 1
            cluster = self.cluster
            reuse = cluster is None or cluster.breaker.reuse_connection(
                conn.served
            )  # maxRequestsPerConnection
            if reuse and self.up_keep_alive and self.request_complete and self.host is not None:
                self.host.put_idle(conn, self.ctx.loop.time())
            else:
                conn.close()
        # A response that ends before its request closes the downstream (see done()).
        self.done()

    # failures ------------------------------------------------------------------------
    def on_upstream_closed(self, conn: Upstream) -> None:
        if conn is not self.upstream or self.finished:
            return
        self.upstream = None
        if self.response_started:
            if self.response_framing == UNTIL_CLOSE:
                self.response_end()  # the close is how this response ends (RFC 9112 s. 6.3)
                return
            self.flags = self.flags or "UC"
            self.down_keep_alive = False
            self.down.close()
            self.done()
            return
        if self.up_h2 and conn.reused and not conn.got_bytes and self.replay is not None:
            # RFC 9113 section 8.7: the peer refused the stream unprocessed (REFUSED_STREAM, or
            # above a GOAWAY's last stream id), so any method may go again, as the route's
            # retry policy allows (`refused-stream`: on by default, as Envoy's retry_on has it).
            refused = Outcome(failure=REFUSED_STREAM, reached_upstream=False)
            if self.schedule_retry(refused):
                self.end_try()
                self.upstream_buffer_drained()  # the refused stream's send buffer is gone
                return
        if (
            conn.reused
            and not conn.got_bytes
            and self.replay is not None
            and self.method in IDEMPOTENT
            and not self.up_h2  # a refused HTTP/2 stream: the policy above, and its bound
        ):
            # A pooled connection the peer had already closed: retry on a new connection.
            self.end_try()
            self.pending_body = list(self.replay)
            self.tried = self.tried[:-1]
            self.ctx.stats.upstream_rq_retry += 1
            self.pick_and_send(fresh=True)
            return
        self.local_reply(503, "UC")

    def on_upstream_protocol_error(self, conn: UpstreamConnection, exc: ProtocolError) -> None:
        conn.abort()
        self.upstream = None
        if self.response_started:
            self.flags = "UPE"
            self.down.close()
            self.done()
        else:
            self.local_reply(
                502, "UPE", b"upstream sent an invalid response: " + exc.reason.encode()
            )

    def request_broken(self, exc: ProtocolError) -> None:
        """The rest of the request body is bad bytes: the request can never complete."""
        self.ctx.stats.downstream_protocol_errors += 1
        if self.response_started:
            conn = self.upstream
            self.upstream = None
            if conn is not None:
                conn.abort()
            self.flags = "DPE"
            self.down.close()
            self.done()
        else:
            self.local_reply(exc.status, "DPE", exc.reason.encode())

    def schedule_retry(self, outcome: Outcome) -> bool:
        """Retry after a back-off if the route's policy, the breaker and the budget allow it."""
        cluster = self.cluster
        if cluster is None or self.finished:
            return False
        if self.retry_slot:  # the previous retry's slot ends with its try
            cluster.breaker.release_retry()
            self.retry_slot = False
        decision = self.decision
        policy = decision.retry if decision is not None else DEFAULT_RETRY_POLICY
        ctx = self.ctx
        refused = cluster.budget.refused
        if not may_retry(policy, outcome, self.retries_done, cluster.budget, cluster.breaker):
            if cluster.budget.refused > refused and ctx.metrics is not None:
                ctx.metrics.metrics.retry_budget_exhausted.labels(cluster.name).inc()
            return False
        self.retry_slot = True
        self.retries_done += 1
        if self.replay is not None:
            # The next try starts from the whole body kept so far; what arrives during the
            # back-off joins this copy, which stays whole if the replay buffer overflows.
            self.pending_body = list(self.replay)
        ctx.stats.upstream_rq_retry += 1
        if ctx.metrics is not None:
            ctx.metrics.metrics.retries.labels(cluster.name).inc()
        if self.try_timer is not None:
            self.try_timer.cancel()
        self.try_timer = ctx.loop.call_later(
            policy.backoff(self.retries_done - 1, _RNG), self._retry
        )
        return True

    def overflow(self) -> None:
        """A circuit breaker limit is reached: 503 UO at once, never a queue."""
        metrics = self.ctx.metrics
        if metrics is not None and self.cluster is not None:
            metrics.metrics.circuit_breaker_overflow.labels(self.cluster.name).inc()
        self.local_reply(503, "UO", extra=OVERLOADED)

    def _retry(self) -> None:
        self.try_timer = None
        if self.finished:
            return
        n = self.retries_done
        if self.up_h2:
            attempt = b"%d" % (n + 1)
            self.up_fields = [(k, attempt if k == ATTEMPT else v) for k, v in self.up_fields]
        else:
            self.up_head = self.up_head.replace(
                b"x-plait-attempt-count: %d\r\n" % n, b"x-plait-attempt-count: %d\r\n" % (n + 1), 1
            )
        if self.replay is not None:
            self.pending_body = list(self.replay)
        self.pick_and_send()

    def on_timeout(self) -> None:
        """The request timeout, or the try's (timeouts.backendRequest): 504 UT."""
        self.timer = None
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if self.finished:
            return
        self.ctx.stats.upstream_rq_timeout += 1
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            conn.abort()
        if self.response_started:
            self.flags = "UT"
            self.down.close()
            self.done()
        else:
            self.local_reply(504, "UT")

    def downstream_closed(self) -> None:
        if self.finished:
            return
        self.flags = self.flags or "DC"
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            conn.abort()
        self.down_keep_alive = False
        self.done()

    def upstream_buffer_full(self) -> None:
        self.down.pause_reading(PAUSE_UPSTREAM)

    def upstream_buffer_drained(self) -> None:
        self.down.resume_reading(PAUSE_UPSTREAM)

    def local_reply(
        self, status: int, flags: str, detail: bytes | None = None, extra: bytes = b""
    ) -> None:
        """Answer the request ourselves. Before the request is read whole we close after."""
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            conn.abort()
        self.status = status
        self.flags = flags
        self.response_started = True
        self.response_complete = True
        self.bytes_sent = 0
        if self.h2:
            cast("H2DownStream", self.down).local_reply(status, flags, detail, extra, self.grpc)
            self.done()
            return
        close = not self.request_complete or not self.down_keep_alive or self.ctx.draining
        if close:
            self.down_keep_alive = False
        body = local_reply_bytes(status, flags, detail, close=close, extra=extra)
        self.down.write(body)
        self.done()

    def done(self) -> None:
        """Account for the stream once, release what it holds, hand the connection back."""
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        host = self.host
        cluster = self.cluster
        if host is not None and not self.connecting:
            host.active -= 1
            if self.try_started and cluster is not None:
                cluster.balancer.on_finish(host, None, monotonic())  # the try never answered
        if self.breaker_held and cluster is not None:
            cluster.breaker.release_request()
            self.breaker_held = False
        if self.retry_slot and cluster is not None:
            cluster.breaker.release_retry()
            self.retry_slot = False
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.abort()
        down = self.down
        self.ctx.record(self)
        keep_alive = self.down_keep_alive and self.request_complete and not down.closed
        down.stream_done(self, keep_alive)
