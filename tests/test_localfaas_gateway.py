"""localfaas gateway over real processes and real HTTP: the routes, JSON shapes, basic auth,
proxying, async calls with callbacks, cron invocations and gateway_* metrics."""
from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.localfaas_harness import start_stack


@pytest.fixture(scope="module", params=["python", "nginx"])  # LOCALFAAS_DATA_PLANE: both answer the same
def faas(tmp_path_factory, request):
    stack = start_stack(tmp_path_factory.mktemp("localfaas-gw"), env={"LOCALFAAS_DATA_PLANE": request.param})
    yield stack
    stack.stop()


@pytest.fixture
def callback_server():
    """A tiny HTTP receiver for async-function callbacks, on a free port."""
    received: list[dict] = []
    arrived = threading.Event()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append({"headers": dict(self.headers), "body": body})
            self.send_response(200)
            self.end_headers()
            arrived.set()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/done", received, arrived
    server.shutdown()
    server.server_close()


def test_function_list_has_the_function_status_fields_and_types(faas):
    functions = faas.functions()
    assert set(functions) == {"echo", "spare", "recorder"}
    echo = functions["echo"]
    assert echo["image"] == "test/echo:latest"
    assert echo["namespace"] == "openfaas-fn"
    assert echo["envVars"]["GREETING"] == "hello"
    assert echo["labels"] == {"com.openfaas.scale.min": "2"}
    assert echo["annotations"] == {"owner": "tests"}
    assert echo["secrets"] == ["api-token"]
    assert isinstance(echo["invocationCount"], float)
    assert echo["replicas"] == 2 and echo["availableReplicas"] == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", echo["createdAt"])
    assert isinstance(echo["envProcess"], str)
    assert echo["usage"]["totalMemoryBytes"] > 0


def test_single_function_status_and_unknown_function_is_404(faas):
    one = requests.get(faas.url + "/system/function/echo", auth=faas.auth, timeout=5)
    assert one.status_code == 200 and one.json()["name"] == "echo"
    missing = requests.get(faas.url + "/system/function/nope", auth=faas.auth, timeout=5)
    assert missing.status_code == 404 and "not found" in missing.text


def test_info_and_namespaces_have_the_gateway_shapes(faas):
    info = requests.get(faas.url + "/system/info", auth=faas.auth, timeout=5).json()
    assert {"provider", "version", "arch"} <= set(info)
    assert {"provider", "orchestration", "version"} <= set(info["provider"])
    assert "release" in info["version"]
    assert requests.get(faas.url + "/system/namespaces", auth=faas.auth, timeout=5).json() == ["openfaas-fn"]


@pytest.mark.parametrize("route", ["/system/functions", "/system/info", "/system/namespaces",
                                   "/system/function/echo", "/system/secrets"])
def test_system_routes_refuse_missing_or_wrong_credentials_with_basic_realm(faas, route):
    for auth in (None, (faas.auth[0], "wrong-password"), ("someone", faas.auth[1])):
        reply = requests.get(faas.url + route, auth=auth, timeout=5)
        assert reply.status_code == 401
        assert reply.headers["WWW-Authenticate"] == 'Basic realm="Restricted"'


def test_credentials_are_generated_private_files_not_a_default(faas):
    secrets = faas.state / "secrets"
    for name in ("basic-auth-user", "basic-auth-password"):
        assert (secrets / name).stat().st_mode & 0o777 == 0o600
    _user, password = faas.auth
    assert len(password) >= 20 and password not in ("admin", "password")


def test_function_and_health_routes_are_open_without_credentials(faas):
    assert requests.get(faas.url + "/healthz", timeout=5).status_code == 200
    assert faas.call("echo").status_code == 200
    assert requests.get(faas.url + "/metrics", timeout=5).status_code == 200


def test_proxy_passes_method_path_query_and_body_and_adds_call_headers(faas):
    reply = requests.post(faas.url + "/function/echo.openfaas-fn/a/b%20c?x=1&x=2&y=z", data=b"payload", timeout=5)
    assert reply.status_code == 200
    seen = reply.json()
    assert seen["method"] == "POST"
    assert seen["path"] == "/a/b c"
    assert seen["query"] == {"x": ["1", "2"], "y": ["z"]}
    assert seen["body"] == "payload"
    assert reply.headers["X-Call-Id"] == seen["call_id"]
    assert reply.headers["X-Start-Time"].isdigit()
    assert float(reply.headers["X-Duration-Seconds"]) >= 0


def test_requests_are_spread_round_robin_over_replicas(faas):
    pids = {faas.call("echo").json()["pid"] for _ in range(6)}
    assert len(pids) == 2


def test_function_sees_only_its_env_its_secrets_and_the_copied_code(faas):
    seen = faas.call("echo").json()
    assert seen["secret"] == "s3cret-token"
    assert seen["secret_files"] == ["api-token"]  # never the gateway's basic-auth files
    assert seen["leaked_env"] is None
    assert seen["tag"] == "shared-v1"


def test_unknown_function_or_namespace_is_404_function_not_found(faas):
    for path in ("/function/nope", "/function/echo.other-ns", "/async-function/nope"):
        reply = requests.post(faas.url + path, timeout=5)
        assert reply.status_code == 404
        assert "not found" in reply.text


def test_async_function_returns_202_with_call_id_and_posts_result_to_callback(faas, callback_server):
    url, received, arrived = callback_server
    reply = requests.post(faas.url + "/async-function/echo/job", data=b"later",
                          headers={"X-Callback-Url": url}, timeout=5)
    assert reply.status_code == 202
    call_id = reply.headers["X-Call-Id"]
    assert arrived.wait(15), "no callback arrived"
    callback = received[0]
    assert callback["headers"]["X-Call-Id"] == call_id
    assert callback["headers"]["X-Function-Status"] == "200"
    result = json.loads(callback["body"])
    assert result["body"] == "later" and result["path"] == "/job"


def test_async_function_accepts_only_post(faas):
    assert requests.get(faas.url + "/async-function/echo", timeout=5).status_code == 405


def test_cron_annotated_function_is_called_with_connector_headers(faas):
    lines = faas.wait_until(lambda: faas.record_file.exists() and faas.record_file.read_text().splitlines(),
                            "a cron call of recorder", timeout=20)
    call = json.loads(lines[0])
    assert call == {"method": "POST", "body": "", "topic": "cron-function", "connector": "cron-connector"}


def test_metrics_expose_gateway_names_labels_and_buckets_after_calls(faas):
    assert faas.call("echo").status_code == 200
    requests.get(faas.url + "/function/nope", timeout=5)
    text = requests.get(faas.url + "/metrics", timeout=5).text
    assert re.search(r'^gateway_function_invocation_total\{code="200",function_name="echo.openfaas-fn"\} \d',
                     text, re.MULTILINE)
    # The Go client prints whole bounds without ".0" (the real gateway's `le="1"`, not Python's "1.0").
    for le in ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"):
        assert f'gateway_functions_seconds_bucket{{code="200",function_name="echo.openfaas-fn",le="{le}"}}' in text
    assert "gateway_functions_seconds_sum{" in text and "gateway_functions_seconds_count{" in text
    assert re.search(r'^gateway_function_invocation_started\{function_name="echo.openfaas-fn"\} \d', text, re.MULTILINE)
    assert 'gateway_service_count{function_name="echo.openfaas-fn"} 2.0' in text
    assert "# TYPE gateway_function_invocation_started counter" in text
    assert "_created" not in text
    assert 'le="1.0"' not in text and 'le="10.0"' not in text
    # A call to an unknown function is counted with the status it got.
    assert re.search(r'^gateway_function_invocation_total\{code="404",function_name="nope.openfaas-fn"\} \d',
                     text, re.MULTILINE)


def test_invocation_count_grows_with_calls(faas):
    before = faas.functions()["spare"]["invocationCount"]
    for _ in range(3):
        faas.call("spare")
    assert faas.functions()["spare"]["invocationCount"] == before + 3


def test_bad_deploy_bodies_get_a_clear_400(faas):
    post = lambda body: requests.post(faas.url + "/system/functions", data=body, auth=faas.auth, timeout=5)
    assert post("{not json").status_code == 400
    no_service = post(json.dumps({"image": "x"}))
    assert no_service.status_code == 400 and "service" in no_service.text
    unknown = post(json.dumps({"service": "ghost", "image": "x"}))
    assert unknown.status_code == 400 and "stack" in unknown.text
    scale = requests.post(faas.url + "/system/scale-function/echo", auth=faas.auth, timeout=5,
                          json={"serviceName": "echo", "replicas": "lots"})
    assert scale.status_code == 400


# ----- /system/secrets, with the request bodies faas-cli sends (faas-provider's Secret) -----------
def secrets_api(faas, method, body=None, auth="default", **kwargs):
    return requests.request(method, faas.url + "/system/secrets", json=body, timeout=5,
                            auth=faas.auth if auth == "default" else auth, **kwargs)


def secret_names(faas) -> list[str]:
    reply = secrets_api(faas, "GET")
    assert reply.status_code == 200
    assert all(entry["namespace"] == "openfaas-fn" for entry in reply.json())
    return [entry["name"] for entry in reply.json()]


def test_secret_create_list_update_delete_round_trip_like_faas_cli(faas):
    path = faas.state / "secrets" / "smtp-password"
    created = secrets_api(faas, "POST", {"name": "smtp-password", "namespace": "openfaas-fn", "value": "first"})
    assert created.status_code in (200, 201, 202)
    assert path.read_text() == "first" and path.stat().st_mode & 0o777 == 0o600
    assert "smtp-password" in secret_names(faas)

    again = secrets_api(faas, "POST", {"name": "smtp-password", "namespace": "openfaas-fn", "value": "other"})
    assert again.status_code == 409 and "already exists" in again.text
    assert path.read_text() == "first"

    # `faas-cli secret update --from-file` sends the bytes as rawValue (base64), any bytes at all.
    raw = b"\x00binary\nvalue\xff"
    updated = secrets_api(faas, "PUT", {"name": "smtp-password", "namespace": "openfaas-fn",
                                        "rawValue": base64.b64encode(raw).decode()})
    assert updated.status_code in (200, 202)
    assert path.read_bytes() == raw and path.stat().st_mode & 0o777 == 0o600

    deleted = secrets_api(faas, "DELETE", {"name": "smtp-password", "namespace": "openfaas-fn"})
    assert deleted.status_code in (200, 202)
    assert not path.exists() and "smtp-password" not in secret_names(faas)
    assert secrets_api(faas, "DELETE", {"name": "smtp-password"}).status_code == 404
    assert secrets_api(faas, "PUT", {"name": "smtp-password", "value": "x"}).status_code == 404


def test_secret_list_shows_names_only_never_values(faas):
    listed = secrets_api(faas, "GET", params={"namespace": "openfaas-fn"})
    assert {"name": "api-token", "namespace": "openfaas-fn"} in listed.json()
    assert "s3cret-token" not in listed.text and faas.auth[1] not in listed.text
    assert all(set(entry) == {"name", "namespace"} for entry in listed.json())


def test_updated_secret_reaches_running_replicas_without_a_redeploy(faas):
    pids_before = {faas.call("echo").json()["pid"] for _ in range(4)}
    try:
        assert secrets_api(faas, "PUT", {"name": "api-token", "value": "rotated-token"}).status_code == 202
        seen = [faas.call("echo").json() for _ in range(4)]
        assert {s["secret"] for s in seen} == {"rotated-token"}
        assert {s["pid"] for s in seen} == pids_before  # same processes: nothing was restarted
    finally:
        secrets_api(faas, "PUT", {"name": "api-token", "value": "s3cret-token"})
    assert faas.call("echo").json()["secret"] == "s3cret-token"


def test_a_created_secret_can_be_named_by_a_deploy_and_is_then_mounted(faas):
    assert secrets_api(faas, "POST", {"name": "extra-token", "value": "extra"}).status_code == 202
    try:
        spare = faas.functions()["spare"]
        body = {"service": "spare", "image": spare["image"], "namespace": "openfaas-fn",
                "envVars": spare["envVars"], "labels": spare["labels"], "annotations": spare["annotations"],
                "secrets": ["api-token", "extra-token"]}
        assert requests.put(faas.url + "/system/functions", json=body, auth=faas.auth, timeout=30).status_code == 202
        assert faas.call("spare").json()["secret_files"] == ["api-token", "extra-token"]
    finally:
        body["secrets"] = ["api-token"]
        requests.put(faas.url + "/system/functions", json=body, auth=faas.auth, timeout=30)
        secrets_api(faas, "DELETE", {"name": "extra-token"})


@pytest.mark.parametrize("body, status, says", [
    ({"name": "../escape", "value": "x"}, 400, "invalid secret name"),
    ({"name": "Upper_Case", "value": "x"}, 400, "invalid secret name"),
    ({"name": "", "value": "x"}, 400, "name is required"),
    ({"name": "no-value"}, 400, "value"),
    ({"name": "bad-raw", "rawValue": "%%% not base64"}, 400, "base64"),
    ({"name": "elsewhere", "namespace": "kube-system", "value": "x"}, 400, "namespace"),
    (["not", "an", "object"], 400, "JSON object"),
])
def test_bad_secret_bodies_get_a_clear_one_line_400(faas, body, status, says):
    reply = secrets_api(faas, "POST", body)
    assert reply.status_code == status
    assert says in reply.text and reply.text.count("\n") == 1
    assert not any(p.name.startswith(("..", "escape", "Upper")) for p in (faas.state / "secrets").iterdir())


def test_secret_changes_need_credentials(faas):
    for method in ("POST", "PUT", "DELETE"):
        reply = secrets_api(faas, method, {"name": "api-token", "value": "stolen"}, auth=None)
        assert reply.status_code == 401
    assert (faas.state / "secrets" / "api-token").read_text() == "s3cret-token"


def test_gateway_credentials_cannot_be_changed_or_deleted_through_the_secrets_api(faas):
    user, password = faas.auth
    assert secrets_api(faas, "POST", {"name": "basic-auth-password", "value": "new"}).status_code == 409
    for method in ("PUT", "DELETE"):
        reply = secrets_api(faas, method, {"name": "basic-auth-password", "value": "new"})
        assert reply.status_code == 403 and "gateway's own credential" in reply.text
    assert faas.auth == (user, password)
    assert secrets_api(faas, "GET").status_code == 200  # the old credentials still work
