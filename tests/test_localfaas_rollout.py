"""localfaas lifecycle over real processes: deploy/update/delete/scale as faas-cli sends them,
rolling updates and crash restarts without a failed request, and a clean shutdown."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests

from localfaas.replica import read_replica_state
from tests.localfaas_harness import LocalFaas, pid_alive, start_stack, write_project

HAMMER_THREADS = 4
SLEEPY = """
  sleepy:
    lang: python3-http-debian
    handler: ./functions/echo
    image: test/sleepy:latest
    environment:
      NEVER_READY: "1"
    labels:
      com.openfaas.scale.min: "2"
"""
DEPLOY_WAIT = 8.0  # seconds a deploy call waits for its replicas to serve before answering anyway


@pytest.fixture(scope="module")
def faas(tmp_path_factory):
    stack = start_stack(tmp_path_factory.mktemp("localfaas-rollout"), {"LOCALFAAS_DEPLOY_WAIT": str(DEPLOY_WAIT)})
    yield stack
    stack.stop()


def deployment(faas, name: str, **changes) -> dict:
    """The FunctionDeployment faas-cli would send for a function as it is now, with changes."""
    fn = faas.functions()[name]
    body = {"service": name, "image": fn["image"], "namespace": "openfaas-fn", "envProcess": fn["envProcess"],
            "envVars": fn["envVars"], "labels": fn["labels"], "annotations": fn["annotations"],
            "secrets": fn["secrets"], "constraints": [], "limits": {}, "requests": {},
            "readOnlyRootFilesystem": False}
    body.update(changes)
    return body


def faas_cli_deploy(faas, body: dict) -> requests.Response:
    """faas-cli deploy: PUT, and POST when the gateway says 404."""
    reply = requests.put(faas.url + "/system/functions", json=body, auth=faas.auth, timeout=60)
    if reply.status_code == 404:
        reply = requests.post(faas.url + "/system/functions", json=body, auth=faas.auth, timeout=60)
    return reply


class Hammer:
    """Bounded concurrent GET load on one function while something else happens."""

    def __init__(self, faas, name: str, threads: int = HAMMER_THREADS, max_calls: int = 5000):
        self.url = f"{faas.url}/function/{name}"
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.greetings: list[str] = []
        self.pids: set[int] = set()
        self.calls = 0
        self.max_calls = max_calls
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set() and self.calls < self.max_calls:
                try:
                    reply = session.get(self.url, timeout=10)
                    with self.lock:
                        self.calls += 1
                        if reply.status_code != 200:
                            self.failures.append(f"{reply.status_code} {reply.text.strip()}")
                        else:
                            seen = reply.json()
                            self.greetings.append(seen["greeting"])
                            self.pids.add(seen["pid"])
                except requests.RequestException as exc:
                    with self.lock:
                        self.failures.append(repr(exc))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def test_rolling_update_switches_the_env_value_with_zero_failed_requests(faas):
    old_pids = {faas.call("echo").json()["pid"] for _ in range(4)}
    env = dict(faas.functions()["echo"]["envVars"], GREETING="bonjour")
    with Hammer(faas, "echo") as load:
        reply = faas_cli_deploy(faas, deployment(faas, "echo", envVars=env))
        assert reply.status_code == 202, reply.text
        faas.wait_until(lambda: load.greetings and load.greetings[-1] == "bonjour", "the new value to be served")
        calls_after_switch = load.calls + 50
        faas.wait_until(lambda: load.calls >= calls_after_switch, "more calls after the switch")
    assert load.failures == []
    assert "hello" in load.greetings and "bonjour" in load.greetings
    # Once the new version serves, the old one never does again.
    first_new = load.greetings.index("bonjour")
    assert "hello" not in load.greetings[first_new + HAMMER_THREADS:]
    assert faas.functions()["echo"]["envVars"]["GREETING"] == "bonjour"
    faas.wait_until(lambda: not any(pid_alive(p) for p in old_pids), "old replicas to be terminated")


def test_update_whose_replicas_never_get_ready_keeps_the_old_ones_serving(faas):
    # As faasd and faas-netes do, the deploy is accepted (202) and the rollout waits for the new
    # replicas; until they are ready, the old ones keep serving (a Deployment's rolling update).
    original = deployment(faas, "spare")
    env = dict(original["envVars"], NEVER_READY="1", GREETING="broken")
    runtime_log = faas.state / "logs" / "localfaas.log"
    log_start = len(runtime_log.read_text())
    try:
        with Hammer(faas, "spare", threads=2) as load:
            reply = faas_cli_deploy(faas, deployment(faas, "spare", envVars=env))
            faas.wait_until(lambda: load.calls > 20, "calls during the stuck update")
        assert reply.status_code == 202, reply.text
        assert load.failures == []
        assert set(load.greetings) == {"hello"}
        status = faas.functions()["spare"]
        assert status["envVars"]["NEVER_READY"] == "1"  # the deployment as asked for
        assert status["availableReplicas"] == 1  # served by the previous version
        log = runtime_log.read_text()[log_start:]
        assert "waiting for: told never to be ready" in log
        assert " ERROR " not in log  # waiting is not failing
    finally:
        assert faas_cli_deploy(faas, original).status_code == 202
    faas.wait_until(lambda: faas.call("spare").json()["greeting"] == "hello", "the good version again")
    assert faas.functions()["spare"]["envVars"].get("NEVER_READY") is None


def test_killed_replica_causes_no_failed_request_and_is_restarted(faas):
    faas.wait_available("echo", 2)
    victim = faas.call("echo").json()["pid"]
    with Hammer(faas, "echo") as load:
        faas.wait_until(lambda: load.calls > 20, "load to start")
        os.kill(victim, signal.SIGKILL)
        faas.wait_until(lambda: load.calls > 200, "calls after the kill")
    assert load.failures == []
    faas.wait_available("echo", 2)
    pids = {faas.call("echo").json()["pid"] for _ in range(6)}
    assert victim not in pids and len(pids) == 2


def test_the_replica_state_file_names_each_live_replica_and_follows_a_crash(faas):
    faas.wait_available("echo", 2)

    def listed(name: str) -> list[int]:
        return [r["pid"] for r in read_replica_state(faas.state)["functions"][name]]

    faas.wait_until(lambda: len(listed("echo")) == 2, "only the current echo replicas (none draining) in the file")
    assert read_replica_state(faas.state)["runtime_pid"] == faas.process.pid
    served = {faas.call("echo").json()["pid"] for _ in range(8)}  # round robin: both replicas answer
    assert served == set(listed("echo")) and all(pid_alive(p) for p in served)
    assert len(listed("recorder")) == 1
    victim = listed("echo")[0]
    os.kill(victim, signal.SIGKILL)
    faas.wait_until(lambda: victim not in listed("echo") and len(listed("echo")) == 2,
                    "the file to drop the killed replica and name its replacement")
    faas.wait_available("echo", 2)
    assert {faas.call("echo").json()["pid"] for _ in range(8)} == set(listed("echo"))


def test_scale_function_changes_replicas_up_and_down(faas):
    scale = lambda n: requests.post(faas.url + "/system/scale-function/spare", auth=faas.auth, timeout=10,
                                    json={"serviceName": "spare", "replicas": n, "namespace": "openfaas-fn"})
    assert scale(3).status_code == 202
    faas.wait_available("spare", 3)
    assert len({faas.call("spare").json()["pid"] for _ in range(9)}) == 3
    assert scale(1).status_code == 202
    faas.wait_available("spare", 1)
    assert faas.functions()["spare"]["replicas"] == 1
    missing = requests.post(faas.url + "/system/scale-function/ghost", auth=faas.auth, timeout=10,
                            json={"serviceName": "ghost", "replicas": 1})
    assert missing.status_code == 404


def test_delete_then_faas_cli_deploy_falls_back_to_post_and_recreates_the_function(faas):
    body = deployment(faas, "spare", annotations={"deployed-by": "faas-cli"})
    pids = {faas.call("spare").json()["pid"] for _ in range(2)}
    deleted = requests.delete(faas.url + "/system/functions", auth=faas.auth, timeout=30,
                              json={"functionName": "spare", "namespace": "openfaas-fn"})
    assert deleted.status_code == 202
    assert "spare" not in faas.functions()
    assert faas.call("spare").status_code == 404
    assert not any(pid_alive(p) for p in pids)
    put = requests.put(faas.url + "/system/functions", json=body, auth=faas.auth, timeout=30)
    assert put.status_code == 404
    assert faas_cli_deploy(faas, body).status_code == 202
    assert faas.functions()["spare"]["annotations"] == {"deployed-by": "faas-cli"}
    assert faas.call("spare").status_code == 200
    again = requests.delete(faas.url + "/system/functions", auth=faas.auth, timeout=30,
                            json={"functionName": "spare", "namespace": "openfaas-fn"})
    assert again.status_code == 202
    gone = requests.delete(faas.url + "/system/functions", auth=faas.auth, timeout=30,
                           json={"functionName": "spare", "namespace": "openfaas-fn"})
    assert gone.status_code == 404


def test_deploy_naming_a_missing_secret_is_refused_with_how_to_create_it(faas):
    body = deployment(faas, "echo", secrets=["api-token", "not-there"])
    reply = faas_cli_deploy(faas, body)
    assert reply.status_code == 400
    assert "not-there" in reply.text and "create" in reply.text


def test_sigterm_stops_every_replica_and_exits_zero(tmp_path):
    stack = start_stack(tmp_path)
    pids = {stack.call("echo").json()["pid"] for _ in range(4)}
    pid_file = stack.state / "run" / "localfaas.pid"
    assert pid_file.read_text().strip() == str(stack.process.pid)
    assert stack.stop() == 0
    assert not any(pid_alive(p) for p in pids)
    assert not pid_file.exists()
    assert not any(read_replica_state(stack.state)["functions"].values())  # no replica left to name


def test_update_during_a_first_deploy_that_is_not_ready_yet_does_not_wait_behind_it(faas):
    original = deployment(faas, "echo")
    deleted = requests.delete(faas.url + "/system/functions", auth=faas.auth, timeout=30,
                              json={"functionName": "echo", "namespace": "openfaas-fn"})
    assert deleted.status_code in (200, 202)
    never_ready = dict(original, envVars={**original["envVars"], "NEVER_READY": "1"})
    first: dict[str, requests.Response] = {}
    creating = threading.Thread(target=lambda: first.setdefault(
        "reply", requests.post(faas.url + "/system/functions", json=never_ready, auth=faas.auth, timeout=60)))
    creating.start()
    try:
        faas.wait_until(lambda: "echo" in faas.functions(), "the first deploy to start")
        started = time.monotonic()
        update = requests.put(faas.url + "/system/functions", json=original, auth=faas.auth, timeout=60)
        assert update.status_code == 202, update.text
        # It replaced the first deploy's replicas at once instead of waiting out that deploy's wait.
        assert time.monotonic() - started < DEPLOY_WAIT, "the update queued behind the first deploy's wait"
        assert faas.call("echo").status_code == 200
    finally:
        creating.join(60)
    assert first["reply"].status_code in (200, 202)
    assert faas.functions()["echo"]["envVars"].get("NEVER_READY") is None


def test_a_replica_that_is_up_but_not_ready_is_logged_once_as_waiting_never_as_an_error(tmp_path):
    write_project(tmp_path)
    with open(tmp_path / "stack.yml", "a") as stack:
        stack.write(SLEEPY)
    faas = LocalFaas(tmp_path, {"LOCALFAAS_READY_TIMEOUT": "2"})
    try:
        faas.wait_available("echo", 2)
        runtime_log = faas.state / "logs" / "localfaas.log"
        faas.wait_until(lambda: runtime_log.read_text().count("is up, waiting for: told never to be ready") == 2,
                        "both sleepy replicas to say what they wait for")
        time.sleep(3)  # past the readiness timeout, and a few health rounds more
        text = runtime_log.read_text()
        waiting = [line for line in text.splitlines() if "sleepy" in line and "told never to be ready" in line]
        assert len(waiting) == 2, waiting  # once per replica, with what its readiness answer said
        assert " ERROR " not in text and "failed" not in text
        status = faas.functions()["sleepy"]
        assert status["replicas"] == 2 and "availableReplicas" not in status
    finally:
        faas.stop()
