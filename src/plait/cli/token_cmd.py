"""`plait token create`: a single-use join token for one workload's proxy.

    plait token create --service reviews --namespace default --ttl 3600
    PLAIT_JOIN_TOKEN=$(plait token create --service reviews) plait proxy --control ... --ca-bundle ...

The token names the identity the proxy will get (spiffe://<td>/ns/<ns>/sa/<account>); the proxy
presents it once, with a CSR for a key it made itself, and gets its first certificate.
"""

from __future__ import annotations

import argparse
import json

from plait.cli.client import ClientError
from plait.cli.cmdutil import add_connection, api_failure, client

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="token_command", metavar="create", required=True)
    create = sub.add_parser("create", help="create a join token")
    create.add_argument("--service", required=True, help="the workload's service")
    create.add_argument(
        "--namespace", "-n", default="default", help="its namespace (default: default)"
    )
    create.add_argument(
        "--service-account", help="identity's service account (default: the service name)"
    )
    create.add_argument(
        "--ttl", type=int, default=3600, metavar="SECONDS", help="validity (default 3600)"
    )
    create.add_argument("-o", "--output", choices=("token", "json"), default="token")
    add_connection(create)


def run(args: argparse.Namespace) -> int:
    try:
        reply = client(args).create_token(
            args.service, args.namespace, args.ttl, args.service_account
        )
    except ClientError as e:
        return api_failure(e)
    print(json.dumps(reply, indent=2) if args.output == "json" else reply["token"])
    return 0
