"""The config API over real HTTP: a real uvicorn server in a thread, real httpx requests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from live_api import TOKEN, LiveApi

AUTH = {"Authorization": f"Bearer {TOKEN}"}
YAML = {**AUTH, "Content-Type": "application/yaml"}
JSON = {**AUTH, "Content-Type": "application/json"}

SERVICE = """\
apiVersion: plait.dev/v1
kind: Service
metadata:
  name: reviews
spec:
  selector: {app: reviews}
  ports:
    - port: 9080
"""

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
    - backendRefs: [{name: reviews-v2, weight: 10}]
"""


@pytest.fixture(scope="module")
def live() -> Iterator[LiveApi]:
    proxies = [{"name": "reviews-v1-0", "service": "reviews", "acked_version": 3}]
    with LiveApi(proxies=lambda: proxies, max_body_bytes=64 * 1024) as api:
        yield api


@pytest.fixture(scope="module")
def http(live: LiveApi) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=10) as c:  # one: each costs an SSL context
        yield c


@pytest.fixture
def client(http: httpx.Client) -> httpx.Client:
    """The client, on an empty store (whatever earlier tests applied is deleted first)."""
    for item in http.get("/api/v1/resources").json()["items"]:
        path = f"/api/v1/resources/{item['kind']}/{item['namespace']}/{item['name']}"
        http.delete(path, headers=AUTH).raise_for_status()
    return http


def stored(client: httpx.Client) -> list[str]:
    items = client.get("/api/v1/resources").json()["items"]
    return [f"{x['kind']}/{x['namespace']}/{x['name']}" for x in items]


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["message"]
    return error


# --- the happy path -------------------------------------------------------------------------


def test_healthz(client: httpx.Client) -> None:
    reply = client.get("/healthz")
    assert reply.status_code == 200 and reply.json()["status"] == "ok"


def test_apply_get_list_delete(client: httpx.Client) -> None:
    reply = client.post("/api/v1/apply", content=SERVICE + "---\n" + ROUTE, headers=YAML)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    revision = body["revision"]
    assert [(x["kind"], x["name"], x["action"]) for x in body["results"]] == [
        ("Service", "reviews", "created"),
        ("HTTPRoute", "reviews", "created"),
    ]
    again = client.post("/api/v1/apply", content=SERVICE, headers=YAML).json()
    assert again["results"][0]["action"] == "unchanged" and again["revision"] == revision

    one = client.get("/api/v1/resources/httproutes/default/reviews").json()
    assert (
        one["revision"] == revision
        and one["object"]["spec"]["rules"][0]["backendRefs"][0]["weight"] == 10
    )
    listed = client.get("/api/v1/resources/svc", params={"namespace": "default"}).json()
    assert [x["name"] for x in listed["items"]] == ["reviews"] and listed["revision"] == revision
    assert client.get("/api/v1/resources/svc", params={"namespace": "prod"}).json()["items"] == []

    error = error_of(client.get("/api/v1/resources/httproute/default/nope"), 404)
    assert error["message"] == "HTTPRoute default/nope not found"
    deleted = client.delete("/api/v1/resources/httproute/default/reviews", headers=AUTH)
    assert deleted.status_code == 200 and deleted.json()["revision"] == revision + 1
    error_of(client.delete("/api/v1/resources/httproute/default/reviews", headers=AUTH), 404)
    assert stored(client) == ["Service/default/reviews"]


@pytest.mark.parametrize(
    "body",
    [
        {
            "apiVersion": "plait.dev/v1",
            "kind": "Service",
            "metadata": {"name": "a"},
            "spec": {"ports": [{"port": 80}]},
        },
        [
            {
                "apiVersion": "plait.dev/v1",
                "kind": "Service",
                "metadata": {"name": "a"},
                "spec": {"ports": [{"port": 80}]},
            }
        ],
        {
            "items": [
                {
                    "apiVersion": "plait.dev/v1",
                    "kind": "Service",
                    "metadata": {"name": "a"},
                    "spec": {"ports": [{"port": 80}]},
                }
            ]
        },
    ],
    ids=["object", "list", "items"],
)
def test_apply_json(client: httpx.Client, body: Any) -> None:
    reply = client.post("/api/v1/apply", json=body, headers=AUTH, params={"namespace": "prod"})
    assert reply.status_code == 200, reply.text
    assert stored(client) == ["Service/prod/a"]


def test_dry_run_stores_nothing(client: httpx.Client) -> None:
    reply = client.post("/api/v1/apply", content=SERVICE, headers=YAML, params={"dry_run": "true"})
    assert reply.status_code == 200 and reply.json()["results"][0]["action"] == "created"
    assert reply.json()["dryRun"] is True
    assert stored(client) == []


def test_a_dangling_reference_is_accepted_and_reported_by_analyze(client: httpx.Client) -> None:
    reply = client.post("/api/v1/apply", content=SERVICE + "---\n" + ROUTE, headers=YAML)
    assert reply.status_code == 200
    report = client.get("/api/v1/analyze").json()
    assert report["errors"] == 1 and report["warnings"] == 1
    error = next(f for f in report["findings"] if f["level"] == "Error")
    assert error == {
        "level": "Error",
        "code": "PLT0101",
        "kind": "HTTPRoute",
        "namespace": "default",
        "name": "reviews",
        "field": "spec.rules[0].backendRefs[0].name",
        "message": "referenced Service default/reviews-v2 not found",
    }


def test_proxies_lists_what_the_push_server_reports(client: httpx.Client) -> None:
    assert client.get("/api/v1/proxies").json() == [
        {"name": "reviews-v1-0", "service": "reviews", "acked_version": 3}
    ]


# --- bad input: the right 4xx, a JSON body naming the problem, nothing stored ----------------


def chunks(size: int) -> Iterator[bytes]:
    """A body without Content-Length (chunked), so only the bytes read can be counted."""
    for _ in range(size // 4096):
        yield b"#" * 4096


BAD_INPUT = {
    "malformed YAML": (SERVICE + "  - port: [9080\n", YAML, 400, {"line": 9}),
    "unknown field": (
        SERVICE.replace("spec:", "spec:\n  colour: red"),
        YAML,
        400,
        {"field": "spec.colour", "reason": "unknown field", "line": 6},
    ),
    "wrong type": (
        SERVICE.replace("port: 9080", "port: '9080'"),
        YAML,
        400,
        {"field": "spec.ports[0].port", "reason": "Input should be a valid integer", "line": 8},
    ),
    "bad second document": (
        SERVICE + "---\n" + ROUTE.replace("weight: 10", "weight: -1"),
        YAML,
        400,
        {"document": 1, "field": "spec.rules[0].backendRefs[0].weight", "line": 17},
    ),
    "unknown kind": (SERVICE.replace("kind: Service", "kind: Pod"), YAML, 400, {"field": "kind"}),
    "empty body": ("", YAML, 400, {"reason": "no resources in the request body"}),
    "not UTF-8": (b"\xff\xfe kind", YAML, 400, {}),
    "malformed JSON": ('{"kind": ', JSON, 400, {"line": 1}),
    "JSON wrong type": (
        json.dumps(
            {"apiVersion": "plait.dev/v1", "kind": "Service", "metadata": {"name": 7}}, indent=1
        ),
        JSON,
        400,
        {"field": "metadata.name", "line": 5},
    ),
    "oversize body": ("#" * (64 * 1024 + 1), YAML, 413, None),
    "oversize chunked body": (chunks(128 * 1024), YAML, 413, None),
    "unsupported media type": (SERVICE, {**AUTH, "Content-Type": "text/plain"}, 415, None),
    "missing token": (SERVICE, {"Content-Type": "application/yaml"}, 401, None),
    "wrong token": (SERVICE, {**YAML, "Authorization": "Bearer nope"}, 401, None),
    "not a bearer token": (SERVICE, {**YAML, "Authorization": f"Basic {TOKEN}"}, 401, None),
    "bad namespace": (SERVICE, YAML, 400, {"field": "query.namespace"}),
}


@pytest.mark.parametrize(
    ("body", "headers", "status", "expected"), BAD_INPUT.values(), ids=BAD_INPUT
)
def test_bad_input_is_refused_and_nothing_is_stored(
    client: httpx.Client,
    body: Any,
    headers: dict[str, str],
    status: int,
    expected: dict[str, Any] | None,
) -> None:
    params = {"namespace": "Not_A_Label"} if expected == {"field": "query.namespace"} else {}
    error = error_of(
        client.post("/api/v1/apply", content=body, headers=headers, params=params), status
    )
    if expected is not None:
        assert any(expected.items() <= item.items() for item in error["errors"]), error
    assert stored(client) == []
    assert (
        client.get("/healthz").json()["revision"]
        == client.get("/api/v1/resources").json()["revision"]
    )


def test_a_bad_token_is_refused_with_a_bearer_challenge(client: httpx.Client) -> None:
    reply = client.delete("/api/v1/resources/svc/default/reviews")
    assert error_of(reply, 401)["message"].startswith("missing admin token")
    assert reply.headers["www-authenticate"] == "Bearer"


def test_every_error_of_a_document_is_reported_with_its_line(client: httpx.Client) -> None:
    body = SERVICE.replace("spec:", "spec:\n  colour: red").replace("port: 9080", "port: 0")
    error = error_of(client.post("/api/v1/apply", content=body, headers=YAML), 400)
    assert error["message"] == "2 problems with the resources"
    assert [(x["line"], x["field"]) for x in error["errors"]] == [
        (6, "spec.colour"),
        (9, "spec.ports[0].port"),
    ]


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/api/v1/resources/pods", 400, "unknown kind 'pods'; known kinds: Service, Workload"),
        ("/api/v1/resources/pods/default/x", 400, "known kinds"),
        ("/api/v1/watch?prefix=/ca/", 400, "prefix must start with /config/ or /registry/"),
        ("/api/v1/watch?from_revision=-1", 400, "query.from_revision"),
        ("/api/v1/nothing", 404, "Not Found: GET /api/v1/nothing"),
    ],
)
def test_bad_reads_get_json_errors(
    client: httpx.Client, path: str, status: int, words: str
) -> None:
    assert words in error_of(client.get(path), status)["message"]


def test_wrong_method_gets_a_json_405(client: httpx.Client) -> None:
    assert error_of(client.put("/api/v1/analyze"), 405)["message"].startswith("Method Not Allowed")


# --- watch ----------------------------------------------------------------------------------


def test_watch_replays_from_a_revision_then_follows_live_changes(
    client: httpx.Client, live: LiveApi
) -> None:
    first = client.post("/api/v1/apply", content=SERVICE, headers=YAML).json()["revision"]
    events: list[dict[str, Any]] = []
    with client.stream("GET", "/api/v1/watch", params={"from_revision": first}) as stream:
        assert stream.headers["content-type"] == "application/x-ndjson"
        lines = stream.iter_lines()
        events.append(json.loads(next(lines)))
        client.post("/api/v1/apply", content=ROUTE, headers=YAML).raise_for_status()
        events.append(json.loads(next(lines)))
        client.delete("/api/v1/resources/svc/default/reviews", headers=AUTH).raise_for_status()
        events.append(json.loads(next(lines)))
    assert [(e["type"], e["key"], e["revision"]) for e in events] == [
        ("PUT", "/config/Service/default/reviews", first),
        ("PUT", "/config/HTTPRoute/default/reviews", first + 1),
        ("DELETE", "/config/Service/default/reviews", first + 2),
    ]
    assert events[0]["value"]["spec"]["selector"] == {"app": "reviews"}
    assert events[2]["value"] is None
    # The client hung up: the server ends the stream and releases the store's watcher.
    deadline = time.monotonic() + 5
    while live.store._watchers and time.monotonic() < deadline:  # noqa: SLF001 - the leak check
        time.sleep(0.02)
    assert not live.store._watchers  # noqa: SLF001


def test_watch_ends_after_its_timeout(client: httpx.Client) -> None:
    started = time.monotonic()
    reply = client.get("/api/v1/watch", params={"timeout_seconds": 0.2, "prefix": "/registry/"})
    assert reply.status_code == 200 and reply.text == ""
    assert time.monotonic() - started < 3


def test_watch_from_a_compacted_revision_says_410(client: httpx.Client, live: LiveApi) -> None:
    for i in range(3):
        body = SERVICE.replace("app: reviews", f"app: reviews{i}")
        client.post("/api/v1/apply", content=body, headers=YAML).raise_for_status()
    revision = client.get("/healthz").json()["revision"]
    # The store belongs to the server's loop: compact it there.
    asyncio.run_coroutine_threadsafe(live.store.compact(revision), live.loop).result(5)
    reply = client.get("/api/v1/watch", params={"from_revision": 1, "timeout_seconds": 2})
    (line,) = reply.text.splitlines()
    event = json.loads(line)
    assert event["type"] == "ERROR" and event["revision"] == revision
    assert event["error"]["errors"] == [{"reason": "HTTP 410"}]
