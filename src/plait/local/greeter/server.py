"""The Greeter server: grpcio's helloworld service, answering with who served the call.

Runs until SIGTERM or SIGINT, then stops accepting calls, lets running ones finish for a
second and exits 0. Each reply carries trailing metadata `x-served-by: <instance>` so a demo
(or a test) can see which replica, behind which proxy, answered.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from concurrent import futures
from types import FrameType

import grpc

from plait.local.greeter import helloworld_pb2, helloworld_pb2_grpc

__all__ = ["GREETINGS", "Greeter", "serve"]

GREETINGS = ("Hello", "Bonjour", "Hola", "Hallo", "Ciao")
_GRACE = 1.0  # seconds for calls in flight at shutdown


class Greeter(helloworld_pb2_grpc.GreeterServicer):
    """SayHello answers once; SayHelloStream answers once per greeting in GREETINGS."""

    def __init__(self, instance: str) -> None:
        self.instance = instance

    def SayHello(  # noqa: N802 - the proto's method name
        self, request: helloworld_pb2.HelloRequest, context: grpc.ServicerContext
    ) -> helloworld_pb2.HelloReply:
        context.set_trailing_metadata((("x-served-by", self.instance),))
        return helloworld_pb2.HelloReply(message=f"Hello, {request.name or 'world'}!")

    def SayHelloStream(  # noqa: N802 - the proto's method name
        self, request: helloworld_pb2.HelloRequest, context: grpc.ServicerContext
    ) -> Iterator[helloworld_pb2.HelloReply]:
        context.set_trailing_metadata((("x-served-by", self.instance),))
        for greeting in GREETINGS:
            yield helloworld_pb2.HelloReply(message=f"{greeting}, {request.name or 'world'}!")


def serve(host: str, port: int, instance: str) -> None:
    """Serve Greeter on host:port (plaintext: the sidecar adds mTLS) until a signal."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    helloworld_pb2_grpc.add_GreeterServicer_to_server(Greeter(instance), server)
    if not server.add_insecure_port(f"{host}:{port}"):
        raise SystemExit(f"greeter: cannot listen on {host}:{port}")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    print(f"greeter {instance} serving helloworld.Greeter on {host}:{port}", flush=True)
    stop.wait()
    server.stop(_GRACE).wait()


def main() -> None:
    serve(
        os.environ.get("HOST", "127.0.0.1"),
        int(os.environ["PORT"]),
        os.environ.get("PLAIT_INSTANCE", "greeter"),
    )
