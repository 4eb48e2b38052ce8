"""HTTP/2 through a real mesh (issue 8 items 1-3, 7; issue 4's gRPC deadline): curl, h2load
and an `h2` client -> outbound proxy -> (mTLS, ALPN h2) -> inbound proxy -> an h2c app, or an
HTTP/1.1 app (downgraded at the server side).

Services: `h2web` (port protocol http2, an h2c app), `web` (http, an HTTP/1.1 app).
Proxies: `client-0` (h2 between proxies only for HTTP/2 requests: PLAIT_H2_UPGRADE=0), `upg-0`
(as shipped: also carries HTTP/1.1 requests over HTTP/2 to endpoints whose protocol hint says
they are plait proxies, which all of these are), and the servers' proxies `h2web-0`, `web-0`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from h2kit import H2_APP, H2Client, rss_kib
from meshkit import Mesh, Proc, free_port, send_request, wait_until

from plait.proto.events import END_OF_STREAM, Data, RequestHead
from plait.proto.h2 import H2Config, H2Connection

pytestmark = pytest.mark.timeout(120)

SERVICES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: h2web}
spec: {selector: {app: h2web}, ports: [{name: h2, port: 80, protocol: http2}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: grpcweb}
spec: {selector: {app: grpcweb}, ports: [{name: grpc, port: 50051, protocol: grpc}]}
"""

# A grpcio server without generated code: raw bytes in and out.
GRPC_APP = r"""
import os, time
from concurrent import futures
import grpc

def echo(request, context):
    context.set_trailing_metadata((("x-echo-trailer", "yes"),))
    if request == b"fail":
        context.abort(grpc.StatusCode.UNAVAILABLE, "asked to fail")
    if request.startswith(b"sleep"):
        time.sleep(float(request[5:]))
    return b"echo:" + request

def count(request, context):
    for i in range(int(request)):
        yield b"%d" % i

def total(requests, context):
    return b"%d" % sum(len(r) for r in requests)

def chat(requests, context):
    for r in requests:
        yield b"re:" + r

handler = grpc.method_handlers_generic_handler("test.Echo", {
    "Echo": grpc.unary_unary_rpc_method_handler(echo),
    "Count": grpc.unary_stream_rpc_method_handler(count),
    "Total": grpc.stream_unary_rpc_method_handler(total),
    "Chat": grpc.stream_stream_rpc_method_handler(chat),
})
server = grpc.server(futures.ThreadPoolExecutor(8))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("127.0.0.1:" + os.environ["PORT"])
server.start()
server.wait_for_termination()
"""

MIB = 1024 * 1024


class H2Mesh:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.mesh = Mesh(tmp)
        self.mesh.apply(SERVICES)
        self.h2_port = free_port()
        self.h2_app = Proc(
            [sys.executable, "-c", H2_APP],
            tmp / "h2web.app.log",
            {"APP_NAME": "h2web", "PORT": str(self.h2_port)},
        )
        self.mesh.procs.append(self.h2_app)
        _, self.web_port = self.mesh.app("web")
        self.grpc_port = free_port()
        self.grpc_app = Proc(
            [sys.executable, "-c", GRPC_APP],
            tmp / "grpcweb.app.log",
            {"PORT": str(self.grpc_port)},
        )
        self.mesh.procs.append(self.grpc_app)
        self.grpcweb_proc, self.grpcweb = self.mesh.proxy(
            "grpcweb-0", "grpcweb", "app=grpcweb", app_port=self.grpc_port
        )
        log = ["--access-log", str(tmp / "h2web-0.access.log")]
        self.h2web_proc, self.h2web = self.mesh.proxy(
            "h2web-0", "h2web", "app=h2web", app_port=self.h2_port, extra=log
        )
        self.web_proc, self.web = self.mesh.proxy("web-0", "web", "app=web", app_port=self.web_port)
        os.environ["PLAIT_H2_UPGRADE"] = "0"
        try:
            self.client_proc, self.client = self.mesh.proxy("client-0", "client", "app=client")
        finally:
            del os.environ["PLAIT_H2_UPGRADE"]
        self.upg_proc, self.upg = self.mesh.proxy("upg-0", "client", "app=client")
        names = {"h2web-0", "web-0", "client-0", "upg-0", "grpcweb-0"}
        wait_until(lambda: self.mesh.converged(names), 20, "convergence")
        wait_until(lambda: self._routable("h2web"), 15, "client-0 to reach h2web")
        wait_until(lambda: self._routable("web"), 15, "client-0 to reach web")

    def _routable(self, host: str) -> bool:
        client = H2Client(self.client["outbound"])
        try:
            return client.get("/", host).status == 200
        except (OSError, ConnectionError):
            return False
        finally:
            client.close()

    def stats(self, ports: dict[str, int], listener: str) -> dict[str, Any]:
        stats: dict[str, Any] = self.mesh.admin(ports, "/stats?format=json")["listeners"][listener]
        return stats

    def service(
        self, name: str, caller: str, traffic_policy: str = ""
    ) -> tuple[Proc, dict[str, int]]:
        """A new HTTP/1.1 Service `name` (with a DestinationRule holding `traffic_policy`,
        if any), its app and its sidecar `name-0`, converged with the proxy `caller`."""
        resources = (
            "apiVersion: plait.dev/v1\nkind: Service\n"
            f"metadata: {{name: {name}}}\n"
            f"spec: {{selector: {{app: {name}}}, ports: [{{name: http, port: 80}}]}}\n"
        )
        if traffic_policy:
            resources += (
                "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
                f"metadata: {{name: {name}-policy}}\n"
                f"spec: {{host: {name}, trafficPolicy: {traffic_policy}}}\n"
            )
        self.mesh.apply(resources)
        _, port = self.mesh.app(name)
        proc, ports = self.mesh.proxy(f"{name}-0", name, f"app={name}", app_port=port)
        wait_until(lambda: self.mesh.converged({f"{name}-0", caller}), 20, "convergence")
        return proc, ports


@pytest.fixture(scope="module")
def m(tmp_path_factory: pytest.TempPathFactory) -> Iterator[H2Mesh]:
    mesh = H2Mesh(tmp_path_factory.mktemp("h2"))
    try:
        yield mesh
    finally:
        mesh.mesh.close()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True, timeout=30
    )


def test_curl_h2_prior_knowledge_reaches_an_h2c_app_over_h2_between_proxies(m: H2Mesh) -> None:
    r = curl(
        "--http2-prior-knowledge",
        "-v",
        "-H",
        "want-trailers: 1",
        f"http://127.0.0.1:{m.client['outbound']}/hello?x=1",
        "-H",
        "host: h2web",
    )
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["name"] == "h2web" and body["proto"] == "h2"
    assert body["path"] == "/hello?x=1"
    assert "< HTTP/2 200" in r.stderr
    assert "x-trailer: yes" in r.stderr  # trailers passed through both proxies
    headers = dict(body["headers"])
    assert headers["x-forwarded-client-cert"].endswith("sa/client")  # it came over mTLS
    assert m.stats(m.h2web, "inbound").get("h2_cx_total", 0) >= 1  # h2 negotiated by ALPN


def test_h2_caller_to_an_http1_app_is_downgraded_at_the_server_side(m: H2Mesh) -> None:
    client = H2Client(m.client["outbound"])
    try:
        r = client.get("/down", "web")  # (meshkit's app reads no request body)
    finally:
        client.close()
    assert r.status == 200, r
    body = json.loads(bytes(r.body))
    assert body["name"] == "web" and body["path"] == "/down"  # the HTTP/1.1 app answered


def test_many_concurrent_streams_on_one_connection(m: H2Mesh) -> None:
    client = H2Client(m.client["outbound"])
    try:
        sids = [
            client.request(f"/s{i}", "h2web" if i % 2 else "web", headers=[("x-n", str(i))])
            for i in range(60)
        ]
        responses = client.wait(sids, timeout=30)
    finally:
        client.close()
    assert [r.status for r in responses] == [200] * 60
    for i, r in enumerate(responses):
        body = json.loads(bytes(r.body))
        assert body["path"] == f"/s{i}"
        assert body["name"] == ("h2web" if i % 2 else "web")


def test_request_body_streams_to_the_h2_app(m: H2Mesh) -> None:
    client = H2Client(m.client["outbound"])
    try:
        r = client.get("/upload", "h2web", method="POST", body=b"y" * (3 * MIB))
    finally:
        client.close()
    assert r.status == 200
    assert json.loads(bytes(r.body))["received"] == 3 * MIB


def test_h2load_through_the_pair_has_no_errors(m: H2Mesh) -> None:
    out = subprocess.run(
        ["h2load", "-n", "2000", "-c", "4", "-m", "10", "-H", ":authority: h2web"]
        + [f"http://127.0.0.1:{m.client['outbound']}/load"],
        capture_output=True,
        text=True,
        timeout=90,
    ).stdout
    assert "2000 succeeded, 0 failed, 0 errored, 0 timeout" in out, out
    assert "2000 2xx" in out, out


def test_http1_client_over_the_h2_connection_between_proxies(m: H2Mesh) -> None:
    """As shipped (no DestinationRule, no PLAIT_H2_UPGRADE), upg-0 carries HTTP/1.1 requests
    that overlap others over HTTP/2, since web4-0 registered with the protocol hint "h2"; a
    request alone takes pooled HTTP/1.1. web4-0 downgrades the upgraded ones for its
    HTTP/1.1 app. (An endpoint without the hint, e.g. Envoy in test_envoy_interop.py, gets
    HTTP/1.1 only.)"""
    _, web4 = m.service("web4", "upg-0")
    wait_until(
        lambda: send_request(m.upg["outbound"], "/", headers={"host": "web4"}).status == 200,
        15,
        "upg-0 to reach web4",
    )
    for i in range(3):  # one at a time: HTTP/1.1 between the proxies
        assert send_request(m.upg["outbound"], f"/alone{i}", headers={"host": "web4"}).status == 200
    assert m.stats(web4, "inbound").get("h2_cx_total", 0) == 0

    held: list[int] = []
    holder = threading.Thread(
        target=lambda: held.append(
            send_request(m.upg["outbound"], "/hold?sleep_ms=1500", headers={"host": "web4"}).status
        )
    )
    holder.start()
    time.sleep(0.5)  # the held request is in flight now: the next ones join it over HTTP/2
    try:
        for i in range(5):
            r = send_request(m.upg["outbound"], f"/up{i}", headers={"host": "web4"})
            assert r.status == 200, r
            body = r.json()
            assert body["path"] == f"/up{i}"
            assert "x-plait-h2-upgraded" not in dict(body["headers"])
    finally:
        holder.join(10)
    assert held == [200]
    assert m.stats(web4, "inbound").get("h2_cx_total", 0) >= 1


def test_a_caller_cannot_send_the_upgrade_marker(m: H2Mesh) -> None:
    """`x-plait-h2-upgraded` is one proxy's note to the next; a caller's copy is dropped."""
    for ports in (m.client, m.upg):
        r = send_request(
            ports["outbound"], "/forged", headers={"host": "web", "x-plait-h2-upgraded": "1"}
        )
        assert r.status == 200, r
        assert "x-plait-h2-upgraded" not in dict(r.json()["headers"])


def test_destination_rule_h2_upgrade_policy_moves_http1_onto_h2(m: H2Mesh) -> None:
    """client-0 has the upgrade turned off proxy-wide; a DestinationRule with h2UpgradePolicy
    UPGRADE for `web2` still makes it carry HTTP/1.1 requests over HTTP/2 to web2-0."""
    _, web2 = m.service("web2", "client-0", "{connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}")

    def served() -> bool:
        r = send_request(m.client["outbound"], "/dr", headers={"host": "web2"})
        return r.status == 200

    wait_until(served, 15, "client-0 to reach web2")
    for i in range(5):
        r = send_request(m.client["outbound"], f"/dr{i}", headers={"host": "web2"})
        assert r.status == 200 and r.json()["path"] == f"/dr{i}", r
    inbound = m.stats(web2, "inbound")
    assert inbound.get("h2_cx_total", 0) >= 1, inbound  # the requests arrived over HTTP/2
    assert inbound["downstream_cx_total"] == inbound["h2_cx_total"], inbound  # and only so


def test_max_requests_per_connection_applies_to_the_h2_connection(m: H2Mesh) -> None:
    """maxRequestsPerConnection 2 (as in Envoy, for HTTP/2 upstreams too): six HTTP/1.1
    requests upgraded by upg-0 (h2UpgradePolicy UPGRADE) take three connections to web3-0,
    each closed once its two streams are done."""
    _, web3 = m.service(
        "web3",
        "upg-0",
        "{connectionPool: {http: {maxRequestsPerConnection: 2, h2UpgradePolicy: UPGRADE}}}",
    )
    wait_until(
        lambda: send_request(m.upg["outbound"], "/", headers={"host": "web3"}).status == 200,
        15,
        "upg-0 to reach web3",
    )
    before = m.stats(web3, "inbound")["h2_cx_total"]
    for i in range(6):
        r = send_request(m.upg["outbound"], f"/m{i}", headers={"host": "web3"})
        assert r.status == 200 and r.json()["path"] == f"/m{i}", r
    inbound = m.stats(web3, "inbound")
    assert inbound["h2_cx_total"] - before >= 3, inbound  # fails if one connection carries all
    assert inbound["downstream_cx_total"] == inbound["h2_cx_total"], inbound  # all upgraded


def _burst(port: int, host: str, n: int, target: str) -> list[int]:
    """`n` HTTP/1.1 requests sent at once from their own threads; their statuses."""
    statuses: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            status = send_request(port, f"{target}&i={i}", headers={"host": host}).status
        except OSError:
            status = -1
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return statuses


def test_a_burst_shares_one_new_h2_connection_and_fails_together(m: H2Mesh) -> None:
    """20 requests at once to a host with no HTTP/2 connection yet open one, not 20: the
    others wait for it (as Envoy's pool does). When the host is gone, the waiting ones get
    the connect failure (503 UF after retries), none hangs."""
    proc, web5 = m.service("web5", "upg-0", "{connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}")
    endpoint = f"127.0.0.1:{web5['inbound']}"
    # No request before the burst: it must find no HTTP/2 connection to web5-0 yet.
    wait_until(
        lambda: endpoint in json.dumps(m.mesh.admin(m.upg, "/clusters")), 15, "upg-0 to know web5"
    )
    statuses = _burst(m.upg["outbound"], "web5", 20, "/burst?sleep_ms=300")
    assert statuses == [200] * 20, statuses
    inbound = m.stats(web5, "inbound")
    assert inbound["h2_cx_total"] == 1, inbound  # was one per request before the fix

    proc.kill()  # the endpoint stays listed until it expires: connects fail
    time.sleep(0.5)
    statuses = _burst(m.upg["outbound"], "web5", 10, "/gone?x=1")
    assert len(statuses) == 10 and all(s in (502, 503) for s in statuses), statuses


def test_grpc_caller_gets_grpc_shaped_local_replies(m: H2Mesh) -> None:
    client = H2Client(m.client["outbound"])
    grpc = [("content-type", "application/grpc"), ("te", "trailers")]
    try:
        r = client.get("/pkg.Svc/Method", "nowhere", method="POST", headers=grpc)
        ok = client.get("/pkg.Svc/Method", "h2web", method="POST", headers=grpc, body=b"\0" * 5)
    finally:
        client.close()
    assert r.status == 200, r  # never an HTML/text 404
    assert r.headers["grpc-status"] == "12"  # UNIMPLEMENTED for no route
    assert r.body == b""
    assert ok.status == 200 and ok.trailers.get("grpc-status") == "0", ok


def test_grpc_timeout_is_honoured_and_propagated_to_the_next_hop(m: H2Mesh) -> None:
    """A caller's `grpc-timeout: 200m` ends the call after ~200 ms at both hops with
    DEADLINE_EXCEEDED; the inbound proxy times out itself (UT), not after a longer wait."""
    client = H2Client(m.client["outbound"])
    grpc = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "200m")]
    try:
        r = client.get("/slow?ms=3000", "h2web", method="POST", headers=grpc, body=b"\0" * 5)
    finally:
        client.close()
    assert r.status == 200, r
    assert r.headers.get("grpc-status") == "4", r  # DEADLINE_EXCEEDED

    def inbound_entry() -> dict[str, Any] | None:
        log = m.tmp / "h2web-0.access.log"
        if not log.exists():
            return None
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("path", "").startswith("/slow"):
                return entry  # type: ignore[no-any-return]
        return None

    entry = wait_until(inbound_entry, 10, "the inbound access log entry")
    # The inbound has no route timeout of its own: without the propagated budget it would
    # have waited the app's 3 s and logged a 200. UT says it gave up at the budget itself.
    assert entry["response_flags"] == "UT"
    assert entry["status"] in (200, 504)


def test_slow_reader_of_a_large_response_keeps_proxy_memory_bounded(m: H2Mesh) -> None:
    size = 64 * MIB
    pids = [m.client_proc.popen.pid, m.h2web_proc.popen.pid]  # type: ignore[union-attr]
    before = [rss_kib(p) for p in pids]
    client = H2Client(m.client["outbound"], window=2**31 - 1)  # only TCP stops the proxy
    try:
        sid = client.request(f"/big?size={size}", "h2web")
        time.sleep(3)  # read nothing: the proxies must stop reading, not buffer 64 MiB
        during = [rss_kib(p) for p in pids]
        response = client.wait([sid], timeout=60)[0]
    finally:
        client.close()
    assert response.status == 200 and len(response.body) == size
    for b, d in zip(before, during, strict=True):
        assert d - b < 24 * 1024, (before, during)  # KiB: far below the 64 MiB response


def test_slow_readers_do_not_stall_other_streams_on_the_shared_connection(m: H2Mesh) -> None:
    """Six HTTP/1.1 clients fetch 64 MiB each and read nothing: their streams on the proxies'
    shared HTTP/2 connections stop at their stream windows, and a seventh request on the same
    connections is still answered (the connection window is not theirs to hold)."""
    stalled = []
    try:
        for _ in range(6):
            sock = socket.create_connection(("127.0.0.1", m.client["outbound"]), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /big?size=%d HTTP/1.1\r\nhost: h2web\r\n\r\n" % (64 * MIB))
            stalled.append(sock)
        time.sleep(2)  # long enough for every window on the way to fill
        client = H2Client(m.client["outbound"])
        try:
            r = client.get("/after-the-stalled-ones", "h2web")
        finally:
            client.close()
        assert r.status == 200 and json.loads(r.body)["path"] == "/after-the-stalled-ones", r
    finally:
        for sock in stalled:
            sock.close()


def test_drain_sends_goaway_and_finishes_in_flight_streams(m: H2Mesh) -> None:
    """SIGTERM: GOAWAY first, then the stream in flight still gets its whole response.
    (The `h2` library treats GOAWAY as the end of everything, so plait's codec is the
    client here.)"""
    proc, ports = m.mesh.proxy("drainer-0", "client", "app=client")
    wait_until(lambda: m.mesh.converged({"drainer-0"}), 20, "drainer convergence")
    probe = H2Client(ports["outbound"])
    try:
        wait_until(lambda: probe.get("/", "h2web").status == 200, 15, "drainer routable")
    finally:
        probe.close()
    codec = H2Connection(H2Config(client=True))
    sock = socket.create_connection(("127.0.0.1", ports["outbound"]), timeout=10)
    events: list[tuple[int, object]] = []
    try:
        head = RequestHead(b"GET", b"/slow?ms=1000", [(b"host", b"h2web")])
        sid = codec.send_request(head, end_stream=True)
        sock.sendall(codec.data_to_send())
        time.sleep(0.3)
        proc.popen.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        while True:
            data = sock.recv(65536)
            if not data:
                break
            events += codec.receive_data(data)
            sock.sendall(codec.data_to_send())
    finally:
        sock.close()
        proc.stop()
    kinds = [type(e).__name__ for _, e in events]
    assert "GoAway" in kinds
    goaway = kinds.index("GoAway")
    mine = [e for s, e in events if s == sid]
    assert [type(e).__name__ for e in mine][0] == "ResponseHead"
    assert mine[0].status == 200  # type: ignore[attr-defined]
    assert mine[-1] is END_OF_STREAM
    body = b"".join(e.data for e in mine if isinstance(e, Data))
    assert json.loads(body)["path"] == "/slow?ms=1000"
    response_at = next(i for i, (s, e) in enumerate(events) if s == sid)
    assert goaway < response_at  # told before the in-flight response finished


def test_grpcio_unary_streaming_trailers_and_deadline_through_the_mesh(m: H2Mesh) -> None:
    import grpc

    channel = grpc.insecure_channel(
        f"127.0.0.1:{m.client['outbound']}",
        options=[("grpc.default_authority", "grpcweb:50051")],
    )
    try:
        echo = channel.unary_unary("/test.Echo/Echo")
        count = channel.unary_stream("/test.Echo/Count")
        wait_until(lambda: _grpc_ok(echo), 15, "grpcweb routable")
        reply, call = echo.with_call(b"hello", timeout=10)
        assert reply == b"echo:hello"
        assert ("x-echo-trailer", "yes") in call.trailing_metadata()
        assert [bytes(x) for x in count(b"50", timeout=10)] == [b"%d" % i for i in range(50)]
        sizes = [1, 1000, 100_000, 1_000_000] * 4  # client streaming: ~4 MiB in 16 messages
        assert channel.stream_unary("/test.Echo/Total")(
            (b"z" * n for n in sizes), timeout=20
        ) == b"%d" % sum(sizes)
        words = [b"a", b"bb", b"ccc"] * 10  # bidirectional
        got = channel.stream_stream("/test.Echo/Chat")(iter(words), timeout=10)
        assert [bytes(x) for x in got] == [b"re:" + w for w in words]
        with pytest.raises(grpc.RpcError) as failed:
            echo(b"fail", timeout=10)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as late:
            echo(b"sleep3", timeout=0.3)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        channel.close()
    nowhere = grpc.insecure_channel(
        f"127.0.0.1:{m.client['outbound']}", options=[("grpc.default_authority", "nowhere")]
    )
    try:
        with pytest.raises(grpc.RpcError) as missing:
            nowhere.unary_unary("/test.Echo/Echo")(b"x", timeout=10)
        assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED  # no route: gRPC-shaped
    finally:
        nowhere.close()


def _grpc_ok(echo: Any) -> bool:
    import grpc

    try:
        return bool(echo(b"ping", timeout=2) == b"echo:ping")
    except grpc.RpcError:
        return False


FLAKY_GRPC_APP = r"""
import os
from concurrent import futures
import grpc

seen = {}

def echo(request, context):
    seen[request] = seen.get(request, 0) + 1
    if request.startswith(b"flaky") and seen[request] == 1:
        context.abort(grpc.StatusCode.UNAVAILABLE, "first try fails")
    if request.startswith(b"broken"):
        context.abort(grpc.StatusCode.INTERNAL, "always fails")
    return b"%d" % seen[request]

handler = grpc.method_handlers_generic_handler(
    "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
server = grpc.server(futures.ThreadPoolExecutor(4))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("127.0.0.1:" + os.environ["PORT"])
server.start()
server.wait_for_termination()
"""


def test_grpc_unavailable_trailers_only_is_retried_per_the_route(
    proxies: Any, tmp_path: Path
) -> None:
    """retryOn `unavailable`: a trailers-only UNAVAILABLE is retried (the caller sees one
    success and the app two tries); INTERNAL is not in the set and reaches the caller."""
    import grpc

    port = free_port()
    app = Proc([sys.executable, "-c", FLAKY_GRPC_APP], tmp_path / "flaky.log", {"PORT": str(port)})
    try:
        snapshot = {
            "clusters": [
                {
                    "name": "greeter",
                    "ports": [50051],
                    "protocols": ["grpc"],
                    "endpoints": [{"address": "127.0.0.1", "port": port}],
                }
            ],
            "routes": [
                {
                    "name": "greeter",
                    "parent_kind": "Service",
                    "parent_name": "greeter",
                    "rules": [
                        {
                            "backends": [{"service": "greeter"}],
                            "retries": {"attempts": 2, "retry_on": ["unavailable"]},
                        }
                    ],
                }
            ],
        }
        proxy = proxies.start(snapshot)
        channel = grpc.insecure_channel(
            f"127.0.0.1:{proxy.outbound}", options=[("grpc.default_authority", "greeter")]
        )
        try:
            echo = channel.unary_unary("/test.Echo/Echo")
            wait_until(lambda: _grpc_up(echo), 15, "the flaky app")
            assert echo(b"flaky-1", timeout=10) == b"2"  # the second try answered
            with pytest.raises(grpc.RpcError) as failed:
                echo(b"broken-1", timeout=10)
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            assert echo(b"fine-1", timeout=10) == b"1"  # one try when nothing fails
        finally:
            channel.close()
        assert proxy.listener_stat("outbound", "upstream_rq_retry") >= 1
    finally:
        app.stop()


def _grpc_up(echo: Any) -> bool:
    import grpc

    try:
        echo(b"ping", timeout=2)
        return True
    except grpc.RpcError:
        return False


def test_h2_request_body_to_an_http1_upstream_is_chunked_and_echoed(
    proxies: Any, upstreams: Any
) -> None:
    web = upstreams.start("web")
    snapshot = {
        "clusters": [
            {
                "name": "web",
                "ports": [80],
                "endpoints": [{"address": "127.0.0.1", "port": web.port}],
            }
        ]
    }
    proxy = proxies.start(snapshot)
    body = bytes(range(256)) * 8192  # 2 MiB
    client = H2Client(proxy.outbound)
    try:
        r = client.get("/mirror", "web", method="POST", body=body)
        sized = client.get(
            "/mirror", "web", method="POST", body=b"abc", headers=[("content-length", "3")]
        )
    finally:
        client.close()
    assert r.status == 200 and bytes(r.body) == body
    assert sized.status == 200 and bytes(sized.body) == b"abc"
