"""RequestMirror: a fire-and-forget copy of a request to another service.

The copy goes on a connection of its own (never a pooled one: a slow mirror must not hold a
connection the primary could use), with `Connection: close` and, as Envoy does, `-shadow`
appended to the authority so the mirror's owner can tell copies apart. Its response is read
and thrown away; failures are counted, never seen by the client, and the primary never waits.
Only requests whose whole body is already held (none, or within the replay buffer) are
mirrored; a streaming upload is not (counted as skipped).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from plait.config.snapshot import Mirror
from plait.identity.tls import verify_peer
from plait.proto.events import Headers
from plait.proto.h1 import request_head_bytes

if TYPE_CHECKING:
    from plait.proxy.listener import ListenerContext
    from plait.proxy.upstream import Host

__all__ = ["mirror_requests"]

# A mirror gets this long to answer before its connection is dropped.
MIRROR_TIMEOUT = 5.0


def mirror_requests(
    ctx: ListenerContext,
    mirrors: tuple[Mirror, ...],
    method: bytes,
    path: bytes,
    headers: Headers,
    body: bytes | None,
) -> None:
    counters = ctx.stats.events
    if body is None and any(
        name in (b"content-length", b"transfer-encoding") for name, _ in headers
    ):
        counters["mirror_skipped"] = counters.get("mirror_skipped", 0) + len(mirrors)
        return
    for mirror in mirrors:
        cluster = ctx.cluster((mirror.namespace, mirror.service))
        host = cluster.pick() if cluster is not None else None
        if host is None:
            counters["mirror_failed"] = counters.get("mirror_failed", 0) + 1
            continue
        fields: Headers = []
        for name, value in headers:
            if name == b"host":
                value += b"-shadow"
            elif name == b"transfer-encoding":
                continue  # the copy's body is whole: sent with a length
            elif name == b"content-length":
                continue
            fields.append((name, value))
        fields.append((b"content-length", b"%d" % len(body or b"")))
        fields.append((b"connection", b"close"))
        data = request_head_bytes(method, path, fields) + (body or b"")
        ctx.spawn(_send(ctx, host, data))


async def _send(ctx: ListenerContext, host: Host, data: bytes) -> None:
    tls, expected, _ = ctx.upstream_tls(host)
    counters = ctx.stats.events
    writer = None
    try:
        async with asyncio.timeout(MIRROR_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                host.address, host.port, ssl=tls, server_hostname="" if tls else None
            )
            if tls is not None:
                verify_peer(writer.get_extra_info("ssl_object"), expected or (host.identity,))
            writer.write(data)
            while await reader.read(65536):
                pass  # the mirror's answer is discarded
        counters["mirror_sent"] = counters.get("mirror_sent", 0) + 1
    except Exception:  # noqa: BLE001 - a mirror's failure is only ever counted
        counters["mirror_failed"] = counters.get("mirror_failed", 0) + 1
    finally:
        if writer is not None:
            writer.close()
