"""A trace across productpage -> reviews -> ratings arrives at a real OTLP/HTTP receiver with
correct parent/child links: every proxy hop exports a span, and the apps forward the headers."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from demo import MESH, running_demo
from test_tracing_e2e import Receiver


@pytest.mark.timeout(150)
def test_bookinfo_trace_links_every_hop(tmp_path: Path) -> None:
    receiver = Receiver()
    try:
        text = MESH.read_text().replace(
            "  gateway:", f"  tracing: {{endpoint: {receiver.url}, sample: 1.0}}\n  gateway:", 1
        )
        mesh = tmp_path / "mesh.yaml"
        mesh.write_text(text)
        with running_demo(tmp_path, mesh) as demo, httpx.Client(timeout=10) as client:
            # Until a page was served by reviews v2 or v3 (the versions that call ratings).
            for _ in range(30):
                page = client.get(demo.url)
                assert page.status_code == 200
                if "reviews-v2" in page.text or "reviews-v3" in page.text:
                    break
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not _ratings_spans(receiver):
                time.sleep(0.2)
    finally:
        receiver.close()
    ratings_server = _ratings_spans(receiver)[0]
    trace = [s for _, s in receiver.spans if s.trace_id == ratings_server.trace_id]
    by_id = {s.span_id: s for s in trace}
    chain = []
    span = ratings_server
    while span is not None:
        service = next(svc for svc, s in receiver.spans if s is span)
        chain.append((service, span.kind))
        span = by_id.get(span.parent_span_id)
    # Innermost first: ratings' inbound (SERVER=2) <- reviews' outbound (CLIENT=3) <- reviews'
    # inbound <- productpage's outbound <- productpage's inbound <- the gateway.
    assert chain == [
        ("ratings", 2),
        ("reviews", 3),
        ("reviews", 2),
        ("productpage", 3),
        ("productpage", 2),
        ("bookinfo-gateway", 3),
    ], chain


def _ratings_spans(receiver: Receiver) -> list:  # type: ignore[type-arg]
    return [s for service, s in receiver.spans if service == "ratings" and s.kind == 2]
