"""Per-request cost of the HTTP/2 codec: ours against the h2 library, both in memory.

One exchange: a client opens a stream with a small GET (4 pseudo-header fields, 2 fields),
the server reads it and answers 200 with 2 fields and a 12-byte body, the client reads the
answer and acknowledges the body (flow control), the server reads that. Client and server
are both ours or both h2, wired back to back on one connection that is reused (the proxy's
steady state), so HPACK's dynamic table works as it does in a pool; `--fresh` adds a row
with a new connection (preface, SETTINGS) per exchange. h2 runs with validation and
normalisation off, as in ARCHITECTURE.md's figure; ours validates (it always should).

CPU time (process_time, so other load on the machine does not count), best of 7 runs; it
asserts nothing. It reports whether the codec modules it imported are mypyc-compiled: they
are when the data path's build is current (`make venv`, `python -m plait.build_native`; see
plait/native_core.py), and `PLAIT_PURE_PYTHON=1 python -m bench.h2_codec` measures the
Python source.

Run: `python -m bench.h2_codec [--n 3000] [--fresh]`.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events

from plait.proto.events import Data, RequestHead
from plait.proto.h2.config import H2Config
from plait.proto.h2.connection import H2Connection

REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":authority", b"reviews.default:9080"),
    (b":path", b"/reviews/0"),
    (b"user-agent", b"curl/7.88.1"),
    (b"accept", b"*/*"),
]
RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"12")]
BODY = b"hello world\n"


def ours_pair() -> tuple[H2Connection, H2Connection]:
    client, server = H2Connection(H2Config(client=True)), H2Connection(H2Config())
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


def ours_exchange(client: H2Connection, server: H2Connection) -> None:
    sid = client.next_stream_id
    client.send_headers(sid, REQUEST, True)
    for stream_id, event in server.receive_data(client.data_to_send()):
        if event.__class__ is RequestHead:
            server.send_headers(stream_id, RESPONSE)
            server.send_data(stream_id, BODY, True)
    for stream_id, event in client.receive_data(server.data_to_send()):
        if isinstance(event, Data):
            client.acknowledge_received_data(stream_id, len(event.data))
    server.receive_data(client.data_to_send())


def h2_pair() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    def make(client: bool) -> h2.connection.H2Connection:
        config = h2.config.H2Configuration(
            client_side=client,
            header_encoding=None,
            validate_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_inbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        return conn

    client, server = make(True), make(False)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


def h2_exchange(client: h2.connection.H2Connection, server: h2.connection.H2Connection) -> None:
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, REQUEST, end_stream=True)
    for event in server.receive_data(client.data_to_send()):
        if isinstance(event, h2.events.RequestReceived):
            server.send_headers(event.stream_id, RESPONSE)
            server.send_data(event.stream_id, BODY, end_stream=True)
    for event in client.receive_data(server.data_to_send()):
        if isinstance(event, h2.events.DataReceived):
            client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
    server.receive_data(client.data_to_send())


def best_us(run: Callable[[], None], n: int, runs: int = 7) -> float:
    """Best CPU time per call, in microseconds, of `runs` runs of `n` calls."""
    for _ in range(n // 10):
        run()
    best = float("inf")
    for _ in range(runs):
        start = time.process_time()
        for _ in range(n):
            run()
        best = min(best, time.process_time() - start)
    return best / n * 1e6


def reused(pair: Callable[[], tuple], exchange: Callable[..., None], n: int) -> Callable[[], None]:
    """Exchanges on one connection, opened afresh before stream ids could run out."""
    conns = [pair()]
    count = [0]

    def run() -> None:
        if count[0] >= 100_000:
            conns[0], count[0] = pair(), 0
        count[0] += 1
        exchange(*conns[0])

    return run


def fresh(pair: Callable[[], tuple], exchange: Callable[..., None]) -> Callable[[], None]:
    return lambda: exchange(*pair())


def compiled() -> str:
    names = ("frames", "hpack", "huffman", "connection")
    mods = [importlib.import_module(f"plait.proto.h2.{name}") for name in names]
    done = [
        name
        for name, mod in zip(names, mods, strict=True)
        if not (mod.__file__ or "").endswith(".py")
    ]
    return "compiled: " + ", ".join(done) if done else "pure Python"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="exchanges per run")
    parser.add_argument("--fresh", action="store_true", help="also a new connection per exchange")
    args = parser.parse_args()
    rows = [
        ("h2 4.x, validation off", reused(h2_pair, h2_exchange, args.n)),
        (f"plait ({compiled()})", reused(ours_pair, ours_exchange, args.n)),
    ]
    if args.fresh:
        rows += [
            ("h2, new connection", fresh(h2_pair, h2_exchange)),
            ("plait, new connection", fresh(ours_pair, ours_exchange)),
        ]
    figures = {name: best_us(run, args.n) for name, run in rows}
    for name, us in figures.items():
        print(f"{name:40s} {us:8.1f} us/exchange")
    h2_us, ours_us = figures[rows[0][0]], figures[rows[1][0]]
    print(f"ratio: h2/plait = {h2_us / ours_us:.1f}x  (plait_us={ours_us:.1f} h2_us={h2_us:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
