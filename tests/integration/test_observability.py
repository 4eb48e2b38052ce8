"""Observability end to end on the Bookinfo demo (`plait up`): the control plane's roll-up
against the proxies' own metrics, a real Prometheus fed by plait's file_sd file, the
dashboard in headless Chromium, and `plait stat` / `plait tap` as a user runs them.

One demo serves the whole module (about 15 s to start); each test counts from a baseline it
reads first, so the tests do not depend on each other's traffic.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from meshkit import free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
MESH = ROOT / "examples" / "bookinfo" / "mesh.yaml"
ARTIFACTS = ROOT / "test-artifacts"
SERVICES = {"bookinfo-gateway", "productpage", "details", "reviews", "ratings"}
EDGES = {
    ("default/bookinfo-gateway", "default/productpage"),
    ("default/productpage", "default/details"),
    ("default/productpage", "default/reviews"),
    ("default/reviews", "default/ratings"),
}
# Registers the commands as the lead will in plait.cli.main.COMMANDS (if not there yet).
CLI = textwrap.dedent(
    """
    import sys
    from plait.cli import main
    for name in ("stat", "top", "tap"):
        main.COMMANDS.setdefault(name, ("plait.cli.telemetry_cmd", name))
    sys.exit(main.main())
    """
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.timeout(240)


@dataclass
class Demo:
    control: str  # the control plane's API URL
    dashboard: str
    page: str  # the product page through the gateway
    run_dir: Path
    env: dict[str, str]

    def get(self, path: str, **query: Any) -> Any:
        url = self.control + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)

    def proxies(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/proxies")  # type: ignore[no-any-return]

    def send(self, n: int, path: str = "") -> None:
        with httpx.Client(timeout=10) as client:
            for _ in range(n):
                assert client.get(self.page + path).status_code == 200

    def own_requests(self, **labels: str) -> float:
        """istio_requests_total summed over every proxy's own /stats/prometheus (the truth
        the roll-up is checked against, read with prometheus_client's parser)."""
        total = 0.0
        for p in self.proxies():
            with urllib.request.urlopen(f"http://{p['addresses']['admin']}/stats/prometheus") as r:
                text = r.read().decode()
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    if s.name == "istio_requests_total" and all(
                        s.labels.get(k) == v for k, v in labels.items()
                    ):
                        total += s.value
        return total

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-c", CLI, *args, "--server", self.control]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env)

    def proxies_tap(self) -> bool:
        """Whether the proxies serve admin /tap (the lead wires `plait.proxy.tap` in)."""
        admin = next(p for p in self.proxies() if p["service"] == "reviews")["addresses"]["admin"]
        host, port = admin.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"GET /tap HTTP/1.1\r\nhost: x\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    tmp = tmp_path_factory.mktemp("observability")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOME": str(tmp)}
    argv = [
        sys.executable,
        "-m",
        "plait",
        "up",
        str(MESH),
        "--gateway-port",
        "0",
        "--control-port",
        "0",
        "--no-table",
        "--no-cli-settings",
        "--run-dir",
        str(tmp / "run"),
    ]
    up = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp
    )
    lines: list[str] = []
    try:
        assert up.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any("All ready" in x for x in lines):
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
        text = "".join(lines)
        control = re.search(r"Control plane (http://\S+)", text)
        dashboard = re.search(r"Dashboard (http://\S+/ui)", text)
        page = re.search(r"Open (http://\S+/productpage)", text)
        assert control and dashboard and page, "plait up did not come up:\n" + text
        # Keep draining stdout so plait up never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in up.stdout or []], daemon=True).start()
        yield Demo(control[1], dashboard[1], page[1], tmp / "run", env)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()


def edge(graph: dict[str, Any], source: str, target: str) -> dict[str, Any]:
    return next(e for e in graph["edges"] if (e["source"], e["target"]) == (source, target))


def node(graph: dict[str, Any], key: str) -> dict[str, Any]:
    return next(n for n in graph["nodes"] if n["id"] == key)


# --- (a) the roll-up -------------------------------------------------------------------------


def test_graph_edges_and_service_stats_match_the_proxies_own_metrics(demo: Demo) -> None:
    calls = {"reporter": "source", "destination_service_name": "reviews"}
    before = demo.own_requests(**calls)
    demo.send(25)
    expected = before + 25  # every product page calls reviews exactly once
    wait_until(lambda: demo.own_requests(**calls) == expected, 10, "the proxies' counters")
    # Istio's other reporter, the reviews proxies, saw the same calls: no double counting.
    assert demo.own_requests(reporter="destination", destination_service_name="reviews") == expected

    def rolled_up() -> dict[str, Any] | None:
        g = demo.get("/api/v1/telemetry/graph")
        try:
            pr = edge(g, "default/productpage", "default/reviews")
        except StopIteration:
            return None  # not scraped yet: the roll-up runs every 2 s
        return g if pr["requests"] == expected else None

    graph = wait_until(rolled_up, 10, "the roll-up to catch up", interval=0.5)
    assert {n["name"] for n in graph["nodes"]} == SERVICES
    assert {(e["source"], e["target"]) for e in graph["edges"]} == EDGES
    pr = edge(graph, "default/productpage", "default/reviews")
    assert pr["errors"] == 0 and pr["success"] == 1.0
    assert pr["rps"] > 0 and 0 < pr["p50"] <= pr["p95"] <= pr["p99"]
    reviews = node(graph, "default/reviews")
    assert (reviews["kind"], reviews["proxies"]) == ("service", 3)
    assert reviews["requests"] == expected and reviews["success"] == 1.0
    assert len(reviews["series"]["rps"]) >= 2  # sparkline points, one per scrape round
    gateway = node(graph, "default/bookinfo-gateway")
    assert gateway["kind"] == "gateway"
    sent = demo.own_requests(reporter="source", source_canonical_service="bookinfo-gateway")
    assert gateway["requests"] == sent
    assert edge(graph, "default/bookinfo-gateway", "default/productpage")["requests"] == sent

    rows = {r["name"]: r for r in demo.get("/api/v1/telemetry/stat", kind="workload")["rows"]}
    per_version = [rows[f"reviews-v{v}-0"]["requests"] for v in (1, 2, 3)]
    assert sum(per_version) == expected and all(per_version)  # round robin reached each
    proxies = {p["name"]: p for p in demo.get("/api/v1/telemetry/proxies")}
    assert len(proxies) == 7 and all(p["synced"] for p in proxies.values())
    assert 0 < proxies["reviews-v1-0"]["certificate_expires_in"] <= 24 * 3600
    assert proxies["bookinfo-gateway"]["kind"] == "gateway"
    assert all(p["scrape_error"] is None for p in proxies.values())


# --- (b) a real Prometheus on the file_sd targets ---------------------------------------------


def prometheus_query(base: str, promql: str) -> float | None:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as r:
        result = json.load(r)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def prometheus(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian package `prometheus`)")
    tmp = tmp_path_factory.mktemp("prometheus")
    targets = demo.run_dir / "control" / "prometheus-targets.json"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "plait",
                "scrape_interval": "1s",
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
            }
        ],
    }
    (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def all_up() -> bool:
            try:
                with urllib.request.urlopen(f"{base}/api/v1/targets", timeout=2) as r:
                    active = json.load(r)["data"]["activeTargets"]
            except OSError:
                return False
            return len(active) == 7 and all(t["health"] == "up" for t in active)

        wait_until(all_up, 40, "Prometheus to scrape every proxy", interval=0.5)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_prometheus_scrapes_the_file_sd_targets_and_promql_agrees(
    demo: Demo, prometheus: str
) -> None:
    targets = json.loads((demo.run_dir / "control" / "prometheus-targets.json").read_text())
    assert {g["labels"]["workload"] for g in targets} == {
        "bookinfo-gateway",
        "productpage-0",
        "details-0",
        "ratings-0",
        "reviews-v1-0",
        "reviews-v2-0",
        "reviews-v3-0",
    }
    assert all(g["labels"]["__metrics_path__"] == "/stats/prometheus" for g in targets)
    selector = 'istio_requests_total{destination_service_name="reviews",reporter="source"}'
    demo.send(20)
    expected = demo.own_requests(reporter="source", destination_service_name="reviews")
    total = wait_until(
        lambda: prometheus_query(prometheus, f"sum({selector})") == expected or None,
        15,
        f"Prometheus to see {expected} calls to reviews",
        interval=0.5,
    )
    assert total
    ok = selector.replace("}", ',response_code!~"5.."}')
    success = prometheus_query(prometheus, f"sum(rate({ok}[30s])) / sum(rate({selector}[30s]))")
    assert success == 1.0
    rate = prometheus_query(prometheus, f"sum(rate({selector}[30s]))")
    assert rate is not None and rate > 0

    # The roll-up's own count agrees with Prometheus'.
    def rolled_up() -> dict[str, Any] | None:
        g = demo.get("/api/v1/telemetry/graph")
        try:
            pr = edge(g, "default/productpage", "default/reviews")
        except StopIteration:
            return None  # not scraped yet: the roll-up runs every 2 s
        return g if pr["requests"] == expected else None

    graph = wait_until(rolled_up, 10, "the roll-up", interval=0.5)
    assert node(graph, "default/reviews")["success"] == 1.0
    # Prometheus and plait label each target with who it is.
    by_service = prometheus_query(
        prometheus, 'count(up{job="plait",service="reviews",namespace="default"} == 1)'
    )
    assert by_service == 3


# --- (c) the dashboard in Chromium ----------------------------------------------------------


def test_dashboard_shows_the_graph_with_the_roll_up_numbers(demo: Demo) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("chromium is not installed (Debian package `chromium`)")
    demo.send(30)
    expected = demo.own_requests(reporter="source", destination_service_name="reviews")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(demo.dashboard)
            pr = 'g.edge[data-source="default/productpage"][data-target="default/reviews"]'
            page.wait_for_selector(f'{pr}[data-requests="{int(expected)}"]', timeout=15_000)
            names = set(page.locator("#graph g.node text.name").all_text_contents())
            assert names == SERVICES
            drawn = {
                (g.get_attribute("data-source"), g.get_attribute("data-target"))
                for g in page.locator("#graph g.edge").all()
            }
            assert drawn == EDGES

            def drawn_as_the_api_says() -> bool:
                # The page and the API read the same roll-up, but each at its own poll: an
                # edge whose last scrape lands between them differs for one roll-up (2 s).
                graph = demo.get("/api/v1/telemetry/graph")
                return all(
                    page.locator(
                        f'g.edge[data-source="{source}"][data-target="{target}"]'
                    ).get_attribute("data-requests")
                    == str(round(edge(graph, source, target)["requests"]))
                    for source, target in EDGES
                )

            wait_until(drawn_as_the_api_says, 10, "the drawn counts to match the API's", 0.5)
            for source, target in EDGES:
                label = page.locator(f'g.label[data-source="{source}"][data-target="{target}"]')
                text = label.text_content() or ""
                assert re.fullmatch(r"[\d.]+ rps · 100% · [\d.]+ (ms|s)", text), text
            row = page.locator('#services tr[data-service="default/reviews"]')
            assert row.locator("td").nth(1).text_content() == "100%"
            assert row.locator("td").last.text_content() == f"{int(expected):,}"
            assert page.locator("#proxies tbody tr").count() == 7
            assert page.locator("#live-text").text_content() == "live"
            if demo.proxies_tap():  # the live tap view, with traffic flowing
                page.select_option("#tap-service", "default/productpage")
                page.click("#tap-toggle")
                rows = page.locator("#tap tbody tr")
                deadline = time.monotonic() + 15
                while rows.count() < 6 and time.monotonic() < deadline:
                    demo.send(2)  # until the tap (opened by the page) has seen some
                    page.wait_for_timeout(300)
                assert "/productpage" in (page.locator("#tap tbody").text_content() or "")
                assert "bookinfo-gateway → productpage-0" in page.locator("#tap").inner_text()
            else:
                demo.send(6)
            page.wait_for_timeout(2500)  # one more poll: the graph shows the fresh rates
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()


# --- (d) plait stat and plait tap -------------------------------------------------------------


def test_plait_stat_prints_a_row_per_service_and_workload(demo: Demo) -> None:
    demo.send(10)
    time.sleep(2.5)  # one scrape round later the window holds the traffic

    def stat() -> str | None:
        out = demo.cli("stat")
        assert out.returncode == 0, out.stderr
        rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:]}
        return out.stdout if rows.get("reviews", ["-"] * 3)[2] != "-" else None

    text = wait_until(stat, 10, "plait stat to show reviews' traffic", interval=0.5)
    lines = text.splitlines()
    assert lines[0].split() == [
        "NAME",
        "MESHED",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == SERVICES
    assert rows["reviews"][1:3] == ["3", "100.00%"]
    assert re.fullmatch(r"[\d.]+rps", rows["reviews"][3])
    assert all(re.fullmatch(r"[\d.]+ms", cell) for cell in rows["reviews"][4:])
    one = demo.cli("stat", "svc/reviews")
    assert one.returncode == 0 and len(one.stdout.splitlines()) == 2
    workloads = demo.cli("stat", "workload")
    names = {line.split()[0] for line in workloads.stdout.splitlines()[1:]}
    assert {"reviews-v1-0", "reviews-v2-0", "reviews-v3-0", "productpage-0"} <= names
    missing = demo.cli("stat", "service/nosuch")
    assert missing.returncode == 1 and "No service nosuch found" in missing.stderr


def test_plait_tap_streams_the_requests_sent_while_tapping(demo: Demo) -> None:
    if not demo.proxies_tap():
        pytest.skip("the proxies' admin does not serve /tap yet (plait.proxy.tap not wired)")
    argv = [
        sys.executable,
        "-c",
        CLI,
        "tap",
        "reviews",
        "--path",
        "/reviews",
        "--count",
        "4",
        "-o",
        "json",
        "--server",
        demo.control,
    ]
    tap = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=demo.env
    )
    deadline = time.monotonic() + 30
    while tap.poll() is None and time.monotonic() < deadline:
        demo.send(2)  # until the tap has seen its four (it connects within a second or so)
        time.sleep(0.3)
    out, err = tap.communicate(timeout=10)
    assert tap.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 4
    for r in records:
        assert (r["service"], r["listener"], r["method"], r["status"]) == (
            "reviews",
            "inbound",
            "GET",
            200,
        )
        assert r["path"] == "/reviews/0" and r["proxy"].startswith("reviews-v")
        assert r["peer_identity"] == "spiffe://cluster.local/ns/default/sa/productpage"
        assert r["duration_ms"] > 0 and r["request_id"]
        assert any(name == "x-request-id" for name, _ in r["request_headers"])
        assert "body" not in r

    # plait top: the busiest paths, from taps the control plane opens when first asked.
    demo.get("/api/v1/telemetry/top")
    time.sleep(1.5)
    demo.send(5)

    def top() -> str | None:
        out = demo.cli("top")
        assert out.returncode == 0, out.stderr
        return out.stdout if "/productpage" in out.stdout else None

    lines = wait_until(top, 15, "plait top to show the product page", interval=0.5).splitlines()
    assert lines[0].split()[:5] == ["SOURCE", "DESTINATION", "METHOD", "PATH", "COUNT"]
    rows = [line.split() for line in lines[1:]]
    assert ["bookinfo-gateway", "productpage", "GET", "/productpage"] in [r[:4] for r in rows]
    assert ["productpage", "reviews", "GET", "/reviews/0"] in [r[:4] for r in rows]

    human = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CLI,
            "tap",
            "productpage",
            "--listener",
            "inbound",
            "--count",
            "1",
            "--server",
            demo.control,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=demo.env,
    )
    deadline = time.monotonic() + 30
    while human.poll() is None and time.monotonic() < deadline:
        demo.send(1)
        time.sleep(0.3)
    out, err = human.communicate(timeout=10)
    assert human.returncode == 0, err
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d\.\d{3}  in   GET\s+/productpage\s+200\s+[\d.]+ms  "
        r"bookinfo-gateway -> productpage-0\n",
        out,
    ), out
