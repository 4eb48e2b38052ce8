"""Open-loop load generator: a fixed request rate, latency from the *intended* send time.

    python -m bench.loadgen --port P [--host web] --rate 1000 --duration 10 [--warmup 1]

wrk2 (the usual tool) is not packaged by Debian and h2load's `--rate` is a rate of new
connections, not of requests; so this small generator does it. Request i is due at
start + i/rate whatever happened before (open loop). It goes out on an idle keep-alive
connection of a fixed pool; if none is idle (the system is slow) it waits in a queue, and
its latency still counts from when it was due, so a stall is not hidden by sending less
while stalled (coordinated omission, as wrk2 handles it).

One thread, `select()` with a microsecond timeout (epoll's is in milliseconds) to wake up
for the next send, httptools to parse responses. Prints one JSON object: requests, errors,
achieved rate, p50/p90/p99/p99.9/max in ms. Only requests due after the warm-up count.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time
from collections import deque
from collections.abc import Callable

import httptools

__all__ = ["run"]


class _Conn:
    """One keep-alive connection and the request in flight on it (at most one)."""

    __slots__ = ("sock", "parser", "due", "done", "status")

    def __init__(self, port: int, on_complete: Callable[[_Conn, int], None]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.parser = httptools.HttpResponseParser(self)
        self.due = 0.0
        self.done = on_complete
        self.status = 0

    # httptools callback
    def on_message_complete(self) -> None:
        self.done(self, self.parser.get_status_code())


def run(
    port: int, host: str, path: str, rate: int, duration: float, warmup: float, connections: int
) -> dict[str, float]:
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    interval = 1.0 / rate
    latencies: list[float] = []
    errors = 0
    idle: deque[_Conn] = deque()
    queue: deque[float] = deque()  # due times of requests waiting for an idle connection
    busy: dict[socket.socket, _Conn] = {}
    clock = time.perf_counter

    def send(conn: _Conn, due: float) -> None:
        conn.due = due
        conn.sock.send(request)  # ~40 bytes on an idle socket: never a partial write
        busy[conn.sock] = conn

    def complete(conn: _Conn, status: int) -> None:
        nonlocal errors
        if conn.due >= measure_from:
            latencies.append(clock() - conn.due)
            if status != 200:
                errors += 1
        del busy[conn.sock]
        if queue:
            send(conn, queue.popleft())
        else:
            idle.append(conn)

    pool = [_Conn(port, complete) for _ in range(connections)]
    idle.extend(pool)
    start = clock() + 0.01
    measure_from = start + warmup
    end = measure_from + duration
    i = 0
    due = start
    give_up = end + 10.0  # a system that stops answering does not hang the run
    while True:
        now = clock()
        while due <= now and due < end:
            if idle:
                send(idle.pop(), due)  # LIFO: the hottest connection, as client pools do
            else:
                queue.append(due)
            i += 1
            due = start + i * interval
        if due >= end and not busy and not queue:
            break
        if now > give_up:
            errors += len(busy) + len(queue)
            break
        timeout = max(0.0, due - clock()) if due < end else 0.05
        readable, _, _ = select.select(list(busy), [], [], timeout)
        for sock in readable:
            conn = busy[sock]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                raise ConnectionError("the server closed a keep-alive connection")
            conn.parser.feed_data(data)
    for conn in pool:
        conn.sock.close()
    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(p / 100 * n))] * 1000 if n else float("nan")

    return {
        "requests": n,
        "errors": errors,
        "rate": n / duration,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "p999_ms": pct(99.9),
        "max_ms": latencies[-1] * 1000 if n else float("nan"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--path", default="/")
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--connections", type=int, default=16)
    a = p.parse_args()
    result = run(a.port, a.host, a.path, a.rate, a.duration, a.warmup, a.connections)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
