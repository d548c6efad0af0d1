"""localfaas gateway over real processes and real HTTP: the routes, JSON shapes, basic auth,
proxying, async calls with callbacks, cron invocations and gateway_* metrics."""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.localfaas_harness import start_stack


@pytest.fixture(scope="module")
def faas(tmp_path_factory):
    stack = start_stack(tmp_path_factory.mktemp("localfaas-gw"))
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
                                   "/system/function/echo"])
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
    for le in ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf"):
        assert f'gateway_functions_seconds_bucket{{code="200",function_name="echo.openfaas-fn",le="{le}"}}' in text
    assert "gateway_functions_seconds_sum{" in text and "gateway_functions_seconds_count{" in text
    assert re.search(r'^gateway_function_invocation_started\{function_name="echo.openfaas-fn"\} \d', text, re.MULTILINE)
    assert 'gateway_service_count{function_name="echo.openfaas-fn"} 2.0' in text
    assert "# TYPE gateway_function_invocation_started counter" in text
    assert "_created" not in text


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
