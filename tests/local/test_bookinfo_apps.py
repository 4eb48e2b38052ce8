"""Bookinfo apps as real processes on loopback: routes, versions, failures, header propagation."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

STARTUP_TIMEOUT = 10.0
# Proxy variables of the machine running the tests must not leak into the apps.
PROXY_VARIABLES = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"}
TRACE_HEADERS = {
    "x-request-id": "req-42",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
    "user-agent": "bookinfo-test/1.0",
    "end-user": "alice",
}


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def call(
    port: int,
    path: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


@dataclass
class App:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Launcher:
    """Starts apps as subprocesses, waits for /health, and terminates every one on close."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.apps: list[App] = []

    def start(self, service: str, port: int = 0, **env: str) -> App:
        port = port or free_port()
        environ = {k: v for k, v in os.environ.items() if k.upper() not in PROXY_VARIABLES}
        environ.update(PORT=str(port), **env)
        log = self.log_dir / f"{service}-{port}.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "plait.local.bookinfo", service],
                env=environ,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        app = App(process, port, log)
        self.apps.append(app)
        self._wait_healthy(app)
        return app

    def _wait_healthy(self, app: App) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if app.process.poll() is not None:
                pytest.fail(f"app exited with {app.process.returncode}:\n{app.log.read_text()}")
            try:
                if call(app.port, "/health").status == 200:
                    return
            except OSError:
                time.sleep(0.02)
        pytest.fail(f"app not healthy after {STARTUP_TIMEOUT} s:\n{app.log.read_text()}")

    def close(self) -> None:
        for app in self.apps:
            app.process.terminate()
        for app in self.apps:
            try:
                app.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                app.process.kill()
                app.process.wait()


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[Callable[..., App]]:
    launcher = Launcher(tmp_path)
    yield launcher.start
    launcher.close()


@pytest.fixture(scope="module")
def bookinfo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The whole topology wired directly (no proxy), with reviews v3; yields productpage."""
    launcher = Launcher(tmp_path_factory.mktemp("bookinfo"))
    try:
        ratings = launcher.start("ratings")
        details = launcher.start("details")
        reviews = launcher.start("reviews", SERVICE_VERSION="v3", RATINGS_URL=ratings.url)
        yield launcher.start(
            "productpage",
            DETAILS_URL=details.url,
            REVIEWS_URL=reviews.url,
            RATINGS_URL=ratings.url,
        )
    finally:
        launcher.close()


@dataclass
class Recorded:
    request_line: str
    headers: dict[str, str]
    client_port: int


class Recorder:
    """A fake upstream or proxy that keeps every request and answers a small JSON object."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                headers = {name.lower(): value for name, value in self.headers.items()}
                recorder.requests.append(
                    Recorded(self.requestline, headers, self.client_address[1])
                )
                body = b'{"id": 0, "recorded": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


def test_every_app_answers_health(start_app: Callable[..., App]) -> None:
    for service in ("productpage", "details", "reviews", "ratings"):
        reply = call(start_app(service).port, "/health")
        assert (reply.status, reply.json()) == (200, {"status": "ok"})


def test_details_describes_the_comedy_of_errors(start_app: Callable[..., App]) -> None:
    reply = call(start_app("details").port, "/details/7")
    book = reply.json()
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert book["id"] == 7
    assert book["author"] == "William Shakespeare"
    assert (book["type"], book["language"]) == ("paperback", "English")
    assert {"year", "pages", "publisher", "ISBN-10", "ISBN-13"} <= book.keys()


def test_responses_keep_the_connection_alive(start_app: Callable[..., App]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", start_app("details").port, timeout=10)
    try:
        for path in ("/details/0", "/nope", "/health"):
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            assert response.headers["Content-Length"] == str(len(body))
            assert not response.will_close
        assert response.status == 200
    finally:
        conn.close()


def test_ratings_post_updates_them_in_memory(start_app: Callable[..., App]) -> None:
    port = start_app("ratings").port
    assert call(port, "/ratings/0").json() == {
        "id": 0,
        "ratings": {"Reviewer1": 5, "Reviewer2": 4},
    }
    posted = call(port, "/ratings/0", "POST", b'{"Reviewer1": 2}')
    assert (posted.status, posted.json()["ratings"]) == (200, {"Reviewer1": 2, "Reviewer2": 4})
    assert call(port, "/ratings/0").json()["ratings"]["Reviewer1"] == 2
    assert call(port, "/ratings/1").json()["ratings"]["Reviewer1"] == 5


def test_ratings_rejects_bad_input(start_app: Callable[..., App]) -> None:
    port = start_app("ratings").port
    for body in (b"not json", b"[5]", b"{}", b'{"Reviewer1": 6}', b'{"Reviewer1": true}'):
        reply = call(port, "/ratings/0", "POST", body)
        assert reply.status == 400, body
        assert "error" in reply.json()
    assert call(port, "/ratings/0").json()["ratings"] == {"Reviewer1": 5, "Reviewer2": 4}


def test_reviews_v1_shows_no_ratings(start_app: Callable[..., App]) -> None:
    # No ratings app runs: v1 must not need it.
    reply = call(start_app("reviews", SERVICE_VERSION="v1").port, "/reviews/0")
    body = reply.json()
    assert reply.headers["x-reviews-version"] == "v1"
    assert body["clustername"] == "null" and body["podname"]
    assert [review["reviewer"] for review in body["reviews"]] == ["Reviewer1", "Reviewer2"]
    assert all("rating" not in review for review in body["reviews"])


@pytest.mark.parametrize(("version", "color"), [("v2", "black"), ("v3", "red")])
def test_reviews_v2_v3_show_stars_in_their_color(
    start_app: Callable[..., App], version: str, color: str
) -> None:
    ratings = start_app("ratings")
    reviews = start_app("reviews", SERVICE_VERSION=version, RATINGS_URL=ratings.url)
    reply = call(reviews.port, "/reviews/0")
    assert reply.headers["x-reviews-version"] == version
    assert [review["rating"] for review in reply.json()["reviews"]] == [
        {"stars": 5, "color": color},
        {"stars": 4, "color": color},
    ]


def test_reviews_reports_ratings_unavailable(start_app: Callable[..., App]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    reply = call(start_app("reviews", SERVICE_VERSION="v2", RATINGS_URL=dead).port, "/reviews/0")
    assert reply.status == 200
    assert [review["rating"] for review in reply.json()["reviews"]] == [
        {"error": "Ratings service is currently unavailable"}
    ] * 2


def test_reviews_propagates_headers_to_ratings(
    start_app: Callable[..., App], recorder: Recorder
) -> None:
    reviews = start_app("reviews", SERVICE_VERSION="v3", RATINGS_URL=recorder.url)
    call(reviews.port, "/reviews/0", headers=TRACE_HEADERS)
    (request,) = recorder.requests
    assert request.request_line == "GET /ratings/0 HTTP/1.1"
    assert TRACE_HEADERS.items() <= request.headers.items()


def test_productpage_shows_details_and_reviews(bookinfo: App) -> None:
    reply = call(bookinfo.port, "/productpage")
    page = reply.text
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/html")
    assert "The Comedy of Errors" in page
    assert "William Shakespeare" in page
    assert "Reviewer1" in page and "Reviewer2" in page
    assert 'style="color: red"' in page
    assert page.count("★") == 9  # 5 + 4 stars from ratings
    assert "Reviews served by: reviews-v3" in page
    assert "unavailable" not in page


def test_productpage_json_api(bookinfo: App) -> None:
    products = call(bookinfo.port, "/api/v1/products").json()
    assert [product["id"] for product in products] == [0]
    assert call(bookinfo.port, "/api/v1/products/0").json()["author"] == "William Shakespeare"
    reviews = call(bookinfo.port, "/api/v1/products/0/reviews").json()
    assert reviews["reviews_version"] == "v3"
    assert reviews["reviews"][0]["rating"] == {"stars": 5, "color": "red"}
    ratings = call(bookinfo.port, "/api/v1/products/0/ratings").json()
    assert ratings["ratings"] == {"Reviewer1": 5, "Reviewer2": 4}


def test_index_links_to_the_product_page(bookinfo: App) -> None:
    assert 'href="/productpage"' in call(bookinfo.port, "/").text


def test_productpage_degrades_when_upstreams_are_down(start_app: Callable[..., App]) -> None:
    details = start_app("details")
    dead = f"http://127.0.0.1:{free_port()}"
    productpage = start_app("productpage", DETAILS_URL=details.url, REVIEWS_URL=dead)
    reply = call(productpage.port, "/productpage")
    assert reply.status == 200
    assert "William Shakespeare" in reply.text
    assert "Sorry, product reviews are currently unavailable for this book." in reply.text
    assert call(productpage.port, "/api/v1/products/0/reviews").status == 503

    productpage = start_app("productpage", DETAILS_URL=dead, REVIEWS_URL=dead)
    reply = call(productpage.port, "/productpage")
    assert reply.status == 200
    assert "Sorry, product details are currently unavailable for this book." in reply.text


def test_productpage_recovers_when_an_upstream_restarts(start_app: Callable[..., App]) -> None:
    details = start_app("details")
    productpage = start_app("productpage", DETAILS_URL=details.url)
    assert "William Shakespeare" in call(productpage.port, "/productpage").text
    # The pooled connection to the old process is dead now; the next call must not fail on it.
    details.process.terminate()
    details.process.wait(timeout=5)
    start_app("details", port=details.port)
    assert "William Shakespeare" in call(productpage.port, "/productpage").text


def test_productpage_propagates_trace_and_user_headers(
    start_app: Callable[..., App], recorder: Recorder
) -> None:
    productpage = start_app("productpage", DETAILS_URL=recorder.url, REVIEWS_URL=recorder.url)
    reply = call(productpage.port, "/productpage", headers=TRACE_HEADERS)
    assert "Signed in as alice" in reply.text
    assert [r.request_line for r in recorder.requests] == [
        "GET /details/0 HTTP/1.1",
        "GET /reviews/0 HTTP/1.1",
    ]
    for request in recorder.requests:
        assert TRACE_HEADERS.items() <= request.headers.items()


def test_sign_in_sends_end_user(start_app: Callable[..., App], recorder: Recorder) -> None:
    productpage = start_app("productpage", DETAILS_URL=recorder.url, REVIEWS_URL=recorder.url)
    assert "Signed in as jason" in call(productpage.port, "/productpage?u=jason").text

    login = call(
        productpage.port,
        "/login",
        "POST",
        b"username=kim",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (login.status, login.headers["Location"]) == (303, "/productpage")
    cookie = login.headers["Set-Cookie"].split(";")[0]
    assert cookie == "user=kim"
    assert (
        "Signed in as kim"
        in call(productpage.port, "/productpage", headers={"Cookie": cookie}).text
    )
    assert [r.headers.get("end-user") for r in recorder.requests] == ["jason"] * 2 + ["kim"] * 2

    logout = call(productpage.port, "/logout", headers={"Cookie": cookie})
    assert "Max-Age=0" in logout.headers["Set-Cookie"]
    assert call(productpage.port, "/login", "POST", b"username=").status == 400


def test_http_proxy_mode_uses_absolute_form(
    start_app: Callable[..., App], recorder: Recorder
) -> None:
    productpage = start_app("productpage", HTTP_PROXY=recorder.url)
    for _ in range(2):
        reply = call(productpage.port, "/productpage", headers={"x-request-id": "via-proxy"})
        assert "Sorry" not in reply.text  # the recorder's JSON stands in for both upstreams
    assert [(r.request_line, r.headers["host"]) for r in recorder.requests] == [
        ("GET http://details:9080/details/0 HTTP/1.1", "details:9080"),
        ("GET http://reviews:9080/reviews/0 HTTP/1.1", "reviews:9080"),
    ] * 2
    assert all(r.headers["x-request-id"] == "via-proxy" for r in recorder.requests)
    # Keep-alive toward the proxy: all four calls rode one pooled connection.
    assert len({r.client_port for r in recorder.requests}) == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_zero_without_tracebacks(
    start_app: Callable[..., App], signum: signal.Signals
) -> None:
    app = start_app("details")
    # A client that resets mid-request must not make the app print a traceback.
    with socket.create_connection(("127.0.0.1", app.port)) as sock:
        sock.sendall(b"GET /details/0 HTTP/1.1\r\nHost: x\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    call(app.port, "/health")
    app.process.send_signal(signum)
    assert app.process.wait(timeout=5) == 0
    assert "Traceback" not in app.log.read_text()


def test_missing_port_is_a_usage_error() -> None:
    environ = {k: v for k, v in os.environ.items() if k != "PORT"}
    result = subprocess.run(
        [sys.executable, "-m", "plait.local.bookinfo", "details"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 2
    assert "PORT" in result.stderr
