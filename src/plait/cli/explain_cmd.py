"""`plait explain`: why a request goes where it goes, from the live config of the proxies.

    plait explain --from productpage GET http://reviews:9080/reviews/1 -H 'end-user: jason'

It asks the control plane which proxy serves the calling workload, reads that proxy's own
snapshot (`/config_dump`: exactly what it routes on) and live counters (`/stats`), runs the
same route table the proxy runs, and prints: the route and rule that match, the backend
chosen, the policies on the way (timeouts, retries, budget, breaker, TLS), the endpoints with
their health, ejection and load, and the callee's authorization verdict for the caller.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
import urllib.request
from typing import Any

from plait.cli.client import ClientError
from plait.cli.cmdutil import add_connection, api_failure, client, fail
from plait.config.snapshot import Snapshot
from plait.proxy.filters.authz import Authorizer, RequestAttributes
from plait.proxy.routing import RouteTable

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="SERVICE|WORKLOAD",
        help="the calling workload (a proxy name) or service (its first proxy)",
    )
    p.add_argument("method", help="HTTP method, e.g. GET")
    p.add_argument("url", help="as the app would call it: http://reviews:9080/reviews/1")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_connection(p)


def _get(address: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
        return json.loads(response.read())


def _proxy_for(proxies: list[dict[str, Any]], source: str) -> dict[str, Any] | None:
    by_name = [p for p in proxies if p.get("name") == source]
    matches = by_name or [p for p in proxies if p.get("service") == source]
    return matches[0] if matches else None


def explain(proxies: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    caller = _proxy_for(proxies, args.source)
    if caller is None or not caller.get("addresses", {}).get("admin"):
        raise LookupError(f"no connected proxy serves {args.source!r}")
    admin = caller["addresses"]["admin"]
    snapshot = Snapshot.from_dict(_get(admin, "/config_dump")["snapshot"])
    stats = _get(admin, "/stats?format=json")
    url = urllib.parse.urlsplit(args.url)
    authority = url.netloc.encode()
    path, query = (url.path or "/").encode(), url.query.encode()
    headers = []
    for h in args.header:
        name, _, value = h.partition(":")
        headers.append((name.strip().lower().encode(), value.strip().encode()))
    decision = RouteTable(snapshot).outbound(
        authority, args.method.upper().encode(), path, headers, query=query
    )
    out: dict[str, Any] = {"caller": {"proxy": caller["name"], "identity": caller.get("identity")}}
    if decision is None:
        out["verdict"] = (
            "404 NR: no Service is named by that authority and port, or no rule matched"
        )
        return out
    namespace, service = decision.service
    out["route"] = {
        "name": decision.route,
        "backend": f"{service}.{namespace}" if service else None,
    }
    if decision.reply is not None:
        out["verdict"] = f"local reply {decision.reply.status} ({decision.reply.flag})"
        return out
    retry = decision.retry
    out["policy"] = {
        "request_timeout_ms": decision.timeout_ms or "none",
        "per_try_timeout_ms": decision.backend_timeout_ms or "none",
        "fault_delay_ms": decision.delay_ms or None,
        "retries": {
            "attempts": retry.attempts,
            "on": sorted(retry.failures)
            + sorted(retry.statuses)
            + [f"grpc-status {code}" for code in sorted(retry.grpc_statuses)],
        },
        "mirrors": [f"{m.service}.{m.namespace}" for m in decision.mirrors],
        "rewrite": (decision.path or b"").decode() or None,
    }
    cluster = next(
        (c for c in snapshot.clusters if (c.namespace, c.name) == decision.service), None
    )
    if cluster is None:
        out["verdict"] = "503 UH: the backend service is unknown to the caller's proxy"
        return out
    live = stats.get("clusters", {}).get(f"{cluster.name}.{cluster.namespace}", {})
    p = cluster.policy
    out["cluster"] = {
        "load_balancer": p.load_balancer.kind,
        "tls": p.tls_mode,
        "limits": {
            k: v for k, v in p.connection_pool.to_dict().items() if v not in (0, 4294967295)
        },
        "outlier_detection": p.outlier.to_dict() if p.outlier else None,
        "retry_budget": p.retry_budget.to_dict(),
        "fallback": f"{p.fallback.name}.{p.fallback.namespace}" if p.fallback else None,
        "breaker": live.get("breaker"),
        "panic_mode": live.get("panic"),
    }
    hosts = live.get("hosts", {})
    endpoints = []
    for e in cluster.endpoints:
        label = f"{e.address}:{e.port}"
        endpoints.append(
            {
                "endpoint": label,
                "workload": e.workload,
                "identity": e.identity or "(no proxy: plaintext)",
                "version": e.labels.get("version"),
                **hosts.get(label, {}),
            }
        )
    out["endpoints"] = endpoints
    out["authorization"] = _authorization(proxies, cluster, caller, args, path, headers)
    out["verdict"] = "routed" if endpoints else "503 UH: no healthy endpoint"
    return out


def _authorization(
    proxies: list[dict[str, Any]],
    cluster: Any,
    caller: dict[str, Any],
    args: argparse.Namespace,
    path: bytes,
    headers: list[tuple[bytes, bytes]],
) -> list[dict[str, Any]]:
    """The callee side's verdict, from each destination proxy's own compiled policies."""
    verdicts = []
    workloads = {e.workload for e in cluster.endpoints}
    for proxy in proxies:
        if proxy.get("name") not in workloads or not proxy.get("addresses", {}).get("admin"):
            continue
        dump = _get(proxy["addresses"]["admin"], "/config_dump")["snapshot"]
        authorizer = Authorizer(Snapshot.from_dict(dump).policies)
        if not authorizer.enabled:
            verdicts.append({"workload": proxy["name"], "decision": "ALLOW (no policy selects it)"})
            continue
        d = authorizer.check(
            RequestAttributes(
                source_principal=(caller.get("identity") or "").removeprefix("spiffe://"),
                method=args.method.upper(),
                authority=urllib.parse.urlsplit(args.url).netloc,
                path=path.decode(),
                headers=headers,
            )
        )
        verdicts.append(
            {
                "workload": proxy["name"],
                "decision": d.action,
                "policy": d.policy,
                "reason": d.reason,
            }
        )
    return verdicts


def _print(report: dict[str, Any], indent: str = "") -> None:
    for key, value in report.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print(value, indent + "  ")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            print(f"{indent}{key}:")
            for item in value:
                print(
                    f"{indent}  - "
                    + ", ".join(f"{k}={v}" for k, v in item.items() if v is not None)
                )
        else:
            print(f"{indent}{key}: {value}")


def run(args: argparse.Namespace) -> int:
    try:
        proxies = client(args).proxies()
        report = explain(proxies, args)
    except ClientError as e:
        return api_failure(e)
    except (LookupError, OSError, ValueError) as e:
        return fail(f"explain: {e}")
    if args.output == "json":
        print(json.dumps(report, indent=2, default=str))
    else:
        _print(report)
    return 0
