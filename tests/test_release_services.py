"""The release controller and the train job against real services on 127.0.0.1: a real Prometheus
scraping gateway_* metrics we control, the gateway deployment API over HTTP, a webhook receiver,
an SMTP sink and a real Pushgateway. Every process is ours, on a free port, stopped at the end."""
from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway, start_http_server

from monitoring.render import MonitoringSettings, host_port, write_config
from movierec.adapters.gateway import FunctionNotFoundError, GatewayClient, GatewayError
from movierec.adapters.notify import Notifier
from movierec.adapters.prometheus import PrometheusClient, PrometheusError
from movierec.registry import Registry
from movierec.release import (
    PROMOTE,
    ROLLBACK,
    ReleaseConfig,
    ReleaseStore,
    bootstrap_stable,
    decide,
    measure,
    run_release_step,
    start_release,
)
from scripts._proc import free_port
from scripts.sinks import SMTPSink, WebhookReceiver
from scripts.train import push_metrics
from tests.gateway_double import GatewayDouble
from tests.release_fakes import handler_event, load_release_handler, two_published_versions

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
TICKS, STABLE_PER_TICK, CANARY_PER_TICK = 25, 40, 10


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def start_process(args, log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop_process(process: subprocess.Popen):
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory):
    """A real Pushgateway, which takes writes from anyone who reaches it."""
    port = free_port()
    process = start_process(["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}"],
                            tmp_path_factory.mktemp("pushgateway") / "pushgateway.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/-/ready", timeout=1).status_code == 200, 20, "pushgateway ready")
        yield url
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, pushgateway):
    """A real Prometheus with the stack's own scrape config (monitoring/render.py) scraping an
    endpoint that serves the gateway's metric names, and the Pushgateway, fed with two scenarios:
    namespace `good` (healthy canary), `bad` (10% 5xx, slow canary) and `late` (both variants answer
    every call in 400 ms: under the 500 ms p99 bound, over nginx's 300 ms canary budget)."""
    tmp = tmp_path_factory.mktemp("prometheus")
    registry = CollectorRegistry()
    invocations = Counter("gateway_function_invocation", "invocations", ["function_name", "code"], registry=registry)
    seconds = Histogram("gateway_functions_seconds", "duration", ["function_name", "code"], buckets=BUCKETS,
                        registry=registry)
    names = [f"{f}.{ns}" for ns in ("good", "bad", "late") for f in ("recommend", "recommend-canary")]
    for name in names:  # series exist at 0 before the first scrape, so increase() sees every call
        for code in ("200", "500"):
            invocations.labels(name, code)
            seconds.labels(name, code)
    metrics_port = free_port()
    server, _thread = start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    prom_port = free_port()
    config = write_config(MonitoringSettings(gateway=f"127.0.0.1:{metrics_port}", pushgateway=host_port(pushgateway),
                                             prometheus=f"127.0.0.1:{prom_port}", rule_files=(),
                                             scrape_interval="1s"), tmp / "prometheus.yml")
    process = start_process(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        tmp / "prometheus.log",
    )
    url = f"http://127.0.0.1:{prom_port}"
    try:
        wait_until(lambda: requests.get(f"{url}/-/ready", timeout=1).status_code == 200, 30, "prometheus ready")
        client = PrometheusClient(url)
        wait_until(lambda: client.query_value('up{job="openfaas-gateway"}') == 1, 20, "first scrape")
        client.metrics_target = f"127.0.0.1:{metrics_port}"
        for _ in range(TICKS):  # bounded: 25 ticks of 0.2 s
            for ns in ("good", "bad"):
                for _ in range(STABLE_PER_TICK):
                    invocations.labels(f"recommend.{ns}", "200").inc()
                    seconds.labels(f"recommend.{ns}", "200").observe(0.02)
            for _ in range(CANARY_PER_TICK):
                invocations.labels("recommend-canary.good", "200").inc()
                seconds.labels("recommend-canary.good", "200").observe(0.03)
            for function, count in (("recommend", STABLE_PER_TICK), ("recommend-canary", CANARY_PER_TICK)):
                for _ in range(count):
                    invocations.labels(f"{function}.late", "200").inc()
                    seconds.labels(f"{function}.late", "200").observe(0.4)
            for i in range(CANARY_PER_TICK):
                code, latency = ("500", 0.9) if i == 0 else ("200", 0.3)
                invocations.labels("recommend-canary.bad", code).inc()
                seconds.labels("recommend-canary.bad", code).observe(latency)
            time.sleep(0.2)
        total = TICKS * CANARY_PER_TICK
        wait_until(
            lambda: client.query_value('sum(gateway_function_invocation_total{function_name="recommend-canary.bad"})')
            == total and client.query_value('sum(gateway_function_invocation_total{function_name="recommend.good"})')
            == TICKS * STABLE_PER_TICK,
            20,
            "prometheus to scrape the final counts",
        )
        time.sleep(1.5)  # one more scrape of the final values, so increase() ends on them
        yield client
    finally:
        stop_process(process)
        server.shutdown()


class ServingGatewayDouble(GatewayDouble):
    """The deployment API double, whose functions also answer `GET /function/<name>/health` the way
    the recommend handler does ("loaded model <MODEL_VERSION>, sha256 ok"): what the release step
    probes to verify what each variant serves."""

    def _handler(self):
        base, double = super()._handler(), self

        class Handler(base):
            def do_GET(self):
                path = self.path.split("?")[0]
                name = path.removeprefix("/function/").removesuffix("/health")
                if path.startswith("/function/") and path.endswith("/health") and name in double.functions:
                    version = double.functions[name]["envVars"].get("MODEL_VERSION", "")
                    return self._reply(200, f"loaded model {version}, sha256 ok (0123456789ab)".encode())
                return super().do_GET()

        return Handler


@pytest.fixture
def gateway():
    with ServingGatewayDouble("admin", "gw-password", ["recommend", "recommend-canary"]) as double:
        yield double


def release_world(tmp_path, gateway, namespace, started):
    """A store with a stable model and a running release of a candidate, started at `started`."""
    store, _registry, versions = two_published_versions(tmp_path, started)
    config = ReleaseConfig(window_s=30, min_requests=100, namespace=namespace, scrape_interval_s=1.0)  # its scrape
    deployer = GatewayClient(gateway.url, "admin", "gw-password", backoff_s=0.01)
    bootstrap_stable(config, store, deployer, versions[0], now=started)
    start_release(config, store, deployer, versions[1], now=started)
    return store, config, deployer, versions


# -- Prometheus ----------------------------------------------------------------------------
def test_measure_reads_request_counts_errors_and_latency_from_prometheus(prometheus):
    config = ReleaseConfig(namespace="bad")
    metrics, queries = measure(prometheus, config, 30, datetime.now(UTC))
    canary, stable = metrics["canary"], metrics["stable"]
    assert canary.requests == pytest.approx(TICKS * CANARY_PER_TICK, rel=0.25)
    assert canary.errors / canary.requests == pytest.approx(0.1, abs=0.03)
    assert canary.mean_latency_s == pytest.approx((0.9 + 9 * 0.3) / 10, rel=0.05)
    assert 0.5 < canary.p99_latency_s <= 1.0  # the bucket holding the slowest 1%
    assert stable.errors == 0 and 0.01 < stable.p99_latency_s <= 0.025
    assert 'function_name="recommend-canary.bad"' in queries["canary"]["p99_latency_s"]
    # Every `bad` canary call is slower than the 250 ms bucket (0.3 s and 0.9 s), no stable call is.
    assert canary.timed_calls == canary.requests and canary.over_budget_calls == canary.timed_calls
    assert stable.over_budget_calls == 0 and stable.timed_calls == pytest.approx(stable.requests, abs=1)


def test_a_canary_answering_after_nginx_gave_up_is_rolled_back_on_its_over_budget_share_alone(prometheus):
    """The slow drill over real gateway metrics: 400 ms answers, all 200, as slow as stable. The
    gateway's figures pass (p99 under 500 ms, ratio 1); nginx served their users stable's answer."""
    config = ReleaseConfig(namespace="late", window_s=30, min_requests=100)
    metrics, queries = measure(prometheus, config, 30, datetime.now(UTC))
    canary = metrics["canary"]
    assert canary.over_budget_calls == canary.timed_calls == canary.requests > 100
    assert 'le="0.25"' in queries["canary"]["over_budget_calls"]
    assert 'job="openfaas-gateway"' in queries["canary"]["over_budget_calls"]
    decision = decide(canary, metrics["stable"], config, elapsed_s=30)
    assert decision.action == ROLLBACK
    assert [c.name for c in decision.checks if c.passed is False] == ["canary_over_budget_share"]


def test_a_bad_query_is_a_one_line_error_naming_prometheus(prometheus):
    with pytest.raises(PrometheusError, match="rejected query"):
        prometheus.query_value("sum(rate(x[")


def test_an_unreachable_prometheus_is_named_in_the_error():
    client = PrometheusClient(f"http://127.0.0.1:{free_port()}", attempts=2, backoff_s=0.01)
    with pytest.raises(PrometheusError, match=r"prometheus http://127.0.0.1:\d+ .*\(after 2 attempts\)"):
        client.query_value("up")


def test_a_healthy_canary_is_promoted_through_the_gateway_and_notified(prometheus, gateway, tmp_path):
    started = datetime.now(UTC) - timedelta(seconds=60)
    store, config, deployer, (v1, v2) = release_world(tmp_path, gateway, "good", started)
    with WebhookReceiver() as hook, SMTPSink() as smtp:
        notifier = Notifier(webhook_url=hook.url, smtp_host="127.0.0.1", smtp_port=smtp.port,
                            smtp_to=["ops@example.invalid"], backoff_s=0.01)
        result = run_release_step(config, store, prometheus, deployer, notifier)
    assert result.action == PROMOTE, result.reason
    assert gateway.env("recommend")["MODEL_VERSION"] == v2
    assert Registry(store).alias_version("stable") == v2
    [body] = [b for b in hook.bodies if b["event"] == "release_promoted"]
    assert body["candidate_version"] == v2 and body["stable_version"] == v1
    assert body["metrics"]["canary"]["requests"] > 100 and "histogram_quantile" in body["queries"]["canary"]["p99_latency_s"]
    message = smtp.messages[-1]
    assert "release promoted" in message["Subject"] and json.loads(message.get_payload(decode=True))["state"] == "promoted"
    [entry] = ReleaseStore(store).history()
    assert entry.notifications == {"webhook": "sent", "email": "sent"}


def test_a_failing_canary_is_rolled_back_with_its_metrics_and_queries_recorded(prometheus, gateway, tmp_path):
    started = datetime.now(UTC) - timedelta(seconds=60)
    store, config, deployer, (v1, _v2) = release_world(tmp_path, gateway, "bad", started)
    with WebhookReceiver() as hook:
        result = run_release_step(config, store, prometheus, deployer, Notifier(webhook_url=hook.url))
    assert result.action == ROLLBACK
    assert gateway.env("recommend-canary")["MODEL_VERSION"] == v1
    assert gateway.env("recommend")["MODEL_VERSION"] == v1
    [entry] = ReleaseStore(store).history()
    failed = {c["name"] for c in entry.analysis["decision"]["checks"] if not c["passed"]}
    assert {"success_rate", "error_rate_vs_stable", "p99_latency", "canary_over_budget_share"} <= failed
    assert "recommend-canary.bad" in entry.analysis["queries"]["canary"]["errors"]
    assert hook.bodies[-1]["event"] == "release_rolled_back"


def test_forged_gateway_series_pushed_to_the_pushgateway_cannot_change_the_release_analysis(prometheus,
                                                                                           pushgateway):
    """The attack of issue 12: push fake gateway_* counters (720 of 960 canary calls failing) to the
    unauthenticated Pushgateway, under every job a push can claim. The release analysis, against
    the real Prometheus with the stack's scrape config, reads the same figures and decides the
    same, and Prometheus holds no gateway_* series but the gateway's own."""
    config = ReleaseConfig(namespace="good", window_s=600, min_requests=100)
    before, queries = measure(prometheus, config, 600, datetime.now(UTC))
    assert all('job="openfaas-gateway"' in q for variant in queries.values() for q in variant.values())
    verdict_before = decide(before["canary"], before["stable"], config, elapsed_s=600)

    forged = CollectorRegistry()
    calls = Counter("gateway_function_invocation", "forged", ["function_name", "code"], registry=forged)
    seconds = Histogram("gateway_functions_seconds", "forged", ["function_name", "code"], buckets=BUCKETS,
                        registry=forged)
    calls.labels("recommend-canary.good", "500").inc(720)
    calls.labels("recommend-canary.good", "200").inc(240)
    for _ in range(50):
        seconds.labels("recommend-canary.good", "500").observe(9.0)
    claims = [("openfaas-gateway", {"instance": prometheus.metrics_target}), ("openfaas-gateway", {}),
              ("ingest", {}), ("train", {}), ("release", {}), ("pushgateway", {}), ("prometheus", {})]
    for job, grouping in claims:
        push_to_gateway(host_port(pushgateway), job=job, registry=forged, grouping_key=grouping)
    held = requests.get(f"{pushgateway}/metrics", timeout=5).text
    assert held.count('gateway_function_invocation_total{code="500"') >= len(claims)  # the push was taken

    legit = CollectorRegistry()  # pushed after the forgeries: once it is in Prometheus, they were scraped too
    Gauge("ingest_last_success_timestamp_seconds", "probe", registry=legit).set(time.time())
    push_to_gateway(host_port(pushgateway), job="ingest", registry=legit, grouping_key={"instance": "probe"})
    wait_until(lambda: prometheus.query_value('ingest_last_success_timestamp_seconds{instance="probe"}') is not None,
               20, "prometheus to scrape the pushgateway")
    time.sleep(2.5)  # two more scrapes of everything

    after, _ = measure(prometheus, config, 600, datetime.now(UTC))
    # increase() extrapolates to the window's edges, so the same counters read a few % apart at two
    # moments; the forgery would have added 960 canary calls (x4) and 720 errors.
    for variant in ("canary", "stable"):
        assert after[variant].errors == before[variant].errors == 0
        assert after[variant].requests == pytest.approx(before[variant].requests, rel=0.1)
        assert after[variant].p99_latency_s == pytest.approx(before[variant].p99_latency_s, rel=0.1)
        assert after[variant].over_budget_calls == before[variant].over_budget_calls == 0  # forged: 50 at 9 s
    assert after["canary"].requests < 1.2 * TICKS * CANARY_PER_TICK
    verdict_after = decide(after["canary"], after["stable"], config, elapsed_s=600)
    assert verdict_after.action == verdict_before.action == PROMOTE
    assert prometheus.query_value('count({__name__=~"gateway_.*", job!="openfaas-gateway"})') is None
    assert prometheus.query_value(
        f'count({{__name__=~"gateway_.*", instance!="{prometheus.metrics_target}"}})') is None
    assert prometheus.query_value(
        'max(gateway_function_invocation_total{code="500", function_name="recommend-canary.good"})') == 0


# -- gateway deployment API ----------------------------------------------------------------
def test_update_env_puts_back_the_whole_deployment_with_the_new_env(gateway):
    deployer = GatewayClient(gateway.url, "admin", "gw-password")
    deployer.update_env("recommend-canary", {"MODEL_VERSION": "v20261128-010203-abcdef12"})
    [body] = gateway.puts
    assert body["service"] == "recommend-canary" and body["image"] == "movierec/recommend-canary:latest"
    assert body["envVars"] == {"MODEL_VERSION": "v20261128-010203-abcdef12", "RECOMMEND_K": "20"}
    assert body["limits"] == {"memory": "1Gi"} and "replicas" not in body


def test_update_env_retries_a_busy_gateway(gateway):
    gateway.fail_next = 2
    GatewayClient(gateway.url, "admin", "gw-password", backoff_s=0.01).update_env("recommend", {"A": "1"})
    assert gateway.env("recommend")["A"] == "1"


def test_wrong_credentials_are_a_one_line_error_naming_the_secrets(gateway):
    with pytest.raises(GatewayError, match="refused \\(401\\): check the basic-auth-user/basic-auth-password"):
        GatewayClient(gateway.url, "admin", "wrong").update_env("recommend", {"A": "1"})


def test_an_unreachable_gateway_is_named_after_the_retries():
    deployer = GatewayClient(f"http://127.0.0.1:{free_port()}", "a", "b", attempts=2, backoff_s=0.01)
    with pytest.raises(GatewayError, match=r"gateway http://127.0.0.1:\d+: GET /system/function/recommend: "
                                           r".*\(after 2 attempts\)"):
        deployer.update_env("recommend", {"A": "1"})


def test_a_function_that_is_not_deployed_is_not_found_not_unavailable(gateway):
    with pytest.raises(FunctionNotFoundError, match="function nope is not deployed") as raised:
        GatewayClient(gateway.url, "admin", "gw-password").update_env("nope", {"A": "1"})
    assert raised.value.status == 404 and gateway.puts == []


def test_the_client_lists_functions_with_their_replicas_and_reads_the_gateway_info(gateway):
    client = GatewayClient(gateway.url, "admin", "gw-password")
    assert sorted(f["name"] for f in client.list_functions()) == ["recommend", "recommend-canary"]
    assert client.replicas("recommend") == (1, 1)
    assert client.info()["provider"]["provider"] == "gateway-double"


def test_deployer_reads_credentials_from_secret_files(tmp_path, gateway):
    (tmp_path / "basic-auth-user").write_text("admin\n")
    (tmp_path / "basic-auth-password").write_text("gw-password\n")
    deployer = GatewayClient.from_env({"SECRETS_DIR": str(tmp_path), "OPENFAAS_URL": gateway.url})
    assert deployer.env_of("recommend")["MODEL_VERSION"] == "stable"


# -- notifications -------------------------------------------------------------------------
def test_email_logs_in_with_credentials_from_secret_files(tmp_path):
    (tmp_path / "smtp-user").write_text("mailer")
    (tmp_path / "smtp-password").write_text("mail-pw")
    with SMTPSink() as smtp:
        notifier = Notifier.from_env({"SECRETS_DIR": str(tmp_path), "SMTP_HOST": "127.0.0.1",
                                      "SMTP_PORT": str(smtp.port), "SMTP_TO": "a@example.invalid,b@example.invalid"})
        assert notifier.send("release promoted: v1", {"state": "promoted"}) == {"email": "sent"}
    assert smtp.logins and smtp.envelopes[0][1] == ["a@example.invalid", "b@example.invalid"]


def test_a_failing_webhook_is_reported_not_raised():
    with WebhookReceiver(status=500) as hook:
        outcome = Notifier(webhook_url=hook.url, attempts=2, backoff_s=0.01).send("s", {"x": 1})
    assert outcome["webhook"].startswith("failed:") and len(hook.bodies) == 2


# -- pushgateway ---------------------------------------------------------------------------
def test_training_metrics_are_pushed_to_a_real_pushgateway(tmp_path):
    port = free_port()
    process = start_process(
        ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}"], tmp_path / "pushgateway.log"
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/-/ready", timeout=1).status_code == 200, 20, "pushgateway ready")
        summary = {"version": "v20261128-010203-abcdef12", "metrics": {"rmse": 0.87, "mae": 0.68},
                   "gates_passed": True, "data": {"unique_ratings": 1000}, "duration_s": 12.5}
        assert push_metrics(url, summary) == "pushed"
        text = requests.get(f"{url}/metrics", timeout=5).text
    finally:
        stop_process(process)
    assert 'train_rmse{instance="",job="train",model_version="v20261128-010203-abcdef12"} 0.87' in text
    assert 'train_gates_passed{instance="",job="train",model_version="v20261128-010203-abcdef12"} 1' in text


def test_an_unreachable_pushgateway_does_not_fail_training():
    summary = {"version": "v1", "metrics": {"rmse": 0.9}, "gates_passed": True, "data": {"unique_ratings": 1},
               "duration_s": 1}
    assert push_metrics(f"http://127.0.0.1:{free_port()}", summary).startswith("failed: pushgateway")


# -- the release function's HTTP face ------------------------------------------------------
@pytest.fixture
def release_handler(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path / "secrets"))
    monkeypatch.setenv("STORE_URL", str(tmp_path / "store"))
    (tmp_path / "secrets").mkdir()
    return load_release_handler("release_handler"), tmp_path / "secrets"


def test_release_status_is_open(release_handler):
    handler, _ = release_handler
    reply = handler.handle(handler_event("GET", "/status"), None)
    assert reply["statusCode"] == 200 and reply["body"]["running"] is False


def test_manual_actions_are_disabled_without_the_token_secret(release_handler):
    handler, _ = release_handler
    reply = handler.handle(handler_event("POST", "/promote", {"Authorization": "Bearer anything"}), None)
    assert reply["statusCode"] == 503 and "release-admin-token" in reply["body"]["error"]


def test_manual_actions_need_the_token(release_handler):
    handler, secrets = release_handler
    (secrets / "release-admin-token").write_text("tok-123\n")
    assert handler.handle(handler_event("POST", "/promote"), None)["statusCode"] == 401
    assert handler.handle(handler_event("POST", "/promote", {"Authorization": "Bearer nope"}), None)["statusCode"] == 401
    reply = handler.handle(handler_event("POST", "/rollback", {"Authorization": "Bearer tok-123"}), None)
    assert reply["statusCode"] == 409 and "no release is running" in reply["body"]["error"]
