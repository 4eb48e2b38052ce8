"""Hostile HTTP/2 clients against a real proxy (issue 8 item 7): frames written by hand with
`struct`. Each attack must end in GOAWAY (or RST_STREAM for one stream), the proxy stays up
with bounded memory, a counter in `/stats` says what happened, and a connection opened at
the same time is served normally.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from h2kit import H2Client

pytestmark = pytest.mark.timeout(60)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
ENHANCE_YOUR_CALM, REFUSED_STREAM = 0xB, 0x7


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([ftype, flags])
        + struct.pack(">I", sid)
        + payload
    )


def literal(index: int, value: bytes) -> bytes:
    """HPACK literal field without indexing, name from the static table (RFC 7541 6.2.2);
    values under 127 bytes, or longer with the multi-byte length."""
    n = len(value)
    if n < 127:
        length = bytes([n])
    else:
        rest, out = n - 127, [127]
        while rest >= 128:
            out.append((rest & 0x7F) | 0x80)
            rest >>= 7
        out.append(rest)
        length = bytes(out)
    return bytes([index]) + length + value


def request_block(path: bytes = b"/", authority: bytes = b"web", extra: bytes = b"") -> bytes:
    # :method GET (2), :scheme http (6), then :path and :authority literals.
    return b"\x82\x86" + literal(4, path) + literal(1, authority) + extra


class Raw:
    """A raw HTTP/2 connection: we write frames, and read frames until GOAWAY or close."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        self.buf = b""
        self.frames: list[tuple[int, int, int, bytes]] = []
        self.eof = False

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False  # the proxy closed on us: what the attack should get

    def read_until_goaway(self, timeout: float = 10.0) -> tuple[int, int, int, bytes] | None:
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.5)
        while time.monotonic() < deadline:
            for f in self._parse():
                if f[0] == GOAWAY:
                    return f
            if self.eof:
                return None
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                self.eof = True
            self.buf += data
        return None

    def _parse(self) -> list[tuple[int, int, int, bytes]]:
        out = []
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                break
            ftype, flags = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            out.append((ftype, flags, sid, self.buf[9 : 9 + length]))
            self.buf = self.buf[9 + length :]
        self.frames += out
        return out

    def close(self) -> None:
        self.sock.close()


def goaway_code(f: tuple[int, int, int, bytes] | None) -> int:
    assert f is not None, "no GOAWAY"
    return int.from_bytes(f[3][4:8], "big")


@pytest.fixture(scope="module")
def env(module_proxies: Any, module_upstreams: Any) -> Iterator[SimpleNamespace]:
    web = module_upstreams.start("web")
    snapshot = {
        "clusters": [
            {
                "name": "web",
                "ports": [80],
                "endpoints": [{"address": "127.0.0.1", "port": web.port}],
            }
        ]
    }
    proxy = module_proxies.start(snapshot)
    yield SimpleNamespace(proxy=proxy, web=web)


def served_meanwhile(port: int) -> bool:
    """A well-behaved client on its own connection still gets its answers."""
    client = H2Client(port)
    try:
        return all(client.get(f"/ok{i}", "web").status == 200 for i in range(3))
    finally:
        client.close()


def attack_while_serving(env: SimpleNamespace, attack: Any) -> Any:
    """Run `attack` while another client is served; the proxy must stay up and small."""
    proxy = env.proxy
    rss_before = proxy.rss_kib()
    results: dict[str, Any] = {}
    good = threading.Thread(target=lambda: results.update(ok=served_meanwhile(proxy.outbound)))
    good.start()
    outcome = attack(proxy.outbound)
    good.join(30)
    assert results.get("ok") is True
    assert proxy.alive()
    assert served_meanwhile(proxy.outbound)
    assert proxy.rss_kib() - rss_before < 32 * 1024  # KiB: bounded, whatever was sent
    return outcome


def h2_stat(env: SimpleNamespace, name: str) -> int:
    return int(env.proxy.stats()["listeners"]["outbound"].get(name, 0))


def test_rapid_reset_gets_goaway(env: SimpleNamespace) -> None:
    def attack(port: int) -> Any:
        raw = Raw(port)
        try:
            burst = b"".join(
                frame(HEADERS, END_STREAM | END_HEADERS, sid, request_block(b"/rr"))
                + frame(RST_STREAM, 0, sid, struct.pack(">I", 8))
                for sid in range(1, 2001, 2)
            )
            raw.send(burst)
            return raw.read_until_goaway()
        finally:
            raw.close()

    before = h2_stat(env, "h2_rapid_reset")
    assert goaway_code(attack_while_serving(env, attack)) == ENHANCE_YOUR_CALM
    time.sleep(0.2)
    assert h2_stat(env, "h2_rapid_reset") > before


def test_continuation_flood_gets_goaway(env: SimpleNamespace) -> None:
    def attack(port: int) -> Any:
        raw = Raw(port)
        try:
            raw.send(frame(HEADERS, 0, 1, request_block(b"/cf")))
            junk = frame(CONTINUATION, 0, 1, b"\x00\x01a\x01b" * 3000)
            for _ in range(400):  # ~6 MiB if nobody stopped us
                if not raw.send(junk):
                    break
            return raw.read_until_goaway()
        finally:
            raw.close()

    before = h2_stat(env, "h2_continuation_flood")
    assert goaway_code(attack_while_serving(env, attack)) == ENHANCE_YOUR_CALM
    time.sleep(0.2)
    assert h2_stat(env, "h2_continuation_flood") > before


def test_empty_data_frame_flood_gets_goaway(env: SimpleNamespace) -> None:
    def attack(port: int) -> Any:
        raw = Raw(port)
        try:
            raw.send(frame(HEADERS, END_HEADERS, 1, request_block(b"/mirror")))
            raw.send(frame(DATA, 0, 1) * 1000)
            return raw.read_until_goaway()
        finally:
            raw.close()

    assert goaway_code(attack_while_serving(env, attack)) == ENHANCE_YOUR_CALM


def test_settings_and_ping_floods_get_goaway(env: SimpleNamespace) -> None:
    def settings(port: int) -> Any:
        raw = Raw(port)
        try:
            raw.send(frame(SETTINGS, 0, 0) * 1000)
            return raw.read_until_goaway()
        finally:
            raw.close()

    def pings(port: int) -> Any:
        raw = Raw(port)
        try:
            raw.send(frame(PING, 0, 0, b"12345678") * 1000)
            return raw.read_until_goaway()
        finally:
            raw.close()

    assert goaway_code(attack_while_serving(env, settings)) == ENHANCE_YOUR_CALM
    assert goaway_code(attack_while_serving(env, pings)) == ENHANCE_YOUR_CALM
    time.sleep(0.2)
    assert h2_stat(env, "h2_settings_flood") >= 1
    assert h2_stat(env, "h2_ping_flood") >= 1


def test_too_many_streams_are_refused_and_the_rest_served(env: SimpleNamespace) -> None:
    def attack(port: int) -> Any:
        raw = Raw(port)
        try:
            # 150 requests whose bodies never come: the first 100 hold their streams open.
            raw.send(
                b"".join(
                    frame(HEADERS, END_HEADERS, sid, request_block(b"/discard"))
                    for sid in range(1, 301, 2)
                )
            )
            deadline = time.monotonic() + 10
            refused: set[int] = set()
            raw.sock.settimeout(0.5)
            while len(refused) < 50 and time.monotonic() < deadline:
                try:
                    data = raw.sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                raw.buf += data
                for ftype, _, sid, payload in raw._parse():
                    if ftype == RST_STREAM and int.from_bytes(payload, "big") == REFUSED_STREAM:
                        refused.add(sid)
            return refused
        finally:
            raw.close()

    refused = attack_while_serving(env, attack)
    assert refused == set(range(201, 301, 2))  # streams 101..150: over the limit of 100


def test_huge_headers_get_431_and_the_connection_lives_on(env: SimpleNamespace) -> None:
    def attack(port: int) -> Any:
        raw = Raw(port)
        try:
            # A literal field with a new name (RFC 7541 6.2.2): 100 KiB, over the 64 KiB limit.
            big = b"\x00" + bytes([5]) + b"x-big" + literal(0, b"v" * (100 * 1024))[1:]
            block = request_block(b"/huge", extra=big)
            pieces = [block[i : i + 16384] for i in range(0, len(block), 16384)]
            out = frame(
                HEADERS, END_STREAM if len(pieces) > 1 else END_STREAM | END_HEADERS, 1, pieces[0]
            )
            for i, piece in enumerate(pieces[1:], 1):
                out += frame(CONTINUATION, END_HEADERS if i == len(pieces) - 1 else 0, 1, piece)
            raw.send(out)
            raw.send(frame(HEADERS, END_STREAM | END_HEADERS, 3, request_block(b"/after")))
            deadline = time.monotonic() + 10
            raw.sock.settimeout(0.5)
            seen: dict[int, list[int]] = {}
            while time.monotonic() < deadline and not (1 in seen and 3 in seen):
                try:
                    data = raw.sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                raw.buf += data
                for ftype, _, sid, _payload in raw._parse():
                    if ftype in (HEADERS, RST_STREAM) and sid in (1, 3):
                        seen.setdefault(sid, []).append(ftype)
            return seen, raw.frames
        finally:
            raw.close()

    seen, frames = attack_while_serving(env, attack)
    assert seen.get(1) == [HEADERS]  # a 431 for the huge one
    assert seen.get(3) == [HEADERS]  # and the next request on the same connection answered
    assert not any(f[0] == GOAWAY for f in frames)
