"""The provider contract (shared/reference/openfaas-provider.md) against a running localfaas, over
real HTTP: every route of the reference with the status codes and JSON shapes faasd / faas-netes /
the gateway answer, as one table, then the behaviours a table cannot show (the deploy lifecycle,
scale semantics and scale from zero, `/system/logs` as `faas-cli logs` reads it)."""
from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from tests.localfaas_harness import LocalFaas, write_project

TALKER_HANDLER = '''
import sys

def handle(event, context):
    print(f"call {event.path} on {context.hostname}", flush=True)
    print(f"to stderr {event.path}", file=sys.stderr, flush=True)
    return {"statusCode": 200, "body": context.hostname}
'''

TALKER = '''
  talker:
    lang: python3-http-debian
    handler: ./functions/talker
    image: test/talker:latest
    labels:
      com.openfaas.scale.min: "1"
      com.openfaas.scale.max: "3"
'''

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


@pytest.fixture(scope="module")
def faas(tmp_path_factory):
    root = tmp_path_factory.mktemp("localfaas-contract")
    write_project(root)
    (root / "functions" / "talker").mkdir()
    (root / "functions" / "talker" / "handler.py").write_text(TALKER_HANDLER)
    (root / "functions" / "talker" / "requirements.txt").write_text("")
    with open(root / "stack.yml", "a") as stack:
        stack.write(TALKER)
    running = LocalFaas(root, {"LOCALFAAS_DEPLOY_WAIT": "10"})
    try:
        running.wait_until(lambda: requests.get(running.url + "/healthz", timeout=1).ok, "the gateway")
        for name, replicas in (("echo", 2), ("spare", 1), ("talker", 1)):
            running.wait_available(name, replicas)
        yield running
    finally:
        running.stop()


def body_of(faas, name: str, **changes) -> dict:
    """The FunctionDeployment faas-cli sends (labels/annotations always objects)."""
    fn = faas.functions()[name]
    body = {"service": name, "image": fn["image"], "namespace": "openfaas-fn", "envVars": fn["envVars"],
            "labels": fn["labels"], "annotations": fn["annotations"], "secrets": fn["secrets"]}
    body.update(changes)
    return body


# ----- checks of reply bodies ---------------------------------------------------------------------
def _function_status(status: dict) -> None:
    assert {"name", "image", "namespace", "envVars", "labels", "annotations", "secrets", "invocationCount",
            "replicas", "createdAt"} <= set(status)
    assert isinstance(status["invocationCount"], float) and isinstance(status["replicas"], int)
    assert RFC3339.match(status["createdAt"])
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", status["imageDigest"])
    assert "limits" not in status or status["limits"]  # omitempty: never null


def check_list(reply: requests.Response) -> None:
    functions = reply.json()
    assert isinstance(functions, list) and {"echo", "spare", "talker"} <= {f["name"] for f in functions}
    for status in functions:
        _function_status(status)


def check_status(reply: requests.Response) -> None:
    status = reply.json()
    _function_status(status)
    assert status["name"] == "echo" and status["image"] == "test/echo:latest"
    assert status["availableReplicas"] == 2


def check_gateway_info(reply: requests.Response) -> None:
    info = reply.json()
    assert set(info) == {"provider", "version", "arch"}
    assert set(info["version"]) == {"commit_message", "sha", "release"}
    assert info["provider"]["provider"] == "localfaas" and info["provider"]["orchestration"]
    assert set(info["provider"]["version"]) == {"sha", "release"}
    assert info["arch"] in ("amd64", "arm64", "arm")


def check_provider_info(reply: requests.Response) -> None:
    info = reply.json()
    assert set(info) == {"provider", "version", "orchestration"}  # ProviderInfo, not wrapped
    assert info["provider"] == "localfaas" and info["orchestration"] == "local-processes"


def check_secrets(reply: requests.Response) -> None:
    names = [s["name"] for s in reply.json()]
    assert "api-token" in names
    assert not [n for n in names if n.startswith("basic-auth")]  # the gateway's own, not the functions'


def check_ndjson(reply: requests.Response) -> None:
    assert reply.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in reply.text.splitlines()]
    assert lines, "no log lines"
    for line in lines:
        assert set(line) == {"name", "namespace", "instance", "timestamp", "text"}
        assert line["name"] == "talker" and line["namespace"] == "openfaas-fn" and RFC3339.match(line["timestamp"])


def says(*words: str):
    def check(reply: requests.Response) -> None:
        for word in words:
            assert word in reply.text
        assert reply.text.count("\n") <= 1, "errors are one line"
    return check


def check_metrics(reply: requests.Response) -> None:
    assert 'le="1"' in reply.text and 'le="1.0"' not in reply.text


ECHO_ROUTE = {"service": "echo", "image": "test/echo:latest", "namespace": "openfaas-fn", "labels": {},
              "annotations": {}}
GHOST = {"service": "ghost", "image": "test/echo:latest", "labels": {}, "annotations": {}}
LABELLED = {"openfaas": "1"}
YESTERDAY = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d %H:%M")  # not RFC3339

CONTRACT = [
    # (case, method, path, request kwargs, status, check)
    ("list", "GET", "/system/functions", {"params": {"namespace": "openfaas-fn"}}, 200, check_list),
    ("list, default namespace", "GET", "/system/functions", {}, 200, check_list),
    ("list, unknown namespace", "GET", "/system/functions", {"params": {"namespace": "team-a"}}, 400, None),
    ("status", "GET", "/system/function/echo", {"params": {"namespace": "openfaas-fn", "usage": "1"}}, 200,
     check_status),
    ("status of name.namespace", "GET", "/system/function/echo.openfaas-fn", {}, 200, check_status),
    ("status, unknown", "GET", "/system/function/ghost", {}, 404, says("ghost", "not found")),
    ("deploy, unparsable", "POST", "/system/functions", {"data": "{nope"}, 400, None),
    ("deploy, existing: no update", "POST", "/system/functions", {"json": ECHO_ROUTE}, 400,
     says("echo", "already exists")),
    ("deploy, never-built image", "POST", "/system/functions",
     {"json": {**GHOST, "image": "nowhere/ghost:1"}}, 400, says("nowhere/ghost:1", "never built")),
    ("deploy, unknown digest", "POST", "/system/functions",
     {"json": {**GHOST, "image": "test/echo@sha256:" + "0" * 64}}, 400, says("no snapshot")),
    ("deploy, non-DNS name", "POST", "/system/functions", {"json": {**GHOST, "service": "Ghost_1"}}, 400,
     says("invalid function name")),
    ("update, absent", "PUT", "/system/functions", {"json": GHOST}, 404, says("ghost.openfaas-fn", "not found")),
    ("update, unparsable", "PUT", "/system/functions", {"data": "[1,"}, 400, None),
    ("delete, absent", "DELETE", "/system/functions", {"json": {"functionName": "ghost", "namespace": "openfaas-fn"}},
     404, says("ghost.openfaas-fn", "not found")),
    ("delete, unparsable", "DELETE", "/system/functions", {"data": "x"}, 400, None),
    ("scale, unparsable", "POST", "/system/scale-function/echo", {"data": "{"}, 400, None),
    ("scale, unknown", "POST", "/system/scale-function/ghost", {"json": {"serviceName": "ghost", "replicas": 1}},
     404, None),
    ("scale, negative", "POST", "/system/scale-function/echo", {"json": {"serviceName": "echo", "replicas": -1}},
     400, None),
    ("info, the gateway's shape", "GET", "/system/info", {}, 200, check_gateway_info),
    ("info, the provider's shape", "GET", "/provider/system/info", {}, 200, check_provider_info),
    ("namespaces", "GET", "/system/namespaces", {}, 200, lambda r: r.json() == ["openfaas-fn"]),
    ("namespace", "GET", "/system/namespace/openfaas-fn", {}, 200,
     lambda r: r.json() == {"name": "openfaas-fn", "labels": LABELLED}),
    ("namespace, unknown", "GET", "/system/namespace/team-a", {}, 404, says("team-a", "not found")),
    ("namespace create, exists", "POST", "/system/namespace/",
     {"json": {"name": "openfaas-fn", "labels": LABELLED}}, 409, says("already exists")),
    ("namespace create, a second one", "POST", "/system/namespace/", {"json": {"name": "team-a", "labels": LABELLED}},
     400, says("team-a")),
    ("namespace create, no openfaas label", "POST", "/system/namespace/", {"json": {"name": "team-a"}}, 400,
     says("openfaas=1")),
    ("namespace update", "PUT", "/system/namespace/openfaas-fn", {"json": {"name": "openfaas-fn", "labels": LABELLED}},
     202, None),
    ("namespace update, body names another", "PUT", "/system/namespace/openfaas-fn",
     {"json": {"name": "team-a", "labels": LABELLED}}, 400, says("does not match")),
    ("namespace update, unknown", "PUT", "/system/namespace/team-a", {"json": {"name": "team-a", "labels": LABELLED}},
     404, None),
    ("namespace delete, the only one", "DELETE", "/system/namespace/openfaas-fn",
     {"json": {"name": "openfaas-fn", "labels": LABELLED}}, 400, None),
    ("secrets", "GET", "/system/secrets", {"params": {"namespace": "openfaas-fn"}}, 200, check_secrets),
    ("secret create, exists", "POST", "/system/secrets", {"json": {"name": "api-token", "value": "x"}}, 409, None),
    ("secret update, absent", "PUT", "/system/secrets", {"json": {"name": "nothing-here", "value": "x"}}, 404, None),
    ("secret delete, absent", "DELETE", "/system/secrets", {"json": {"name": "nothing-here"}}, 404, None),
    ("healthz", "GET", "/healthz", {"auth": None}, 200, None),
    ("healthz, provider", "GET", "/provider/healthz", {"auth": None}, 200, None),
    ("invoke, path and query", "GET", "/function/echo/a/b?x=1", {"auth": None}, 200,
     lambda r: r.json()["path"] == "/a/b" and r.json()["query"] == {"x": ["1"]}),
    ("invoke, any method", "PATCH", "/function/echo", {"auth": None, "data": b"p"}, 200,
     lambda r: r.json()["method"] == "PATCH"),
    ("invoke, unknown", "GET", "/function/ghost", {"auth": None}, 404,
     says("error finding function ghost.openfaas-fn")),
    ("invoke, provider", "GET", "/provider/function/echo/x", {"auth": None}, 200,
     lambda r: r.json()["path"] == "/x"),
    ("invoke, provider, unknown", "GET", "/provider/function/ghost", {"auth": None}, 503,
     says("No endpoints available for: ghost.")),
    ("logs, as faas-cli logs --tail=false sends it", "GET", "/system/logs",
     {"params": {"name": "talker", "namespace": "", "follow": "false", "tail": "-1"}}, 200, check_ndjson),
    ("logs, provider", "GET", "/provider/system/logs", {"params": {"name": "talker", "follow": "0"}}, 200,
     check_ndjson),
    ("logs, bad tail", "GET", "/system/logs", {"params": {"name": "talker", "tail": "ten"}}, 422,
     says("could not parse the log request")),
    ("logs, bad since", "GET", "/system/logs", {"params": {"name": "talker", "since": YESTERDAY}}, 422, None),
    ("logs, no name", "GET", "/system/logs", {}, 422, None),
    ("logs, unknown function", "GET", "/system/logs", {"params": {"name": "ghost"}}, 404, None),
    ("metrics", "GET", "/metrics", {"auth": None}, 200, check_metrics),
]


@pytest.mark.parametrize("case, method, path, kwargs, status, check", CONTRACT, ids=[c[0] for c in CONTRACT])
def test_each_route_answers_as_the_reference_says(faas, case, method, path, kwargs, status, check):
    if path == "/system/logs" or path.endswith("/logs"):
        assert faas.call("talker", "/warm").status_code == 200  # something to read
    kwargs = {"auth": faas.auth, **kwargs}
    reply = requests.request(method, faas.url + path, timeout=30, **kwargs)
    assert reply.status_code == status, f"{case}: {reply.status_code} {reply.text}"
    if check is not None:
        assert check(reply) is not False, f"{case}: {reply.text[:500]}"


GUARDED = sorted({(m, p) for _c, m, p, kw, _s, _k in CONTRACT if "/system/" in p})


@pytest.mark.parametrize("method, path", GUARDED, ids=[f"{m} {p}" for m, p in GUARDED])
def test_every_system_route_needs_the_gateway_credentials(faas, method, path):
    reply = requests.request(method, faas.url + path, timeout=10, json={})
    assert reply.status_code == 401 and reply.headers["WWW-Authenticate"] == 'Basic realm="Restricted"'


# ----- what a table cannot show ---------------------------------------------------------------------
def test_deploy_update_scale_delete_of_a_new_function_as_faas_cli_sends_them(faas):
    body = {**body_of(faas, "spare"), "service": "extra", "labels": {}, "annotations": {"by": "contract"}}
    put = requests.put(faas.url + "/system/functions", json=body, auth=faas.auth, timeout=30)
    assert put.status_code == 404  # faas-cli deploy then POSTs
    post = requests.post(faas.url + "/system/functions", json=body, auth=faas.auth, timeout=30)
    assert post.status_code == 202, post.text
    faas.wait_available("extra", 1)
    assert faas.call("extra").status_code == 200
    body["envVars"] = {**body["envVars"], "GREETING": "again"}
    assert requests.put(faas.url + "/system/functions", json=body, auth=faas.auth, timeout=30).status_code == 202
    faas.wait_until(lambda: faas.call("extra").json()["greeting"] == "again", "the update to serve")
    scaled = requests.post(faas.url + "/system/scale-function/extra", auth=faas.auth, timeout=10,
                           json={"serviceName": "extra", "replicas": 2, "namespace": "openfaas-fn"})
    assert scaled.status_code == 202
    faas.wait_available("extra", 2)
    gone = requests.delete(faas.url + "/system/functions", auth=faas.auth, timeout=30,
                           json={"functionName": "extra", "namespace": "openfaas-fn"})
    assert gone.status_code == 202 and "extra" not in faas.functions()


def scale(faas, name: str, replicas: int, query_namespace: bool = False) -> requests.Response:
    body = {"serviceName": name, "replicas": replicas}
    params = {"namespace": "openfaas-fn"} if query_namespace else None
    if not query_namespace:
        body["namespace"] = "openfaas-fn"
    return requests.post(faas.url + f"/system/scale-function/{name}", json=body, params=params,
                         auth=faas.auth, timeout=10)


def test_scale_is_capped_at_the_max_label_and_allows_zero(faas):
    assert scale(faas, "talker", 9).status_code == 202
    assert faas.functions()["talker"]["replicas"] == 3  # com.openfaas.scale.max
    faas.wait_available("talker", 3)
    assert scale(faas, "talker", 0, query_namespace=True).status_code == 202  # the gateway's way: ns in query
    faas.wait_until(lambda: "availableReplicas" not in faas.functions()["talker"], "no replica (omitempty)")
    assert faas.functions()["talker"]["replicas"] == 0


def test_a_call_to_a_function_at_zero_replicas_starts_one_and_is_answered(faas):
    scale(faas, "talker", 0)
    faas.wait_until(lambda: "availableReplicas" not in faas.functions()["talker"], "talker at zero")
    started = time.monotonic()
    reply = faas.call("talker", "/cold")
    assert reply.status_code == 200 and reply.text.startswith("talker-")
    assert time.monotonic() - started < 20
    status = faas.functions()["talker"]
    assert status["replicas"] == 1 and status["availableReplicas"] == 1  # max(min, 1)


def log_lines(faas, **params) -> list[dict]:
    reply = requests.get(faas.url + "/system/logs", params={"name": "talker", **params}, auth=faas.auth, timeout=10)
    assert reply.status_code == 200, reply.text
    return [json.loads(line) for line in reply.text.splitlines()]


def test_logs_tail_since_and_instance_filter_the_lines(faas):
    marker = f"/tail-{time.time_ns()}"
    for i in range(3):
        assert faas.call("talker", f"{marker}-{i}").status_code == 200
    every = log_lines(faas, tail="-1")
    texts = [line["text"] for line in every]
    assert f"call {marker}-2 on " in " ".join(texts) and any(t == f"to stderr {marker}-2" for t in texts)
    last = log_lines(faas, tail="2")
    assert [line["text"] for line in last] == texts[-2:]
    assert texts.index(f"to stderr {marker}-0") < texts.index(f"to stderr {marker}-2")  # in order
    cut = every[-1]["timestamp"]
    recent = log_lines(faas, since=cut)
    assert recent and recent[-1] == every[-1] and all(line["timestamp"] >= cut for line in recent)
    assert f"to stderr {marker}-0" not in [line["text"] for line in recent]
    instance = every[-1]["instance"]
    assert instance.startswith("talker-")
    assert {line["instance"] for line in log_lines(faas, instance=instance)} == {instance}
    assert log_lines(faas, instance="talker-99-99") == []


def test_logs_follow_streams_new_lines_until_the_client_hangs_up(faas):
    marker = f"/follow-{time.time_ns()}"
    seen: list[dict] = []
    arrived = threading.Event()

    def follow() -> None:
        params = {"name": "talker", "follow": "true", "tail": "1"}
        with requests.get(faas.url + "/system/logs", params=params, auth=faas.auth, stream=True, timeout=30) as reply:
            assert reply.headers["Content-Type"].startswith("application/x-ndjson")
            for line in reply.iter_lines():
                seen.append(json.loads(line))
                if marker in seen[-1]["text"]:
                    arrived.set()
                    return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    faas.wait_until(lambda: seen, "the tail line")
    assert faas.call("talker", marker).status_code == 200
    assert arrived.wait(15), f"the new line never came: {seen}"
    reader.join(10)
