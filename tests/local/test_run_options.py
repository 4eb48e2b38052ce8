"""`plait run`: command-line parsing and the sidecar's command (no processes started)."""

from __future__ import annotations

import pytest

from plait.cli.main import build_parser
from plait.local import run as plait_run
from plait.local.run import RunOptions, proxy_argv


def parse(argv: list[str]) -> tuple[int, list[RunOptions]]:
    _, args = build_parser(["run", *argv])
    seen: list[RunOptions] = []

    def runner(options: RunOptions) -> int:
        seen.append(options)
        return 0

    return plait_run.run(args, runner), seen


def test_the_command_after_double_dash_is_the_app() -> None:
    status, seen = parse(["--service=reviews", "--port=9080", "--", "python", "-m", "app", "-x"])
    assert status == 0
    assert seen[0].command == ["python", "-m", "app", "-x"]
    assert seen[0].service == "reviews" and seen[0].port == 9080


def test_control_url_and_cidrs_are_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAIT_JOIN_TOKEN", "from-env")
    _, seen = parse(
        [
            "--control=http://10.0.0.1:15012/",
            "--capture",
            "--include-cidr=10.96.0.0/16, 10.97.0.0/16",
            "--",
            "app",
        ]
    )
    o = seen[0]
    assert o.control == "10.0.0.1:15012" and o.join_token == "from-env"
    assert o.include_cidrs == ("10.96.0.0/16", "10.97.0.0/16")


def test_usage_errors_return_2_without_running(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse(["--service=x"]) == (2, [])
    assert "command after --" in capsys.readouterr().err
    assert parse(["--admin=nonsense", "--", "app"]) == (2, [])
    assert "--admin" in capsys.readouterr().err
    assert parse(["--capture", "--include-cidr=300.0.0.0/8", "--", "app"]) == (2, [])
    assert "not an IPv4 CIDR" in capsys.readouterr().err


def test_sidecar_argv_marks_sockets_only_under_capture() -> None:
    base = RunOptions(command=["app"], service="reviews", port=9080, control="cp:15012")
    argv = proxy_argv(base)
    assert argv[3:6] == ["proxy", "--mode", "sidecar"]
    assert "--app=127.0.0.1:9080" in argv and "--control=cp:15012" in argv
    assert not any(a.startswith("--mark") for a in argv)
    captured = proxy_argv(
        RunOptions(command=["app"], capture=True, mark=42, dns="127.0.0.53:53", proxy_args=["-v"])
    )
    assert "--mark=42" in captured and "--dns=127.0.0.53:53" in captured
    assert captured[-1] == "-v"
    assert not any(a.startswith("--app=") for a in captured)  # no --port: no inbound


def test_status_of_a_signalled_app_is_128_plus_the_signal() -> None:
    assert plait_run._status(-15) == 143
    assert plait_run._status(3) == 3
