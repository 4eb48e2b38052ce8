"""Node mode's workload declarations: flags and files in, clear errors for what is unusable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from plait.config.snapshot import Snapshot
from plait.proxy.app import ProxyOptions
from plait.proxy.node import (
    ANY_SOURCE,
    NodeOptions,
    NodeProxy,
    WorkloadError,
    WorkloadSpec,
    check_workloads,
    load_workloads,
    parse_workload,
)


def test_flag_gives_every_field() -> None:
    spec = parse_workload(
        "name=alpha-0,service=alpha,namespace=shop,app=127.0.0.1:9080,source=127.0.0.11,"
        "inbound=10.0.0.2:15106,token=T,app-health=/health,label.version=v2,label.app=alpha"
    )
    assert spec == WorkloadSpec(
        name="alpha-0",
        service="alpha",
        namespace="shop",
        labels={"version": "v2", "app": "alpha"},
        app=("127.0.0.1", 9080),
        source="127.0.0.11",
        inbound=("10.0.0.2", 15106),
        token="T",
        app_health="/health",
    )


def test_labels_default_to_app_service_and_source_to_any() -> None:
    spec = parse_workload("name=a,service=alpha")
    assert spec.labels == {"app": "alpha"}
    assert spec.source == ANY_SOURCE
    assert spec.app is None and spec.inbound is None and spec.outbound is None


def test_token_file_keeps_the_token_off_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("secret\n")
    assert parse_workload(f"name=a,service=s,token-file={tmp_path / 't'}").token == "secret"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("service=alpha", "name is required"),
        ("name=a", "service is required"),
        ("name=a,service=s,bogus=1", "unknown field 'bogus'"),
        ("name=a,service=s,app=9080", "app: '9080' is not HOST:PORT"),
        ("name=a,service=s,source=host.local", "source: 'host.local' is not an IP address"),
        ("name=a,service=s,nonsense", "'nonsense' is not KEY=VALUE"),
        ("name=a,service=s,token-file=/nonexistent/t", "cannot read token file"),
    ],
)
def test_bad_flag_names_the_field(text: str, message: str) -> None:
    with pytest.raises(WorkloadError, match=message):
        parse_workload(text)


def test_file_declares_workloads(tmp_path: Path) -> None:
    path = tmp_path / "workloads.yaml"
    path.write_text(
        "workloads:\n"
        "- {name: a-0, service: a, app: '127.0.0.1:9080', source: 127.0.0.11}\n"
        "- {name: b-0, service: b, labels: {app: b, version: v1}, outbound: '127.0.0.1:15101'}\n"
    )
    a, b = load_workloads(str(path))
    assert (a.name, a.source, a.app) == ("a-0", "127.0.0.11", ("127.0.0.1", 9080))
    assert (b.labels, b.outbound) == ({"app": "b", "version": "v1"}, ("127.0.0.1", 15101))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workloads: [{name: a, service: a, colour: red}]", r"workloads\[0\].colour: unknown"),
        ("workloads: {}", "'workloads' list"),
        ("workloads: [{name: a, service: a, labels: [x]}]", r"workloads\[0\].labels"),
        ("workloads: [{name: a, service: a, app: 9080}]", r"workloads\[0\].app: expected a str"),
    ],
)
def test_bad_file_names_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(text)
    with pytest.raises(WorkloadError, match=message):
        load_workloads(str(path))


def spec(name: str, **kwargs: object) -> WorkloadSpec:
    return WorkloadSpec(name=name, service=name, **kwargs)  # type: ignore[arg-type]


def test_check_refuses_ambiguous_workloads() -> None:
    with pytest.raises(WorkloadError, match="at least one"):
        check_workloads([])
    with pytest.raises(WorkloadError, match="declared twice"):
        check_workloads([spec("a", source="127.0.0.11"), spec("a", source="127.0.0.12")])
    with pytest.raises(WorkloadError, match="both claim 127.0.0.11"):
        check_workloads([spec("a", source="127.0.0.11"), spec("b", source="127.0.0.11")])
    with pytest.raises(WorkloadError, match="has no source="):
        check_workloads([spec("a"), spec("b", source="127.0.0.12")])
    with pytest.raises(WorkloadError, match="share an inbound address"):
        check_workloads(
            [
                spec("a", source="127.0.0.11", inbound=("127.0.0.1", 1)),
                spec("b", source="127.0.0.12", inbound=("127.0.0.1", 1)),
            ]
        )


def test_check_accepts_one_workload_without_source_or_own_outbounds() -> None:
    assert len(check_workloads([spec("a")])) == 1
    own = [spec("a", outbound=("127.0.0.1", 1)), spec("b", outbound=("127.0.0.1", 2))]
    assert len(check_workloads(own)) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "needs at least one --workload"),
        (["--workload", "name=a,service=a,colour=red"], "unknown field 'colour'"),
        (["--service", "x", "--workload", "name=a,service=a"], "declare each workload"),
        (["--workloads", "/nonexistent/w.yaml"], "No such file"),
    ],
)
def test_cli_refuses_bad_node_declarations_with_exit_2(args: list[str], message: str) -> None:
    argv = [sys.executable, "-m", "plait", "proxy", "--mode=node", "--control=127.0.0.1:1"]
    done = subprocess.run(argv + args, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert message in done.stderr


def test_each_workload_gets_its_own_inbound_state_and_cache(tmp_path: Path) -> None:
    base = ProxyOptions(
        snapshot=Snapshot(),
        inbound=("0.0.0.0", 15006),
        advertise=("10.0.0.2", 15006),
        state_dir=tmp_path / "state",
        access_log="off",
        join_token="the node's own token is not used",
    )
    specs = (
        parse_workload("name=a-0,service=a,app=127.0.0.1:9080,source=127.0.0.11,token=TA"),
        parse_workload("name=b-0,service=b,app=127.0.0.1:9081,source=127.0.0.12,token=TB"),
        parse_workload("name=c-0,service=c,app=127.0.0.1:9082,inbound=10.0.0.7:9999,source=::1"),
    )
    node = NodeProxy(NodeOptions(base, specs, cache=tmp_path / "snapshot.json"))
    a, b, c = (node._workload_options(spec, i) for i, spec in enumerate(specs))
    assert (a.mode, a.outbound, a.admin) == ("node", None, None)
    assert (a.inbound, a.advertise) == (("0.0.0.0", 15006), ("10.0.0.2", 15006))
    assert (b.inbound, b.advertise) == (("0.0.0.0", 15007), ("10.0.0.2", 15007))
    assert (c.inbound, c.advertise) == (("10.0.0.7", 9999), None)  # reached where it listens
    assert a.snapshot.node.name == "a-0" and a.snapshot.node.labels == {"app": "a"}
    assert (a.join_token, b.join_token, c.join_token) == ("TA", "TB", None)
    assert a.state_dir == tmp_path / "state" / "a-0"
    assert b.cache_path == tmp_path / "snapshot.b-0.json"
