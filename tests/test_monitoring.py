"""Monitoring (monitoring/): the rendered Prometheus config, the alert rules and a real scrape.

promtool and Prometheus are the Debian packages; the scrape test runs real Prometheus and a real
Pushgateway against a real HTTP endpoint exposing the OpenFaaS gateway's metric names.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, push_to_gateway

from monitoring.render import (
    ALERT_RULES,
    MonitoringSettings,
    host_port,
    prometheus_argv,
    promtool_binary,
    pushgateway_argv,
    render,
    write_config,
)
from scripts._proc import free_port

ROOT = Path(__file__).resolve().parents[1]
needs_prometheus = pytest.mark.skipif(
    not all(shutil.which(b) or Path(f"/usr/bin/{b}").exists()
            for b in ("prometheus", "promtool", "prometheus-pushgateway")),
    reason="prometheus, promtool, prometheus-pushgateway (Debian packages) are not installed")




def test_rendered_config_scrapes_gateway_pushgateway_and_itself_on_the_configured_ports():
    settings = MonitoringSettings.local({"OPENFAAS_URL": "http://127.0.0.1:18080",
                                         "PUSHGATEWAY_URL": "http://127.0.0.1:19091/",
                                         "PROMETHEUS_URL": "http://127.0.0.1:19090"})
    config = yaml.safe_load(render(settings))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["openfaas-gateway"]["static_configs"][0]["targets"] == ["127.0.0.1:18080"]
    assert jobs["openfaas-gateway"]["metrics_path"] == "/metrics"
    assert jobs["pushgateway"]["static_configs"][0]["targets"] == ["127.0.0.1:19091"]
    assert jobs["pushgateway"]["honor_labels"] is True
    assert jobs["prometheus"]["static_configs"][0]["targets"] == ["127.0.0.1:19090"]
    assert config["global"]["scrape_interval"] == "5s"
    assert config["rule_files"] == [str(ALERT_RULES)]


def test_a_url_without_a_port_is_refused_with_one_line():
    with pytest.raises(ValueError, match="host and port"):
        host_port("http://127.0.0.1/")


@needs_prometheus
@pytest.mark.parametrize("profile", ["local", "faasd"])
def test_promtool_accepts_the_rendered_config_and_its_rules(profile, tmp_path):
    settings = MonitoringSettings.local() if profile == "local" else MonitoringSettings.faasd()
    if profile == "faasd":  # the container path of the rules, mapped to the repo file for the check
        settings = MonitoringSettings(settings.gateway, settings.pushgateway, settings.prometheus,
                                      (str(ALERT_RULES),), settings.scrape_interval)
    conf = write_config(settings, tmp_path / "prometheus.yml")
    run = subprocess.run([promtool_binary(), "check", "config", str(conf)], check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 10 rules found" in run.stdout


@needs_prometheus
def test_alert_rules_pass_their_promtool_unit_tests():
    run = subprocess.run([promtool_binary(), "test", "rules", "monitoring/tests/alerts_test.yml"],
                         check=False, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


# -- the rules say what the release's PromQL templates say ------------------------------------------
CANARY_ANY_NAMESPACE, STABLE_ANY_NAMESPACE = r"recommend-canary\\..+", r"recommend\\..+"


def gateway_alert_expressions() -> dict[str, str]:
    """Each rule over the gateway's metrics, rendered from movierec.release.promql with the rule's
    own window and threshold."""
    from movierec.release import promql as p

    fn = ("function_name",)
    canary, stable = p.function_matches(CANARY_ANY_NAMESPACE), p.function_matches(STABLE_ANY_NAMESPACE)
    serving = p.function_matches(r"recommend(-canary)?\\..+")
    canary_p99, stable_p99 = p.latency_quantile(0.99, canary, "5m"), p.latency_quantile(0.99, stable, "5m")
    return {
        "FunctionErrorRateHigh": f"{p.error_rate('', '1m', by=fn)} > 0.05",
        "RecommendLatencyP99High": f"{p.latency_quantile(0.99, serving, '2m', by=fn)} > 0.5",
        "FunctionNoReplicas": f"{p.replicas(by=fn)} < 1",
        "RecommendFunctionMissing": f"absent({p.series(p.REPLICAS, p.function_is('recommend', 'openfaas-fn'))})",
        "CanaryErrorRateWorseThanStable": f"({p.error_rate(canary, '5m', absent_as_zero=True)})"
                                          f" > ({p.error_rate(stable, '5m', absent_as_zero=True)}) + 0.01"
                                          f" and {p.calls(canary, '5m', func='increase')} >= 100",
        "CanaryLatencyWorseThanStable": f"{canary_p99} > 1.5 * {stable_p99} and {canary_p99} > 0.05"
                                        f" and {p.timed_calls(canary, '5m')} >= 100",
    }


def test_every_gateway_alert_rule_is_rendered_from_the_release_promql_templates():
    """One source: every rule over gateway_* metrics says what the templates render (up to
    whitespace); promtool's unit tests and the live Prometheus below then run them."""
    rules = [rule for group in yaml.safe_load(ALERT_RULES.read_text())["groups"] for rule in group["rules"]]
    found = {rule["alert"]: re.sub(r"\s+", "", rule["expr"]) for rule in rules if "gateway_" in rule["expr"]}
    assert found == {name: re.sub(r"\s+", "", expr) for name, expr in gateway_alert_expressions().items()}


# -- real Prometheus scraping real endpoints ----------------------------------------------------
class GatewayMetricsEndpoint:
    """A real HTTP endpoint serving /metrics with the OpenFaaS gateway's metric names."""

    def __init__(self):
        registry = CollectorRegistry()
        calls = Counter("gateway_function_invocation", "calls", ["function_name", "code"], registry=registry)
        seconds = Histogram("gateway_functions_seconds", "duration", ["function_name", "code"], registry=registry,
                            buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        replicas = Gauge("gateway_service_count", "replicas", ["function_name"], registry=registry)
        calls.labels("recommend.openfaas-fn", "200").inc(42)
        seconds.labels("recommend.openfaas-fn", "200").observe(0.012)
        replicas.labels("recommend.openfaas-fn").set(2)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = generate_latest(registry) if self.path == "/metrics" else b"not found\n"
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def start(argv: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_http_ok(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, f"{url} exited: {log_path.read_text()[-2000:]}"
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, f"{url} not ready within {timeout_s}s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def monitoring_stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("monitoring")
    endpoint = GatewayMetricsEndpoint()
    prom_port, push_port = free_port(), free_port()
    settings = MonitoringSettings(gateway=f"127.0.0.1:{endpoint.port}", pushgateway=f"127.0.0.1:{push_port}",
                                  prometheus=f"127.0.0.1:{prom_port}", rule_files=(str(ALERT_RULES),),
                                  scrape_interval="1s")
    conf = write_config(settings, state / "prometheus.yml")
    processes = []
    try:
        (state / "pushgateway").mkdir()
        push = start(pushgateway_argv(state / "pushgateway", f"127.0.0.1:{push_port}"), state / "pushgateway.log")
        processes.append(push)
        prom = start(prometheus_argv(conf, state / "prometheus", f"127.0.0.1:{prom_port}"), state / "prometheus.log")
        processes.append(prom)
        wait_http_ok(f"http://127.0.0.1:{push_port}/-/ready", push, state / "pushgateway.log")
        wait_http_ok(f"http://127.0.0.1:{prom_port}/-/ready", prom, state / "prometheus.log")
        yield {"prometheus": f"http://127.0.0.1:{prom_port}", "pushgateway": f"127.0.0.1:{push_port}"}
    finally:
        for process in reversed(processes):
            stop(process)
        endpoint.close()


def query_until_present(prometheus: str, promql: str, timeout_s: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        result = requests.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5).json()
        if result["status"] == "success" and result["data"]["result"]:
            return result["data"]["result"]
        assert time.monotonic() < deadline, f"{promql} has no series after {timeout_s}s"
        time.sleep(0.5)


@needs_prometheus
def test_prometheus_scrapes_the_gateway_metrics(monitoring_stack):
    series = query_until_present(monitoring_stack["prometheus"],
                                 'gateway_function_invocation_total{function_name="recommend.openfaas-fn"}')
    assert series[0]["metric"]["code"] == "200" and series[0]["metric"]["job"] == "openfaas-gateway"
    assert float(series[0]["value"][1]) == 42
    query_until_present(monitoring_stack["prometheus"], 'gateway_functions_seconds_bucket{le="0.025"}')
    query_until_present(monitoring_stack["prometheus"], 'gateway_service_count == 2')


@needs_prometheus
def test_pushed_batch_metrics_keep_their_own_job_label(monitoring_stack):
    registry = CollectorRegistry()
    # What movierec.ingest.push_metrics pushes, and IngestStale reads.
    Gauge("ingest_last_success_timestamp_seconds", "last success", registry=registry).set_to_current_time()
    push_to_gateway(monitoring_stack["pushgateway"], job="ingest", registry=registry)
    series = query_until_present(monitoring_stack["prometheus"], "ingest_last_success_timestamp_seconds")
    assert series[0]["metric"]["job"] == "ingest"  # honor_labels: not relabelled to job="pushgateway"
    query_until_present(monitoring_stack["prometheus"], 'push_time_seconds{job="ingest"}')


@needs_prometheus
def test_prometheus_loads_the_alert_rules(monitoring_stack):
    rules = requests.get(f"{monitoring_stack['prometheus']}/api/v1/rules", timeout=5).json()
    groups = {group["name"] for group in rules["data"]["groups"]}
    assert groups == {"openfaas-functions", "ingest", "canary"}


def test_honor_labels_is_on_the_pushgateway_job_only_and_pushes_keep_to_their_own_metrics():
    from movierec.release.promql import GATEWAY_JOB

    config = yaml.safe_load(render(MonitoringSettings.local({})))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert GATEWAY_JOB in jobs and [n for n, j in jobs.items() if j.get("honor_labels")] == ["pushgateway"]
    [keep] = jobs["pushgateway"]["metric_relabel_configs"]
    assert keep["action"] == "keep" and keep["source_labels"] == ["job", "__name__"]
    pattern = re.compile(keep["regex"])  # Prometheus anchors relabel regexes: fullmatch
    for kept in ("ingest;ingest_records", "train;train_rmse", "release;release_running", "ingest;push_time_seconds"):
        assert pattern.fullmatch(kept), kept
    for dropped in ("ingest;gateway_function_invocation_total", "openfaas-gateway;gateway_functions_seconds_count",
                    "pushgateway;gateway_service_count", "train;ingest_records", "release;up",
                    "prometheus;push_time_seconds", "ingest;ingest_", "x;push_time_seconds"):
        assert not pattern.fullmatch(dropped), dropped


@needs_prometheus
def test_a_forged_gateway_series_pushed_to_the_pushgateway_is_never_stored(monitoring_stack):
    forged = CollectorRegistry()
    Counter("gateway_function_invocation", "forged", ["function_name", "code"], registry=forged).labels(
        "recommend-canary.openfaas-fn", "500").inc(720)
    for job in ("openfaas-gateway", "ingest", "pushgateway"):
        push_to_gateway(monitoring_stack["pushgateway"], job=job, registry=forged)
    legit = CollectorRegistry()
    Gauge("ingest_last_success_timestamp_seconds", "probe", registry=legit).set_to_current_time()
    push_to_gateway(monitoring_stack["pushgateway"], job="ingest", registry=legit, grouping_key={"instance": "probe"})
    query_until_present(monitoring_stack["prometheus"], 'ingest_last_success_timestamp_seconds{instance="probe"}')
    time.sleep(2.5)  # a few more scrapes
    result = requests.get(f"{monitoring_stack['prometheus']}/api/v1/query",
                          params={"query": 'gateway_function_invocation_total{code="500"}'}, timeout=5).json()
    assert result["status"] == "success" and result["data"]["result"] == []
