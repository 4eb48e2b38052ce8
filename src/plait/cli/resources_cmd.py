"""`plait apply | get | delete | status | analyze`: kubectl- and istioctl-style commands over
the config API.

Each command has `add_<name>_arguments(parser)` and `run_<name>(args) -> int`. The module-level
`add_arguments` / `run` pair dispatches on the command's name, so every one of them can be
registered in `plait.cli.main.COMMANDS` with this module. Errors are printed as `plait: ...`
(validation errors as `FILE:LINE: FIELD: REASON`) and give exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from plait.cli.client import ApiError
from plait.cli.cmdutil import add_connection, api_failure, client, fail, guarded, loaded, table
from plait.cli.inspect_cmd import (
    add_analyze_arguments,
    add_status_arguments,
    run_analyze,
    run_status,
)

__all__ = [
    "COMMANDS",
    "add_analyze_arguments",
    "add_apply_arguments",
    "add_arguments",
    "add_delete_arguments",
    "add_get_arguments",
    "add_status_arguments",
    "run",
    "run_analyze",
    "run_apply",
    "run_delete",
    "run_get",
    "run_status",
]

# --- apply ----------------------------------------------------------------------------------


def add_apply_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="a YAML or JSON file, a directory (its *.yaml, *.yml, *.json) or - for stdin; repeatable",
    )
    p.add_argument(
        "-n",
        "--namespace",
        default="default",
        help="for resources that name none (default: default)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="validate on the server and report; store nothing"
    )
    add_connection(p)


@guarded
def run_apply(args: argparse.Namespace) -> int:
    """Create or update resources as one atomic change; prints a kubectl-style line for each."""
    import yaml

    found = loaded(args, "apply")
    if isinstance(found, int):
        return found
    docs, _ = found
    # The documents as the user wrote them (YAML keeps integer keys such as portLevelMtls').
    body = yaml.safe_dump_all([d.data for d in docs], sort_keys=False).encode()
    reply = client(args).apply(body, namespace=args.namespace, dry_run=args.dry_run)
    suffix = " (server dry run)" if args.dry_run else ""
    for result in reply["results"]:
        print(
            f"{_qualified(result['kind'], result['apiVersion'])}/{result['name']} {result['action']}{suffix}"
        )
    return 0


def _qualified(kind: str, api_version: str) -> str:
    """`httproute.gateway.networking.k8s.io`, as kubectl names a kind."""
    group = api_version.rpartition("/")[0]
    return f"{kind.lower()}.{group}" if group else kind.lower()


# --- get ------------------------------------------------------------------------------------


def add_get_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", metavar="KIND", help="httproute, svc, dr, ... or all")
    p.add_argument(
        "name", nargs="?", metavar="NAME", help="one resource (default: all of the kind)"
    )
    p.add_argument("-n", "--namespace", default="default", help="the namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")
    p.add_argument(
        "-o",
        "--output",
        choices=("table", "wide", "yaml", "json"),
        default="table",
        help="wide: a table with more columns (a Service's VIP)",
    )
    add_connection(p)


@guarded
def run_get(args: argparse.Namespace) -> int:
    """Show one resource or list them; `-o yaml` / `-o json` output can be applied again."""
    api = client(args)
    every_kind = args.kind.lower() == "all"
    namespace = None if args.all_namespaces else args.namespace
    if args.name is not None:
        if every_kind:
            return fail("a NAME needs a KIND, not 'all'")
        items = [api.get(args.kind, args.namespace, args.name)]
    else:
        items = api.list(None if every_kind else args.kind, namespace)["items"]
    if not items:
        where = "any namespace" if namespace is None else f"{namespace} namespace"
        print(f"No resources found in {where}.", file=sys.stderr)
        return 0
    objects = [item["object"] for item in items]
    if args.output == "json":
        data = objects[0] if args.name else {"items": objects}
        print(json.dumps(data, indent=2))
    elif args.output == "yaml":
        import yaml

        print(yaml.safe_dump_all(objects, sort_keys=False), end="")
    else:
        header = ["KIND"] * every_kind + ["NAMESPACE", "NAME", "REVISION", "CREATED"]
        rows = [
            [item["kind"]] * every_kind
            + [item["namespace"], item["name"], item["revision"], item["createRevision"]]
            for item in items
        ]
        if args.output == "wide":
            # The VIP mesh DNS answers for a Service (allocated by the control plane).
            vips = {(v["namespace"], v["name"]): v["vip"] for v in api.service_vips()["items"]}
            header.append("VIP")
            for item, row in zip(items, rows, strict=True):
                key = (item["namespace"], item["name"])
                row.append(vips.get(key, "-") if item["kind"] == "Service" else "-")
        print(table(header, rows), end="")
    return 0


# --- delete ---------------------------------------------------------------------------------


def add_delete_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", metavar="KIND", help="httproute, svc, dr, ...")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("-n", "--namespace", default="default", help="the namespace (default: default)")
    p.add_argument(
        "--ignore-not-found", action="store_true", help="a missing resource is not an error"
    )
    add_connection(p)


@guarded
def run_delete(args: argparse.Namespace) -> int:
    """Delete resources by name; prints kubectl's `KIND "NAME" deleted` line for each."""
    api = client(args)
    status = 0
    for name in args.names:
        try:
            reply = api.delete(args.kind, args.namespace, name)
        except ApiError as e:
            if e.status == 404 and args.ignore_not_found:
                continue
            status = api_failure(e)
            continue
        print(f'{_qualified(reply["kind"], reply["apiVersion"])} "{name}" deleted')
    return status


# --- dispatch -------------------------------------------------------------------------------

COMMANDS: dict[
    str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "apply": (add_apply_arguments, run_apply),
    "get": (add_get_arguments, run_get),
    "delete": (add_delete_arguments, run_delete),
    "status": (add_status_arguments, run_status),
    "analyze": (add_analyze_arguments, run_analyze),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of the command this subparser is for (its prog ends with the name)."""
    name = parser.prog.rsplit(" ", 1)[-1]
    COMMANDS[name][0](parser)
    parser.set_defaults(resources_command=name)


def run(args: argparse.Namespace) -> int:
    """Run the command that `add_arguments` set up."""
    name = getattr(args, "resources_command", None) or args.command
    return COMMANDS[name][1](args)
