"""Istio's Bookinfo traffic-management tasks, replayed on `plait up`: request routing by user,
a 50/50 traffic shift, a 7 s delay fault that makes productpage show its error section, and a
circuit breaker tripping under concurrency."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from demo import ROOT, Demo, running_demo

EXAMPLES = ROOT / "examples" / "bookinfo"

BREAKER = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details}
spec:
  host: details
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, http2MaxRequests: 1}
"""


def versions(client: httpx.Client, url: str, n: int) -> list[str]:
    pages = [client.get(url).text for _ in range(n)]
    return [m.group(1) for p in pages if (m := re.search(r"reviews-(v[123])", p))]


def apply(demo: Demo, *args: str, stdin: str | None = None) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "plait", "apply", *args], env=demo.env, input=stdin,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    time.sleep(1.0)  # pushed in ~100 ms; give every proxy time to ack


@pytest.mark.timeout(200)
def test_bookinfo_routing_shift_fault_and_breaker(tmp_path: Path) -> None:
    with running_demo(tmp_path) as demo, httpx.Client(timeout=20) as client:
        # Request routing: jason -> v2 (black stars), everyone else -> v1.
        apply(demo, "-f", str(EXAMPLES / "route-jason.yaml"))
        assert set(versions(client, demo.url + "?u=jason", 10)) == {"v2"}
        assert set(versions(client, demo.url, 10)) == {"v1"}

        # Traffic shifting: 50/50 between v1 and v3 (everything else unchanged).
        apply(demo, "-f", str(EXAMPLES / "route-50-50.yaml"))
        seen = versions(client, demo.url, 60)
        assert set(seen) == {"v1", "v3"}
        assert 15 <= seen.count("v3") <= 45  # binomial(60, 0.5): far inside 6 sigma

        # Fault injection: ratings waits 7 s for jason; productpage gives reviews 3 s.
        apply(demo, "-f", str(EXAMPLES / "route-jason.yaml"))
        apply(demo, "-f", str(EXAMPLES / "fault-ratings-delay.yaml"))
        started = time.monotonic()
        page = client.get(demo.url + "?u=jason").text
        assert "product reviews are currently unavailable" in page
        assert 2.5 < time.monotonic() - started < 10
        assert "currently unavailable" not in client.get(demo.url).text  # others unaffected

        # Circuit breaking: details allows one connection and one pending request.
        apply(demo, "-f", "-", stdin=BREAKER)
        with ThreadPoolExecutor(max_workers=12) as pool:
            pages = list(pool.map(lambda _: client.get(demo.url).text, range(36)))
        failed = [p for p in pages if "product details are currently unavailable" in p]
        assert failed, "the breaker never tripped"
        metrics = client.get(demo.control + "/api/v1/proxies").json()
        admin = next(p["addresses"]["admin"] for p in metrics if p["name"] == "productpage-0")
        text = client.get(f"http://{admin}/stats/prometheus").text
        assert re.search(r'plait_circuit_breaker_overflow_total\{cluster="details"\} [1-9]', text)
