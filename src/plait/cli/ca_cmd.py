"""`plait ca status` (the trusted roots) and `plait ca rotate` (a root rotation with no
dropped connection: the new root is trusted everywhere before it signs)."""

from __future__ import annotations

import argparse
import json

from plait.cli.client import ClientError
from plait.cli.cmdutil import add_connection, api_failure, client

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="ca_command", metavar="status|rotate", required=True)
    status = sub.add_parser("status", help="the trusted roots and which one signs")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_connection(status)
    rotate = sub.add_parser("rotate", help="rotate the root CA (bundle first, then signing)")
    add_connection(rotate)


def run(args: argparse.Namespace) -> int:
    api = client(args)
    try:
        if args.ca_command == "rotate":
            reply = api.ca_rotate()
            print(
                f"root {reply['signing_root'][:16]}… now signs; {reply['proxies']} proxies renewing"
            )
            return 0
        roots = api.ca_roots()
    except ClientError as e:
        return api_failure(e)
    if args.output == "json":
        print(json.dumps(roots, indent=2))
        return 0
    print(f"{'FINGERPRINT':18} {'STATE':9} {'NOT AFTER':26} MAX LEAF EXPIRY")
    for r in roots:
        print(
            f"{r['fingerprint'][:16]:18} {r['state']:9} {r['notAfter']:26} {r['maxLeafExpiry'] or '-'}"
        )
    return 0
