"""The operator's day for releases: `python -m scripts.release status` prints one screen for a
person (state, versions, whole request and error counts per variant, each check with value vs
bound, time left in the window, recent events, the lease) and `--json` the function's JSON; a drill
while a canary runs fails at once saying how to get out. Rendering from the controller's real
status record here; the command against the running stack is in test_release_cli.py."""
from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from movierec.registry import Registry
from movierec.release import (
    ReleaseConfig,
    VariantMetrics,
    acquire_lease,
    bootstrap_stable,
    run_release_step,
    start_release,
    status,
)
from scripts.release import CommandError, refuse_while_busy, render_status
from tests.release_fakes import (
    GOOD,
    DriftingDeployer,
    FakePrometheus,
    started_release,
    two_published_versions,
)

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 28, 1, 0, 0, tzinfo=UTC)
CONFIG = ReleaseConfig(window_s=600, min_requests=100, timeout_s=3600)


class ExtrapolatingPrometheus(FakePrometheus):
    """Counts as `increase()` answers them: fractions (extrapolated to the range's edges)."""

    def query_value(self, promql, at=None):
        value = super().query_value(promql, at)
        requests = value is not None and "increase(" in promql and "5.." not in promql and 'le="' not in promql
        return value + 0.571 if requests else value


@pytest.fixture
def drifted(tmp_path):
    """A release whose canary was redeployed to stable mid-way, then re-applied, 2 minutes in."""
    store, _registry, deployer, v1, v2 = started_release(tmp_path, CONFIG, T0)
    deployer.deploy_behind("recommend-canary", "stable")
    canary = VariantMetrics(requests=120, errors=0, mean_latency_s=0.021, p99_latency_s=0.05, timed_calls=120,
                            over_budget_calls=3)
    prometheus = ExtrapolatingPrometheus({"recommend": GOOD, "recommend-canary": canary})
    run_release_step(CONFIG, store, prometheus, deployer, None, now=T0 + timedelta(minutes=5))
    run_release_step(CONFIG, store, prometheus, deployer, None, now=T0 + timedelta(minutes=7))
    return store, v1, v2


def test_the_status_screen_shows_versions_integer_counts_checks_time_left_and_events(drifted):
    store, v1, v2 = drifted
    screen = render_status(status(store), T0 + timedelta(minutes=7, seconds=30))
    assert len(screen.splitlines()) <= 40  # one screen
    assert f"versions  candidate {v2} on the canary, stable {v1}" in screen
    assert "serving   verified since 01:05:00Z (2m30s ago); last checked 01:07:00Z (30s ago)" in screen
    assert "window    01:05:00Z (2m30s ago) -> 01:15:00Z (7m30s from now): 7m30s left" in screen
    assert "counts: increase() over the window, rounded to whole requests" in screen
    assert "  canary         121       0   100.00%    21 ms    50 ms" in screen  # 120.571 -> 121
    assert "  stable        1001       0   100.00%    20 ms    90 ms" in screen
    assert "decision  wait: checks pass; window 120s of 600s" in screen
    assert "ok    success_rate              canary success 1.0000 (floor 0.99)" in screen
    assert "ok    p99_latency               canary p99 50 ms (bound 500 ms)" in screen
    assert "ok    error_rate_vs_stable      canary errors 0/121 vs stable 0/1001" in screen  # whole numbers
    assert ("ok    canary_over_budget_share  canary calls over 250 ms (after 300 ms nginx serves stable's answer) "
            "3/121 = 2.48% (bound 1.00%): z=1.64") in screen  # value vs bound; not yet significant
    assert (f"drift_seen       recommend-canary deployed with MODEL_VERSION=stable ({v1}), answering {v1}, "
            f"expected {v2}") in screen
    assert f"reapplied        recommend-canary redeployed with MODEL_VERSION={v2}" in screen
    assert "window_restarted evidence since 01:00:00Z not counted" in screen
    assert "lease     free (last: step on " in screen


def test_a_pending_check_reads_wait_not_fail(tmp_path):
    store, _registry, deployer, _v1, _v2 = started_release(tmp_path, CONFIG, T0)
    untimed = VariantMetrics(requests=120, errors=0, mean_latency_s=0.021, p99_latency_s=0.05, timed_calls=40,
                             over_budget_calls=0)
    for minutes in (1, 2):  # verified serving on the first step, the window counts from there
        run_release_step(CONFIG, store, FakePrometheus({"recommend": GOOD, "recommend-canary": untimed}), deployer,
                         None, now=T0 + timedelta(minutes=minutes))
    screen = render_status(status(store), T0 + timedelta(minutes=2))
    assert ("wait  canary_over_budget_share  canary calls over 250 ms: 38 timed, too little evidence (at least 100), "
            "waiting") in screen  # 40 less the 2 probes of the step
    assert "FAIL" not in screen


def test_the_json_keeps_every_figure_for_scripts(drifted):
    store, _v1, _v2 = drifted
    found = status(store)
    analysis = found["current"]["analysis"]
    assert analysis["metrics"]["canary"]["requests"] == 121 and isinstance(analysis["metrics"]["canary"]["errors"], int)
    assert analysis["window"] == {"start": "2026-11-28T01:05:00Z", "ends": "2026-11-28T01:15:00Z", "seconds": 600,
                                  "timeout_at": "2026-11-28T02:00:00Z"}
    assert [e["event"] for e in found["current"]["events"]].count("drift_seen") == 1
    assert found["lease"]["released"] is True and found["current"]["serving_since"] == "2026-11-28T01:05:00Z"


def test_no_release_yet_and_a_held_lease_read_as_such(tmp_path):
    store, registry, (v1, v2) = two_published_versions(tmp_path, T0)
    deployer = DriftingDeployer(lambda spec: registry.resolve(spec) if spec else None)
    bootstrap_stable(CONFIG, store, deployer, v1, now=T0)
    assert render_status(status(store), T0).splitlines()[0] == "no release yet"
    start_release(CONFIG, store, deployer, v2, now=T0)
    held = acquire_lease(store, "step", 180, T0 + timedelta(minutes=1), holder="step on host-a pid 7")
    screen = render_status(status(store), T0 + timedelta(minutes=2))
    assert "lease     held by step on host-a pid 7 (token 2) until 01:04:00Z (2m00s from now)" in screen
    held.release()


def test_a_lease_whose_holder_has_exited_reads_free_as_the_next_step_would_take_it(tmp_path):
    """A release replica killed mid-step leaves its lease unexpired; the next step takes it at once
    (movierec.lease: the holder is a process of this machine that no longer exists), so the
    screen says free, naming the pid, and not "held until" its expiry."""
    store, registry, (v1, v2) = two_published_versions(tmp_path, T0)
    deployer = DriftingDeployer(lambda spec: registry.resolve(spec) if spec else None)
    bootstrap_stable(CONFIG, store, deployer, v1, now=T0)
    start_release(CONFIG, store, deployer, v2, now=T0)
    code = ("import os, sys; from datetime import datetime; from movierec.release import acquire_lease; "
            "from movierec.store import LocalDirectoryStore; acquire_lease(LocalDirectoryStore(sys.argv[1]), "
            "'step', 3600, datetime.fromisoformat(sys.argv[2])); print(os.getpid()); os._exit(0)")
    done = subprocess.run([sys.executable, "-c", code, str(store.root), (T0 + timedelta(minutes=1)).isoformat()],
                          check=True, cwd=ROOT, capture_output=True, text=True)
    pid = int(done.stdout.strip())
    found = status(store)
    assert found["lease"]["holder_exited"] is True and found["lease"]["held"] is False
    assert found["lease"]["pid"] == pid and found["lease"]["released"] is False
    screen = render_status(found, T0 + timedelta(minutes=2))  # 58 minutes before its expiry
    assert f"lease     free (its holder, pid {pid}, has exited; last: step on " in screen
    assert "held by" not in screen
    assert acquire_lease(store, "step", 180, T0 + timedelta(minutes=2), holder="next step").token == 3


def test_a_drill_during_a_running_canary_fails_at_once_with_the_way_out(tmp_path):
    store, registry, (v1, v2) = two_published_versions(tmp_path, T0)
    deployer = DriftingDeployer(lambda spec: registry.resolve(spec) if spec else None)
    bootstrap_stable(CONFIG, store, deployer, v1, now=T0)
    refuse_while_busy(store, CONFIG, T0)  # nothing running: the drill may go
    start_release(CONFIG, store, deployer, v2, now=T0)
    with pytest.raises(CommandError) as refused:
        refuse_while_busy(store, CONFIG, T0 + timedelta(minutes=1))
    assert str(refused.value) == (
        f"release r20261128-010000-{v2} of {v2} is running (since 2026-11-28T01:00:00Z): abort the running "
        "release with `python -m scripts.release abort` or wait until 2026-11-28T01:10:00Z (when its analysis "
        "window ends; it ends by 2026-11-28T02:00:00Z at the latest)")
    assert len(Registry(store).versions()) == 2  # nothing registered
