"""1 GiB bodies stream through the proxy with bounded memory (backpressure both ways).

The client never holds a body: it sends one 1 MiB buffer over and over (upload) or
counts into one (download). The proxy's RSS is sampled from /proc while bytes flow.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from types import SimpleNamespace
from typing import Any

import pytest

MIB = 1024 * 1024
SIZE = 1024 * MIB
PATTERN = bytes(range(256)) * 4096  # the upstream's /stream sends this, repeated
RSS_GROWTH_LIMIT_KIB = 64 * 1024

pytestmark = pytest.mark.skipif(
    not __import__("os").path.exists("/proc/self/status"), reason="reads VmRSS from /proc"
)


class RssSampler:
    """Samples a process's VmRSS every 20 ms in a thread; `peak` is the largest seen."""

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.peak = proxy.rss_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proxy.rss_kib())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proxy.rss_kib())


@pytest.fixture
def mesh(proxies: Any, upstreams: Any, raw: Any) -> SimpleNamespace:
    big = upstreams.start("big")
    snapshot = {"clusters": [{"name": "big", "ports": [9080], "endpoints": [big.endpoint]}]}
    proxy = proxies.start(snapshot, access_log=False)
    # Warm up (imports, first connection, buffers) before the baseline is taken.
    c = raw(proxy.outbound)
    for _ in range(3):
        assert c.request("POST", "/discard", {"Host": "big:9080"}, body=PATTERN).status == 200
        assert (
            len(c.request("GET", f"/stream?size={4 * MIB}", {"Host": "big:9080"}).body) == 4 * MIB
        )
    c.close()
    time.sleep(0.2)
    return SimpleNamespace(proxy=proxy, big=big, baseline=proxy.rss_kib())


@pytest.mark.timeout(120)
def test_1_gib_upload_streams_through_with_bounded_memory(mesh: SimpleNamespace, raw: Any) -> None:
    c = raw(mesh.proxy.outbound, timeout=60)
    view = memoryview(PATTERN)
    with RssSampler(mesh.proxy) as rss:
        c.send(b"POST /discard HTTP/1.1\r\nHost: big:9080\r\nContent-Length: %d\r\n\r\n" % SIZE)
        for _ in range(SIZE // MIB):
            c.send(view)
        r = c.read_response()
    assert r.status == 200
    assert json.loads(r.body) == {"received": SIZE}
    growth = rss.peak - mesh.baseline
    print(f"proxy RSS: baseline {mesh.baseline} KiB, peak growth {growth} KiB")
    assert growth < RSS_GROWTH_LIMIT_KIB, f"proxy RSS grew by {growth} KiB"


@pytest.mark.timeout(120)
def test_1_gib_download_streams_through_with_bounded_memory(
    mesh: SimpleNamespace, raw: Any
) -> None:
    c = raw(mesh.proxy.outbound, timeout=60)
    expected_crc = 0
    for _ in range(SIZE // MIB):
        expected_crc = zlib.crc32(PATTERN, expected_crc)
    with RssSampler(mesh.proxy) as rss:
        c.send(b"GET /stream?size=%d HTTP/1.1\r\nHost: big:9080\r\n\r\n" % SIZE)
        status_line = c.file.readline()
        headers = {}
        while (line := c.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        assert status_line.startswith(b"HTTP/1.1 200 ")
        assert int(headers["content-length"]) == SIZE
        buf = bytearray(MIB)
        view = memoryview(buf)
        received = 0
        crc = 0
        while received < SIZE:
            n = c.file.readinto(view[: min(MIB, SIZE - received)])
            assert n, f"connection closed after {received} bytes"
            crc = zlib.crc32(view[:n], crc)
            received += n
    assert received == SIZE
    assert crc == expected_crc
    growth = rss.peak - mesh.baseline
    print(f"proxy RSS: baseline {mesh.baseline} KiB, peak growth {growth} KiB")
    assert growth < RSS_GROWTH_LIMIT_KIB, f"proxy RSS grew by {growth} KiB"
    # The connection is still good for another request.
    assert c.request("GET", "/stream?size=10", {"Host": "big:9080"}).body == PATTERN[:10]
