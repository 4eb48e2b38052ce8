"""The gRPC demo's apps in-process: the Greeter server, the caller's channel setup, the CLI."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from plait.local.greeter import helloworld_pb2, helloworld_pb2_grpc
from plait.local.greeter.__main__ import main
from plait.local.greeter.client import hello_main, open_channel, proxy_target
from plait.local.greeter.server import GREETINGS, Greeter


@pytest.fixture
def greeter() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    helloworld_pb2_grpc.add_GreeterServicer_to_server(Greeter("greeter-v9-0"), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0).wait()


def test_say_hello_and_stream(greeter: int) -> None:
    with open_channel(f"127.0.0.1:{greeter}") as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        reply, call = stub.SayHello.with_call(helloworld_pb2.HelloRequest(name="Ada"), timeout=5)
        assert reply.message == "Hello, Ada!"
        assert dict(call.trailing_metadata())["x-served-by"] == "greeter-v9-0"
        empty = stub.SayHello(helloworld_pb2.HelloRequest(), timeout=5)
        assert empty.message == "Hello, world!"
        stream = stub.SayHelloStream(helloworld_pb2.HelloRequest(name="Ada"), timeout=5)
        assert [r.message for r in stream] == [f"{g}, Ada!" for g in GREETINGS]


def test_proxy_target_reads_http_proxy() -> None:
    assert proxy_target({"HTTP_PROXY": "http://127.0.0.1:15001"}) == "127.0.0.1:15001"
    assert proxy_target({"http_proxy": "127.0.0.1:15001/"}) == "127.0.0.1:15001"
    with pytest.raises(SystemExit, match="HTTP_PROXY is not set"):
        proxy_target({})


def test_hello_command(greeter: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert hello_main(["Grace", "--target", f"127.0.0.1:{greeter}"]) == 0
    assert capsys.readouterr().out == "Hello, Grace! (served by greeter-v9-0)\n"
    assert main(["hello", "Grace", "--target", f"127.0.0.1:{greeter}", "--stream"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{g}, Grace!" for g in GREETINGS]


def test_hello_command_reports_a_grpc_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket_that_refuses() as port:
        assert hello_main(["--target", f"127.0.0.1:{port}"]) == 1
    assert "gRPC error StatusCode.UNAVAILABLE" in capsys.readouterr().err


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().err


@contextlib.contextmanager
def socket_that_refuses() -> Iterator[int]:
    """A bound, never-listening port: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
