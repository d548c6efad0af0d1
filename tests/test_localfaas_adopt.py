"""Replicas outlive a killed localfaas, as OpenFaaS functions outlive a restarted gateway or provider:
a SIGKILL of the runtime leaves every replica serving; the next `localfaas up` on the same state
folder adopts them (same pids, before its gateway listens, so every call after it is back answers
200), replaces those whose deployment changed meanwhile, never signals a recorded pid that is now
another process, and `scripts.stack down` stops what a killed runtime left. Real processes only."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from localfaas.replicastate import read_replica_state, same_process, start_ticks, stop_recorded
from tests.localfaas_harness import REPO, LocalFaas, pid_alive, start_stack


def recorded_pids(state: Path, name: str) -> list[int]:
    return sorted(r["pid"] for r in read_replica_state(state)["functions"].get(name, []))


def kill_runtime(faas: LocalFaas) -> None:
    faas.process.send_signal(signal.SIGKILL)
    faas.process.wait()


def start_again(faas: LocalFaas, same_port: bool = False) -> LocalFaas:
    again = LocalFaas(faas.root, port=faas.port if same_port else None)
    again.wait_until(lambda: requests.get(again.url + "/healthz", timeout=1).ok, "the gateway again")
    return again


class Calls(threading.Thread):
    """Steady calls to a function through a gateway URL that may change (a restart on another port):
    (time sent, status or None for a refused/cut connection), each on a new connection."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.results, self.stop = url, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                status = requests.get(self.url, timeout=10).status_code
            except requests.ConnectionError:
                status = None
            self.results.append((sent, status))
            time.sleep(0.01)


def test_a_killed_runtime_leaves_its_replicas_serving_and_the_next_one_adopts_them(tmp_path):
    faas = start_stack(tmp_path)
    again = None
    try:
        before = {name: recorded_pids(faas.state, name) for name in ("echo", "spare", "recorder")}
        assert len(before["echo"]) == 2 and len(before["spare"]) == 1
        ports = [r["port"] for r in read_replica_state(faas.state)["functions"]["echo"]]
        calls = Calls(f"{faas.url}/function/echo")
        calls.start()
        faas.wait_until(lambda: len(calls.results) > 30, "calls before the kill")

        kill_runtime(faas)
        # The runtime is gone; its replicas serve on (called on their own ports).
        for port in ports:
            assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
        assert requests.get(f"http://127.0.0.1:{ports[0]}/say?w=while-down", timeout=5).status_code == 200
        assert all(pid_alive(p) for pids in before.values() for p in pids)

        # Started again on the same port and state folder: the calls go on through the same URL.
        again = start_again(faas, same_port=True)
        back_at = time.monotonic()
        again.wait_until(lambda: len([r for r in calls.results if r[0] > back_at]) > 50, "calls after the restart")
        calls.stop.set()
        calls.join(timeout=15)

        after = {name: recorded_pids(again.state, name) for name in before}
        assert after == before  # adopted: the same processes, none started
        assert {again.call("echo").json()["pid"] for _ in range(8)} == set(before["echo"])
        assert read_replica_state(again.state)["runtime_pid"] == again.process.pid
        statuses = [status for _, status in calls.results]
        assert set(statuses) <= {200, None}, [s for s in statuses if s not in (200, None)]  # no HTTP error, ever
        refused = [sent for sent, status in calls.results if status is None]  # while no gateway listened
        assert all(sent < back_at for sent in refused)
        assert all(status == 200 for sent, status in calls.results if sent > back_at)
        log_text = (again.state / "logs" / "localfaas.log").read_text()
        assert "adopted <replica echo g1#0" in log_text and "started <replica echo" not in log_text.split(
            "left running by the previous runtime")[-1]

        # What a replica wrote while no runtime ran reaches the function log once, after the restart.
        function_log = again.state / "logs" / "function-echo.log"
        again.wait_until(lambda: "said while-down" in function_log.read_text(), "the line written while down")
        assert again.call("echo", "/say", params={"w": "after"}).status_code == 200
        again.wait_until(lambda: "said after" in function_log.read_text(), "a line written after the restart")
        assert function_log.read_text().count("said while-down") == 1

        # `localfaas down` (SIGTERM) stops adopted replicas as it stops its own.
        assert again.stop() == 0
        assert not any(pid_alive(p) for pids in before.values() for p in pids)
        assert not any(read_replica_state(again.state)["functions"].values())
    finally:
        (again or faas).stop()


def test_a_replica_whose_deployment_changed_while_the_runtime_was_down_is_replaced(tmp_path):
    faas = start_stack(tmp_path)
    again = None
    try:
        old_echo, old_spare = recorded_pids(faas.state, "echo"), recorded_pids(faas.state, "spare")
        kill_runtime(faas)
        record_path = faas.state / "deployments" / "echo.json"
        record = json.loads(record_path.read_text())
        record["deployment"]["envVars"]["GREETING"] = "changed-while-down"
        record_path.write_text(json.dumps(record))

        again = start_again(faas)
        again.wait_available("echo", 2)
        again.wait_until(lambda: not any(pid_alive(p) for p in old_echo), "the old echo replicas to be stopped")
        new_echo = recorded_pids(again.state, "echo")
        assert len(new_echo) == 2 and not set(new_echo) & set(old_echo)
        assert again.call("echo").json()["greeting"] == "changed-while-down"
        assert recorded_pids(again.state, "spare") == old_spare  # unchanged: adopted
        assert "no current deployment runs it" in (again.state / "logs" / "localfaas.log").read_text()
    finally:
        (again or faas).stop()


def test_a_recorded_pid_that_is_now_another_process_is_never_signalled(tmp_path):
    faas = start_stack(tmp_path)
    again = None
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        kill_runtime(faas)
        state_file = faas.state / "run" / "localfaas-replicas.json"
        state = json.loads(state_file.read_text())
        entry = state["functions"]["spare"][0]
        os.kill(entry["pid"], signal.SIGKILL)  # the replica died while the runtime was down...
        entry["pid"] = stranger.pid  # ...and its pid now names another process
        state_file.write_text(json.dumps(state))
        assert not same_process(stranger.pid, entry["start"]) and start_ticks(stranger.pid) is not None

        assert stop_recorded(faas.state, grace_s=5) == sorted(  # what `scripts.stack down` calls
            r["pid"] for name in ("echo", "recorder") for r in state["functions"][name])
        assert stranger.poll() is None
        state_file.write_text(json.dumps(state))  # the same stale record for a runtime's start
        again = start_again(faas)
        again.wait_available("spare", 1)
        assert stranger.pid not in recorded_pids(again.state, "spare")
        assert again.stop() == 0
        assert stranger.poll() is None  # neither adoption nor the stop signalled it
    finally:
        stranger.kill()
        stranger.wait()
        (again or faas).stop()


def test_stack_down_after_a_killed_runtime_stops_the_replicas_it_left(tmp_path):
    faas = start_stack(tmp_path)
    try:
        pids = [p for name in ("echo", "spare", "recorder") for p in recorded_pids(faas.state, name)]
        kill_runtime(faas)
        assert all(pid_alive(p) for p in pids)
        env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "OPENFAAS_URL")}
        env.update({"STACK_STATE_DIR": str(faas.state), "STACK_SIMULATOR": "0"})
        down = subprocess.run([sys.executable, "-m", "scripts.stack", "down"], cwd=REPO, env=env, check=False,
                              capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        assert f"stopped {len(pids)} left running by a killed localfaas" in down.stdout, down.stdout
        assert not any(pid_alive(p) for p in pids)
    finally:
        faas.stop()
