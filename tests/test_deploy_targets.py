"""stack.yml rendered for each target the way faas-cli renders it (localfaas.stackfile: env
substitution over the whole file, then each function's environment_file over its inline
environment): on Kubernetes and faasd no function points at loopback and each reaches the gateway
and Prometheus by its in-cluster name, whatever the operator's own shell says; on localfaas
(`make up`) they get the local stack's own addresses and ports; faas-cli's gateway is its own."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from localfaas.stackfile import load_stack
from scripts.envfile import read_env_file
from scripts.stack import StackConfig

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = re.compile(r"(^|[/@,])(127\.\d+\.\d+\.\d+|localhost|\[?::1\]?)(:|/|$)")
ADDRESS_KEYS = ("OPENFAAS_URL", "PROMETHEUS_URL", "PUSHGATEWAY_URL", "KAFKA_BOOTSTRAP_SERVERS", "STORE_URL",
                "S3_ENDPOINT_URL")
# What an operator's shell typically holds when running faas-cli against a port-forwarded gateway.
OPERATOR_SHELL = {"OPENFAAS_URL": "http://127.0.0.1:8080", "PROMETHEUS_URL": "http://127.0.0.1:9090",
                  "KAFKA_BOOTSTRAP_SERVERS": "localhost:9092", "PUSHGATEWAY_URL": "http://127.0.0.1:9091"}
IN_CLUSTER = {
    "kubernetes": {"OPENFAAS_URL": "http://gateway.openfaas:8080", "PROMETHEUS_URL": "http://prometheus.openfaas:9090"},
    "faasd": {"OPENFAAS_URL": "http://gateway:8080", "PROMETHEUS_URL": "http://prometheus:9090"},
}


def rendered(target: str | None, shell: dict[str, str]):
    env = dict(shell)
    if target is not None:
        env["DEPLOY_TARGET"] = target
    return load_stack(REPO / "stack.yml", env=env)


@pytest.mark.parametrize("target", ["kubernetes", "faasd", None])
@pytest.mark.parametrize("shell", [{}, OPERATOR_SHELL], ids=["clean shell", "operator shell"])
def test_no_function_points_at_loopback_outside_the_local_target(target, shell):
    stack = rendered(target, shell)
    for fn in stack.functions.values():
        assert fn.environment_file == [f"env/{target or 'kubernetes'}.yml"]
        for name, value in fn.environment.items():
            assert not LOOPBACK.search(value), f"{target}: {fn.name} {name}={value} is the container itself"
        for name in ADDRESS_KEYS:
            assert fn.environment.get(name), f"{target}: {fn.name} has no {name}"


@pytest.mark.parametrize("target", ["kubernetes", "faasd"])
def test_functions_reach_the_gateway_and_prometheus_by_their_in_cluster_names(target):
    stack = rendered(target, OPERATOR_SHELL)
    for fn in ("train", "release"):
        assert stack.functions[fn].environment["OPENFAAS_URL"] == IN_CLUSTER[target]["OPENFAAS_URL"]
    assert stack.functions["release"].environment["PROMETHEUS_URL"] == IN_CLUSTER[target]["PROMETHEUS_URL"]
    assert stack.functions["recommend"].environment["STORE_URL"].startswith("s3://")


def test_faas_clis_gateway_is_not_the_functions_gateway():
    stack = rendered("kubernetes", {**OPERATOR_SHELL, "OPENFAAS_GATEWAY": "http://127.0.0.1:31112"})
    assert stack.gateway == "http://127.0.0.1:31112"  # where faas-cli, outside the cluster, reaches it
    assert stack.functions["train"].environment["OPENFAAS_URL"] == "http://gateway.openfaas:8080"
    assert rendered("kubernetes", {}).gateway == "http://127.0.0.1:8080"  # faas-cli's own default


def test_make_up_gives_the_functions_the_local_stack_addresses_and_ports(tmp_path, monkeypatch):
    for name in (*read_env_file(REPO / "env" / "local.yml"), *ADDRESS_KEYS, "DEPLOY_TARGET"):
        monkeypatch.delenv(name, raising=False)
    user = {"OPENFAAS_URL": "http://127.0.0.1:18080", "PROMETHEUS_URL": "http://127.0.0.1:19090"}
    env = StackConfig.from_env(str(tmp_path / "state"), env=user).service_env()
    assert env["DEPLOY_TARGET"] == "localfaas"
    stack = load_stack(REPO / "stack.yml", env=env)
    assert stack.functions["train"].environment["OPENFAAS_URL"] == "http://127.0.0.1:18080"
    assert stack.functions["release"].environment["PROMETHEUS_URL"] == "http://127.0.0.1:19090"
    assert stack.functions["ingest"].environment["KAFKA_BOOTSTRAP_SERVERS"] == env["KAFKA_BOOTSTRAP_SERVERS"]
    assert stack.functions["recommend"].environment["STORE_URL"] == str(tmp_path / "state" / "store")


def test_each_overlay_sets_every_address_and_only_settings_of_the_table():
    from movierec.settings import BY_NAME

    for target in ("kubernetes", "faasd"):
        overlay = read_env_file(REPO / "env" / f"{target}.yml")
        assert set(overlay) == set(ADDRESS_KEYS), target
        assert set(overlay) <= set(BY_NAME)
    assert read_env_file(REPO / "env" / "localfaas.yml") == {}
