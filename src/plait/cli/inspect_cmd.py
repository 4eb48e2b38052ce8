"""`plait status` and `plait analyze`: what the proxies acknowledged, and what will not work."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from plait.cli.cmdutil import add_connection, client, guarded, loaded, table

__all__ = ["add_analyze_arguments", "add_status_arguments", "run_analyze", "run_status"]


# --- status ------------------------------------------------------------------------------


STATUS_COLUMNS = (
    "PROXY",
    "SERVICE",
    "NAMESPACE",
    "VERSION ACKED",
    "BEHIND",
    "STATE",
    "CERT SERIAL",
    "CERT EXPIRES",
    "LAST NACK",
)


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default="table",
        help="json adds each proxy's labels and listener addresses",
    )
    add_connection(p)


@guarded
def run_status(args: argparse.Namespace) -> int:
    """Each connected proxy's sync state, like `istioctl proxy-status`."""
    proxies = client(args).proxies()
    if args.output == "json":
        print(json.dumps(proxies, indent=2))
        return 0
    if not proxies:
        print("No proxies connected.", file=sys.stderr)
        return 0
    print(table(STATUS_COLUMNS, (_status_row(p) for p in proxies)), end="")
    return 0


def _status_row(proxy: dict[str, Any]) -> list[str]:
    def cell(key: str) -> str:
        value = proxy.get(key)
        return "-" if value is None or value == "" else str(value)

    if proxy.get("connected") is False:
        state = "DISCONNECTED"
    elif "synced" in proxy:
        state = "SYNCED" if proxy["synced"] else "STALE"
    else:
        state = "-"
    nack = " ".join(cell("last_nack").split())  # one line, whatever the error's shape
    certificate = proxy.get("certificate") or {}
    return [
        cell("name"),
        cell("service"),
        cell("namespace"),
        cell("acked_version"),
        cell("behind"),
        state,
        str(certificate.get("serial") or "-")[:16],
        str(certificate.get("not_after") or "-")[:19],
        nack,
    ]


# --- analyze --------------------------------------------------------------------------------


def add_analyze_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        metavar="FILE",
        help="analyze these files (or directories, or -) offline, without a server",
    )
    p.add_argument(
        "-n", "--namespace", default="default", help="with -f: for resources that name none"
    )
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_connection(p)


@guarded
def run_analyze(args: argparse.Namespace) -> int:
    """Report what is accepted but will not work; exit 1 if any finding is an Error."""
    if args.filename:
        found = loaded(args, "analyze")
        if isinstance(found, int):
            return found
        findings = [f.to_dict() for f in _analyze_offline(found[1])]
    else:
        findings = client(args).analyze()["findings"]
    if args.output == "json":
        print(json.dumps(findings, indent=2))
    elif findings:
        print("".join(_finding_line(f) for f in findings), end="")
    else:
        print("No validation issues found.")
    return int(any(f.get("level") == "Error" for f in findings))


def _finding_line(f: dict[str, Any]) -> str:
    """istioctl's shape: `Error [PLT0101] (HTTPRoute default/reviews) FIELD: MESSAGE`."""
    where = f"{f['field']}: " if f.get("field") else ""
    head = (
        f"{f.get('level')} [{f.get('code')}] ({f.get('kind')} {f.get('namespace')}/{f.get('name')})"
    )
    return f"{head} {where}{f.get('message')}\n"


def _analyze_offline(resources: list[Any]) -> list[Any]:
    """Analyze resources in a throwaway in-memory store, exactly as the server would."""
    import asyncio

    from plait.control.config_service import ConfigService
    from plait.control.store import MemoryStore

    async def main() -> list[Any]:
        async with MemoryStore() as store:
            config = ConfigService(store)
            await config.apply(resources)
            return await config.analyze()

    return asyncio.run(main())
