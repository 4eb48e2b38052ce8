"""Calling Greeter through the mesh: the channel setup, a CLI caller and the `client` app.

A gRPC client reaches a mesh service through its sidecar's outbound listener: the channel's
target is that listener (the app's HTTP_PROXY address) and `grpc.default_authority` names the
service (`greeter:50051`), which is what the proxy routes on. grpc-core would otherwise read
`http_proxy` itself and try an HTTP CONNECT tunnel, so the channel turns that off.

The `client` app serves plain HTTP on PORT: `GET /hello?name=Ada` calls SayHello,
`GET /hello/stream?name=Ada` calls SayHelloStream, one reply per line; `GET /health` is 200.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from urllib.parse import parse_qs, urlsplit

import grpc

from plait.local.greeter import GREETER_AUTHORITY, helloworld_pb2, helloworld_pb2_grpc

__all__ = ["open_channel", "proxy_target"]

DEADLINE = 5.0  # seconds per call: sent as grpc-timeout, which the proxies honour


def proxy_target(env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """host:port of the sidecar's outbound listener, from HTTP_PROXY (`http://host:port`)."""
    url = env.get("HTTP_PROXY") or env.get("http_proxy") or ""
    target = url.removeprefix("http://").rstrip("/")
    if not target:
        raise SystemExit("HTTP_PROXY is not set: run under `plait up` or pass --target")
    return target


def open_channel(target: str, authority: str = GREETER_AUTHORITY) -> grpc.Channel:
    """A plaintext channel to the sidecar at `target` that names `authority` on every call."""
    return grpc.insecure_channel(
        target,
        options=[("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0)],
    )


def say_hello(stub: helloworld_pb2_grpc.GreeterStub, name: str) -> tuple[str, str]:
    """(the reply, who served it)."""
    reply, call = stub.SayHello.with_call(helloworld_pb2.HelloRequest(name=name), timeout=DEADLINE)
    served = dict(call.trailing_metadata() or ()).get("x-served-by", "?")
    return reply.message, str(served)


def say_hello_stream(stub: helloworld_pb2_grpc.GreeterStub, name: str) -> list[str]:
    stream = stub.SayHelloStream(helloworld_pb2.HelloRequest(name=name), timeout=DEADLINE)
    return [reply.message for reply in stream]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], stub: helloworld_pb2_grpc.GreeterStub) -> None:
        super().__init__(address, _Handler)
        self.stub = stub


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        name = parse_qs(url.query).get("name", ["world"])[0]
        try:
            if url.path == "/health":
                self._reply(200, "ok\n")
            elif url.path == "/hello":
                message, served = say_hello(self.server.stub, name)
                self._reply(200, f"{message} (served by {served})\n")
            elif url.path == "/hello/stream":
                self._reply(
                    200, "".join(f"{m}\n" for m in say_hello_stream(self.server.stub, name))
                )
            else:
                self._reply(404, "try /hello?name=Ada or /hello/stream?name=Ada\n")
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            self._reply(502, f"gRPC error {code}: {detail}\n")

    def _reply(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the proxies' access logs say it already


def serve_client(host: str, port: int, target: str) -> None:
    """The `client` app: HTTP on host:port, gRPC to Greeter through `target` (its sidecar)."""
    channel = open_channel(target)
    server = _Server((host, port), helloworld_pb2_grpc.GreeterStub(channel))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    print(f"client serving http://{host}:{port}/hello, calling greeter via {target}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        channel.close()


def client_main() -> None:
    serve_client(os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"]), proxy_target())


def hello_main(argv: list[str]) -> int:
    """`python -m plait.local.greeter hello NAME`: one call, printed; exit 1 on a gRPC error."""
    parser = argparse.ArgumentParser(prog="python -m plait.local.greeter hello")
    parser.add_argument("name", nargs="?", default="world")
    parser.add_argument("--target", help="host:port of a sidecar's outbound listener")
    parser.add_argument("--authority", default=GREETER_AUTHORITY)
    parser.add_argument("--stream", action="store_true", help="call SayHelloStream")
    args = parser.parse_args(argv)
    with open_channel(args.target or proxy_target(), args.authority) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        try:
            if args.stream:
                print("\n".join(say_hello_stream(stub, args.name)))
            else:
                message, served = say_hello(stub, args.name)
                print(f"{message} (served by {served})")
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            print(f"gRPC error {code}: {detail}", file=sys.stderr)
            return 1
    return 0
