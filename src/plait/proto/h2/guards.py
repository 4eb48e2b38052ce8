"""Flood and abuse guards for one HTTP/2 connection, and the counters they keep (issue 8.7).

Each guard answers "is this too much?" in O(1) with memory bounded by its limit; the
connection turns a yes into GOAWAY(ENHANCE_YOUR_CALM). No clocks are read except by the
rate limits, and only when a PING or SETTINGS frame arrives.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

__all__ = ["Counters", "RapidResetGuard", "RateLimit"]


class Counters:
    """What the connection refused or survived; the proxy exports these as metrics."""

    __slots__ = (
        "refused_streams",
        "headers_too_large",
        "early_resets",
        "stream_errors",
        "rapid_reset",
        "continuation_flood",
        "empty_frame_flood",
        "ping_flood",
        "settings_flood",
        "connection_errors",
    )

    def __init__(self) -> None:
        self.refused_streams = 0  # RST_STREAM(REFUSED_STREAM): over max concurrent streams
        self.headers_too_large = 0  # header lists over SETTINGS_MAX_HEADER_LIST_SIZE
        self.early_resets = 0  # peer RST_STREAM before our response was complete
        self.stream_errors = 0  # RST_STREAM we sent for the peer's errors
        self.rapid_reset = 0  # GOAWAY for these floods (0 or 1 each)
        self.continuation_flood = 0
        self.empty_frame_flood = 0
        self.ping_flood = 0
        self.settings_flood = 0
        self.connection_errors = 0  # GOAWAY with an error code, whatever the cause

    def as_dict(self) -> dict[str, int]:
        return {
            "refused_streams": self.refused_streams,
            "headers_too_large": self.headers_too_large,
            "early_resets": self.early_resets,
            "stream_errors": self.stream_errors,
            "rapid_reset": self.rapid_reset,
            "continuation_flood": self.continuation_flood,
            "empty_frame_flood": self.empty_frame_flood,
            "ping_flood": self.ping_flood,
            "settings_flood": self.settings_flood,
            "connection_errors": self.connection_errors,
        }


class RateLimit:
    """At most `limit` events in any `window` seconds: a sliding window of timestamps."""

    __slots__ = ("limit", "window", "_clock", "_times")

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._times: deque[float] = deque()

    def exceeded(self) -> bool:
        """Record one event; True if it is one too many."""
        now = self._clock()
        times = self._times
        while times and now - times[0] >= self.window:
            times.popleft()
        if len(times) >= self.limit:
            return True
        times.append(now)
        return False


class RapidResetGuard:
    """Of the last `window` peer streams that ended, were more than `limit` reset early?

    Counting streams rather than seconds needs no clock and cannot be gamed by pacing: a
    client has to complete more requests than it cancels to stay below the bar.
    """

    __slots__ = ("limit", "_ring", "_pos", "_resets")

    def __init__(self, window: int, limit: int) -> None:
        self.limit = limit
        self._ring = bytearray(window)
        self._pos = 0
        self._resets = 0

    def record(self, reset: bool) -> bool:
        """Record one ended stream; True if the peer is now over the limit."""
        ring = self._ring
        pos = self._pos
        self._resets += int(reset) - ring[pos]
        ring[pos] = 1 if reset else 0
        pos += 1
        self._pos = 0 if pos == len(ring) else pos
        return self._resets > self.limit
