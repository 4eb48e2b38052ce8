"""`plait` command line: a thin dispatcher; each subcommand lives in its own module.

Subcommand modules are imported lazily so that `plait proxy` loads only the data plane.
Each module exposes `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "proxy": ("plait.proxy.cli", "run a proxy (sidecar, node or gateway)"),
    "up": ("plait.local.up", "run a mesh file locally: apps, proxies, gateway"),
    "run": ("plait.local.run", "run an app with its sidecar: plait run [...] -- CMD ..."),
    "capture": (
        "plait.local.capture",
        "install or remove the iptables rules of transparent capture",
    ),
    "control": ("plait.control.server", "run the control plane (API, registry, push)"),
    "apply": (
        "plait.cli.resources_cmd",
        "create or update resources from files (like kubectl apply)",
    ),
    "get": ("plait.cli.resources_cmd", "list or show resources"),
    "delete": ("plait.cli.resources_cmd", "delete resources by name"),
    "status": (
        "plait.cli.resources_cmd",
        "each proxy's config sync state (like istioctl proxy-status)",
    ),
    "analyze": (
        "plait.cli.resources_cmd",
        "find references that do not resolve (like istioctl analyze)",
    ),
    "token": ("plait.cli.token_cmd", "create join tokens for proxies (plait token create ...)"),
    "ca": ("plait.cli.ca_cmd", "the mesh CA: plait ca status, plait ca rotate"),
    "explain": (
        "plait.cli.explain_cmd",
        "why a request goes where it goes (route, policy, endpoints)",
    ),
    "stat": (
        "plait.cli.telemetry_cmd",
        "golden metrics per service, workload or route (like linkerd viz stat)",
    ),
    "top": ("plait.cli.telemetry_cmd", "the busiest paths, live (like linkerd viz top)"),
    "tap": (
        "plait.cli.telemetry_cmd",
        "stream requests passing a service's proxies (metadata, no bodies)",
    ),
}


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="plait", description="plait: a service mesh in Python")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        # Only the chosen command's module is imported (keeps `plait proxy` lean).
        if name == wanted:
            importlib.import_module(module).add_arguments(p)
    return parser, parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, args = build_parser(argv)
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
