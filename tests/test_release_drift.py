"""The release record is the desired state (movierec.release.drift): each step reads what the two
variants are deployed with and answer with, re-applies drift, restarts the analysis window, and
records all of it; a promotion counts only evidence gathered while the candidate was serving.

In-process fakes here (a deployer whose deployments can be changed behind the controller's back,
and a Prometheus answering fixed figures); the same story against the real local gateway, a real
`faas-cli deploy`-shaped PUT and a real Prometheus is tests/test_release_drift_localfaas.py."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from movierec.release import (
    PROMOTE,
    PROMOTED,
    ROLLBACK,
    ROLLED_BACK,
    WAIT,
    ReleaseConfig,
    ReleaseStore,
    VariantMetrics,
    bootstrap_stable,
    run_release_step,
    start_release,
)
from tests.release_fakes import (
    GOOD,
    DriftingDeployer,
    FakePrometheus,
    started_release,
    two_published_versions,
)

T0 = datetime(2026, 11, 28, 1, 0, 0, tzinfo=UTC)
CONFIG = ReleaseConfig(window_s=600, min_requests=100, timeout_s=3600)
FAILING = VariantMetrics(requests=500, errors=500, mean_latency_s=0.02, p99_latency_s=0.05)  # a drill: 100% 5xx


@pytest.fixture
def release(tmp_path):
    """A running release of the candidate (v2) against stable (v1), started at T0 and verified."""
    store, registry, deployer, v1, v2 = started_release(tmp_path, CONFIG, T0)
    deployer.puts.clear()
    return store, registry, deployer, v1, v2


def step(store, deployer, at, canary=GOOD, stable=GOOD):
    prometheus = FakePrometheus({"recommend": stable, "recommend-canary": canary})
    return run_release_step(CONFIG, store, prometheus, deployer, None, now=at), prometheus


def events(store, kind=None):
    current = ReleaseStore(store).current()
    return [e for e in current.events if kind is None or e["event"] == kind]


def test_a_started_release_is_verified_serving_and_its_window_starts_then(release):
    store, _registry, _deployer, v1, v2 = release
    current = ReleaseStore(store).running()
    assert current.serving_since == current.started == "2026-11-28T01:00:00Z"
    [verified] = events(store)
    assert verified == {"at": "2026-11-28T01:00:00Z", "event": "serving_verified", "canary": v2, "stable": v1}


def test_a_faas_cli_redeploy_of_the_canary_is_seen_reapplied_and_restarts_the_window(release):
    store, _registry, deployer, v1, v2 = release
    assert step(store, deployer, T0 + timedelta(minutes=4))[0].action == WAIT
    deployer.deploy_behind("recommend-canary", "stable")  # stack.yml's ${CANARY_MODEL_VERSION:-stable}
    # Eleven minutes in, the canary's figures are stable's and healthy: the old controller promoted here.
    result, prometheus = step(store, deployer, T0 + timedelta(minutes=11))
    assert result.action == WAIT and "drift seen after the measurement: not counted" in result.reason
    assert deployer.puts == [("recommend-canary", v2)]  # the candidate re-applied, nothing else
    [drift] = events(store, "drift_seen")
    assert drift["function"] == "recommend-canary" and drift["deployed"] == "stable"
    assert drift["resolved"] == v1 and drift["served"] == [v1] and drift["expected"] == v2
    [restart] = events(store, "window_restarted")
    assert restart["evidence_from"] == "2026-11-28T01:00:00Z" and "MODEL_VERSION=stable" in restart["reason"]
    assert [e["event"] for e in events(store)][-4:] == ["drift_seen", "reapplied", "window_restarted",
                                                          "serving_verified"]
    current = ReleaseStore(store).running()
    assert current.serving_since == "2026-11-28T01:11:00Z"  # the window starts again, after the re-apply
    assert current.analysis["window"]["ends"] == "2026-11-28T01:21:00Z" and current.analysis["metrics"] is None
    # What was measured would have promoted: it is kept, marked as not counted.
    discarded = current.analysis["discarded"]
    assert discarded["decision"]["action"] == PROMOTE and discarded["range"] == "600s"
    assert all("[600s]" in q for q in prometheus.queries)
    # The minimum sample and the whole window are needed again before a promotion.
    assert step(store, deployer, T0 + timedelta(minutes=12))[1].queries[0].endswith("[60s]))")
    assert step(store, deployer, T0 + timedelta(minutes=20))[0].action == WAIT
    assert step(store, deployer, T0 + timedelta(minutes=21))[0].action == PROMOTE


def test_a_drill_whose_canary_was_redeployed_to_stable_is_rolled_back_never_promoted(release):
    store, registry, deployer, v1, _v2 = release
    deployer.deploy_behind("recommend-canary", "stable")
    # Stable's healthy figures on the canary, past the window: not evidence for the drill.
    first, _ = step(store, deployer, T0 + timedelta(minutes=11), canary=GOOD)
    assert first.action == WAIT
    # Once the drill serves again its 5xx are seen in the new window: rolled back.
    second, _ = step(store, deployer, T0 + timedelta(minutes=12), canary=FAILING)
    assert second.action == ROLLBACK and "canary success 0.0000" in second.reason
    assert registry.alias_version("stable") == v1 and deployer.env["recommend"]["MODEL_VERSION"] == v1
    [entry] = ReleaseStore(store).history()
    assert entry.state == ROLLED_BACK and [e["event"] for e in entry.events].count("drift_seen") == 1


def test_a_drifted_stable_variant_is_reapplied_too_the_baseline_must_be_the_stable_version(release):
    store, _registry, deployer, v1, v2 = release
    deployer.deploy_behind("recommend", v2)  # someone pinned recommend to the candidate by hand
    result, _ = step(store, deployer, T0 + timedelta(minutes=11))
    assert result.action == WAIT and deployer.puts == [("recommend", v1)]
    [drift] = events(store, "drift_seen")
    assert drift["function"] == "recommend" and drift["deployed"] == v2 and drift["expected"] == v1


def test_a_canary_deployed_right_but_answering_another_version_is_drift(release):
    store, _registry, deployer, v1, v2 = release
    deployer.answers["recommend-canary"] = v1  # an old replica still answering after a rollout
    result, _ = step(store, deployer, T0 + timedelta(minutes=11))
    assert result.action == WAIT
    [drift] = events(store, "drift_seen")
    assert drift["deployed"] == v2 and drift["served"] == [v1]
    assert deployer.puts == [("recommend-canary", v2)]


def test_a_probe_that_cannot_tell_neither_verifies_nor_restarts_and_can_only_roll_back(release):
    store, _registry, deployer, _v1, _v2 = release
    deployer.answers["recommend-canary"] = None  # "no model" from its health
    result, _ = step(store, deployer, T0 + timedelta(minutes=11))  # healthy figures past the window
    assert result.action == WAIT and "not verified serving" in result.reason
    assert deployer.puts == [] and events(store, "window_restarted") == []
    assert len(events(store, "unverified")) == 1
    current = ReleaseStore(store).running()
    assert current.serving_since == "2026-11-28T01:00:00Z" and current.analysis["metrics"] is None
    assert current.analysis["discarded"]["decision"]["action"] == PROMOTE  # never on unverified evidence
    step(store, deployer, T0 + timedelta(minutes=12))
    assert len(events(store, "unverified")) == 1  # recorded once per stretch, not every step
    # A canary deployed with the candidate that fails is rolled back even while it cannot be verified.
    result, _ = step(store, deployer, T0 + timedelta(minutes=13), canary=FAILING)
    assert result.action == ROLLBACK and "canary success 0.0000" in result.reason


def test_a_candidate_never_verified_serving_is_still_rolled_back_on_its_errors(tmp_path):
    store, registry, (v1, v2) = two_published_versions(tmp_path, T0)
    deployer = DriftingDeployer(lambda spec: registry.resolve(spec) if spec else None)
    bootstrap_stable(CONFIG, store, deployer, v1, now=T0)
    deployer.never_loads.add("recommend-canary")  # the candidate never loads: health says "no model"
    start_release(CONFIG, store, deployer, v2, now=T0)
    assert ReleaseStore(store).running().serving_since is None
    result, prometheus = step(store, deployer, T0 + timedelta(minutes=11), canary=GOOD)
    assert result.action == WAIT and all("[600s]" in q for q in prometheus.queries)
    result, _ = step(store, deployer, T0 + timedelta(minutes=12), canary=FAILING)
    assert result.action == ROLLBACK


def test_the_timeout_counts_from_the_start_even_while_the_window_restarts(release):
    store, _registry, deployer, _v1, _v2 = release
    few = VariantMetrics(requests=10)
    for minutes in (10, 30, 50):  # drift every time: the window never gathers its sample
        deployer.deploy_behind("recommend-canary", "stable")
        assert step(store, deployer, T0 + timedelta(minutes=minutes), canary=few)[0].action == WAIT
    result, _ = step(store, deployer, T0 + timedelta(minutes=61), canary=few)
    assert result.action == ROLLBACK and "timed out after 3660s" in result.reason
    assert len([e for e in ReleaseStore(store).history()[0].events if e["event"] == "window_restarted"]) == 3


def test_a_drift_during_the_measurement_discards_it_and_stops_the_promotion(release):
    store, _registry, deployer, _v1, v2 = release

    class RedeployedWhileMeasuring(FakePrometheus):
        def query_value(self, promql, at=None):
            if not self.queries:  # faas-cli deploy lands while the step reads the metrics
                deployer.deploy_behind("recommend-canary", "stable")
            return super().query_value(promql, at)

    prometheus = RedeployedWhileMeasuring({"recommend": GOOD, "recommend-canary": GOOD})
    result = run_release_step(CONFIG, store, prometheus, deployer, None, now=T0 + timedelta(minutes=11))
    assert result.action == WAIT and "drift seen after the measurement" in result.reason
    assert ReleaseStore(store).running().state != PROMOTED
    assert deployer.puts == [("recommend-canary", v2)] and len(events(store, "drift_seen")) == 1


def test_the_controllers_own_probes_are_not_evidence(release):
    """A canary nobody calls: the gateway counts only the controller's health probes (200s)."""
    store, _registry, deployer, _v1, _v2 = release
    probed = VariantMetrics(requests=0, errors=0, mean_latency_s=0.001, p99_latency_s=0.005, timed_calls=0,
                            over_budget_calls=0)

    class CountingProbes(FakePrometheus):
        def query_value(self, promql, at=None):
            value = super().query_value(promql, at)
            if "increase(" in promql and "5.." not in promql and 'le="' not in promql \
                    and "recommend-canary." in promql:  # the calls counted and timed, all fast
                return value + 2 * self.rounds  # every earlier probe round's 2 answered probes
            return value

    for minutes in range(1, 10):
        prometheus = CountingProbes({"recommend": GOOD, "recommend-canary": probed})
        prometheus.rounds = minutes - 1  # one round per earlier step is inside (T0, now]
        result = run_release_step(CONFIG, store, prometheus, deployer, None, now=T0 + timedelta(minutes=minutes))
        assert result.action == WAIT and result.reason == "0 of 100 canary requests so far", result.reason
    analysis = ReleaseStore(store).running().analysis
    assert analysis["metrics"]["canary"]["requests"] == 0 and analysis["probes_subtracted"]["canary"] == 16
    assert analysis["metrics"]["canary"]["timed_calls"] == 0  # the probes are not timed evidence either


def test_no_range_shorter_than_two_scrape_intervals_is_measured(release):
    """increase()/rate() over less than two scrape intervals (RELEASE_SCRAPE_INTERVAL, 15 s: 30 s)
    hold fewer than two samples: a step that early waits without asking Prometheus; the next one,
    30 s in, measures over 30 s and judges (here: a failing canary, rolled back)."""
    store, _registry, deployer, _v1, _v2 = release
    early, asked = step(store, deployer, T0 + timedelta(seconds=29), canary=FAILING)
    assert early.action == WAIT and asked.queries == []
    assert "shorter than two scrape intervals (30s): nothing measured yet" in early.reason
    judged, asked = step(store, deployer, T0 + timedelta(seconds=30), canary=FAILING)
    assert judged.action == ROLLBACK and asked.queries and all("[30s]" in q for q in asked.queries)
