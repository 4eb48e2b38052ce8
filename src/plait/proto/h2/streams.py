"""Stream states (RFC 9113 section 5.1) as one transition table, and per-stream bookkeeping.

Theory of operation
-------------------
A stream's state changes only on the wire: when we emit a HEADERS or DATA frame, or when we
receive one. Each such frame is one or two inputs to the table below: the frame itself
(HEADERS or DATA, sent or received), then END_STREAM if the frame carries the flag. A pair
(state, input) missing from the table is a protocol error: the connection decides which one
(a frame received on a closed stream is STREAM_CLOSED, section 5.1; a send is the caller's
mistake, StreamUnavailable). RST_STREAM, ours or the peer's, closes any stream at once.

Reserved states never occur: we advertise SETTINGS_ENABLE_PUSH=0 as a client and never push
as a server, so a PUSH_PROMISE is a connection error before it could reserve a stream.

    IDLE --HEADERS--> OPEN --send END_STREAM--> HALF_CLOSED_LOCAL --recv END_STREAM--+
                       |                                                             +--> CLOSED
                       +----recv END_STREAM--> HALF_CLOSED_REMOTE --send END_STREAM--+

A closed stream is forgotten (memory stays bounded); only its id's position below the
highest id seen tells the connection that it existed.

Message framing inside a stream (section 8.1: head, body, trailers) is tracked beside the
state: `head_done` says the final head went by, so a later HEADERS is a trailer section.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLOSED",
    "HALF_CLOSED_LOCAL",
    "HALF_CLOSED_REMOTE",
    "IDLE",
    "OPEN",
    "RECV_DATA",
    "RECV_END_STREAM",
    "RECV_HEADERS",
    "SEND_DATA",
    "SEND_END_STREAM",
    "SEND_HEADERS",
    "STATE_NAMES",
    "Stream",
    "next_state",
]

# States.
IDLE: Final = 0
OPEN: Final = 1
HALF_CLOSED_LOCAL: Final = 2
HALF_CLOSED_REMOTE: Final = 3
CLOSED: Final = 4
STATE_NAMES: Final = ("idle", "open", "half-closed (local)", "half-closed (remote)", "closed")

# Inputs: the frame, then END_STREAM if it carries the flag.
SEND_HEADERS: Final = 0
SEND_DATA: Final = 1
SEND_END_STREAM: Final = 2
RECV_HEADERS: Final = 3
RECV_DATA: Final = 4
RECV_END_STREAM: Final = 5
_INPUTS: Final = 6

# RFC 9113 section 5.1, figure 2, without the reserved states and RST_STREAM.
_TRANSITIONS: Final[dict[tuple[int, int], int]] = {
    (IDLE, SEND_HEADERS): OPEN,
    (IDLE, RECV_HEADERS): OPEN,
    (OPEN, SEND_HEADERS): OPEN,  # 1xx heads, the final head, trailers
    (OPEN, RECV_HEADERS): OPEN,
    (OPEN, SEND_DATA): OPEN,
    (OPEN, RECV_DATA): OPEN,
    (OPEN, SEND_END_STREAM): HALF_CLOSED_LOCAL,
    (OPEN, RECV_END_STREAM): HALF_CLOSED_REMOTE,
    (HALF_CLOSED_LOCAL, RECV_HEADERS): HALF_CLOSED_LOCAL,
    (HALF_CLOSED_LOCAL, RECV_DATA): HALF_CLOSED_LOCAL,
    (HALF_CLOSED_LOCAL, RECV_END_STREAM): CLOSED,
    (HALF_CLOSED_REMOTE, SEND_HEADERS): HALF_CLOSED_REMOTE,
    (HALF_CLOSED_REMOTE, SEND_DATA): HALF_CLOSED_REMOTE,
    (HALF_CLOSED_REMOTE, SEND_END_STREAM): CLOSED,
}


def _flat_table() -> list[int]:
    table = [-1] * (5 * _INPUTS)
    for (state, event), new in _TRANSITIONS.items():
        table[state * _INPUTS + event] = new
    return table


_TABLE: Final = _flat_table()


def next_state(state: int, event: int) -> int:
    """The state after `event`, or -1 if the table has no such transition."""
    return _TABLE[state * _INPUTS + event]


class Stream:
    """One stream's state, flow-control windows and queued output."""

    __slots__ = (
        "id",
        "state",
        "send_window",
        "recv_window",
        "recv_unacked",
        "head_done",
        "app_knows",
        "expected_length",
        "head_request",
        "queue",
        "queued",
        "end_queued",
        "trailers",
    )

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.id = stream_id
        self.state = IDLE
        self.send_window = send_window  # what the peer lets us send (section 6.9.1)
        self.recv_window = recv_window  # what we let the peer send
        self.recv_unacked = 0  # consumed by the application, not yet given back
        self.head_done = False  # the final (non-1xx) head was received
        self.app_knows = False  # the application holds the stream: report its reset
        self.expected_length = -1  # content-length still to come, -1 if unknown (8.1.1)
        self.head_request = False  # a HEAD request: its response has no body to count
        self.queue: list[bytes] = []  # body bytes waiting for window
        self.queued = 0
        self.end_queued = False  # END_STREAM goes out after the queue
        self.trailers: list[tuple[bytes, bytes]] | None = None  # sent after the queue

    def __repr__(self) -> str:
        return f"Stream({self.id}, {STATE_NAMES[self.state]})"
