"""The online-quality check stays honest over a release's many looks (checks.py's header).

A simulation with a fixed seed: many releases of a canary (20% of the users) against stable,
each looked at by the real policy (`decide`, with the default ReleaseConfig: a 2 h window,
alpha 0.05, 1000 recommended movies per variant before it judges) every LOOK_S seconds, as the
release step would, until it decides (the first rollback, or the promotion at the window's end).
The users are unlike each other, as real ones are: each has their own appetite for recommended
movies (watch-through drawn from a Beta distribution) and their own rate of asking for
recommendations, so one user's recommended movies are correlated trials.

- Under the null (both variants the same), with steady traffic and with traffic tripling over the
  window, the share of releases rolled back stays at or below alpha plus three binomial standard
  errors; the rule the check used before (a binomial z-test
  of the movies at alpha on every look) rolls most of the same releases back, so the world is one
  where the difference shows.
- A real difference is still found: a canary whose users watch 0.7 x as much (the worse ranker of
  tests/test_release_online_quality.py kept 55-70% of stable's watch-through) is rolled back, and
  one whose users watch 1.5 x as much (its better ranker) is promoted, in nearly every release.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from movierec.canary import CANARY, STABLE
from movierec.release import PROMOTE, ROLLBACK, QualityCounts, ReleaseConfig, VariantMetrics, decide

CONFIG = ReleaseConfig(online_quality=True)  # the defaults: window 2 h, alpha 0.05, 1000 per variant
LOOK_S = 15.0  # the release step at its most frequent (the stack's cron runs it every minute: fewer looks)
LOOKS = int(CONFIG.window_s // LOOK_S)  # 480 looks; the last, at the window's end, decides either way
USERS, SLOTS = 1000, 10  # users per release (20% of them see the canary), movies per answer
MEAN_WATCH, SPREAD = 0.1, 9.0  # a user's watch-through ~ Beta(mean x SPREAD, (1 - mean) x SPREAD)
REQUESTS_PER_USER = 12.0  # a user's mean recommendation calls over the window (each user's own rate)
HEALTHY = VariantMetrics(requests=5000, errors=0, mean_latency_s=0.02, p99_latency_s=0.05)


def simulate(releases: int, canary_lift: float, seed: int, ramp: float = 0.0) -> dict[str, float]:
    """`releases` simulated releases whose canary users watch `canary_lift` x what stable's do;
    `ramp`: the traffic grows linearly over the window from 1 - ramp/2 to 1 + ramp/2 x its mean.
    Returns the shares of releases the policy rolled back and promoted, and the share the old rule
    (movies as trials, p < alpha on any look) would have rolled back."""
    rng = np.random.default_rng(seed)
    canary = np.zeros((releases, USERS), dtype=bool)
    canary[:, : USERS // 5] = True
    propensity = rng.beta(MEAN_WATCH * SPREAD, (1 - MEAN_WATCH) * SPREAD, size=(releases, USERS))
    propensity = np.where(canary, np.minimum(propensity * canary_lift, 1.0), propensity)
    rate = rng.gamma(2.0, REQUESTS_PER_USER / 2.0, size=(releases, USERS)) * (LOOK_S / CONFIG.window_s)
    n = np.zeros((releases, USERS), dtype=np.int64)  # per user: recommended so far
    x = np.zeros((releases, USERS), dtype=np.int64)  # ... and watched
    outcome = np.full(releases, "", dtype=object)
    old_rollback = np.zeros(releases, dtype=bool)
    z_alpha = 1.6448536269514722  # one-sided alpha 0.05, the old rule's bound on every look
    for look in range(1, LOOKS + 1):
        calls = rng.poisson(rate * (1 - ramp / 2 + ramp * (look - 0.5) / LOOKS))
        recommended = calls * SLOTS
        n += recommended
        x += rng.binomial(recommended, propensity)
        counts = {}
        for variant, mask in ((CANARY, canary), (STABLE, ~canary)):
            nv, xv = np.where(mask, n, 0), np.where(mask, x, 0)
            counts[variant] = (nv.sum(1), xv.sum(1), (nv > 0).sum(1), (xv * xv).sum(1), (xv * nv).sum(1),
                               (nv * nv).sum(1))
        (cn, cx, *_), (sn, sx, *_) = counts[CANARY], counts[STABLE]
        pooled = (cx + sx) / np.maximum(cn + sn, 1)
        se = np.sqrt(pooled * (1 - pooled) * (1 / np.maximum(cn, 1) + 1 / np.maximum(sn, 1)))
        judged = (np.minimum(cn, sn) >= CONFIG.min_recommended) & (se > 0)
        old_z = np.where(judged, (sx / np.maximum(sn, 1) - cx / np.maximum(cn, 1)) / np.where(se > 0, se, 1), 0)
        old_rollback |= judged & (old_z >= z_alpha)
        for r in np.flatnonzero(outcome == ""):
            quality = {v: QualityCounts(*(int(a[r]) for a in counts[v])) for v in (CANARY, STABLE)}
            decision = decide(HEALTHY, HEALTHY, CONFIG, elapsed_s=look * LOOK_S, quality=quality)
            if decision.action in (PROMOTE, ROLLBACK):
                outcome[r] = decision.action
    assert (outcome != "").all()  # every release was decided within the window
    return {"rollback": float(np.mean(outcome == ROLLBACK)), "promote": float(np.mean(outcome == PROMOTE)),
            "old_rollback": float(old_rollback.mean())}


@pytest.mark.parametrize("ramp", [0.0, 1.0], ids=["steady traffic", "traffic tripling over the window"])
def test_two_equal_variants_are_rolled_back_at_most_alpha_of_the_time_over_all_looks(ramp, capsys):
    """The boundary assumes information grows with time; traffic that triples over the window
    (0.5x to 1.5x its mean: looks early in it see less than their share) stays within it too."""
    releases = 400
    found = simulate(releases, canary_lift=1.0, seed=20261202, ramp=ramp)
    margin = 3 * math.sqrt(CONFIG.alpha * (1 - CONFIG.alpha) / releases)
    with capsys.disabled():
        print(f"\nnull (ramp {ramp}), {releases} releases x {LOOKS} looks: rolled back {found['rollback']:.3f} "
              f"(bound alpha {CONFIG.alpha} + {margin:.3f}); the old rule (movies, p < alpha on every look) "
              f"{found['old_rollback']:.3f}")
    assert found["rollback"] <= CONFIG.alpha + margin
    assert found["rollback"] + found["promote"] == 1.0
    assert found["old_rollback"] > 3 * CONFIG.alpha  # the world where repeated looks and correlation show


def test_a_clearly_worse_canary_is_still_rolled_back_and_a_clearly_better_one_promoted(capsys):
    worse = simulate(100, canary_lift=0.7, seed=11)
    better = simulate(100, canary_lift=1.5, seed=12)
    with capsys.disabled():
        print(f"\n0.7x watch-through: rolled back {worse['rollback']:.2f}; 1.5x: promoted {better['promote']:.2f}")
    assert worse["rollback"] >= 0.9
    assert better["promote"] >= 0.99
