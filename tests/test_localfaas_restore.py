"""localfaas remembers what was deployed: the last deploy of each function (env, labels, image
snapshot, replicas, a delete) is recorded in the state folder and restored when localfaas starts
again, instead of stack.yml's defaults; `--redeploy-stack` (LOCALFAAS_REDEPLOY_STACK=1) deploys
stack.yml instead."""
from __future__ import annotations

import json

import requests

from localfaas.records import DeploymentRecords
from tests.localfaas_harness import LocalFaas, start_stack


def restart(faas: LocalFaas, env: dict[str, str] | None = None) -> LocalFaas:
    assert faas.stop() == 0
    again = LocalFaas(faas.root, env)
    again.wait_until(lambda: requests.get(again.url + "/healthz", timeout=1).ok, "the gateway again")
    return again


def faas_cli_put(faas: LocalFaas, name: str, **changes) -> requests.Response:
    fn = faas.functions()[name]
    body = {"service": name, "image": fn["image"], "namespace": "openfaas-fn", "envVars": fn["envVars"],
            "labels": fn["labels"], "annotations": fn["annotations"], "secrets": fn["secrets"],
            "constraints": [], "limits": {}, "requests": {}, **changes}
    return requests.put(faas.url + "/system/functions", json=body, auth=faas.auth, timeout=60)


def test_a_restart_restores_the_last_deploys_not_the_stack_defaults(tmp_path):
    faas = start_stack(tmp_path)
    try:
        env = dict(faas.functions()["echo"]["envVars"], GREETING="changed-by-api")
        assert faas_cli_put(faas, "echo", envVars=env).status_code == 202
        faas.wait_until(lambda: faas.call("echo").json()["greeting"] == "changed-by-api", "the new env")
        scaled = requests.post(faas.url + "/system/scale-function/spare", auth=faas.auth, timeout=10,
                               json={"serviceName": "spare", "replicas": 3, "namespace": "openfaas-fn"})
        assert scaled.status_code == 202
        deleted = requests.delete(faas.url + "/system/functions", auth=faas.auth, timeout=30,
                                  json={"functionName": "recorder", "namespace": "openfaas-fn"})
        assert deleted.status_code == 202
        digest = faas.functions()["echo"]["imageDigest"]
        record = json.loads((faas.state / "deployments" / "echo.json").read_text())
        assert record["deployment"]["envVars"]["GREETING"] == "changed-by-api" and record["digest"] == digest
        assert json.loads((faas.state / "deployments" / "recorder.json").read_text())["deleted"] is True
        # An edit that was built but never deployed must not reach the restored deployment.
        (tmp_path / "shared_lib" / "__init__.py").write_text("def tag():\n    return 'shared-v2'\n")

        faas = restart(faas)
        faas.wait_available("echo", 2)
        faas.wait_available("spare", 3)
        functions = faas.functions()
        assert set(functions) == {"echo", "spare"}  # the deleted one stays deleted
        assert functions["echo"]["envVars"]["GREETING"] == "changed-by-api"
        assert functions["spare"]["replicas"] == 3
        seen = faas.call("echo").json()
        assert seen["greeting"] == "changed-by-api" and seen["tag"] == "shared-v1"  # its own snapshot
        assert functions["echo"]["imageDigest"] == digest
        assert functions["echo"]["image"] == f"test/echo:latest@{digest}"  # the tag builds v2 now
        runtime_log = (faas.state / "logs" / "localfaas.log").read_text()
        assert "function echo: restored its last deployment" in runtime_log
        assert "envVars GREETING" in runtime_log  # says how it differs from stack.yml

        faas = restart(faas, {"LOCALFAAS_REDEPLOY_STACK": "1"})
        for name, replicas in (("echo", 2), ("recorder", 1)):
            faas.wait_available(name, replicas)
        functions = faas.functions()
        assert functions["echo"]["envVars"]["GREETING"] == "hello" and "recorder" in functions
        assert faas.call("echo").json()["tag"] == "shared-v2"
        assert functions["echo"]["image"] == "test/echo:latest"
    finally:
        faas.stop()


def test_an_unreadable_record_is_skipped_not_fatal(tmp_path):
    records = DeploymentRecords(tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"deployment": {"service": "elsewhere"}, "replicas": 1}))
    assert records.load() == {}
