"""The proxy's tap hub: free when nobody listens, filtered, bounded, and served as NDJSON
over a real admin connection until the client goes away."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from plait.proxy.tap import BUFFER, TapHub, serve_tap, stream_record


def record(
    path: str = "/reviews/0", listener: str = "inbound", status: int = 200
) -> dict[str, Any]:
    return {"listener": listener, "path": path, "status": status}


def test_stream_record_has_metadata_and_headers_but_no_credentials() -> None:
    head = SimpleNamespace(
        method=b"GET",
        headers=[
            (b"host", b"reviews:9080"),
            (b"authorization", b"Bearer s3cret"),
            (b"cookie", b"session=s3cret"),
            (b"x-request-id", b"abc"),
        ],
    )
    stream = SimpleNamespace(
        head=head,
        host=SimpleNamespace(label="127.0.0.1:9080"),
        cluster=SimpleNamespace(name="reviews", namespace="default"),
        authority=b"reviews:9080",
        path=b"/reviews/0",
        status=200,
        flags="",
        route="reviews.default-route",
        down=SimpleNamespace(
            peer_id="spiffe://cluster.local/ns/default/sa/productpage", peer="127.0.0.1:5555"
        ),
        request_id=b"abc",
        bytes_received=0,
        bytes_sent=120,
    )
    r = stream_record("inbound", stream, 0.0125)  # type: ignore[arg-type]
    assert (r["method"], r["path"], r["status"], r["duration_ms"]) == (
        "GET",
        "/reviews/0",
        200,
        12.5,
    )
    assert r["upstream_cluster"] == "reviews.default" and r["response_flags"] == "-"
    assert r["peer_identity"].endswith("/sa/productpage") and r["request_id"] == "abc"
    assert r["time"].endswith("Z") and len(r["time"]) == len("2026-01-01T00:00:00.000Z")
    headers = dict(r["request_headers"])
    assert headers["host"] == "reviews:9080"
    assert headers["authorization"] == headers["cookie"] == "REDACTED"
    assert "s3cret" not in json.dumps(r)


def test_publish_with_no_subscribers_does_nothing() -> None:
    hub = TapHub()
    hub.publish(record())  # no error, nothing kept
    assert hub.subscribers == []


def test_subscriptions_filter_by_path_prefix_and_listener() -> None:
    async def main() -> None:
        hub = TapHub()
        reviews = hub.subscribe("/reviews")
        outbound = hub.subscribe("", "outbound")
        hub.publish(record("/reviews/0"))
        hub.publish(record("/ratings/0", "outbound"))
        assert [r["path"] for r in reviews.take()[0]] == ["/reviews/0"]
        assert [r["path"] for r in outbound.take()[0]] == ["/ratings/0"]
        hub.unsubscribe(reviews)
        assert hub.subscribers == [outbound]

    asyncio.run(main())


def test_a_slow_tapper_loses_records_and_is_told_how_many() -> None:
    async def main() -> None:
        hub = TapHub()
        sub = hub.subscribe()
        for _ in range(BUFFER + 7):
            hub.publish(record())
        records, dropped = sub.take()
        assert (len(records), dropped) == (BUFFER, 7)
        assert sub.take() == ([], 0)

    asyncio.run(main())


def test_serve_tap_streams_ndjson_until_the_client_disconnects() -> None:
    async def main() -> None:
        hub = TapHub()
        done = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ")[1].decode()
            await serve_tap(hub, target.partition("?")[2], reader, writer)
            done.set()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /tap?path=/reviews&listener=inbound HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"application/x-ndjson" in head
        while not hub.subscribers:
            await asyncio.sleep(0.01)
        hub.publish(record("/reviews/1"))
        hub.publish(record("/details/1"))  # filtered out
        hub.publish(record("/reviews/2", "outbound"))  # filtered out
        hub.publish(record("/reviews/3"))
        lines = [json.loads(await reader.readline()) for _ in range(2)]
        assert [x["path"] for x in lines] == ["/reviews/1", "/reviews/3"]
        writer.close()
        await asyncio.wait_for(done.wait(), 5)
        assert hub.subscribers == []  # the tap ended with its client
        server.close()

    asyncio.run(main())


def test_serve_tap_refuses_an_unknown_listener() -> None:
    async def main() -> None:
        hub = TapHub()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await serve_tap(hub, "listener=sideways", reader, writer)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        writer.write(b"GET /tap HTTP/1.1\r\n\r\n")
        reply = await reader.read()
        assert reply.startswith(b"HTTP/1.1 400") and b"listener must be one of" in reply
        assert hub.subscribers == []
        writer.close()
        server.close()

    asyncio.run(main())


def test_closing_the_hub_ends_open_taps() -> None:
    async def main() -> None:
        hub = TapHub()
        ended = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await serve_tap(hub, "", reader, writer)
            ended.set()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        writer.write(b"GET /tap HTTP/1.1\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        while not hub.subscribers:
            await asyncio.sleep(0.01)
        hub.close()
        await asyncio.wait_for(ended.wait(), 5)
        writer.close()
        server.close()

    asyncio.run(main())
