"""Grafana dashboards as code (monitoring/grafana/): their structure, their provisioning, and every
panel's PromQL proven against a LIVE Prometheus.

The live part runs real processes: localfaas (the local OpenFaaS gateway) with two tiny functions
named like the real ones (recommend, recommend-canary), the Pushgateway holding what the real
`movierec.ingest.push_metrics` and `movierec.trainjob.push_metrics` push, and Prometheus with the
project's rendered config scraping both. Grafana cannot be installed here; its queries can be run.
The release panels get their data from the real release path too: models registered in a local
store, the stable model bootstrapped and releases started and finished through the live gateway's
deployment API, an analysis step against the live Prometheus, then `movierec.adapters.release_metrics.push_release_metrics`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import time
from pathlib import Path

import pytest
import requests
import yaml

from monitoring.grafana import panels
from monitoring.render import MonitoringSettings, prometheus_argv, write_config
from tests.localfaas_harness import TEMPLATE, LocalFaas, free_port

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "monitoring" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "movierec.json"

# The release controller's metrics (monitoring/grafana/README.md), built by movierec/release/controller.py.
RELEASE_METRICS = ("release_serving_model_info", "release_decision_timestamp_seconds",
                   "release_online_recommended", "release_online_watched")


def all_queries() -> list[panels.PanelQuery]:
    return [q for path in panels.dashboard_files() for q in panels.queries(panels.load(path))]


# ----- structure -------------------------------------------------------------------------------
def test_every_dashboard_has_unique_panel_ids_prometheus_targets_and_no_credentials():
    files = panels.dashboard_files()
    assert DASHBOARD in files
    for path in files:
        assert panels.problems(panels.load(path), path.name) == []


def test_the_checker_reports_duplicate_ids_missing_targets_foreign_datasources_and_credentials():
    prom = {"type": "prometheus", "uid": "${datasource}"}
    bad = {
        "uid": "x", "title": "x", "schemaVersion": 39, "templating": {"list": []},
        "panels": [
            {"id": 1, "type": "timeseries", "title": "a", "gridPos": {}, "datasource": prom,
             "targets": [{"refId": "A", "expr": "up"}]},
            {"id": 1, "type": "timeseries", "title": "b", "gridPos": {}, "datasource": prom, "targets": []},
            {"id": 3, "type": "stat", "title": "c", "gridPos": {},
             "targets": [{"refId": "A", "expr": "up", "datasource": {"type": "loki", "uid": "l"}}]},
            {"id": 4, "type": "stat", "title": "d", "gridPos": {}, "datasource": prom,
             "targets": [{"refId": "A", "expr": "rate(x{ns=\"$nowhere\"}[1m])"}]},
            {"id": 5, "type": "text", "title": "e", "gridPos": {}, "datasource": prom,
             "targets": [{"refId": "A", "expr": "up"}], "options": {"basicAuthPassword": "hunter2"}},
            {"id": 6, "type": "text", "title": "f", "gridPos": {}, "datasource": prom,
             "targets": [{"refId": "A", "expr": "up"}], "links": [{"url": "http://admin:pw@grafana:3000/"}]},
        ],
    }
    found = "\n".join(panels.problems(bad, "bad.json"))
    assert "id 1 is also used by 'a'" in found
    assert "panel 1 'b': no targets" in found
    assert "datasource must be a Prometheus one" in found
    assert "variable $nowhere is not defined" in found
    assert "basicAuthPassword looks like a credential" in found
    assert "holds what looks like a credential" in found


def test_variables_are_substituted_in_every_grafana_syntax_and_builtins_get_fixed_values():
    values = {"namespace": "openfaas-fn", **panels.BUILTINS}
    assert panels.substitute('x{a="$namespace"}[$__rate_interval]', values) == 'x{a="openfaas-fn"}[1m]'
    assert panels.substitute('x{a="${namespace}",b="[[namespace]]",c="${namespace:regex}"}', values) == \
        'x{a="openfaas-fn",b="openfaas-fn",c="openfaas-fn"}'
    with pytest.raises(panels.DashboardError, match=r"\$missing is not defined"):
        panels.substitute("x[$missing]", values)


def test_every_extracted_query_is_plain_promql_with_the_dashboards_defaults():
    queries = all_queries()
    assert len(queries) >= 30
    for query in queries:
        assert "$" not in query.promql and "[[" not in query.promql, query.label
    joined = "\n".join(q.promql for q in queries)
    assert '"recommend.openfaas-fn"' in joined and '"recommend-canary.openfaas-fn"' in joined
    assert "[1m]" in joined and "vector(20 / 100)" in joined
    overridden = panels.queries(panels.load(DASHBOARD), {"namespace": "fn-prod", "__rate_interval": "5m"})
    assert all("openfaas-fn" not in q.promql for q in overridden)
    assert any("[5m]" in q.promql for q in overridden)


def test_dashboard_has_the_views_operators_need():
    dashboard = panels.load(DASHBOARD)
    titles = [p["title"] for p in panels.iter_panels(dashboard)]
    for needed in ("Requests/s per function", "Success rate per function (non-5xx)",
                   "Latency per function: p50 / p95 / p99", "recommend (stable): latency p50 / p95 / p99",
                   "recommend-canary: latency p50 / p95 / p99", "Canary share observed", "Serving model version",
                   "Ingest rate (records/s in the last run)", "Quarantined lines by reason (last run)",
                   "Consumer lag", "Training metrics per model version",
                   "Top-20 ranking per model version: model vs popularity vs random",
                   "NDCG@20 over popularity's, per model version",
                   "Online quality per variant (share of recommendations watched)"):
        assert needed in titles
    # Stable and canary latency sit side by side on the same row, same size.
    by_title = {p["title"]: p["gridPos"] for p in panels.iter_panels(dashboard)}
    stable, canary = by_title["recommend (stable): latency p50 / p95 / p99"], \
        by_title["recommend-canary: latency p50 / p95 / p99"]
    assert stable["y"] == canary["y"] and stable["w"] == canary["w"] and stable["x"] + stable["w"] == canary["x"]
    quantiles = [q.promql for q in panels.queries(dashboard) if q.panel_title.startswith("recommend-canary: latency")]
    assert [re.search(r"histogram_quantile\(([\d.]+)", q).group(1) for q in quantiles] == ["0.5", "0.95", "0.99"]
    annotations = {a["name"] for a in dashboard["annotations"]["list"]}
    assert {"Release decisions", "Model trained"} <= annotations


def test_metric_names_in_panels_are_the_ones_the_code_exports():
    """Catches a rename on either side: every gateway_*, ingest_*, train_* and release_* name a panel
    uses is written by localfaas or pushed by movierec, and the release ones are documented."""
    sources = {"gateway_": ROOT / "localfaas" / "metrics.py", "ingest_": ROOT / "movierec" / "ingest.py",
               "train_": ROOT / "movierec" / "trainjob.py", "release_": ROOT / "movierec" / "release" / "controller.py"}
    readme = (GRAFANA / "README.md").read_text()
    used = {m for q in all_queries() for m in re.findall(r"\b((?:gateway|ingest|train|release)_\w+)\{", q.promql)}
    assert any(name.startswith("ingest_") for name in used) and any(name.startswith("train_") for name in used)
    for name in sorted(used):
        if name.startswith("release_"):
            assert name in RELEASE_METRICS and name in readme, name
        prefix = next(p for p in sources if name.startswith(p))
        code = sources[prefix].read_text()
        family = re.sub(r"_(total|bucket|sum|count)$", "", name)  # a counter's or histogram's series
        assert f'"{name}"' in code or f'"{family}"' in code, f"{name} is not exported by {sources[prefix].name}"


def gateway_panel_expressions() -> dict[tuple[str, str], str]:
    """What each panel over the gateway's metrics must say, rendered from the release's PromQL
    templates (movierec.release.promql) with the dashboard's variables."""
    from movierec.release import promql as p

    ns, w, fn = "$namespace", "$__rate_interval", ("function_name",)
    every = p.function_matches(".+[.]$namespace")
    variants = p.function_matches("recommend(-canary)?[.]$namespace")
    stable, canary = p.function_is("recommend", ns), p.function_is("recommend-canary", ns)
    share = p.ratio(p.calls(canary, w), p.calls(variants, w))
    expected = {
        ("Requests/s per function", "A"): p.calls(every, w, by=fn),
        ("Success rate per function (non-5xx)", "A"): p.success_rate(every, w, by=fn),
        ("Responses/s by status code", "A"): p.calls(every, w, by=("function_name", "code")),
        ("Replicas per function", "A"): p.replicas(every, by=fn),
        ("Canary share observed", "A"): share,
        ("Canary share over time", "A"): share,
        ("Success rate: stable vs canary", "A"): p.success_rate(variants, w, by=fn),
        ("Mean latency: stable vs canary", "A"): p.mean_latency(variants, w, by=fn),
        ("p99 ratio canary / stable", "A"): p.p99_ratio(canary, stable, w),
    }
    for ref, q in zip("ABC", (0.5, 0.95, 0.99), strict=True):
        expected[("Latency per function: p50 / p95 / p99", ref)] = p.latency_quantile(q, every, w, by=fn)
        expected[("recommend (stable): latency p50 / p95 / p99", ref)] = p.latency_quantile(q, stable, w, by=fn)
        expected[("recommend-canary: latency p50 / p95 / p99", ref)] = p.latency_quantile(q, canary, w, by=fn)
    return expected


def test_every_gateway_panel_is_rendered_from_the_release_promql_templates():
    """One source: a panel over gateway_* metrics says exactly what a movierec.release.promql
    template renders (the live tests below then run each of them against Prometheus)."""
    found = {(q.panel_title, q.ref_id): q.expr for q in panels.queries(panels.load(DASHBOARD)) if "gateway_" in q.expr}
    assert found == gateway_panel_expressions()


def test_the_p99_ratio_panel_divides_the_release_analysis_p99_figures():
    from movierec.release import promql as p

    w = "$__rate_interval"
    figures = {f: p.figures(p.function_is(f, "$namespace"), w)["p99_latency_s"] for f in ("recommend", "recommend-canary")}
    assert gateway_panel_expressions()[("p99 ratio canary / stable", "A")] == \
        f"{figures['recommend-canary']} / {figures['recommend']}"
    # ... the same p99 the controller queries for its p99_latency and p99_vs_stable checks (which
    # also select the gateway's own scrape job: only its series count as release evidence).
    assert p.variant_queries("recommend-canary", "openfaas-fn", 120)["p99_latency_s"] == \
        p.figures(f'{p.scraped_by()},{p.function_is("recommend-canary", "openfaas-fn")}', "120s")["p99_latency_s"]


def test_the_templates_use_the_metric_names_the_local_gateway_exports():
    from movierec.release import promql

    code = (ROOT / "localfaas" / "metrics.py").read_text()
    for name in promql.GATEWAY_METRICS:
        assert f'"{name}"' in code or f'"{name.removesuffix("_total")}"' in code, name


# ----- provisioning ----------------------------------------------------------------------------
def test_kubernetes_configmap_is_rendered_from_the_dashboards_with_the_sidecar_label():
    path = GRAFANA / "kubernetes" / "dashboards-configmap.yaml"
    assert path.read_text() == panels.render_configmap(), \
        "stale: run python -m monitoring.grafana.panels configmap -o " + str(path.relative_to(ROOT))
    manifest = yaml.safe_load(path.read_text())
    assert manifest["kind"] == "ConfigMap" and manifest["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(manifest["data"]["movierec.json"]) == panels.load(DASHBOARD)
    assert len(path.read_bytes()) < 256 * 1024  # kubectl apply keeps a copy in a 256 KiB annotation
    datasource = yaml.safe_load((GRAFANA / "kubernetes" / "datasource-configmap.yaml").read_text())
    assert datasource["metadata"]["labels"]["grafana_datasource"] == "1"


def test_faasd_provisioning_points_at_faasd_prometheus_and_the_dashboard_folder():
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [prometheus] = sources["datasources"]
    assert prometheus["type"] == "prometheus" and prometheus["url"] == "http://prometheus:9090"
    dashboard_var = next(v for v in panels.load(DASHBOARD)["templating"]["list"] if v["name"] == "datasource")
    assert dashboard_var["current"]["value"] == prometheus["uid"]
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "movierec.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/var/lib/grafana/dashboards")


def test_no_grafana_file_holds_a_credential():
    for path in sorted(GRAFANA.rglob("*")):
        if path.suffix in (".json", ".yml", ".yaml"):
            text = path.read_text()
            document = json.loads(text) if path.suffix == ".json" else list(yaml.safe_load_all(text))
            assert panels.credential_problems(document, path.name) == []


# ----- live: real gateway, real Pushgateway, real Prometheus ---------------------------------------
TINY_HANDLER = '''
import os

def handle(event, context):
    if event.path == "/fail":
        return {"statusCode": 500, "body": "failing on purpose"}
    return {"statusCode": 200, "body": "m1,m2,m3", "headers": {"X-Model-Version": os.getenv("MODEL_VERSION", "")}}
'''

TINY_STACK = '''
version: 1.0
provider:
  name: openfaas
  gateway: ${OPENFAAS_URL:-http://127.0.0.1:8080}
functions:
  recommend: &recommend
    lang: python3-http-debian
    handler: ./functions/tiny
    image: test/recommend:latest
    environment:
      MODEL_VERSION: v1
    labels:
      com.openfaas.scale.min: "1"
  recommend-canary:
    <<: *recommend
    image: test/recommend-canary:latest
    environment:
      MODEL_VERSION: v2
'''
STABLE_CALLS, CANARY_CALLS, FAILED_CALLS = 8, 2, 1  # per round
# A train summary's ranking figures (movierec.training.evaluate's `ranking`), as the job pushes them.
RANKING = {ranker: {"precision": p, "recall": 2 * p, "ndcg": n, "hit_rate": 0.5, "coverage": c}
           for ranker, p, n, c in (("model", 0.05, 0.09, 0.4), ("popularity", 0.04, 0.06, 0.02),
                                   ("random", 0.002, 0.003, 1.0), ("svd", 0.01, 0.02, 0.6))}
QUALITY = {"canary": (50, 10), "stable": (200, 30)}  # (recommended, watched) the analysis step is given


def _service(name, argv, health):
    from scripts.stack import Service

    return Service(name, None, name, argv, health, start_timeout_s=30.0)


def _http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


class ObservedStack:
    """localfaas + Pushgateway + Prometheus (1s scrapes), started by the stack's own launcher."""

    def __init__(self, root: Path):
        from scripts.stack import StackConfig, services, start_service

        self.root = root
        shutil.copytree(TEMPLATE, root / "template" / TEMPLATE.name, ignore=shutil.ignore_patterns("__pycache__"))
        (root / "functions" / "tiny").mkdir(parents=True)
        (root / "functions" / "tiny" / "handler.py").write_text(TINY_HANDLER)
        (root / "functions" / "tiny" / "requirements.txt").write_text("")
        (root / "stack.yml").write_text(TINY_STACK)
        self.pids: list[tuple[int, float]] = []
        self.faas = LocalFaas(root)
        self.config = StackConfig(state_dir=root / "monitoring-state", prometheus_port=free_port(),
                                  pushgateway_port=free_port(), gateway_port=self.faas.port)
        self.prometheus = self.config.url(self.config.prometheus_port)
        self.pushgateway = self.config.url(self.config.pushgateway_port)
        [pushgateway] = [s for s in services(self.config) if s.name == "pushgateway"]
        settings = dataclasses.replace(MonitoringSettings.local(self.config.service_env()), scrape_interval="1s")
        conf = write_config(settings, self.config.state_dir / "prometheus.yml")
        prometheus = _service("prometheus",
                              lambda: prometheus_argv(conf, self.config.state_dir / "prometheus",
                                                      f"127.0.0.1:{self.config.prometheus_port}"),
                              lambda: _http_ok(self.prometheus + "/-/ready"))
        for service in (pushgateway, prometheus):
            pid, _ = start_service(self.config, service)
            self.pids.append((pid, service.stop_grace_s))
        self.faas.wait_until(lambda: _http_ok(self.faas.url + "/healthz"), "the gateway")
        for name in ("recommend", "recommend-canary"):
            self.faas.wait_available(name, 1)

    def stop(self) -> None:
        from scripts.stack import stop_pid

        for pid, grace in reversed(self.pids):
            stop_pid(pid, grace)
        self.faas.stop()

    def query(self, promql: str) -> dict:
        reply = requests.get(self.prometheus + "/api/v1/query", params={"query": promql}, timeout=5)
        return reply.json()

    def wait_for(self, promql: str, what, timeout_s: float = 30.0) -> list[dict]:
        """The query's series once `what(series)` holds; bounded, polls at the scrape interval."""
        deadline = time.monotonic() + timeout_s
        while True:
            payload = self.query(promql)
            series = payload.get("data", {}).get("result", []) if payload.get("status") == "success" else []
            if what(series):
                return series
            if time.monotonic() > deadline:
                raise AssertionError(f"no usable data for {promql} after {timeout_s:g}s: {payload}")
            time.sleep(0.5)


def finite(series: list[dict]) -> bool:
    return bool(series) and any(math.isfinite(float(s["value"][1])) for s in series)


class ReleaseStory:
    """Three registered versions: `stable` serves, `rolled_back` was released and rolled back,
    `candidate` is on the canary now with an analysis holding online quality. All through the real
    release functions and the live gateway's deployment API (the tiny functions get MODEL_VERSION)."""

    def __init__(self, stack: ObservedStack, root: Path):
        from datetime import UTC, datetime

        from movierec.adapters.gateway import GatewayClient
        from movierec.adapters.prometheus import PrometheusClient
        from movierec.registry import Registry
        from movierec.release import (
            ROLLED_BACK,
            QualityCounts,
            ReleaseConfig,
            ReleaseStore,
            bootstrap_stable,
            finish_release,
            run_release_step,
            start_release,
        )
        from movierec.store import LocalDirectoryStore
        from movierec.synthetic import SyntheticWorld
        from movierec.training import SVDParams
        from tests.fitting import train_model

        self.store = LocalDirectoryStore(root / "store")
        registry = Registry(self.store)
        model = train_model(SyntheticWorld(n_users=60, n_movies=40, seed=2).sample_ratings(800),
                            SVDParams(n_factors=2, n_epochs=2, random_state=0))
        self.stable, self.rolled_back, self.candidate = (
            registry.register_model(model, now=datetime(2026, 11, 28, 1, minute, tzinfo=UTC)).version
            for minute in (0, 1, 2))
        # The step runs right after the start: an interval this short lets it measure at once (a real
        # one waits two scrape intervals), so the latest analysis has the online quality the panels show.
        self.config = ReleaseConfig(scrape_interval_s=0.001)
        self.deployer = GatewayClient(stack.faas.url, *stack.faas.auth, timeout_s=60)
        bootstrap_stable(self.config, self.store, self.deployer, self.stable)
        start_release(self.config, self.store, self.deployer, self.rolled_back)
        finish_release(self.config, self.store, self.deployer, None, ReleaseStore(self.store).running(),
                       ROLLED_BACK, "drill: canary success 0.70 (floor 0.99)", "controller")
        self.decided = ReleaseStore(self.store).history(1)[0]
        start_release(self.config, self.store, self.deployer, self.candidate)
        quality = {variant: QualityCounts(*counts) for variant, counts in QUALITY.items()}
        step = run_release_step(self.config, self.store, PrometheusClient(stack.prometheus), self.deployer, None,
                                quality_source=lambda start, end: quality)
        assert step.action == "wait"  # far fewer canary requests than the minimum: the release keeps running

    def push(self, pushgateway: str) -> str:
        from movierec.adapters.release_metrics import push_release_metrics

        return push_release_metrics(pushgateway, self.store, self.config, self.deployer)


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    from movierec import ingest
    from movierec.adapters.kafka_ingest import push_metrics
    from movierec.events import REJECTION_REASONS
    from scripts import train as trainjob  # its push_metrics: movierec.trainjob's families, pushed

    root = tmp_path_factory.mktemp("grafana-live")
    stack = ObservedStack(root)
    try:
        stack.release = ReleaseStory(stack, root)  # redeploys the tiny functions: before any traffic
        assert stack.release.push(stack.pushgateway) == "pushed"
        # The batch functions' own push code, with the figures of a run.
        summary = ingest.IngestSummary(topic="movielog1", group_id="movierec-ingest", records=1200,
                                       events={"watch": 1000, "rate": 150, "recommendation": 44},
                                       quarantined={REJECTION_REASONS[2]: 4, REJECTION_REASONS[7]: 2},
                                       batches_written=3, lag={0: 17, 1: 0}, lag_total=17, duration_seconds=2.5)
        assert push_metrics(summary, stack.pushgateway)
        for version, rmse in (("v1", 0.95), ("v2", 0.91)):
            assert trainjob.push_metrics(stack.pushgateway, {
                "version": version, "metrics": {"rmse": rmse, "mae": 0.74, "precision_at_k": 0.05, "ndcg_at_k": 0.09,
                                                "ranking": RANKING, "ndcg_lift_vs_popularity": 0.09 / 0.06},
                "gates_passed": True, "data": {"unique_ratings": 5000}, "duration_s": 12.0}) == "pushed"
            # Each push replaces the job's group: let Prometheus see v1 before v2 replaces it.
            stack.wait_for(f'train_rmse{{model_version="{version}"}}', bool)
        # Traffic spread over several scrapes, so rates and quantiles are not 0/0.
        for _ in range(6):
            for _ in range(STABLE_CALLS):
                assert stack.faas.call("recommend", "/42").status_code == 200
            for _ in range(CANARY_CALLS):
                assert stack.faas.call("recommend-canary", "/7").status_code == 200
            for _ in range(FAILED_CALLS):
                assert stack.faas.call("recommend", "/fail").status_code == 500
            time.sleep(0.5)
        yield stack
    finally:
        stack.stop()


LIVE_QUERIES = all_queries()  # every panel, the release ones included: nothing is waiting for data


@pytest.mark.stack
@pytest.mark.parametrize("query", LIVE_QUERIES, ids=[q.label for q in LIVE_QUERIES])
def test_panel_query_returns_data_from_live_prometheus(observed, query):
    observed.wait_for(query.promql, finite)


def _panel(title: str, ref_id: str = "A") -> str:
    return next(q.promql for q in all_queries() if q.panel_title == title and q.ref_id == ref_id)


@pytest.mark.stack
def test_serving_model_version_panel_shows_the_resolved_version_each_variant_serves(observed):
    series = observed.wait_for(_panel("Serving model version"), lambda s: len(s) == 2)
    story = observed.release
    assert {s["metric"]["variant"]: s["metric"]["model_version"] for s in series} == \
        {"stable": story.stable, "canary": story.candidate}


@pytest.mark.stack
def test_release_decisions_panel_lists_each_finished_release_with_its_decision_time(observed):
    from datetime import datetime

    [series] = observed.wait_for(_panel("Release decisions"), lambda s: len(s) == 1)
    story = observed.release
    assert series["metric"] == {"release_id": story.decided.id, "decision": "rolled_back",
                                "model_version": story.rolled_back}
    assert float(series["value"][1]) == datetime.fromisoformat(story.decided.decided).timestamp() * 1000


@pytest.mark.stack
def test_online_quality_panel_shows_the_latest_analysis_share_watched_per_variant(observed):
    series = observed.wait_for(_panel("Online quality per variant (share of recommendations watched)"),
                               lambda s: len(s) == 2)
    expected = {variant: watched / recommended for variant, (recommended, watched) in QUALITY.items()}
    assert {s["metric"]["variant"]: float(s["value"][1]) for s in series} == pytest.approx(expected)


@pytest.mark.stack
def test_canary_share_and_success_rate_panels_reflect_the_traffic_sent(observed):
    by_title = {q.panel_title + "/" + q.ref_id: q.promql for q in all_queries()}
    share = float(observed.wait_for(by_title["Canary share observed/A"], finite)[0]["value"][1])
    sent = CANARY_CALLS / (CANARY_CALLS + STABLE_CALLS + FAILED_CALLS)
    assert abs(share - sent) < 0.1  # rates over the same window: the ratio of the calls sent
    rates = {s["metric"]["function_name"]: float(s["value"][1]) for s in observed.wait_for(
        by_title["Success rate: stable vs canary/A"], lambda s: len(s) == 2)}
    assert rates["recommend-canary.openfaas-fn"] == 1.0
    assert rates["recommend.openfaas-fn"] < 1.0  # the /fail calls are 5xx


@pytest.mark.stack
def test_training_table_lists_every_model_version_pushed_in_the_range(observed):
    table = next(q for q in all_queries() if q.panel_title == "Training metrics per model version" and q.ref_id == "A")
    series = observed.wait_for(table.promql, lambda s: len(s) >= 2)
    assert {s["metric"]["model_version"]: float(s["value"][1]) for s in series} == {"v1": 0.95, "v2": 0.91}


@pytest.mark.stack
def test_ranking_table_shows_the_model_and_both_baselines_per_version(observed):
    table = next(q for q in all_queries()
                 if q.panel_title == "Top-20 ranking per model version: model vs popularity vs random" and q.ref_id == "A")
    series = observed.wait_for(table.promql, lambda s: len(s) >= 8)  # v1 and v2, four rankers each
    got = {(s["metric"]["model_version"], s["metric"]["ranker"]): float(s["value"][1]) for s in series}
    assert got == {(v, ranker): RANKING[ranker]["ndcg"] for v in ("v1", "v2") for ranker in RANKING}
    [lift] = observed.wait_for(_panel("NDCG@20 over popularity's, per model version"), lambda s: len(s) == 1)
    assert lift["metric"]["model_version"] == "v2" and float(lift["value"][1]) == pytest.approx(1.5)
