"""An HTTP/2 upstream connection writes a burst of streams in slices, not all at the end.

Why it matters: frames queued in one event-loop iteration share one write (one TLS record),
but a whole iteration's worth in one write makes the peer proxy wait for all of it. After
`batching.STREAMS_PER_WRITE` streams the frames so far go at once; the rest go at the
end of the iteration, and every request arrives, in order, exactly once.
"""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
import pytest
from tests.proxy.test_refused_stream_retry import Recorder, Transport

from plait.config.snapshot import Endpoint
from plait.proto.events import RequestHead
from plait.proxy import batching
from plait.proxy.h2_upstream import H2UpstreamConnection
from plait.proxy.upstream import Host

# Fakes stand in for the stream and its cluster (tests/conftest.py).
pytestmark = pytest.mark.python_core


class CountingTransport(Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def test_a_burst_of_streams_leaves_in_slices_and_arrives_whole() -> None:
    burst = 3 * batching.STREAMS_PER_WRITE + 5

    async def go() -> tuple[int, int, list[bytes]]:
        conn = H2UpstreamConnection(Host(Endpoint("127.0.0.1", 1)))
        transport = CountingTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        server.initiate_connection()
        conn.data_received(server.data_to_send())
        await asyncio.sleep(0)
        before = transport.writes
        for i in range(burst):
            head = RequestHead(b"GET", f"/item/{i}".encode(), [(b"host", b"shop")])
            assert conn.open_stream(Recorder(), head, True, b"http") is not None  # type: ignore[arg-type]
        during = transport.writes - before  # written before the iteration ended
        await asyncio.sleep(0)
        total = transport.writes - before
        paths = [
            dict(event.headers)[b":path"]
            for event in server.receive_data(transport.take())
            if isinstance(event, h2.events.RequestReceived)
        ]
        return during, total, paths

    during, total, paths = asyncio.run(go())
    assert during == 3  # one write per STREAMS_PER_WRITE streams, while the burst goes on
    assert total == 4  # and the last 5 at the end of the iteration
    assert paths == [f"/item/{i}".encode() for i in range(burst)]
