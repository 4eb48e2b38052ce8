"""Node mode: two workloads behind one node proxy keep their own identities.

`alpha` and `beta` (distinct services, so distinct SPIFFE IDs) run behind one `plait proxy
--mode node`; their apps connect from their own local addresses (127.0.0.11, 127.0.0.12).
`gamma` has its own sidecar and an AuthorizationPolicy that allows alpha's principal only:
the callee's authorization tells the two callers apart although one process carries both.
Inbound, gamma reaches alpha's and beta's apps through the node, which presents the called
workload's certificate (checked on the handshake itself) and applies its policy.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from meshkit import Mesh, Proc, free_port, wait_until

SERVICES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: alpha}
spec: {selector: {app: alpha}, ports: [{name: http, port: 9080}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: beta}
spec: {selector: {app: beta}, ports: [{name: http, port: 9080}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: gamma}
spec: {selector: {app: gamma}, ports: [{name: http, port: 9080}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gamma-from-alpha}
spec:
  selector: {matchLabels: {app: gamma}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/alpha"]}}]
"""

ALPHA_ID = "spiffe://cluster.local/ns/default/sa/alpha"
BETA_ID = "spiffe://cluster.local/ns/default/sa/beta"
GAMMA_ID = "spiffe://cluster.local/ns/default/sa/gamma"
SOURCES = {"alpha": "127.0.0.11", "beta": "127.0.0.12"}


@pytest.fixture(scope="module")
def node_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    tmp = tmp_path_factory.mktemp("node")
    mesh = Mesh(tmp)
    try:
        mesh.apply(SERVICES)
        _, gamma_app = mesh.app("gamma")
        _, gamma = mesh.proxy("gamma-0", "gamma", "app=gamma", app_port=gamma_app)
        ports = {"outbound": free_port(), "admin": free_port()}
        argv = [
            sys.executable, "-m", "plait", "proxy", "--mode=node",
            f"--control=127.0.0.1:{mesh.push_port}", f"--ca-bundle={mesh.bundle}",
            f"--state-dir={tmp / 'node.state'}", f"--outbound=127.0.0.1:{ports['outbound']}",
            f"--admin=127.0.0.1:{ports['admin']}", "--access-log=off",
        ]  # fmt: skip
        for name in ("alpha", "beta"):
            _, app_port = mesh.app(name)
            ports[name] = free_port()
            token_file = tmp / f"{name}.token"
            token_file.write_text(mesh.join_token(name))
            argv.append(
                f"--workload=name={name}-0,service={name},app=127.0.0.1:{app_port},"
                f"source={SOURCES[name]},inbound=127.0.0.1:{ports[name]},"
                f"token-file={token_file}"
            )
        node = Proc(argv, tmp / "node.proxy.log")
        mesh.procs.append(node)
        wait_until(lambda: mesh.is_ready(ports), 20, "the node proxy ready")
        wait_until(mesh.converged, 15, "every proxy to acknowledge the mesh")
        yield SimpleNamespace(mesh=mesh, tmp=tmp, node=node, ports=ports, gamma=gamma)
    finally:
        mesh.close()


def call(port: int, host: str, source: str = "127.0.0.1") -> tuple[int, Any]:
    """GET through a proxy's outbound port from `source` (the calling app's own address)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", "/who", headers={"Host": host})
        response = conn.getresponse()
        body = response.read()
        return response.status, body
    finally:
        conn.close()


def echoed(body: bytes) -> dict[str, str]:
    data = json.loads(body)
    return {"name": data["name"], **dict(data["headers"])}


def test_node_registers_each_workload_with_its_own_identity(node_mesh: SimpleNamespace) -> None:
    proxies = {p["name"]: p for p in node_mesh.mesh.proxies()}
    assert proxies["alpha-0"]["identity"] == ALPHA_ID
    assert proxies["beta-0"]["identity"] == BETA_ID
    assert proxies["alpha-0"]["mode"] == proxies["beta-0"]["mode"] == "node"


def test_callee_policy_tells_the_node_workloads_apart(node_mesh: SimpleNamespace) -> None:
    outbound = node_mesh.ports["outbound"]
    wait_until(
        lambda: call(outbound, "gamma.default", SOURCES["alpha"])[0] == 200, 10, "alpha -> gamma"
    )
    status, body = call(outbound, "gamma.default", SOURCES["alpha"])
    assert status == 200
    seen = echoed(body)
    assert seen["name"] == "gamma"
    assert seen["x-forwarded-client-cert"] == f"By={GAMMA_ID};URI={ALPHA_ID}"
    status, body = call(outbound, "gamma.default", SOURCES["beta"])
    assert status == 403, body


def test_outbound_from_an_unknown_source_is_refused(node_mesh: SimpleNamespace) -> None:
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        call(node_mesh.ports["outbound"], "gamma.default", "127.0.0.13")


@pytest.mark.parametrize(("name", "identity"), [("alpha", ALPHA_ID), ("beta", BETA_ID)])
def test_gamma_reaches_each_node_workload_and_its_app(
    node_mesh: SimpleNamespace, name: str, identity: str
) -> None:
    outbound = node_mesh.gamma["outbound"]
    wait_until(lambda: call(outbound, f"{name}.default")[0] == 200, 10, f"gamma -> {name}")
    status, body = call(outbound, f"{name}.default")
    seen = echoed(body)
    assert seen["name"] == name
    # The node's inbound for `name` proved `identity` to gamma's proxy (which checks it), and
    # tells the app who called, in its own name.
    assert seen["x-forwarded-client-cert"] == f"By={identity};URI={GAMMA_ID}"


@pytest.mark.parametrize(("name", "identity"), [("alpha", ALPHA_ID), ("beta", BETA_ID)])
def test_node_inbound_presents_the_called_workloads_certificate(
    node_mesh: SimpleNamespace, name: str, identity: str
) -> None:
    state = node_mesh.tmp / "gamma-0.state"
    assert peer_uri_san(node_mesh.ports[name], state) == identity


def peer_uri_san(port: int, state: Path) -> str:
    """The URI SAN of the certificate served on `port`, handshaking with gamma's identity."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(state / "bundle.pem"))
    context.load_cert_chain(str(state / "cert.pem"), str(state / "key.pem"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    (uri,) = san.get_values_for_type(x509.UniformResourceIdentifier)
    return str(uri)


def test_node_admin_shows_every_workload(node_mesh: SimpleNamespace) -> None:
    dump = node_mesh.mesh.admin(node_mesh.ports, "/config_dump")
    assert dump["mode"] == "node"
    workloads = dump["workloads"]
    assert workloads["alpha-0"]["certificate"]["spiffe_id"] == ALPHA_ID
    assert workloads["beta-0"]["certificate"]["spiffe_id"] == BETA_ID
    assert workloads["alpha-0"]["source"] == SOURCES["alpha"]
    text = _get(node_mesh.ports["admin"], "/stats/prometheus")
    assert 'node_workload="alpha-0"' in text and 'node_workload="beta-0"' in text
    assert text.count("# TYPE istio_requests_total ") == 1


def test_sigterm_deregisters_every_workload_and_exits_0(node_mesh: SimpleNamespace) -> None:
    mesh = node_mesh.mesh
    node_mesh.node.stop()
    assert node_mesh.node.popen.returncode == 0
    names = {p["name"] for p in mesh.proxies()}
    assert "alpha-0" not in names and "beta-0" not in names
    # No endpoint left (UH), at once: not a refused connect (UF) until the registry's grace.
    conn = http.client.HTTPConnection("127.0.0.1", node_mesh.gamma["outbound"], timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": "alpha.default"})
        response = conn.getresponse()
        assert (response.status, response.getheader("x-plait-response-flags")) == (503, "UH")
    finally:
        conn.close()


def _get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()
