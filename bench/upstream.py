"""The upstream app shared by every system: one nginx worker (bench/nginx/nginx.conf)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.net import answers_200, free_port, wait_until
from bench.procs import Processes
from bench.templates import render

__all__ = ["BODY_16K_PATH", "Nginx", "nginx_binary"]

BODY_16K_PATH = "/16k"


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """Runs `nginx -c <rendered conf>` in the foreground (`daemon off;`), owned by `procs`."""

    def __init__(self, workdir: Path, procs: Processes) -> None:
        self.dir = workdir / "nginx"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "www").mkdir(exist_ok=True)
        (self.dir / "www" / "16k").write_bytes(b"x" * 16384)
        self.port = free_port()
        user_line = "user root root;" if os.geteuid() == 0 else ""
        conf = render(
            "nginx/nginx.conf",
            self.dir / "nginx.conf",
            dir=self.dir,
            port=self.port,
            user_line=user_line,
        )
        self.popen = procs.spawn("nginx", [nginx_binary(), "-c", str(conf), "-p", str(self.dir)])
        wait_until(lambda: answers_200(self.port), 10, "nginx")
        wait_until(lambda: answers_200(self.port, BODY_16K_PATH), 10, "nginx /16k")
