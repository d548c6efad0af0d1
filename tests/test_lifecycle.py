"""The whole local stack, end to end, driven by the same driver as `make demo` (scripts/demo).

One lifecycle runs once for the module on a fresh stack (scripts/stack on free ports, a temp
state dir, fast release settings): simulator backfill, ingest, a first model -> stable, a second
-> canary -> judged by the release controller from Prometheus and online quality (the driver
ingests in the background meanwhile) -> promoted; then a drill model (`scripts.release
drill-bad-model`, delay only) -> rolled back by the controller; then one `recommend` replica
killed with SIGKILL. (A worse ranking at the same latency, judged on online quality alone, is the
demo's opt-in `--ranking-drill` phase; tests/test_release_online_quality.py proves that loop on
enough evidence.) Steady load goes through nginx the whole time, and the
release notifications go to a local SMTP sink and webhook receiver (scripts/sinks.py). The tests
below each check one promise against what that run recorded. The drill adds latency only, so no
client request has any reason to fail: every 5xx or connection error counts as a failure.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from scripts._proc import pid_alive as _alive
from scripts.demo import (
    DemoError,
    DrillWindow,
    LifecycleOptions,
    LifecycleResult,
    Progress,
    Sample,
    bring_down,
    bring_up,
    is_drill_fault,
    is_failure,
    load_figures,
    local_stack_env,
    replica_pids,
    run_lifecycle,
    write_report,
)
from scripts.sinks import SMTPSink, WebhookReceiver

PACKAGES_MISSING = not all(shutil.which(b) or Path(p).exists() for b, p in (
    ("nginx", "/usr/sbin/nginx"), ("prometheus", "/usr/bin/prometheus"),
    ("prometheus-pushgateway", "/usr/bin/prometheus-pushgateway")))


def on_stack(test):
    """A test of the lifecycle run on the whole local stack (deselect with -m 'not stack')."""
    skip = pytest.mark.skipif(PACKAGES_MISSING, reason="nginx, prometheus, prometheus-pushgateway not installed")
    return pytest.mark.stack(skip(test))



class Lifecycle:
    def __init__(self):
        self.result = LifecycleResult()
        self.error: str | None = None
        self.report: dict | None = None
        self.handle = None
        self.webhook: WebhookReceiver | None = None
        self.smtp: SMTPSink | None = None
        self.pids_before_down: dict[str, int] = {}

    def require(self, what) -> None:
        assert what, f"the lifecycle did not get that far: {self.error}"

    def release(self, state: str) -> dict:
        release = self.result.release(state)
        self.require(release)
        return release


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    work = tmp_path_factory.mktemp("lifecycle")
    run = Lifecycle()
    with WebhookReceiver() as webhook, SMTPSink() as smtp:
        run.webhook, run.smtp = webhook, smtp
        env = {k: v for k, v in os.environ.items() if k not in (
            "OPENFAAS_URL", "PUBLIC_URL", "PROMETHEUS_URL", "PUSHGATEWAY_URL", "KAFKA_BOOTSTRAP_SERVERS",
            "STACK_STATE_DIR", "STORE_URL", "SECRETS_DIR")}
        env = local_stack_env(env, state_dir=str(work / "var"))
        env.update({"NOTIFY_WEBHOOK_URL": webhook.url, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port),
                    "SMTP_FROM": "movierec-tests@localhost", "SMTP_TO": "release-watchers@localhost"})
        progress = Progress()
        try:
            run.handle = bring_up(env, progress)
            options = LifecycleOptions(drill_delay_ms=300, drill_error_rate=0.0, load_rate=25.0)
            run_lifecycle(run.handle, options, progress, run.result)
            run.report = write_report(run.handle, run.result, work / "report", progress,
                                      {"webhook": [b.get("subject") for b in webhook.bodies],
                                       "email": [str(m["Subject"]) for m in smtp.messages]})
        except DemoError as e:
            run.error = str(e)
        try:
            yield run
        finally:
            if run.handle is not None:  # a no-op when the last test already brought it down
                bring_down(run.handle)  # by PID; on failure it SIGKILLs what its pid files verify as ours


# -- pure classification (no stack) --------------------------------------------------------------
def _sample(status: int, served_by: str = "recommend", t: float = 100.0) -> Sample:
    return Sample(t=t, latency_s=0.01, status=status, served_by=served_by, model_version="v", phase="p", user_id=1)


def test_connection_errors_and_5xx_count_as_failures_but_a_drill_canary_500_in_its_window_does_not():
    drills = [DrillWindow("v-drill", start=50.0, end=150.0)]
    assert is_failure(_sample(0), drills)
    assert is_failure(_sample(502), drills)
    assert is_failure(_sample(500, "recommend"), drills)  # stable must never fail, drill or not
    assert not is_failure(_sample(200), drills)
    assert not is_failure(_sample(400), drills)
    assert is_drill_fault(_sample(500, "recommend-canary"), drills)
    assert not is_failure(_sample(500, "recommend-canary"), drills)
    assert is_failure(_sample(500, "recommend-canary", t=200.0), drills)  # outside the drill: a real failure
    figures = load_figures([_sample(200), _sample(500, "recommend-canary"), _sample(0)], drills)["total"]
    assert (figures["requests"], figures["failures"], figures["drill_faults"]) == (3, 1, 1)


# -- the lifecycle on the whole stack ------------------------------------------------------------
@on_stack
def test_the_lifecycle_ran_every_phase(lifecycle):
    for phase in lifecycle.result.phases:
        print(f"phase {phase['phase']:<45} {phase['seconds']}s ok={phase['ok']}")
    assert lifecycle.error is None, lifecycle.error
    assert all(p["ok"] for p in lifecycle.result.phases)


@on_stack
def test_first_model_goes_straight_to_stable(lifecycle):
    first = lifecycle.result.versions.get("first")
    lifecycle.require(first)
    training = lifecycle.result.trainings[0]
    assert training["version"] == first and training["release"].startswith("first model")


@on_stack
def test_good_candidate_is_promoted_by_the_controller_after_a_full_clean_window(lifecycle):
    release = lifecycle.release("promoted")
    assert release["candidate"] == lifecycle.result.versions["second"]
    assert release["stable"] == lifecycle.result.versions["first"]
    assert release["actor"] == "controller"
    analysis = release["analysis"]
    assert analysis["decision"]["action"] == "promote"
    assert all(check["passed"] for check in analysis["decision"]["checks"])
    assert analysis["metrics"]["canary"]["requests"] >= 40  # RELEASE_MIN_REQUESTS of the fast settings
    assert analysis["metrics"]["canary"]["success_rate"] == 1.0


@on_stack
def test_bad_candidate_is_rolled_back_automatically_and_stable_is_untouched(lifecycle):
    release = lifecycle.release("rolled_back")
    second, drill = lifecycle.result.versions["second"], lifecycle.result.versions["drill"]
    assert (release["candidate"], release["stable"], release["actor"]) == (drill, second, "controller")
    failed = {c["name"] for c in release["analysis"]["decision"]["checks"] if not c["passed"]}
    assert failed & {"p99_latency", "p99_vs_stable"}, release["reason"]  # the drill's delay is what gave it away
    assert lifecycle.result.stable_after_drill == {
        "alias": second, "recommend_deployed": second, "recommend_serving": second, "canary_deployed": second}


@on_stack
def test_each_decision_is_recorded_with_its_metric_values_and_queries(lifecycle):
    for state in ("promoted", "rolled_back"):
        analysis = lifecycle.release(state)["analysis"]
        for variant in ("canary", "stable"):
            assert set(analysis["metrics"][variant]) >= {"requests", "errors", "success_rate", "p99_latency_s"}
            assert "gateway_function_invocation_total" in analysis["queries"][variant]["requests"]
            assert "histogram_quantile(0.99" in analysis["queries"][variant]["p99_latency_s"]


@on_stack
def test_each_decision_reaches_the_smtp_sink_and_the_webhook(lifecycle):
    promoted, rolled_back = lifecycle.release("promoted"), lifecycle.release("rolled_back")
    for release in (promoted, rolled_back):
        assert release["notifications"] == {"webhook": "sent", "email": "sent"}
    hooks = {(b["event"], b["candidate_version"]) for b in lifecycle.webhook.bodies}
    assert ("release_promoted", promoted["candidate"]) in hooks
    assert ("release_rolled_back", rolled_back["candidate"]) in hooks
    subjects = [str(m["Subject"]) for m in lifecycle.smtp.messages]
    assert f"release promoted: {promoted['candidate']}" in subjects
    assert f"release rolled_back: {rolled_back['candidate']}" in subjects
    assert all(recipients == ["release-watchers@localhost"] for _, recipients in lifecycle.smtp.envelopes)


@on_stack
def test_no_client_request_fails_through_nginx_during_promote_rollback_and_a_replica_kill(lifecycle):
    lifecycle.require(lifecycle.result.samples)
    figures = lifecycle.result.load()
    for name, f in [*figures["phases"].items(), ("all", figures["total"])]:
        print(f"load {name:<28} requests {f['requests']:>5}  failures {f['failures']}  drill faults "
              f"{f['drill_faults']}  p50 {f['p50_ms']} ms  p99 {f['p99_ms']} ms  served by {f['served_by']}")
    lifecycle.require(lifecycle.result.kill)
    for phase in ("canary analysis + promotion", "bad release + rollback", "replica killed"):
        assert figures["phases"][phase]["requests"] > 0, phase
    assert figures["phases"]["bad release + rollback"]["served_by"].get("recommend-canary", 0) > 0
    assert figures["total"]["failures"] == 0, figures["first_failures"]
    assert figures["total"]["drill_faults"] == 0  # a delay-only drill: not even an expected fault


@on_stack
def test_a_killed_recommend_replica_is_replaced(lifecycle):
    kill = lifecycle.result.kill
    lifecycle.require(kill)
    assert kill["killed_pid"] in kill["replicas_before"]
    assert kill["killed_pid"] not in kill["replicas_after"] and len(kill["replicas_after"]) >= 2
    assert not _alive(kill["killed_pid"])


@on_stack
def test_the_report_holds_the_picture_and_the_release_records(lifecycle):
    lifecycle.require(lifecycle.report)
    picture = Path(lifecycle.report["picture"])
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000
    markdown = (picture.parent / "report.md").read_text()
    for release in lifecycle.result.releases:
        assert release["id"] in markdown and release["reason"] in markdown
    assert {r["state"] for r in lifecycle.report["releases"]} == {"promoted", "rolled_back"}


@on_stack
def test_down_stops_every_process_the_lifecycle_started(lifecycle):
    handle = lifecycle.handle
    lifecycle.require(handle)
    services = {p.stem: int(p.read_text().split()[0]) for p in (handle.state_dir / "run").glob("*.pid")}
    replicas = {f"{fn}-{pid}": pid for fn in ("recommend", "recommend-canary", "ingest", "train", "release")
                for pid in replica_pids(handle, fn)}
    lifecycle.pids_before_down = {**services, **replicas}
    assert {"broker", "localfaas", "nginx", "prometheus", "pushgateway", "simulator"} <= set(services)
    assert bring_down(handle) == "stopped"
    still = {name: pid for name, pid in lifecycle.pids_before_down.items() if _alive(pid)}
    assert not still, f"still running after down: {still}"
