"""The Kubernetes and faasd manifests, checked offline.

- Every Kubernetes object in gateway/kubernetes and monitoring/grafana/kubernetes against the
  Kubernetes API schemas of `kubernetes-validate` (PyPI; the strict schemas, so an unknown or
  misspelt field fails), for the oldest and newest Kubernetes versions checked here, plus the
  ConfigMap kustomize's configMapGenerator makes from the rendered nginx.conf. Through
  `kubectl kustomize` too when kubectl is installed.
- The Function CRs `faas-cli generate --api=openfaas.com/v1` would make from stack.yml
  (gateway/functions.py) against the CRD's schema, and the nginx split's upstreams: every
  `/function/<name>` nginx proxies to is a Function, in the namespace the gateway serves.
- The faasd compose snippets parse and use only what faasd's compose reader takes, bind mounts
  under /var/lib/faasd, images pinned by tag, ports on loopback.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from gateway.functions import FUNCTION_SCHEMA, function_crs
from gateway.render import NginxSettings, render

kubernetes_validate = pytest.importorskip("kubernetes_validate")  # requirements.txt installs it
from kubernetes_validate import utils as k8s

REPO = Path(__file__).resolve().parent.parent
K8S_VERSIONS = ("1.29.0", "1.33.0")
MANIFEST_DIRS = (REPO / "gateway" / "kubernetes", REPO / "monitoring" / "grafana" / "kubernetes")
NOT_KUBERNETES_API = {"kustomize.config.k8s.io/v1beta1"}  # read by kustomize, never sent to the API server
# CRDs kubernetes-validate has no schema for: checked by their own tests or only parsed (documented, unused).
OWN_SCHEMA = {"gateway.networking.k8s.io/v1"}
FAASD_COMPOSE = (REPO / "gateway" / "faasd" / "docker-compose.recommend-split.yaml",
                 REPO / "minio" / "docker-compose.minio.yaml",
                 REPO / "docs" / "faasd" / "docker-compose.pushgateway.yaml")
FAASD_SERVICE_KEYS = {"image", "command", "environment", "volumes", "ports", "user", "cap_add", "depends_on"}


def manifest_objects():
    for folder in MANIFEST_DIRS:
        for path in sorted(folder.rglob("*.yaml")):
            for index, obj in enumerate(yaml.safe_load_all(path.read_text())):
                if obj:
                    yield pytest.param(path, obj, id=f"{path.relative_to(REPO)}#{index}")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path, obj", list(manifest_objects()))
def test_each_kubernetes_object_matches_the_api_schema(path, obj, version):
    assert obj.get("apiVersion") and obj.get("kind"), f"{path}: not a Kubernetes object"
    if obj["apiVersion"] in NOT_KUBERNETES_API:
        for resource in obj.get("resources", []):
            assert (path.parent / resource).is_file(), f"{path}: resource {resource} is missing"
        return
    if obj["apiVersion"] in OWN_SCHEMA:
        assert obj["metadata"]["name"] and obj["spec"], f"{path}: an empty {obj['kind']}"
        return
    k8s.validate(obj, version, strict=True)  # raises ValidationError naming the field


def kustomize_configmap(nginx_conf: str) -> dict:
    """What kustomize's configMapGenerator makes from gateway/kubernetes/nginx.conf (name without its hash)."""
    kustomization = yaml.safe_load((REPO / "gateway" / "kubernetes" / "kustomization.yaml").read_text())
    generator = kustomization["configMapGenerator"][0]
    assert generator["files"] == ["nginx.conf"]
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": generator["name"], "namespace": kustomization["namespace"]},
            "data": {"nginx.conf": nginx_conf}}


def test_the_generated_nginx_configmap_is_valid_and_mounted_where_nginx_reads_it():
    conf = render(NginxSettings.container())
    configmap = kustomize_configmap(conf)
    for version in K8S_VERSIONS:
        k8s.validate(configmap, version, strict=True)
    deployment = yaml.safe_load((REPO / "gateway" / "kubernetes" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == configmap["metadata"]["name"])
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert f"{mount['mountPath']}/nginx.conf" in container["command"]
    assert "daemon off;" in conf and "listen 8080;" in conf  # the containerPort the Service targets
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")
def test_kubectl_kustomize_output_matches_the_api_schema(tmp_path):
    folder = tmp_path / "kubernetes"
    shutil.copytree(REPO / "gateway" / "kubernetes", folder)
    (folder / "nginx.conf").write_text(render(NginxSettings.container()))
    built = subprocess.run(["kubectl", "kustomize", str(folder)], check=False, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    objects = [o for o in yaml.safe_load_all(built.stdout) if o]
    assert {o["kind"] for o in objects} == {"ConfigMap", "Deployment", "Service"}
    for obj in objects:
        k8s.validate(obj, K8S_VERSIONS[-1], strict=True)
        assert obj["metadata"]["namespace"] == "openfaas"
    configmap = next(o for o in objects if o["kind"] == "ConfigMap")
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert any(v.get("configMap", {}).get("name") == configmap["metadata"]["name"] for v in volumes)  # the hash


def test_function_crs_match_the_crd_schema_and_the_nginx_split_upstreams():
    crs = function_crs(target="kubernetes")
    for cr in crs:
        jsonschema.validate(cr, FUNCTION_SCHEMA)
    names = {cr["metadata"]["name"] for cr in crs}
    conf = render(NginxSettings.container())
    upstreams = set(re.findall(r"proxy_pass http://openfaas_gateway/function/([-a-z0-9]+)/", conf))
    assert upstreams == {"recommend", "recommend-canary"}
    assert upstreams <= names
    assert {cr["metadata"]["namespace"] for cr in crs} == {"openfaas-fn"}  # the gateway's function_namespace
    by_name = {cr["metadata"]["name"]: cr["spec"] for cr in crs}
    assert by_name["recommend"]["environment"]["MODEL_VERSION"] == "stable"
    assert by_name["train"]["environment"]["OPENFAAS_URL"] == "http://gateway.openfaas:8080"


def test_scaling_labels_are_within_what_openfaas_ce_accepts():
    """faas-netes CE answers 400 to min/max above 5 and to com.openfaas.scale.zero=true."""
    for cr in function_crs(target="kubernetes"):
        labels = cr["spec"].get("labels", {})
        low, high = int(labels.get("com.openfaas.scale.min", 1)), int(labels.get("com.openfaas.scale.max", 5))
        assert 1 <= low <= high <= 5, cr["metadata"]["name"]
        assert labels.get("com.openfaas.scale.zero") != "true"


def test_the_crd_schema_refuses_what_the_api_server_would_drop():
    cr = function_crs(target="kubernetes")[0]
    bad = {**cr, "spec": {**cr["spec"], "envVars": {"A": "1"}}}  # the REST API's name, not the CR's
    with pytest.raises(jsonschema.ValidationError, match="envVars"):
        jsonschema.validate(bad, FUNCTION_SCHEMA)


@pytest.mark.parametrize("path", FAASD_COMPOSE, ids=lambda p: str(p.relative_to(REPO)))
def test_faasd_compose_snippets_parse_and_use_only_what_faasd_reads(path):
    data = yaml.safe_load(path.read_text())
    # A whole `services:` map, or the entries to paste under faasd's own `services:`.
    services = data["services"] if set(data) == {"services"} else data
    assert isinstance(services, dict) and services, f"{path}: no services"
    for name, service in services.items():
        assert re.fullmatch(r"[a-z][a-z0-9-]*", name)
        assert set(service) <= FAASD_SERVICE_KEYS, f"{name}: {set(service) - FAASD_SERVICE_KEYS}"
        image = service["image"]
        assert re.fullmatch(r"[\w.\-/]+:[\w.\-]+(@sha256:[0-9a-f]{64})?", image) and not image.endswith(":latest")
        for volume in service.get("volumes", []):
            assert volume["type"] == "bind" and volume["source"].startswith("./"), volume  # under /var/lib/faasd
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published beyond loopback"
        assert isinstance(service.get("command", []), list)
        for dependency in service.get("depends_on", []):
            assert dependency in {"gateway", "prometheus", "nats", "queue-worker", "basic-auth-plugin"} | set(
                services), dependency
