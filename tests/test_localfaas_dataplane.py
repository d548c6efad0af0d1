"""The nginx data plane (LOCALFAAS_DATA_PLANE=nginx) over real processes: nginx answers calls to
ready replicas itself and every call is still counted; routing follows scaling (a reload, and no
call in flight is cut by a drain); what nginx answers by itself is one line of text; nginx outlives
a killed runtime, keeps serving, and is adopted by the next one, which counts the calls answered
meanwhile; `scripts.stack down` stops an nginx a killed runtime left. (The gateway and boundary
tests run over both data planes: tests/test_localfaas_gateway.py, test_localfaas_boundaries.py.)"""
from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time

import pytest
import requests

from localfaas.replicastate import same_process, stop_recorded
from tests.localfaas_harness import LocalFaas, json_of, pid_alive, start_stack

NGINX = {"LOCALFAAS_DATA_PLANE": "nginx"}


def record(faas: LocalFaas) -> dict:
    return json.loads((faas.state / "run" / "dataplane" / "dataplane.json").read_text())


def invocations(faas: LocalFaas, function: str, code: int = 200) -> float:
    reply = requests.get(faas.url + "/metrics", timeout=5)
    assert reply.status_code == 200, reply.text[-500:] + (faas.state / "run/dataplane/error.log").read_text()[-1500:]
    text = reply.text
    found = re.search(rf'^gateway_function_invocation_total\{{code="{code}",function_name="{function}"\}} (\S+)',
                      text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


@pytest.fixture(scope="module")
def faas(tmp_path_factory):
    stack = start_stack(tmp_path_factory.mktemp("localfaas-dp"), env=NGINX)
    yield stack
    stack.stop()


def test_nginx_holds_the_gateway_port_and_the_app_only_a_loopback_control_port(faas):
    plane = record(faas)
    assert same_process(plane["pid"], plane["start"])
    assert plane["control_port"] != faas.port
    assert faas.call("echo").status_code == 200
    # the control plane still answers everything that is not a call to a ready replica
    assert requests.get(faas.url + "/system/functions", timeout=5).status_code == 401
    assert requests.get(faas.url + "/system/functions", auth=faas.auth, timeout=5).status_code == 200


def test_every_call_nginx_answers_is_counted_in_the_gateway_metrics_and_invocation_count(faas):
    before, count_before = invocations(faas, "spare.openfaas-fn"), faas.functions()["spare"]["invocationCount"]
    for _ in range(25):
        assert faas.call("spare").status_code == 200
    assert invocations(faas, "spare.openfaas-fn") == before + 25  # a scrape reads the call log first
    faas.wait_until(lambda: faas.functions()["spare"]["invocationCount"] == count_before + 25, "invocationCount")


def test_call_headers_are_the_gateways_a_new_uuid_or_the_callers_id(faas):
    mine = faas.call("echo", headers={"X-Call-Id": "caller-chosen-id"})
    assert mine.headers["X-Call-Id"] == "caller-chosen-id" == json_of(mine)["call_id"]
    fresh = faas.call("echo")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", fresh.headers["X-Call-Id"])
    assert abs(int(fresh.headers["X-Start-Time"]) / 1e9 - time.time()) < 60
    assert float(fresh.headers["X-Duration-Seconds"]) >= 0


def test_what_nginx_answers_by_itself_is_one_line_of_text(faas):
    for request in (b"NOT A REQUEST\r\n\r\n", b"GET /function/echo HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"):
        head, _, body = raw(faas.port, request).partition(b"\r\n\r\n")
        assert head.split(b" ")[1][:1] == b"4", head
        assert body.count(b"\n") == 1 and b"<" not in body, body


def test_scaling_reloads_the_routes_and_a_drain_never_cuts_a_call_in_flight(faas):
    assert requests.post(faas.url + "/system/scale-function/spare", json={"replicas": 3}, auth=faas.auth,
                         timeout=5).status_code in (200, 202)
    faas.wait_available("spare", 3)
    faas.wait_until(lambda: len({json_of(faas.call("spare"))["pid"] for _ in range(9)}) == 3, "calls on 3 replicas")
    results: list[int] = []
    slow = [threading.Thread(target=lambda: results.append(faas.call("spare", "/slow?s=1.5").status_code))
            for _ in range(6)]
    for thread in slow:
        thread.start()
    time.sleep(0.3)  # the slow calls are in flight on every replica
    assert requests.post(faas.url + "/system/scale-function/spare", json={"replicas": 1}, auth=faas.auth,
                         timeout=5).status_code in (200, 202)
    for thread in slow:
        thread.join(20)
    assert results == [200] * 6
    faas.wait_until(lambda: len({json_of(faas.call("spare"))["pid"] for _ in range(6)}) == 1, "calls on 1 replica")


def test_a_function_scaled_to_zero_is_started_by_a_call_through_the_control_plane(faas):
    assert requests.post(faas.url + "/system/scale-function/spare", json={"replicas": 0}, auth=faas.auth,
                         timeout=5).status_code in (200, 202)
    faas.wait_until(lambda: "availableReplicas" not in faas.functions()["spare"], "spare at zero (omitempty)")
    reply = faas.call("spare")
    assert reply.status_code == 200
    faas.wait_until(lambda: faas.call("spare").status_code == 200, "spare answering again")


def test_a_killed_runtime_leaves_nginx_serving_and_the_next_one_adopts_it_and_counts_those_calls(tmp_path):
    first = start_stack(tmp_path, env=NGINX)
    try:
        plane = record(first)
        calls_log = first.state / "run" / "dataplane" / "calls.log"
        first.wait_until(lambda: first.call("echo").ok and "echo." in calls_log.read_text(), "nginx routing echo")
        time.sleep(0.3)  # nginx writes a call's line just after its answer: let the last one land
        assert invocations(first, "echo.openfaas-fn") >= 1  # read: the offset is recorded
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        for _ in range(10):  # no runtime: nginx still calls the replicas
            reply = first.call("echo")
            assert reply.status_code == 200, reply.text + (first.state / "run/dataplane/error.log").read_text()[-1500:]
        again = LocalFaas(first.root, env=NGINX, port=first.port)
        try:
            again.wait_until(lambda: requests.get(again.url + "/healthz", timeout=1).ok, "the runtime again")
            assert record(again)["pid"] == plane["pid"]  # the same nginx, adopted and reloaded
            assert again.call("echo").status_code == 200
            # counters restart with the runtime; the calls served while it was down are in them
            again.wait_until(lambda: invocations(again, "echo.openfaas-fn") >= 11, "the 11 calls counted", 10)
            assert invocations(again, "echo.openfaas-fn") == 11
        finally:
            again.process.send_signal(signal.SIGKILL)
            again.process.wait()
        stopped = stop_recorded(again.state, grace_s=5)  # what `scripts.stack down` does after a kill
        assert plane["pid"] in stopped
        deadline = time.monotonic() + 5
        while pid_alive(plane["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not same_process(plane["pid"], plane["start"])
    finally:
        first.stop()
        stop_recorded(first.state, grace_s=5)  # whatever a failed run left (nginx, replicas)
