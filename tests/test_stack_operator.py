"""The operator's side of `make up` / `make status`, without starting any real service: a stopped
stack is "stack is down" and exit 0, a half-up one names what is down; a taken port is found before
anything starts and the error names the variable that moves it; `up` names users the simulated
data is sure to have (the README's example curl uses one)."""
from __future__ import annotations

import shlex
import socket
import subprocess
import sys

import pytest

from movierec.events import RateEvent, parse_line
from scripts._proc import free_port
from scripts.envfile import read_env_file
from scripts.simulator.cli import _simulation, build_parser, example_user_ids
from scripts.simulator.simulation import utc_now
from scripts.stack import ROOT, StackConfig
from scripts.stack.cli import example_users, main, status

SIMULATOR_ARGS = shlex.split(read_env_file(ROOT / "env" / "local.yml")["SIMULATOR_ARGS"])


def config_on_free_ports(tmp_path, simulator: bool = False) -> StackConfig:
    return StackConfig(state_dir=tmp_path / "var", gateway_port=free_port(), public_port=free_port(),
                       prometheus_port=free_port(), pushgateway_port=free_port(),
                       kafka_bootstrap=f"127.0.0.1:{free_port()}", simulator=simulator)


def test_status_of_a_stack_that_is_not_running_is_one_line_and_exit_0(tmp_path, capsys):
    assert status(config_on_free_ports(tmp_path)) == 0
    assert capsys.readouterr().out == "stack is down\n"


def test_status_of_a_half_up_stack_is_non_zero_and_names_the_services_that_are_down(tmp_path, capsys):
    config = config_on_free_ports(tmp_path)
    # A process whose cmdline carries the pushgateway's marker stands in for it (status reads /proc).
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "pushgateway"])
    try:
        (config.state_dir / "run").mkdir(parents=True)
        (config.state_dir / "run" / "pushgateway.pid").write_text(f"{proc.pid}\n")
        assert status(config) == 3
    finally:
        proc.kill()
        proc.wait()
    out = capsys.readouterr().out
    assert "stack is half up: broker, localfaas, prometheus, nginx not running" in out


@pytest.mark.parametrize("variable, value", [("OPENFAAS_URL", "http://127.0.0.1:{}"),
                                             ("PROMETHEUS_URL", "http://127.0.0.1:{}"),
                                             ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:{}")])
def test_a_taken_port_fails_up_before_anything_starts_naming_the_variable_to_change(
        tmp_path, monkeypatch, capsys, variable, value):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for name in ("OPENFAAS_URL", "PUBLIC_URL", "PROMETHEUS_URL", "PUSHGATEWAY_URL"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
        monkeypatch.setenv(variable, value.format(port))
        monkeypatch.setenv("STACK_SIMULATOR", "0")
        assert main(["up", "--state-dir", str(tmp_path / "var")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"port {port} ({variable}) is in use by another process: set {variable}={value.format('')}" in err
    assert err.rstrip().endswith("or stop it")
    assert not (tmp_path / "var").exists()  # nothing started, nothing written


def test_up_names_users_the_simulated_data_has_and_the_backfill_rates_each_of_them(tmp_path):
    config = config_on_free_ports(tmp_path, simulator=True)
    users = example_users(config)
    assert len(set(users)) == 3 and users == example_user_ids(SIMULATOR_ARGS)
    args = build_parser().parse_args(SIMULATOR_ARGS)
    rated = {event.user_id for line in _simulation(args).backfill(args.backfill, utc_now())
             if isinstance(event := parse_line(line), RateEvent)}
    assert set(users) <= rated
    assert example_users(config_on_free_ports(tmp_path, simulator=False)) == []


def test_the_readme_example_curl_uses_a_user_the_simulated_data_has():
    readme = (ROOT / "README.md").read_text()
    assert "/recommend/614" not in readme
    assert f"/recommend/{example_user_ids(SIMULATOR_ARGS)[0]}" in readme
