"""`plait stat`, `plait top` and `plait tap`: the mesh's traffic from the control plane's
telemetry API, shaped like `linkerd viz stat | top | tap`.

stat and top read the roll-up once (top redraws every 2 s on a terminal); tap follows
`/api/v1/tap`, an NDJSON stream, until Ctrl-C, `--count` requests or `--duration` seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from plait.cli.client import ApiClient, ApiError, Unreachable
from plait.cli.cmdutil import CommandError, add_connection, client, guarded, table
from plait.cli.settings import load_cli_settings

__all__ = ["add_arguments", "format_tap_line", "run", "stat_table", "top_table"]

REFRESH = 2.0  # s: top's redraw interval, the roll-up's scrape interval
WARMUP = 2.0  # s: top and route stats tap on demand; give the first question this long
TAP_TIMEOUT = 30.0  # s without a byte (the server sends a keep-alive line every 5 s)
KINDS = {
    "service": "service",
    "services": "service",
    "svc": "service",
    "workload": "workload",
    "workloads": "workload",
    "wl": "workload",
    "route": "route",
    "routes": "route",
    "rt": "route",
}


def _window(text: str) -> float:
    """`30`, `30s` or `1m` -> seconds."""
    try:
        if text.endswith("m"):
            return float(text[:-1]) * 60
        return float(text.removesuffix("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds, e.g. 30s or 1m") from None


# --- arguments ---------------------------------------------------------------------------


def add_stat_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        nargs="?",
        default="service",
        metavar="KIND[/NAME]",
        help="service (default), workload or route, optionally /NAME; a bare NAME is a service",
    )
    p.add_argument("-n", "--namespace", help="only this namespace")
    p.add_argument(
        "-w",
        "--window",
        type=_window,
        default=30.0,
        metavar="DURATION",
        help="rates and latencies over this much history (default 30s, at most 2m)",
    )
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_connection(p)


def add_top_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-w",
        "--window",
        type=_window,
        default=60.0,
        metavar="DURATION",
        help="requests of the last DURATION (default and most: 1m)",
    )
    p.add_argument("--limit", type=int, default=20, help="rows to show (default 20)")
    p.add_argument("--once", action="store_true", help="print once, even on a terminal")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_connection(p)


def add_tap_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("service", metavar="SERVICE", help="a service (NAME or NAMESPACE/NAME)")
    p.add_argument("-n", "--namespace", help="the service's namespace (default: any)")
    p.add_argument("--path", default="", help="only requests whose path starts with this")
    p.add_argument(
        "--listener",
        choices=("inbound", "outbound", "gateway"),
        help="only requests to (inbound) or from (outbound) the service",
    )
    p.add_argument("--count", type=int, metavar="N", help="stop after N requests")
    p.add_argument("--duration", type=_window, metavar="DURATION", help="stop after this long")
    p.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default="text",
        help="json: one raw record per line, headers included",
    )
    add_connection(p)


ADDERS = {"stat": add_stat_arguments, "top": add_top_arguments, "tap": add_tap_arguments}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of the command this subparser is for (its prog ends with the name)."""
    name = parser.prog.rsplit(" ", 1)[-1]
    ADDERS[name](parser)
    parser.set_defaults(telemetry_command=name)


def run(args: argparse.Namespace) -> int:
    name = getattr(args, "telemetry_command", None) or args.command
    return {"stat": run_stat, "top": run_top, "tap": run_tap}[name](args)


# --- formatting --------------------------------------------------------------------------


def _success(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def _rps(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}rps" if v >= 10 else f"{v:.2f}rps"


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}ms" if v < 10 else f"{v:.0f}ms"


def _has_traffic(row: dict[str, Any]) -> bool:
    return row.get("success") is not None


def stat_table(kind: str, rows: list[dict[str, Any]]) -> str:
    """linkerd viz stat's table: one row per service, workload or route."""
    metrics = ("SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99")

    def golden(r: dict[str, Any]) -> list[str]:
        if not _has_traffic(r):
            return ["-"] * 5
        return [_success(r["success"]), _rps(r["rps"]), _ms(r["p50"]), _ms(r["p95"]), _ms(r["p99"])]

    namespaces = {r.get("namespace") for r in rows}
    with_ns = len(namespaces) > 1
    if kind == "service":
        head = ["NAME", "MESHED", *metrics]
        body = [[r["name"], str(r["meshed"]), *golden(r)] for r in rows]
    elif kind == "workload":
        head = ["NAME", "SERVICE", *metrics]
        body = [[r["name"], r["service"], *golden(r)] for r in rows]
    else:
        head, with_ns = ["ROUTE", "SERVICE", *metrics], False
        body = [[r["name"], r["service"], *golden(r)] for r in rows]
    if with_ns:
        head = ["NAMESPACE", *head]
        body = [[str(r.get("namespace")), *line] for r, line in zip(rows, body, strict=True)]
    return table(head, body)


def top_table(rows: list[dict[str, Any]]) -> str:
    """linkerd viz top's table: the busiest paths first."""
    head = ["SOURCE", "DESTINATION", "METHOD", "PATH", "COUNT", "BEST", "WORST", "LAST", "SUCCESS"]
    body = [
        [
            r["source"],
            r["destination"],
            r["method"],
            r["path"],
            str(r["count"]),
            _ms(r["best"]),
            _ms(r["worst"]),
            _ms(r["last"]),
            _success(r["success"]),
        ]
        for r in rows
    ]
    return table(head, body)


def _caller(r: dict[str, Any]) -> str:
    peer = r.get("peer_identity") or ""
    if "/sa/" in peer:
        return str(peer.rsplit("/sa/", 1)[1])
    return str(r.get("downstream_peer") or "?").rpartition(":")[0] or "?"


def format_tap_line(r: dict[str, Any]) -> str:
    """One request, human readable: time, direction, method, path, status, latency, from -> to."""
    listener = r.get("listener")
    upstream = str(r.get("upstream_cluster") or "-").split(".", 1)[0]
    if listener == "inbound":
        direction, route = "in ", f"{_caller(r)} -> {r.get('proxy')}"
    elif listener == "gateway":
        direction, route = "gw ", f"{_caller(r)} -> {upstream}"
    else:
        host = f" ({r['upstream_host']})" if r.get("upstream_host") else ""
        direction, route = "out", f"{r.get('proxy')} -> {upstream}{host}"
    status = str(r.get("status") or "-")
    flags = r.get("response_flags")
    if flags and flags != "-":
        status += f" {flags}"
    clock = str(r.get("time", ""))[11:23]
    path = str(r.get("path", ""))
    return (
        f"{clock}  {direction}  {r.get('method', ''):<6} {path:<28} {status:<7} "
        f"{_ms(r.get('duration_ms')):>8}  {route}"
    )


# --- commands ----------------------------------------------------------------------------


def _get(api: ApiClient, path: str, **query: Any) -> Any:
    params: dict[str, str | None] = {k: str(v) for k, v in query.items() if v is not None}
    return api._call("GET", path, params)  # the shared client's GET with its error mapping


def _target(text: str) -> tuple[str, str | None]:
    kind, _, name = text.partition("/")
    if kind.lower() in KINDS:
        return KINDS[kind.lower()], name or None
    if name:
        raise CommandError(f"unknown kind {kind!r}: use service, workload or route")
    return "service", kind  # a bare name is a service


def _warm(api: ApiClient, path: str, **query: Any) -> Any:
    """Ask once; if the control plane just started tapping for this, ask again shortly."""
    reply = _get(api, path, **query)
    if reply.get("collecting_for", WARMUP) < WARMUP:
        time.sleep(WARMUP - reply["collecting_for"])
        reply = _get(api, path, **query)
    return reply


@guarded
def run_stat(args: argparse.Namespace) -> int:
    """Success rate, request rate and latency per service, workload or route."""
    kind, name = _target(args.target)
    api = client(args)
    path = "/api/v1/telemetry/stat"
    window = min(max(args.window, 4.0), 120.0)
    reply = (_warm if kind == "route" else _get)(api, path, kind=kind, window=window)
    rows = [
        r
        for r in reply["rows"]
        if (name is None or r["name"] == name)
        and (args.namespace is None or kind == "route" or r.get("namespace") == args.namespace)
    ]
    if args.output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"No {kind}s found." if name is None else f"No {kind} {name} found.", file=sys.stderr)
        return 1 if name else 0
    print(stat_table(kind, rows), end="")
    return 0


@guarded
def run_top(args: argparse.Namespace) -> int:
    """The busiest paths, live on a terminal (every 2 s until Ctrl-C), else printed once."""
    api = client(args)
    window = min(max(args.window, 1.0), 60.0)
    live = sys.stdout.isatty() and not args.once and args.output == "table"
    try:
        reply = _warm(api, "/api/v1/telemetry/top", window=window, limit=args.limit)
        while True:
            if args.output == "json":
                print(json.dumps(reply["rows"], indent=2))
                return 0
            text = top_table(reply["rows"]) if reply["rows"] else "No requests seen yet.\n"
            if not live:
                print(text, end="")
                return 0
            stamp = time.strftime("%H:%M:%S")
            head = f"plait top: busiest paths, last {window:.0f} s (tapping for {reply['collecting_for']:.0f} s) at {stamp}; Ctrl-C quits\n\n"
            sys.stdout.write("\x1b[H\x1b[2J" + head + text)
            sys.stdout.flush()
            time.sleep(REFRESH)
            reply = _get(api, "/api/v1/telemetry/top", window=window, limit=args.limit)
    except KeyboardInterrupt:
        return 0


def _tap_lines(server: str, query: dict[str, str]) -> Iterator[dict[str, Any] | None]:
    """Records of the tap stream; None for keep-alive lines (so deadlines get checked)."""
    url = f"{server}/api/v1/tap?{urllib.parse.urlencode(query)}"
    try:
        response = urllib.request.urlopen(url, timeout=TAP_TIMEOUT)  # noqa: S310 (our server)
    except urllib.error.HTTPError as e:
        try:
            error = json.loads(e.read())["error"]
        except (ValueError, KeyError, TypeError):
            error = {"message": f"HTTP {e.code} {e.reason}"}
        raise ApiError(e.code, str(error["message"]), list(error.get("errors") or [])) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Unreachable(f"cannot reach the control plane at {server} ({reason})") from None
    with response:
        for line in response:
            yield json.loads(line) if line.strip() else None


@guarded
def run_tap(args: argparse.Namespace) -> int:
    """Requests passing the proxies of a service, live: one line each (metadata, no bodies)."""
    namespace, _, name = args.service.rpartition("/")
    query = {
        "service": name,
        "namespace": namespace or args.namespace,
        "path": args.path,
        "listener": args.listener,
    }
    server = load_cli_settings(args.server, args.token).server
    deadline = time.monotonic() + args.duration if args.duration else None
    seen = 0
    try:
        for record in _tap_lines(server, {k: v for k, v in query.items() if v}):
            if record is not None and "error" in record:
                print(f"plait: {record.get('proxy')}: {record['error']}", file=sys.stderr)
            elif record is not None and "dropped" in record:
                print(
                    f"plait: {record['dropped']} requests not shown (tap too slow)", file=sys.stderr
                )
            elif record is not None:
                line = json.dumps(record) if args.output == "json" else format_tap_line(record)
                print(line, flush=True)
                seen += 1
            if (args.count and seen >= args.count) or (deadline and time.monotonic() > deadline):
                return 0
    except KeyboardInterrupt:
        return 0
    except OSError as e:  # a timeout (no keep-alive for 30 s) or a reset mid-stream
        raise Unreachable(f"the tap stream from {server} broke off: {e}") from None
    return 0
