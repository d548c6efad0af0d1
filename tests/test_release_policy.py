"""The canary controller's pure logic: statistics, decision policy, state machine, actions.

Collaborators (Prometheus, gateway, notifier) are in-process fakes here; the real ones are
exercised in test_release_services.py.
"""
from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest

from gateway.render import NginxSettings
from movierec.canary import CANARY, STABLE
from movierec.errors import ConfigError, Conflict, Rejected, http_status
from movierec.events import RecommendationEvent, WatchEvent
from movierec.release import (
    ABORTED,
    PROMOTE,
    PROMOTED,
    RELEASE_CHECKS,
    ROLLBACK,
    ROLLED_BACK,
    WAIT,
    Bound,
    Check,
    InvalidTransition,
    QualityCounts,
    ReleaseConfig,
    ReleaseError,
    ReleaseRunningError,
    ReleaseStore,
    VariantMetrics,
    bootstrap_stable,
    decide,
    evaluate_checks,
    manual_action,
    one_proportion_z_test,
    online_quality,
    per_user_z_test,
    prom_range,
    run_release_step,
    start_release,
    status,
    two_proportion_z_test,
    variant_queries,
)
from movierec.release.promql import CANARY_BUDGET_LE, DURATION_BUCKETS
from movierec.settings import parse_duration
from tests.release_fakes import GOOD, FakeDeployer, FakePrometheus, two_published_versions

T0 = datetime(2026, 11, 28, 1, 0, 0, tzinfo=UTC)
CONFIG = ReleaseConfig(window_s=600, min_requests=100, timeout_s=3600)


# -- statistics ----------------------------------------------------------------------------
def test_z_test_finds_a_clearly_higher_error_rate_significant():
    z, p = two_proportion_z_test(30, 1000, 10, 4000)
    assert z > 3 and p < 0.001


def test_z_test_finds_equal_error_rates_not_significant():
    z, p = two_proportion_z_test(5, 1000, 20, 4000)
    assert z == pytest.approx(0.0) and p == pytest.approx(0.5)


def test_z_test_without_evidence_returns_p_one():
    assert two_proportion_z_test(0, 0, 3, 100) == (0.0, 1.0)
    assert two_proportion_z_test(0, 100, 0, 100) == (0.0, 1.0)


def test_z_test_lower_canary_error_rate_is_not_worse():
    _, p = two_proportion_z_test(0, 1000, 50, 4000)
    assert p > 0.99


# -- configuration -------------------------------------------------------------------------
def test_durations_accept_seconds_minutes_hours_and_milliseconds():
    assert [parse_duration(t) for t in ("90", "90s", "1m", "2h", "500ms")] == [90, 90, 60, 7200, 0.5]


def test_config_from_env_reads_window_and_thresholds():
    config = ReleaseConfig.from_env({"RELEASE_WINDOW": "1m", "RELEASE_MIN_REQUESTS": "50", "RELEASE_MAX_P99": "300ms"})
    assert (config.window_s, config.min_requests, config.max_p99_s) == (60, 50, 0.3)


def test_config_rejects_a_bad_duration_with_one_line():
    with pytest.raises(ConfigError, match="RELEASE_WINDOW|invalid duration"):
        ReleaseConfig.from_env({"RELEASE_WINDOW": "two hours"})


def test_config_defaults_are_the_settings_table_defaults():
    assert ReleaseConfig.from_env({}) == ReleaseConfig()
    assert ReleaseConfig.from_env({"RELEASE_ONLINE_QUALITY": "1", "CANARY_PERCENT": "30"}).online_quality is True


@pytest.mark.parametrize("name, raw", [("RELEASE_ALPHA", "2"), ("CANARY_PERCENT", "101"), ("RELEASE_MIN_REQUESTS", "x"),
                                       ("RELEASE_ONLINE_QUALITY", "maybe"), ("RELEASE_MAX_P99", "fast")])
def test_a_bad_release_setting_is_a_config_error_naming_the_variable(name, raw):
    with pytest.raises(ConfigError, match=name) as caught:
        ReleaseConfig.from_env({name: raw})
    assert caught.value.status == 400 and "\n" not in str(caught.value)


# -- the checks as data -------------------------------------------------------------------------
def test_every_check_names_config_fields_and_figures_that_exist():
    fields = {f.name for f in dataclasses.fields(ReleaseConfig)}
    for spec in RELEASE_CHECKS:
        thresholds = [getattr(spec, k) for k in ("limit", "floor", "alpha", "minimum") if getattr(spec, k, None)]
        assert thresholds and set(thresholds) <= fields, spec.name
        figures = [spec.figure] if hasattr(spec, "figure") else list(spec.counts)
        owner = QualityCounts() if getattr(spec, "source", None) == "quality" else GOOD
        assert all(hasattr(owner, f) for f in figures), spec.name
    assert [c.name for c in RELEASE_CHECKS] == ["success_rate", "p99_latency", "error_rate_vs_stable",
                                                "p99_vs_stable", "canary_over_budget_share", "watched_share_vs_stable"]


def test_the_check_records_keep_their_names_outcomes_and_details():
    canary = VariantMetrics(requests=1000, errors=30, mean_latency_s=0.2, p99_latency_s=0.6)
    stable = VariantMetrics(requests=4000, errors=8, mean_latency_s=0.02, p99_latency_s=0.2)
    quality = {CANARY: QualityCounts(2000, 100), STABLE: QualityCounts(8000, 800)}
    checks = [(c.name, c.passed, c.detail) for c in evaluate_checks(canary, stable, CONFIG, quality)]
    z_err, p_err = two_proportion_z_test(30, 1000, 8, 4000)
    # Counts without per-user figures: one unit per recommended movie (unpooled), judged as the
    # last look of the window (no elapsed time given): z >= z_(1 - alpha/2) fails.
    z_watch, p_watch = per_user_z_test(quality[STABLE], quality[CANARY])
    assert checks == [
        ("success_rate", False, "canary success 0.9700 (floor 0.99)"),
        ("p99_latency", False, "canary p99 600 ms (bound 500 ms)"),
        ("error_rate_vs_stable", False,
         f"canary errors 30/1000 vs stable 8/4000: z={z_err:.2f} p={p_err:.4f} (alpha 0.05)"),
        ("p99_vs_stable", False, "p99 ratio to stable 3.00 (bound 1.5, judged above 100 ms)"),
        ("watched_share_vs_stable", False,
         (f"watched canary 100/2000 vs stable 800/8000 (2000 and 8000 trials): z={z_watch:.2f} p={p_watch:.4f}; "
          "fails at z >= 1.96 (p < 0.025) 100% into the window (alpha 0.05 over all looks)")),
    ]
    unknown = evaluate_checks(VariantMetrics(requests=1000), stable, CONFIG)  # no histogram, no quality
    assert [(c.name, c.passed, c.detail) for c in unknown] == [
        ("success_rate", True, "canary success 1.0000 (floor 0.99)"),
        ("p99_latency", False, "canary p99 latency unknown (no histogram samples)"),
        ("error_rate_vs_stable", True, "canary errors 0/1000 vs stable 8/4000: z=-1.42 p=0.9215 (alpha 0.05)"),
    ]


def test_a_check_list_is_data_judged_by_the_same_loop():
    mean_bound = Bound("mean_latency", figure="mean_latency_s", kind="max", limit="max_p99_s", scale=1000,
                       detail="canary mean {value:.0f} ms (bound {limit:.0f} ms)")
    slow = VariantMetrics(requests=1000, errors=0, mean_latency_s=0.7, p99_latency_s=0.09)
    [check] = evaluate_checks(slow, GOOD, CONFIG, checks=(mean_bound,))
    assert check == Check("mean_latency", False, "canary mean 700 ms (bound 500 ms)")


# -- queries -------------------------------------------------------------------------------
def test_the_recorded_queries_are_unchanged():
    """Release histories hold these strings: they stay exactly what the analysis sends (since issue 12
    they also select the gateway's own scrape job, so no pushed series can stand in for its own)."""
    sel = 'job="openfaas-gateway",function_name="recommend.openfaas-fn"'
    assert variant_queries("recommend", "openfaas-fn", 90.5) == {
        "requests": f"sum(increase(gateway_function_invocation_total{{{sel}}}[90s]))",
        "errors": f'sum(increase(gateway_function_invocation_total{{{sel},code=~"5.."}}[90s]))',
        "mean_latency_s": f"sum(rate(gateway_functions_seconds_sum{{{sel}}}[90s]))"
                          f" / sum(rate(gateway_functions_seconds_count{{{sel}}}[90s]))",
        "p99_latency_s": f"histogram_quantile(0.99, sum by (le) (rate(gateway_functions_seconds_bucket{{{sel}}}[90s])))",
        "timed_calls": f"sum(increase(gateway_functions_seconds_count{{{sel}}}[90s]))",
        "over_budget_calls": f"sum(increase(gateway_functions_seconds_count{{{sel}}}[90s]))"
                             f' - sum(increase(gateway_functions_seconds_bucket{{{sel},le="0.25"}}[90s]))',
    }
    assert prom_range(0.2) == "1s"


def test_queries_select_the_variant_function_and_range():
    q = variant_queries("recommend-canary", "openfaas-fn", 120)
    assert q["requests"] == (
        'sum(increase(gateway_function_invocation_total{job="openfaas-gateway",'
        'function_name="recommend-canary.openfaas-fn"}[120s]))'
    )
    assert 'code=~"5.."' in q["errors"]
    assert all('job="openfaas-gateway"' in text for text in q.values())
    assert 'job="gateway"' in variant_queries("recommend", "openfaas-fn", 60, job="gateway")["requests"]
    assert q["p99_latency_s"].startswith("histogram_quantile(0.99, sum by (le) (rate(gateway_functions_seconds_bucket")


# -- policy --------------------------------------------------------------------------------
def test_policy_waits_until_the_canary_has_the_minimum_sample():
    d = decide(VariantMetrics(requests=99), GOOD, CONFIG, elapsed_s=900)
    assert d.action == WAIT and "99 of 100" in d.reason


def test_policy_rolls_back_when_samples_never_arrive_before_timeout():
    d = decide(VariantMetrics(requests=10), GOOD, CONFIG, elapsed_s=3600)
    assert d.action == ROLLBACK and "timed out" in d.reason


def test_policy_waits_for_the_window_even_when_checks_pass():
    d = decide(GOOD, GOOD, CONFIG, elapsed_s=300)
    assert d.action == WAIT and all(c.passed for c in d.checks)


def test_policy_promotes_a_healthy_canary_after_the_window():
    d = decide(GOOD, GOOD, CONFIG, elapsed_s=600)
    assert d.action == PROMOTE


def test_policy_rolls_back_early_on_a_low_success_rate():
    bad = VariantMetrics(requests=1000, errors=50, mean_latency_s=0.02, p99_latency_s=0.09)
    d = decide(bad, GOOD, CONFIG, elapsed_s=60)
    assert d.action == ROLLBACK
    failed = {c.name for c in d.checks if not c.passed}
    assert {"success_rate", "error_rate_vs_stable"} <= failed


def test_policy_rolls_back_on_slow_p99():
    slow = VariantMetrics(requests=1000, errors=0, mean_latency_s=0.3, p99_latency_s=0.9)
    d = decide(slow, GOOD, CONFIG, elapsed_s=600)
    assert d.action == ROLLBACK
    assert {c.name for c in d.checks if not c.passed} == {"p99_latency", "p99_vs_stable"}


def test_policy_ignores_a_p99_ratio_below_the_floor_where_buckets_are_coarse():
    canary = VariantMetrics(requests=1000, errors=0, mean_latency_s=0.03, p99_latency_s=0.05)
    stable = VariantMetrics(requests=4000, errors=0, mean_latency_s=0.02, p99_latency_s=0.025)
    assert decide(canary, stable, CONFIG, elapsed_s=600).action == PROMOTE


def test_policy_rolls_back_an_error_rate_significantly_above_stable_even_under_the_floor():
    config = ReleaseConfig(window_s=600, min_requests=100, min_success_rate=0.95)
    canary = VariantMetrics(requests=2000, errors=40, mean_latency_s=0.02, p99_latency_s=0.09)  # 98%
    stable = VariantMetrics(requests=8000, errors=8, mean_latency_s=0.02, p99_latency_s=0.09)  # 99.9%
    d = decide(canary, stable, config, elapsed_s=600)
    assert d.action == ROLLBACK and [c.name for c in d.checks if not c.passed] == ["error_rate_vs_stable"]


def test_the_over_budget_bucket_is_the_largest_gateway_bucket_within_nginx_canary_budget():
    """Calls slower than it are the ones nginx gave up on (their users got stable's answer)."""
    budget_s = parse_duration(NginxSettings.__dataclass_fields__["canary_read_timeout"].default)
    assert CANARY_BUDGET_LE == max(b for b in DURATION_BUCKETS if b <= budget_s) == 0.25
    assert ReleaseConfig().max_p99_s > budget_s  # why the p99 bound alone misses it
    [spec] = [c for c in RELEASE_CHECKS if c.name == "canary_over_budget_share"]
    assert f"{CANARY_BUDGET_LE * 1000:.0f} ms" in spec.detail and f"{budget_s * 1000:.0f} ms" in spec.detail


def test_one_proportion_z_test_against_a_fixed_bound():
    z, p = one_proportion_z_test(50, 1000, 0.01)
    assert z > 10 and p < 1e-6
    assert one_proportion_z_test(10, 1000, 0.01) == (pytest.approx(0.0), pytest.approx(0.5))
    assert one_proportion_z_test(0, 0, 0.01) == (0.0, 1.0)
    assert one_proportion_z_test(1, 100, 0.0)[1] == 0.0 and one_proportion_z_test(0, 100, 0.0) == (0.0, 1.0)


def test_a_canary_answering_in_300_to_500_ms_is_rolled_back_for_its_over_budget_share():
    """Under the p99 bound (500 ms), all successes, stable as slow: only the budget check sees that
    nginx served stable's fallback to these users."""
    late = VariantMetrics(requests=1000, errors=0, mean_latency_s=0.4, p99_latency_s=0.49, timed_calls=1000,
                          over_budget_calls=900)
    stable = dataclasses.replace(late, requests=4000, timed_calls=4000, over_budget_calls=0)
    d = decide(late, stable, CONFIG, elapsed_s=60)  # 10% into the window: fails fast all the same
    assert d.action == ROLLBACK
    assert [c.name for c in d.checks if c.passed is False] == ["canary_over_budget_share"]
    [check] = [c for c in d.checks if c.name == "canary_over_budget_share"]
    assert "900/1000 = 90.00% (bound 1.00%)" in check.detail and "10% into the window" in check.detail
    assert check.detail in d.reason


def test_a_fast_canary_passes_the_over_budget_share_and_is_promoted():
    few_late = dataclasses.replace(GOOD, over_budget_calls=12)  # 1.2% of 1000: not significantly above 1%
    d = decide(few_late, GOOD, CONFIG, elapsed_s=600)
    assert d.action == PROMOTE
    [check] = [c for c in d.checks if c.name == "canary_over_budget_share"]
    assert check.passed is True and "12/1000 = 1.20% (bound 1.00%)" in check.detail


def test_the_over_budget_share_is_sequential_over_the_window():
    """2.5% late of 1000 (z = (0.025 - 0.01) / 0.00315 = 4.77): significant at the window's last
    look (z >= 1.96), not at a look 1/10 into it (z >= 1.96 / sqrt(0.1) = 6.20), as the watched share."""
    late = dataclasses.replace(GOOD, over_budget_calls=25)
    assert decide(late, GOOD, CONFIG, elapsed_s=60).action == WAIT  # below 6.20 at 10%
    assert decide(late, GOOD, CONFIG, elapsed_s=600).action == ROLLBACK  # above 1.96 at 100%


def test_too_few_timed_canary_calls_leave_the_over_budget_share_pending():
    """Histogram counts below the minimum (here behind the invocation counter): no evidence is
    not "within budget", the release waits, and times out into a rollback."""
    unseen = dataclasses.replace(GOOD, timed_calls=40, over_budget_calls=0)
    d = decide(unseen, GOOD, CONFIG, elapsed_s=600)
    assert d.action == WAIT and "canary_over_budget_share" in d.reason and "40 timed" in d.reason
    [check] = [c for c in d.checks if c.name == "canary_over_budget_share"]
    assert check.pending
    assert decide(unseen, GOOD, CONFIG, elapsed_s=3600).action == ROLLBACK


def test_the_over_budget_check_is_left_out_when_the_histogram_was_not_measured():
    assert "canary_over_budget_share" not in {c.name for c in evaluate_checks(VariantMetrics(requests=1000), GOOD,
                                                                              CONFIG)}


def test_policy_rolls_back_when_the_watched_share_is_significantly_lower():
    quality = {CANARY: QualityCounts(2000, 100), STABLE: QualityCounts(8000, 800)}
    d = decide(GOOD, GOOD, CONFIG, elapsed_s=600, quality=quality)
    assert d.action == ROLLBACK and "watched" in d.reason


def test_online_quality_counts_recommended_movies_watched_within_the_window():
    t = datetime(2026, 1, 1, 12, 0, 0)
    events = [
        RecommendationEvent(t, 5, "h", 200, ("a+2001", "b+2002"), None, 50),  # canary (5 % 100 < 20)
        WatchEvent(t + timedelta(minutes=5), 5, "a+2001", 0),
        WatchEvent(t - timedelta(minutes=5), 5, "b+2002", 0),  # before the recommendation: not counted
        RecommendationEvent(t, 55, "h", 200, ("c+2003",), None, 50),  # stable
        WatchEvent(t + timedelta(hours=3), 55, "c+2003", 0),  # too late
        RecommendationEvent(t, 56, "h", 0, (), "timeout", 800),  # failed call: nothing recommended
    ]
    q = online_quality(events, canary_percent=20, within_s=3600)
    assert q[CANARY] == QualityCounts(2, 1, users=1, watched_sq=1, watched_rec=2, recommended_sq=4)
    assert q[STABLE] == QualityCounts.of_users([(1, 0)])


# -- state machine and actions -------------------------------------------------------------
class FakeNotifier:
    def __init__(self):
        self.sent = []

    def send(self, subject, payload):
        self.sent.append((subject, json.loads(json.dumps(payload))))
        return {"webhook": "sent"}


@pytest.fixture
def world(tmp_path):
    store, registry, versions = two_published_versions(tmp_path, T0)
    deployer = FakeDeployer()
    bootstrap_stable(CONFIG, store, deployer, versions[0], now=T0)
    return store, registry, deployer, versions


def test_first_model_goes_straight_to_stable_on_both_deployments(world):
    _store, registry, deployer, (v1, _) = world
    assert registry.alias_version("stable") == v1
    assert deployer.env == {"recommend": {"MODEL_VERSION": v1}, "recommend-canary": {"MODEL_VERSION": v1}}


def test_starting_a_release_deploys_the_canary_and_sets_the_candidate(world):
    store, registry, deployer, (v1, v2) = world
    release = start_release(CONFIG, store, deployer, v2, now=T0)
    assert deployer.env["recommend-canary"]["MODEL_VERSION"] == v2
    assert deployer.env["recommend"]["MODEL_VERSION"] == v1
    assert registry.alias_version("candidate") == v2
    assert ReleaseStore(store).running().id == release.id and release.stable == v1


def test_only_one_release_runs_at_a_time(world):
    store, _, deployer, (_, v2) = world
    start_release(CONFIG, store, deployer, v2, now=T0)
    with pytest.raises(ReleaseRunningError):
        start_release(CONFIG, store, deployer, v2, now=T0)


def test_a_step_without_a_release_is_idle(world):
    store, _, deployer, _ = world
    result = run_release_step(CONFIG, store, FakePrometheus({}), deployer, FakeNotifier(), now=T0)
    assert result.action == "idle"


def test_a_step_waits_and_records_the_analysis(world):
    store, _, deployer, (_, v2) = world
    start_release(CONFIG, store, deployer, v2, now=T0)
    prom = FakePrometheus({"recommend": GOOD, "recommend-canary": GOOD})
    result = run_release_step(CONFIG, store, prom, deployer, FakeNotifier(), now=T0 + timedelta(seconds=120))
    assert result.action == WAIT
    current = ReleaseStore(store).current()
    assert current.state == "canary" and current.analysis["range"] == "120s"
    assert all("[120s]" in q for q in prom.queries)


def test_a_healthy_canary_is_promoted_with_history_and_notification(world):
    store, registry, deployer, (_v1, v2) = world
    start_release(CONFIG, store, deployer, v2, now=T0)
    notifier = FakeNotifier()
    prom = FakePrometheus({"recommend": GOOD, "recommend-canary": GOOD})
    result = run_release_step(CONFIG, store, prom, deployer, notifier, now=T0 + timedelta(minutes=11))
    assert result.action == PROMOTE
    assert deployer.env["recommend"]["MODEL_VERSION"] == v2
    assert registry.alias_version("stable") == v2 and registry.alias_version("candidate") is None
    [entry] = ReleaseStore(store).history()
    assert entry.state == PROMOTED and entry.actor == "controller"
    assert entry.analysis["metrics"]["canary"]["requests"] == 1000
    assert "gateway_function_invocation_total" in entry.analysis["queries"]["canary"]["requests"]
    subject, payload = notifier.sent[0]
    assert "promoted" in subject and payload["candidate_version"] == v2 and payload["queries"]
    assert entry.notifications == {"webhook": "sent"}


def test_a_failing_canary_is_rolled_back_to_the_stable_version(world):
    store, registry, deployer, (v1, v2) = world
    start_release(CONFIG, store, deployer, v2, now=T0)
    bad = VariantMetrics(requests=500, errors=100, mean_latency_s=0.02, p99_latency_s=0.09)
    prom = FakePrometheus({"recommend": GOOD, "recommend-canary": bad})
    result = run_release_step(CONFIG, store, prom, deployer, FakeNotifier(), now=T0 + timedelta(minutes=2))
    assert result.action == ROLLBACK
    assert deployer.env["recommend-canary"]["MODEL_VERSION"] == v1
    assert registry.alias_version("stable") == v1
    assert ReleaseStore(store).current().state == ROLLED_BACK


def test_a_failed_redeploy_leaves_the_release_running_for_the_next_step(world):
    store, _, deployer, (_, v2) = world
    start_release(CONFIG, store, deployer, v2, now=T0)
    deployer.fail = True
    prom = FakePrometheus({"recommend": GOOD, "recommend-canary": GOOD})
    with pytest.raises(Exception, match="unreachable"):
        run_release_step(CONFIG, store, prom, deployer, FakeNotifier(), now=T0 + timedelta(minutes=11))
    assert ReleaseStore(store).running() is not None
    deployer.fail = False
    assert run_release_step(CONFIG, store, prom, deployer, FakeNotifier(), now=T0 + timedelta(minutes=12)).action == PROMOTE


def test_a_decision_interrupted_by_a_failed_redeploy_is_finished_the_same_way(world):
    store, registry, deployer, (v1, v2) = world
    start_release(CONFIG, store, deployer, v2, now=T0)
    deployer.fail = True
    bad = VariantMetrics(requests=500, errors=100, mean_latency_s=0.02, p99_latency_s=0.09)
    with pytest.raises(Exception, match="unreachable"):
        run_release_step(CONFIG, store, FakePrometheus({"recommend": GOOD, "recommend-canary": bad}), deployer,
                         None, now=T0 + timedelta(minutes=2))
    deployer.fail = False
    # Metrics now look healthy, but the rollback already decided is what gets applied.
    healthy = FakePrometheus({"recommend": GOOD, "recommend-canary": GOOD})
    result = run_release_step(CONFIG, store, healthy, deployer, None, now=T0 + timedelta(minutes=20))
    assert result.action == ROLLBACK and healthy.queries == []
    assert ReleaseStore(store).current().state == ROLLED_BACK
    assert deployer.env["recommend"]["MODEL_VERSION"] == v1 and registry.alias_version("stable") == v1


def test_abort_by_hand_reverts_the_canary_and_records_the_actor(world):
    store, _, deployer, (v1, v2) = world
    start_release(CONFIG, store, deployer, v2, now=T0)
    release = manual_action("abort", CONFIG, store, deployer, FakeNotifier(), actor="admin", now=T0)
    assert release.state == ABORTED and release.actor == "admin"
    assert deployer.env["recommend-canary"]["MODEL_VERSION"] == v1


def test_a_finished_release_cannot_change_again(world):
    store, _, deployer, (_, v2) = world
    start_release(CONFIG, store, deployer, v2, now=T0)
    manual_action("rollback", CONFIG, store, deployer, None, now=T0)
    with pytest.raises(InvalidTransition, match="no release is running"):
        manual_action("promote", CONFIG, store, deployer, None, now=T0)
    release = ReleaseStore(store).current()
    with pytest.raises(InvalidTransition, match="already rolled_back"):
        release.finish(PROMOTED, "x", "y", T0)


def test_release_errors_are_conflicts_and_an_unknown_action_is_rejected(world):
    store, _, deployer, _ = world
    for cls in (ReleaseError, InvalidTransition, ReleaseRunningError):
        assert issubclass(cls, Conflict) and http_status(cls("x")) == 409
    with pytest.raises(Rejected, match="unknown action 'deploy'"):
        manual_action("deploy", CONFIG, store, deployer, None, now=T0)


def test_status_shows_aliases_and_history(world):
    store, _, deployer, (_v1, v2) = world
    start_release(CONFIG, store, deployer, v2, now=T0)
    assert status(store)["running"] is True
    manual_action("promote", CONFIG, store, deployer, None, now=T0)
    s = status(store)
    assert s["running"] is False and s["aliases"] == {"stable": v2, "candidate": None}
    assert s["history"][0]["state"] == PROMOTED
