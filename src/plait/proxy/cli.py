"""`plait proxy`: parse flags, load the static snapshot, run the proxy on uvloop."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from plait.config.snapshot import Node, Snapshot, SnapshotError
from plait.proxy import allocator
from plait.proxy.app import ProxyOptions, serve
from plait.proxy.listener import ProxySettings
from plait.proxy.tcp import parse_tcp_outbound

__all__ = ["add_arguments", "run", "parse_address", "load_snapshot"]


def parse_address(text: str) -> tuple[str, int]:
    """`127.0.0.1:15001`, `:15001` or `15001` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT") from None
    if not 0 <= number < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: port out of range")
    return (host.strip("[]") or "127.0.0.1", number)


def load_snapshot(path: str) -> Snapshot:
    """Read a snapshot file (JSON, or YAML when PyYAML is wanted for .yaml/.yml)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    data: Any
    if path.endswith((".yaml", ".yml")):
        import yaml  # only for YAML files: JSON snapshots keep the proxy lean

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    return Snapshot.from_dict(data)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="static snapshot file (JSON or YAML); required unless --control is given",
    )
    p.add_argument(
        "--control",
        type=parse_address,
        default=None,
        metavar="ADDR",
        help="control plane push address (e.g. 127.0.0.1:15012): dynamic configuration",
    )
    p.add_argument(
        "--cache",
        default=None,
        metavar="FILE",
        help="with --control: last applied snapshot, written after every push and "
        "served from at start when the control plane is unreachable",
    )
    p.add_argument(
        "--name", default=None, help="this workload's instance name (default: the host name)"
    )
    p.add_argument("--service", default="", help="the service this workload belongs to")
    p.add_argument(
        "--namespace", default="default", help="the workload's namespace (default: default)"
    )
    p.add_argument(
        "--labels",
        default="",
        metavar="K=V,...",
        help="workload labels, e.g. app=reviews,version=v2",
    )
    p.add_argument(
        "--gateway-name",
        default="",
        metavar="NAME",
        help="gateway mode: the Gateway resource whose routes this proxy serves",
    )
    p.add_argument(
        "--advertise",
        type=parse_address,
        default=None,
        metavar="ADDR",
        help="address other proxies use to reach this inbound listener (default --inbound)",
    )
    p.add_argument(
        "--ca-bundle",
        default=None,
        metavar="FILE",
        help="trust bundle of the mesh CA (PEM): turns on mTLS; the control plane must "
        "prove its identity against it (plait control writes trust-bundle.pem)",
    )
    p.add_argument(
        "--join-token",
        default=None,
        metavar="TOKEN",
        help="one-time token for the first certificate (default: $PLAIT_JOIN_TOKEN)",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="keeps the key (0600) and certificate, to restart while the control plane is down",
    )
    p.add_argument(
        "--trust-domain",
        default="cluster.local",
        help="SPIFFE trust domain (default cluster.local)",
    )
    p.add_argument(
        "--audit-log",
        default="-",
        metavar="PATH",
        help="authorization audit records (AUDIT matches, denials): '-' stdout, a path, 'off'",
    )
    p.add_argument(
        "--tracing-endpoint",
        default=None,
        metavar="URL",
        help="export spans over OTLP/HTTP to this collector (e.g. http://127.0.0.1:4318)",
    )
    p.add_argument(
        "--trace-sample",
        type=float,
        default=0.01,
        metavar="FRACTION",
        help="fraction of new traces sampled (default 0.01, Istio's)",
    )
    p.add_argument(
        "--app-health",
        default=None,
        metavar="PATH",
        help="HTTP path to check the app's health (default: a TCP connect)",
    )
    p.add_argument(
        "--mode",
        choices=("sidecar", "gateway", "node"),
        default="sidecar",
        help="sidecar: outbound + inbound for one app; gateway: entry for outside traffic; "
        "node: one proxy for every workload of the host (--workload)",
    )
    p.add_argument(
        "--workload",
        action="append",
        default=[],
        metavar="name=N,service=S,app=ADDR,source=IP,...",
        help="node mode, repeatable: a workload of this host (fields: name, service, "
        "namespace, app, source, inbound, token, token-file, app-health, label.KEY)",
    )
    p.add_argument(
        "--workloads",
        default=None,
        metavar="FILE",
        help="node mode: a YAML file with a 'workloads' list (same fields; labels a mapping)",
    )
    p.add_argument(
        "--outbound",
        type=parse_address,
        default=("127.0.0.1", 15001),
        metavar="ADDR",
        help="outbound listener for the app's calls (default 127.0.0.1:15001)",
    )
    p.add_argument(
        "--inbound",
        type=parse_address,
        default=("127.0.0.1", 15006),
        metavar="ADDR",
        help="inbound listener for calls to the app (default 127.0.0.1:15006)",
    )
    p.add_argument(
        "--admin",
        type=parse_address,
        default=("127.0.0.1", 15000),
        metavar="ADDR",
        help="admin listener: /ready /config_dump /stats (default 127.0.0.1:15000)",
    )
    p.add_argument(
        "--prometheus",
        type=parse_address,
        default=None,
        metavar="ADDR",
        help="also serve /stats/prometheus alone here (Istio: 0.0.0.0:15090)",
    )
    p.add_argument(
        "--gateway-listen",
        type=parse_address,
        default=("0.0.0.0", 8080),
        metavar="ADDR",
        help="gateway mode: listener for outside traffic (default 0.0.0.0:8080)",
    )
    p.add_argument(
        "--app",
        type=parse_address,
        default=None,
        metavar="ADDR",
        help="the local app's address; enables the inbound listener",
    )
    p.add_argument(
        "--access-log",
        default="-",
        metavar="PATH",
        help="'-' for stdout (default), a file path, or 'off'",
    )
    p.add_argument(
        "--access-log-sample",
        type=float,
        default=0.01,
        metavar="FRACTION",
        help="fraction of successful requests logged; errors always are (default 0.01)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="close idle client keep-alive connections after this long (default 300)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="408 when a request head takes longer than this (default 10)",
    )
    p.add_argument(
        "--upstream-idle-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="close pooled upstream connections idle this long (default 10)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="upstream connect timeout (default 5)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="on SIGTERM, let requests in flight finish this long (default 5)",
    )
    p.add_argument(
        "--dns",
        type=parse_address,
        default=None,
        metavar="ADDR",
        help="answer DNS (UDP) for mesh service names with their VIPs here, e.g. 127.0.0.53:53",
    )
    p.add_argument(
        "--dns-forward",
        type=parse_address,
        default=None,
        metavar="ADDR",
        help="with --dns: forward other names to this resolver (default: NXDOMAIN)",
    )
    p.add_argument(
        "--mark",
        type=_mark,
        default=0,
        metavar="N",
        help="set SO_MARK N on upstream sockets (for plait capture --proxy-mark; needs root)",
    )
    p.add_argument(
        "--deregister-delay",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="on SIGTERM, keep accepting this long after telling the control plane we leave, "
        "so callers stop picking us before we refuse connections (default 0.5)",
    )
    p.add_argument(
        "--tcp-outbound",
        type=_tcp_outbound,
        action="append",
        default=[],
        metavar="LISTEN=SERVICE:PORT",
        help="listen here for TCP to a service port, e.g. 127.0.0.1:16379=redis:6379 "
        "(repeatable; SERVICE may be NAME.NAMESPACE)",
    )
    p.add_argument(
        "--app-protocol",
        choices=("http", "http2", "grpc", "tcp"),
        default="",
        help="what the local app speaks when its Service does not say (static configs)",
    )
    p.add_argument(
        "--detect-timeout",
        type=float,
        default=0.1,
        metavar="SECONDS",
        help="wait this long for a client's first bytes before treating a connection to a "
        "port not declared tcp as TCP (default 0.1)",
    )
    p.add_argument(
        "--tcp-idle-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="close TCP connections idle this long in both directions (default 3600)",
    )
    p.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")


def _tcp_outbound(text: str) -> tuple[tuple[str, int], str, str, int]:
    try:
        return parse_tcp_outbound(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mark(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r}: out of range (0 to 2^32-1)")
    return value


def parse_labels(text: str) -> dict[str, str]:
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--labels: {item!r} is not KEY=VALUE")
        labels[key] = value
    return labels


def run(args: argparse.Namespace) -> int:
    # Operational lines (certificates, control plane, refusals) to stderr with time and source;
    # requests go to the access log, not here.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.config is None and args.control is None:
        print(
            "plait proxy: give --config FILE (static) or --control ADDR (dynamic)", file=sys.stderr
        )
        return 2
    ca_bundle = None
    if args.ca_bundle:
        try:
            ca_bundle = Path(args.ca_bundle).read_bytes()
        except OSError as exc:
            print(
                f"plait proxy: cannot read --ca-bundle {args.ca_bundle}: {exc.strerror}",
                file=sys.stderr,
            )
            return 2
    try:
        labels = parse_labels(args.labels)
        snapshot = load_snapshot(args.config) if args.config else Snapshot()
    except OSError as exc:
        print(f"plait proxy: cannot read {args.config}: {exc.strerror}", file=sys.stderr)
        return 2
    except (SnapshotError, ValueError) as exc:
        print(f"plait proxy: {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.control is not None or args.service or labels:
        # Flags name the node; a static file's node is kept where a flag is not given.
        node = snapshot.node
        snapshot = replace(
            snapshot,
            node=Node(
                name=args.name or (node.name if node.name != "proxy" else socket.gethostname()),
                service=args.service or node.service,
                namespace=args.namespace if args.namespace != "default" else node.namespace,
                labels=labels or node.labels,
                gateway=args.gateway_name or node.gateway,
            ),
        )
    elif args.gateway_name:
        snapshot = replace(snapshot, node=replace(snapshot.node, gateway=args.gateway_name))
    options = ProxyOptions(
        snapshot=snapshot,
        mode=args.mode,
        outbound=args.outbound,
        inbound=args.inbound,
        gateway=args.gateway_listen,
        admin=args.admin,
        prometheus=args.prometheus,
        app=args.app,
        settings=ProxySettings(
            header_timeout=args.header_timeout,
            idle_timeout=args.idle_timeout,
            upstream_idle_timeout=args.upstream_idle_timeout,
            connect_timeout=args.connect_timeout,
            detect_timeout=args.detect_timeout,
            tcp_idle_timeout=args.tcp_idle_timeout,
        ),
        access_log=args.access_log,
        access_log_sample=args.access_log_sample,
        drain_timeout=args.drain_timeout,
        deregister_delay=args.deregister_delay,
        control=args.control,
        cache_path=Path(args.cache) if args.cache else None,
        advertise=args.advertise,
        app_health_path=args.app_health,
        ca_bundle=ca_bundle,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        join_token=args.join_token or os.environ.get("PLAIT_JOIN_TOKEN") or None,
        trust_domain=args.trust_domain,
        audit_log=args.audit_log,
        tracing_endpoint=args.tracing_endpoint,
        trace_sample=args.trace_sample,
        dns=args.dns,
        dns_forward=args.dns_forward,
        socket_mark=args.mark,
        tcp_outbound=tuple(args.tcp_outbound),
        app_protocol=args.app_protocol,
    )

    def announce(proxy: Any) -> None:
        listening = ", ".join(f"{k} {h}:{p}" for k, (h, p) in proxy.addresses.items())
        print(f"plait proxy ({args.mode}) ready: {listening}", file=sys.stderr, flush=True)

    main: Any = serve(options, announce) if args.mode != "node" else None
    if args.mode == "node":
        from plait.proxy import node as node_mode

        try:
            main = node_mode.serve(node_options(args, options), announce)
        except node_mode.WorkloadError as exc:
            print(f"plait proxy: {exc}", file=sys.stderr)
            return 2
    allocator.keep_tls_reads_off_mmap()
    runner: Any = asyncio.run
    if not args.no_uvloop:
        import uvloop

        runner = uvloop.run
    try:
        runner(main)
    except OSError as exc:
        print(f"plait proxy: {exc}", file=sys.stderr)
        return 1
    return 0


def node_options(args: argparse.Namespace, base: ProxyOptions) -> Any:
    """`--mode node`: the workloads from --workload flags and --workloads FILE."""
    from plait.proxy import node

    if args.service or args.app or args.labels:
        raise node.WorkloadError(
            "node mode: declare each workload with --workload (not --service/--app/--labels)"
        )
    if args.tcp_outbound:
        raise node.WorkloadError("node mode: --tcp-outbound listeners are for sidecars")
    specs = [node.parse_workload(text) for text in args.workload]
    if args.workloads:
        specs += node.load_workloads(args.workloads)
    return node.NodeOptions(
        base=base,
        workloads=tuple(node.check_workloads(specs)),
        cache=Path(args.cache) if args.cache else None,
    )
