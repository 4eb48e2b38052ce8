"""`plait apply | get | delete | status | analyze` as real subprocesses against a live API.

The API runs in this process (uvicorn in a thread, MemoryStore); every command is a separate
`python` process that reaches it over TCP, configured only through the CLI config file.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import uvloop

from plait.cli.client import ApiClient
from plait.cli.settings import save_cli_settings
from plait.control.api import create_app
from plait.control.config_service import ConfigService
from plait.control.store import MemoryStore

TOKEN = "cli-test-token"
# Registers the commands as the lead will in plait.cli.main.COMMANDS (if not there yet).
SHIM = textwrap.dedent(
    """
    import sys
    from plait.cli import main
    for name in ("apply", "get", "delete", "status", "analyze"):
        main.COMMANDS.setdefault(name, ("plait.cli.resources_cmd", name))
    sys.exit(main.main())
    """
)

SERVICES = """\
apiVersion: plait.dev/v1
kind: Service
metadata: {name: reviews}
spec:
  selector: {app: reviews}
  ports: [{port: 9080}]
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: reviews-v1}
spec:
  selector: {app: reviews, version: v1}
  ports: [{port: 9080}]
"""

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
    - backendRefs: [{name: reviews-v1, port: 9080}]
"""

WORKLOAD = """\
apiVersion: plait.dev/v1
kind: Workload
metadata: {name: reviews-v1-0}
spec: {address: 127.0.0.1, port: 9081, labels: {app: reviews, version: v1}}
"""

PROXIES: list[dict[str, Any]] = []


class Server:
    """The API in a background thread on a free port; `with` stops it and joins the thread."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        app = create_app(ConfigService(self.store), TOKEN, lambda: PROXIES)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(self.server.serve(sockets=[self.sock]))
        finally:
            loop.close()

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with Server() as s:
        yield s


@pytest.fixture
def plait(server: Server, tmp_path: Path) -> Iterator[Any]:
    """Runs `plait ARGS` in a subprocess, pointed at the server by its CLI config file only."""
    config = tmp_path / "config" / "plait.json"
    save_cli_settings(server.url, TOKEN, config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAIT_")}
    env["PLAIT_CONFIG"] = str(config)

    def run(*args: str, stdin: str = "", **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", SHIM, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**env, **extra_env},
            cwd=tmp_path,
            timeout=60,
        )

    api = ApiClient(server.url, TOKEN)  # start from an empty store
    for item in api.list()["items"]:
        api.delete(item["kind"], item["namespace"], item["name"])
    PROXIES.clear()
    yield run


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- apply ----------------------------------------------------------------------------------


def test_apply_prints_kubectl_lines_and_is_idempotent(plait: Any, tmp_path: Path) -> None:
    files = write(tmp_path / "mesh.yaml", SERVICES + "---\n" + ROUTE)
    first = plait("apply", "-f", str(files))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "service.plait.dev/reviews created",
        "service.plait.dev/reviews-v1 created",
        "httproute.gateway.networking.k8s.io/reviews created",
    ]
    again = plait("apply", "-f", str(files))
    assert [line.rsplit(" ", 1)[1] for line in again.stdout.splitlines()] == ["unchanged"] * 3


def test_apply_a_directory_takes_its_config_files_in_order(plait: Any, tmp_path: Path) -> None:
    write(tmp_path / "d" / "b-route.yml", ROUTE)
    write(tmp_path / "d" / "a-services.yaml", SERVICES)
    workload = {
        "apiVersion": "plait.dev/v1",
        "kind": "Workload",
        "metadata": {"name": "reviews-v1-0"},
        "spec": {"address": "127.0.0.1", "port": 9081},
    }
    write(tmp_path / "d" / "c-workload.json", json.dumps({"items": [workload]}))
    write(tmp_path / "d" / "notes.txt", "not: [yaml")
    result = plait("apply", "-f", str(tmp_path / "d"))
    assert result.returncode == 0, result.stderr
    assert [line.split("/")[1] for line in result.stdout.splitlines()] == [
        "reviews created",
        "reviews-v1 created",
        "reviews created",
        "reviews-v1-0 created",
    ]


def test_apply_from_stdin_with_a_namespace(plait: Any) -> None:
    result = plait("apply", "-f", "-", "-n", "prod", stdin=ROUTE)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "httproute.gateway.networking.k8s.io/reviews created\n"
    listed = plait("get", "httproutes", "-n", "prod").stdout.splitlines()
    assert [line.split()[:2] for line in listed] == [["NAMESPACE", "NAME"], ["prod", "reviews"]]
    assert "No resources found in default namespace." in plait("get", "httproutes").stderr


def test_validation_errors_name_file_line_and_field_and_store_nothing(
    plait: Any, tmp_path: Path
) -> None:
    good = write(tmp_path / "good.yaml", SERVICES)
    bad = write(
        tmp_path / "bad.yaml",
        ROUTE.replace("port: 9080}", "port: '9080'}").replace("rules:", "colour: red\n  rules:"),
    )
    result = plait("apply", "-f", str(good), "-f", str(bad))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{bad}:7: spec.colour: unknown field",
        f"{bad}:9: spec.rules[0].backendRefs[0].port: Input should be a valid integer",
    ]
    assert result.stdout == ""
    assert "No resources found" in plait("get", "svc").stderr


def test_apply_reports_a_missing_file(plait: Any, tmp_path: Path) -> None:
    result = plait("apply", "-f", str(tmp_path / "nope.yaml"))
    assert (result.returncode, result.stderr.strip()) == (
        1,
        f"plait: {tmp_path / 'nope.yaml'}: no such file or directory",
    )


def test_a_wrong_token_is_refused(plait: Any, tmp_path: Path) -> None:
    result = plait("apply", "-f", str(write(tmp_path / "s.yaml", SERVICES)), "--token", "wrong")
    assert result.returncode == 1
    assert result.stderr.startswith("plait: wrong admin token")


# --- get and delete ---------------------------------------------------------------------------


def test_get_table_yaml_json_and_all(plait: Any, tmp_path: Path) -> None:
    plait("apply", "-f", str(write(tmp_path / "m.yaml", SERVICES + "---\n" + ROUTE)))
    table = plait("get", "svc").stdout.splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "REVISION", "CREATED"]
    assert [line.split()[:2] for line in table[1:]] == [
        ["default", "reviews"],
        ["default", "reviews-v1"],
    ]
    every = plait("get", "all", "-A").stdout.splitlines()
    assert [line.split()[:3] for line in every] == [
        ["KIND", "NAMESPACE", "NAME"],
        ["HTTPRoute", "default", "reviews"],
        ["Service", "default", "reviews"],
        ["Service", "default", "reviews-v1"],
    ]
    one = json.loads(plait("get", "httproute", "reviews", "-o", "json").stdout)
    assert one["kind"] == "HTTPRoute" and one["spec"]["rules"][0]["backendRefs"][0]["port"] == 9080
    listed = json.loads(plait("get", "services", "-o", "json").stdout)
    assert [x["metadata"]["name"] for x in listed["items"]] == ["reviews", "reviews-v1"]
    # -o yaml is re-appliable as it is.
    as_yaml = plait("get", "all", "-o", "yaml").stdout
    assert as_yaml.startswith("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n")
    again = plait("apply", "-f", "-", stdin=as_yaml)
    assert again.returncode == 0 and again.stdout.count(" unchanged") == 3


def test_get_a_missing_resource_or_unknown_kind_fails(plait: Any) -> None:
    missing = plait("get", "dr", "nope")
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        "plait: DestinationRule default/nope not found",
    )
    unknown = plait("get", "pods")
    assert unknown.returncode == 1 and "unknown kind 'pods'; known kinds: Service" in unknown.stderr


def test_delete(plait: Any, tmp_path: Path) -> None:
    plait("apply", "-f", str(write(tmp_path / "s.yaml", SERVICES)))
    result = plait("delete", "svc", "reviews", "reviews-v1")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        'service.plait.dev "reviews" deleted',
        'service.plait.dev "reviews-v1" deleted',
    ]
    again = plait("delete", "svc", "reviews")
    assert (again.returncode, again.stderr.strip()) == (
        1,
        "plait: Service default/reviews not found",
    )
    assert plait("delete", "svc", "reviews", "--ignore-not-found").returncode == 0


# --- status ---------------------------------------------------------------------------------


def test_status_table_tolerates_missing_keys_and_json_has_everything(plait: Any) -> None:
    PROXIES[:] = [
        {
            "name": "reviews-v1-0",
            "service": "reviews",
            "namespace": "default",
            "labels": {"version": "v1"},
            "addresses": {
                "outbound": "127.0.0.1:15001",
                "inbound": "127.0.0.1:15006",
                "admin": "127.0.0.1:15000",
            },
            "acked_version": 7,
            "latest_version": 7,
            "behind": 0,
            "last_nack": None,
            "connected": True,
            "synced": True,
        },
        {
            "name": "ratings-v1-0",
            "acked_version": 5,
            "behind": 2,
            "synced": False,
            "last_nack": "route reviews:\n  unknown cluster",
        },
        {"name": "details-v1-0", "connected": False},
    ]
    table = plait("status").stdout.splitlines()
    assert re.split(r"\s{2,}", table[0]) == [
        "PROXY",
        "SERVICE",
        "NAMESPACE",
        "VERSION ACKED",
        "BEHIND",
        "STATE",
        "CERT SERIAL",
        "CERT EXPIRES",
        "LAST NACK",
    ]
    assert [line.split()[:6] for line in table[1:]] == [
        ["reviews-v1-0", "reviews", "default", "7", "0", "SYNCED"],
        ["ratings-v1-0", "-", "-", "5", "2", "STALE"],
        ["details-v1-0", "-", "-", "-", "-", "DISCONNECTED"],
    ]
    assert table[2].endswith("route reviews: unknown cluster")
    assert json.loads(plait("status", "-o", "json").stdout) == PROXIES


def test_status_without_proxies(plait: Any) -> None:
    result = plait("status")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "No proxies connected.\n")


# --- analyze --------------------------------------------------------------------------------


def test_analyze_reports_dangling_references_from_the_server(plait: Any, tmp_path: Path) -> None:
    plait("apply", "-f", str(write(tmp_path / "r.yaml", ROUTE)))
    result = plait("analyze")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "Error [PLT0101] (HTTPRoute default/reviews) spec.parentRefs[0].name: referenced Service default/reviews not found",
        "Error [PLT0101] (HTTPRoute default/reviews) spec.rules[0].backendRefs[0].name: referenced Service default/reviews-v1 not found",
    ]
    plait("apply", "-f", str(write(tmp_path / "s.yaml", SERVICES + "---\n" + WORKLOAD)))
    clean = plait("analyze")
    assert (clean.returncode, clean.stdout) == (0, "No validation issues found.\n")


def test_analyze_files_offline_without_a_server(plait: Any, tmp_path: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connecting is refused
    nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}"
    try:
        files = write(tmp_path / "m.yaml", SERVICES + "---\n" + ROUTE)
        result = plait("analyze", "-f", str(files), "-o", "json", "--server", nowhere)
        assert result.returncode == 0, result.stderr
        findings = json.loads(result.stdout)
        assert [(f["level"], f["name"]) for f in findings] == [
            ("Warning", "reviews"),
            ("Warning", "reviews-v1"),
        ]
        unreachable = plait("analyze", "--server", nowhere)
        assert unreachable.returncode == 1
        assert unreachable.stderr.strip() == (
            f"plait: cannot reach the control plane at {nowhere} (connection refused) "
            "— is it running? (plait control / plait up)"
        )
    finally:
        closed.close()
