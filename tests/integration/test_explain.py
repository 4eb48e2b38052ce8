"""`plait explain` against the running demo: the route, backend and policies of a request."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from demo import ROOT, running_demo


@pytest.mark.timeout(150)
def test_explain_shows_the_canary_route_backend_and_endpoints(tmp_path: Path) -> None:
    with running_demo(tmp_path) as demo:
        applied = demo.plait(
            "apply", "-f", str(ROOT / "examples" / "bookinfo" / "route-jason.yaml")
        )
        assert applied.returncode == 0, applied.stderr
        time.sleep(1.0)  # the push (debounced 100 ms) reaches productpage's proxy
        args = [
            "explain",
            "--from",
            "productpage",
            "GET",
            "http://reviews:9080/reviews/0",
            "-o",
            "json",
        ]
        jason = json.loads(demo.plait(*args, "-H", "end-user: jason").stdout)
        other = json.loads(demo.plait(*args).stdout)
        text = demo.plait(*args[:-2], "-H", "end-user: jason").stdout
    assert jason["route"]["backend"] == "reviews-v2.default"
    assert other["route"]["backend"] == "reviews-v1.default"
    assert [e["version"] for e in jason["endpoints"]] == ["v2"]
    assert jason["endpoints"][0]["identity"].startswith(
        "spiffe://cluster.local/ns/default/sa/reviews"
    )
    assert jason["cluster"]["load_balancer"] == "LEAST_REQUEST"
    assert jason["authorization"][0]["decision"].startswith("ALLOW")
    assert jason["verdict"] == "routed"
    assert "backend: reviews-v2.default" in text
