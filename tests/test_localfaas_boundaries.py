"""localfaas at its trust boundaries (issue 12 items 1, 4 and 5), over real processes and HTTP:
request bodies capped per function before they reach a replica (413, one line), deployment bodies
checked by `localfaas.validate` (400, one line), and a function with no ready replica answered at
once (503) instead of held."""
from __future__ import annotations

import os
import signal
import socket
import time

import pytest
import requests

from tests.localfaas_harness import json_of, start_stack

LIMIT = 64 * 1024


@pytest.fixture(scope="module", params=["python", "nginx"])  # LOCALFAAS_DATA_PLANE: both answer the same
def faas(tmp_path_factory, request):
    stack = start_stack(tmp_path_factory.mktemp("localfaas-bounds"), env={"LOCALFAAS_MAX_BODY": str(LIMIT),
                                                                              "LOCALFAAS_DATA_PLANE": request.param})
    yield stack
    stack.stop()


def _raw_post(port: int, path: str, headers: str, body: bytes) -> tuple[int, bytes]:
    """Send the head and part of a body, then read the answer (the server need not read the rest)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode() + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def _port(faas) -> int:
    return int(faas.url.rsplit(":", 1)[1])


def test_a_100mb_body_is_refused_with_one_line_413_before_any_replica_reads_it(faas):
    started = time.perf_counter()
    status, body = _raw_post(_port(faas), "/function/echo", "Content-Length: 104857600\r\n", b"x" * 4096)
    assert status == 413
    assert body.decode().count("\n") == 1 and "too large" in body.decode() and str(LIMIT) in body.decode()
    assert time.perf_counter() - started < 5
    # Under the limit it passes, buffered or streamed.
    small = faas.call("echo", data=b"y" * 1000)
    assert small.status_code == 200 and json_of(small)["body"] == "y" * 1000


def test_a_chunked_body_over_the_limit_never_reaches_the_function_whole(faas):
    def chunks():
        for _ in range(40):
            yield b"z" * 8192  # 320 KiB in all, over the 64 KiB limit
    reply = requests.post(faas.url + "/function/echo", data=chunks(), timeout=30)
    assert reply.status_code in (413, 502), reply.text
    assert reply.text.count("\n") <= 1


def _redeploy(faas, name: str, **changes) -> requests.Response:
    current = requests.get(f"{faas.url}/system/function/{name}", auth=faas.auth, timeout=10).json()
    body = {key: current.get(key) for key in ("image", "namespace", "envVars", "labels", "annotations", "secrets")}
    body["service"] = name
    body.update(changes)
    return requests.put(f"{faas.url}/system/functions", auth=faas.auth, timeout=60, json=body)


def test_a_function_label_sets_its_own_body_limit(faas):
    labels = requests.get(f"{faas.url}/system/function/spare", auth=faas.auth, timeout=10).json()["labels"] or {}
    reply = _redeploy(faas, "spare", labels={**labels, "com.openfaas.localfaas.max-body-bytes": "100"})
    assert reply.status_code in (200, 202), reply.text
    faas.wait_until(lambda: faas.call("spare", data=b"a" * 200).status_code == 413, "the label's limit")
    assert faas.call("spare", data=b"a" * 50).status_code == 200


def test_a_body_limit_label_in_other_digits_is_not_a_number_and_the_default_applies(faas):
    # int() reads '١٠٠' (Arabic-Indic digits) as 100; the label takes ASCII digits only, as the
    # scaling labels do, so this label is ignored and the gateway's default limit holds.
    labels = requests.get(f"{faas.url}/system/function/spare", auth=faas.auth, timeout=10).json()["labels"] or {}
    reply = _redeploy(faas, "spare", labels={**labels, "com.openfaas.localfaas.max-body-bytes": "\u0661\u0660\u0660"})
    assert reply.status_code in (200, 202), reply.text
    faas.wait_until(lambda: faas.call("spare", data=b"a" * 200).status_code == 200, "the default limit")


@pytest.mark.parametrize("changes, says", [
    ({"secrets": ["../../etc/hostname"]}, "secret name"),
    ({"secrets": ["/etc/hostname"]}, "secret name"),
    ({"envProcess": "cat /etc/hostname"}, "envProcess"),
    ({"envVars": {"A=B": "x"}}, "environment variable"),
    ({"envVars": {"A": "x\u0000y"}}, "NUL"),
    ({"namespace": "../x"}, "namespace"),
])
def test_deployments_with_paths_or_host_commands_are_refused_with_one_line_400(faas, changes, says):
    reply = _redeploy(faas, "spare", **changes)
    assert reply.status_code == 400, reply.text
    assert says in reply.text and reply.text.strip().count("\n") == 0, reply.text


def test_a_deployment_repeating_the_stacks_own_process_is_accepted(faas):
    # The template's fprocess is what the stack gives the function: naming it again is fine.
    reply = _redeploy(faas, "spare", envProcess="python index.py")
    assert reply.status_code in (200, 202), reply.text


def test_a_function_whose_only_replica_died_is_503_at_once_not_held(faas):
    faas.wait_available("recorder", 1)
    pid = json_of(faas.call("echo"))["pid"]  # echo has two replicas: kill one, the other serves
    os.kill(pid, signal.SIGKILL)
    for _ in range(20):
        started = time.perf_counter()
        reply = faas.call("echo")
        assert reply.status_code == 200 and time.perf_counter() - started < 1.0
    spare_pid = json_of(faas.call("spare"))["pid"]
    os.kill(spare_pid, signal.SIGKILL)
    statuses, slowest = set(), 0.0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        started = time.perf_counter()
        reply = faas.call("spare")
        slowest = max(slowest, time.perf_counter() - started)
        statuses.add(reply.status_code)
        if reply.status_code == 503:
            assert reply.text.strip().count("\n") == 0 and "no ready replicas" in reply.text
        time.sleep(0.02)
    assert statuses <= {200, 503} and 503 in statuses, statuses
    assert slowest < 0.5, slowest
