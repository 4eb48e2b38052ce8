"""`plait control`: the control plane process, assembled from its parts.

    store (SQLite in --data-dir)  <- config service (validated resources) <- HTTP API :15014
                                  <- registry (workloads proxies registered)
    push server :15012  -- watches the store, compiles, streams deltas to every proxy

`ControlPlane` owns every part and closes them in reverse order.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvicorn

from plait.control.api import create_app
from plait.control.auth import TokenError, load_or_create_token
from plait.control.ca_service import CaService
from plait.control.config_service import ConfigService
from plait.control.dashboard_api import telemetry_router
from plait.control.push import PushServer
from plait.control.registry import Registry
from plait.control.store import StoreError
from plait.control.store_sqlite import SqliteStore
from plait.control.telemetry_service import Telemetry
from plait.control.vips import DEFAULT_SERVICE_CIDR, VipRangeError, parse_service_cidr

__all__ = ["ControlPlane", "add_arguments", "run"]

log = logging.getLogger("plait.control")


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host or "127.0.0.1", int(port)


class ControlPlane:
    """A running control plane. `await open()`, then `aclose()` (or `async with`)."""

    def __init__(
        self,
        data_dir: Path,
        api: tuple[str, int] = ("127.0.0.1", 15014),
        push: tuple[str, int] = ("127.0.0.1", 15012),
        grace: float = 5.0,
        trust_domain: str = "cluster.local",
        cert_ttl: timedelta = timedelta(hours=24),
        ca_files: tuple[Path, Path, Path | None] | None = None,
    ) -> None:
        self.trust_domain = trust_domain
        self.cert_ttl = cert_ttl
        self.ca_files = ca_files
        self.data_dir = data_dir
        self.api_address = api
        self.push_address = push
        self.grace = grace
        self.service_cidr = DEFAULT_SERVICE_CIDR  # Service VIPs are allocated from this range
        self.token = ""
        self.api_port = 0
        self._uvicorn: uvicorn.Server | None = None
        self._api_task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.token = load_or_create_token(self.data_dir)
        self.store = await SqliteStore.open(str(self.data_dir / "store.db"))
        self.config = ConfigService(self.store)
        self.registry = Registry(self.store, grace=self.grace)
        await self.registry.load()
        cert, key, chain = self.ca_files or (None, None, None)
        self.ca = CaService(
            self.data_dir, self.store, self.trust_domain, self.cert_ttl, cert, key, chain
        )
        self.push = PushServer(
            self.store, self.config, self.registry, heartbeat_grace=self.grace, ca=self.ca
        )
        self.push.service_cidr = self.service_cidr
        await self.push.start(*self.push_address)
        app = create_app(
            self.config,
            self.token,
            self.push.status,
            tokens=self._join_token,
            ca_roots=self.ca.roots,
            ca_rotate=self.push.rotate_ca,
            service_cidr=self.service_cidr,
        )
        # Telemetry roll-up, dashboard (/ui) and tap; writes the Prometheus file_sd targets.
        self.telemetry = Telemetry(self.push.status, self.data_dir)
        self.telemetry.start()
        app.include_router(telemetry_router(self.telemetry))
        config = uvicorn.Config(
            app,
            host=self.api_address[0],
            port=self.api_address[1],
            log_level="warning",
            lifespan="off",
        )
        self._uvicorn = uvicorn.Server(config)
        self._api_task = asyncio.get_running_loop().create_task(self._uvicorn.serve())
        while not self._uvicorn.started:
            if self._api_task.done():
                self._api_task.result()  # raises the bind error
                raise OSError(f"control plane API did not start on {self.api_address}")
            await asyncio.sleep(0.02)
        self.api_port = self._uvicorn.servers[0].sockets[0].getsockname()[1]
        self._retire_task = asyncio.get_running_loop().create_task(self._retire_roots())
        # Everything loaded so far lives as long as the process: keep the garbage collector
        # from re-scanning it on every full collection (a pause of ~250 ms per change at
        # 10,000 endpoints, measured by bench/convergence.py).
        gc.freeze()

    async def _retire_roots(self) -> None:
        """Drop previous roots once their certificates have all expired (checked every 10 min)."""
        while True:
            if self.ca.retire_expired_roots():
                self.push.broadcast_bundle()
            await self.ca.prune_used_tokens()
            await asyncio.sleep(600)

    def _join_token(
        self, service: str, namespace: str, ttl: float, account: str | None
    ) -> dict[str, str]:
        token = self.ca.create_token(service, namespace, timedelta(seconds=ttl), account)
        claims = self.ca.tokens.verify(token)
        return {
            "token": token,
            "spiffeId": str(claims.spiffe_id(self.trust_domain)),
            "expiresAt": claims.expires_at.isoformat(),
        }

    @property
    def api_url(self) -> str:
        return f"http://{self.api_address[0]}:{self.api_port}"

    async def aclose(self) -> None:
        task = getattr(self, "_retire_task", None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if hasattr(self, "telemetry"):  # first: it ends tap streams, which uvicorn waits for
            await self.telemetry.aclose()
        if self._uvicorn is not None and self._api_task is not None:
            self._uvicorn.should_exit = True
            await asyncio.gather(self._api_task, return_exceptions=True)
        if hasattr(self, "push"):
            await self.push.aclose()
        if hasattr(self, "registry"):
            await self.registry.aclose()
        if hasattr(self, "store"):
            await self.store.aclose()

    async def __aenter__(self) -> ControlPlane:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        default=".plait/control",
        type=Path,
        help="store, admin token and CA live here (default .plait/control)",
    )
    p.add_argument(
        "--api",
        type=_address,
        default=("127.0.0.1", 15014),
        metavar="ADDR",
        help="HTTP API for the CLI and dashboard (default 127.0.0.1:15014)",
    )
    p.add_argument(
        "--push",
        type=_address,
        default=("127.0.0.1", 15012),
        metavar="ADDR",
        help="push channel for proxies (default 127.0.0.1:15012)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="a workload whose proxy is gone this long is deregistered (default 5)",
    )
    p.add_argument(
        "--trust-domain",
        default="cluster.local",
        help="SPIFFE trust domain of workload identities (default cluster.local)",
    )
    p.add_argument(
        "--service-cidr",
        type=_service_cidr,
        default=DEFAULT_SERVICE_CIDR,
        metavar="CIDR",
        help="range of Service VIPs, answered by mesh DNS (default 10.96.0.0/16, as Kubernetes)",
    )
    p.add_argument(
        "--cert-ttl",
        type=float,
        default=24 * 3600,
        metavar="SECONDS",
        help="workload certificate lifetime (default 86400: Istio's 24 h)",
    )
    p.add_argument(
        "--ca-cert", type=Path, help="an operator's own CA certificate (root or intermediate)"
    )
    p.add_argument("--ca-key", type=Path, help="its private key")
    p.add_argument("--ca-chain", type=Path, help="the chain above an intermediate, up to the root")
    p.add_argument(
        "--save-cli-settings",
        action="store_true",
        help="point the CLI (~/.config/plait/config.json) at this control plane",
    )


def _service_cidr(text: str) -> str:
    try:
        return str(parse_service_cidr(text))
    except VipRangeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if (args.ca_cert is None) != (args.ca_key is None):
            print("plait control: --ca-cert and --ca-key go together", file=sys.stderr)
            return 2
        ca_files = (args.ca_cert, args.ca_key, args.ca_chain) if args.ca_cert else None
        cp = ControlPlane(
            args.data_dir,
            args.api,
            args.push,
            args.grace,
            trust_domain=args.trust_domain,
            cert_ttl=timedelta(seconds=args.cert_ttl),
            ca_files=ca_files,
        )
        cp.service_cidr = args.service_cidr
        try:
            await cp.open()
        except (OSError, TokenError, StoreError) as exc:
            print(f"plait control: {exc}", file=sys.stderr)
            await cp.aclose()
            return 1
        if args.save_cli_settings:
            from plait.cli.settings import save_cli_settings

            save_cli_settings(cp.api_url, cp.token)
        push: Any = cp.push.address
        print(
            f"plait control ready: api {cp.api_url} push {push[0]}:{push[1]} "
            f"token file {args.data_dir / 'admin-token'} trust bundle {cp.ca.bundle_path}",
            file=sys.stderr,
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            await cp.aclose()
        return 0

    import uvloop

    return uvloop.run(main())
