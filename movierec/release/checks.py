"""The release policy: the checks as data, one loop that judges them, and the decision (pure).

Like a Flagger Canary analysis (a list of metrics with threshold ranges), `RELEASE_CHECKS` is a
tuple of named check specs, each one of three kinds, its thresholds named by ReleaseConfig field:
- `Bound`: a canary figure (VariantMetrics) at least (`MIN`) or at most (`MAX`) a config field;
- `NotWorse`: the canary's proportion (errors/requests, watched/recommended) is not
  significantly worse than stable's at `alpha` (one-sided two-proportion z-test); with a
  `minimum` (a config field) it is judged only once both variants have that many trials, and
  until then it is pending (`Check.passed` None): the online-quality check never passes on
  `0/0 vs 0/0`; with a `margin` (a config field) only a drop beyond that relative tolerance fails;
  `unit` USER compares per-user counts (QualityCounts' sums, below), `sequential` judges it against
  a boundary that is honest over the release's many looks (below);
- `RatioToStable`: canary figure / stable figure at most a config field, judged only above a
  floor (a config field) where the figure is coarse;
- `ShareAtMost`: the canary's proportion (over-budget calls / timed calls) not significantly above
  a fixed bound (a config field) at `alpha` (one-sample z-test, `one_proportion_z_test`), pending
  below a `minimum` of trials and, like the watched share, `sequential` over the window's looks.
  `canary_over_budget_share` is the one: nginx waits 300 ms for the canary, then serves stable's
  answer, so a canary answering in 300-500 ms passes the gateway's figures (a success, p99 under
  500 ms) while its users got the fallback; the calls slower than the gateway's 250 ms bucket (the
  largest within that budget, promql.CANARY_BUDGET_LE) are the ones it counts. Simulated over 120
  looks (binomial calls growing steadily): a canary exactly at the 1% bound is rolled back 6.2% of
  the time with 2000 calls in the window (5.5% with 500, 5.0% with 20000: the normal approximation
  of few late calls), one at 0.5% 0.0%, one at 2% 99%. "Not significantly above" promotes a share
  a little over the bound on little evidence, as NotWorse promotes a slightly worse canary.
`evaluate_checks` runs them in order, one `Check` record (name, passed: True | False | None for
"pending, too little evidence", one-line detail) each; a check with nothing to judge (no stable
p99; no online quality asked for) is left out.

`decide` (pure): wait while the canary has fewer than `min_requests` requests in the window (roll
back when the release, counted from its start, times out without them); roll back as soon as any
check fails (fail fast: a bad canary should not keep serving 20% of users for the whole window);
wait while any check is pending (roll back when the release times out with it still pending: too
little evidence never promotes);
promote when every check passes and the window has elapsed.

The online-quality check is looked at on EVERY step (the release function's cron: every minute
on the stack, every 15 s where it is run that often; 120 to 480 looks over a 2 h window), and
rolls back the first time it fails. Testing at `alpha` on each look would roll back an equal
canary far more often than `alpha` (tests/test_release_sequential.py measures it: most releases
of two equal variants). So `watched_share_vs_stable` is sequential, an O'Brien-Fleming-type
boundary: at a look a fraction t = elapsed / window (capped at 1) into the window it fails only
when z >= c / sqrt(t), c = z_(1 - alpha/2) (1.96 at alpha 0.05; at t = 1/12, ten minutes into
2 h, z >= 6.8). Why this one: z sqrt(t) is, under the null and with information growing with
time, a Brownian motion B(t), and the chance that it EVER reaches c on [0, 1] is 2 (1 - Phi(c))
= alpha (the reflection principle; the continuous-monitoring limit of Lan-DeMets' O'Brien-Fleming
spending). Looks at discrete steps can only cross less often, so the bound holds for any number
and spacing of steps: no step count or state between steps is needed, and a rollback stays fast
for a canary that is clearly worse. The price is the final look, at p < alpha/2 instead of
alpha (a Bonferroni split over 480 looks would be p < 0.0001 at every look; a fixed-horizon
decision would give up failing fast). Assumed: information grows about in proportion to time
(steady traffic over the window; a window that starts quiet and ends busy makes early looks a
little laxer than stated: simulated with traffic tripling over the window, 4.5% of equal-variant
releases were rolled back, and 5.75% with traffic growing nine-fold); a window restarted by drift
(drift.py) is a new sequence of looks on new evidence. After the window, the first look that can
judge decides either way (promote or roll back), at t = 1. The check asks "not worse": promoting
an equal canary is right, and promoting a worse one is a miss (power), not an alpha error; the
simulation rolls back 97% of canaries at 0.7x stable's watch-through.
The unit is the user: one user's recommended movies are not independent trials (a user who
watches a lot watches many of them), so each share is a ratio of per-user sums and its variance
the delta method's cluster-robust one, sum_u (x_u - p n_u)^2 / N^2 x G / (G - 1) over the G users
(`per_user_z_test`); the binomial variance of the movies would understate it by the design effect
and roll back equal variants more often still. The error-rate check keeps its binomial test at
`alpha` per look (requests from Prometheus carry no user).

Owns: the specs, the loop, the z-tests (two-sample, margin, per user, one-sample), the sequential boundary (`look_bound`), VariantMetrics,
Check, Decision. Must not touch: where the figures come from (controller.py, promql.py), state,
services.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

from movierec.canary import CANARY, STABLE
from movierec.release.config import ReleaseConfig
from movierec.release.quality import QualityCounts

WAIT = "wait"
PROMOTE = "promote"
ROLLBACK = "rollback"

MIN, MAX = "min", "max"
HIGHER, LOWER = "higher", "lower"  # which way a NotWorse proportion is worse
METRICS, QUALITY = "metrics", "quality"  # where a NotWorse check reads its counts
TRIAL, USER = "trial", "user"  # a NotWorse check's unit: each trial, or each user (QualityCounts)


@dataclass(frozen=True)
class VariantMetrics:
    requests: float = 0.0
    errors: float = 0.0
    mean_latency_s: float | None = None
    p99_latency_s: float | None = None
    timed_calls: float | None = None  # calls the latency histogram observed (None: not measured)
    over_budget_calls: float | None = None  # ... slower than the canary's budget bucket

    @property
    def success_rate(self) -> float | None:
        return None if self.requests <= 0 else 1 - self.errors / self.requests

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "success_rate": self.success_rate}


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool | None  # None: pending, too little evidence to judge yet (the release waits)
    detail: str

    @property
    def pending(self) -> bool:
        return self.passed is None


@dataclass(frozen=True)
class Decision:
    action: str  # wait | promote | rollback
    reason: str
    checks: tuple[Check, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason, "checks": [asdict(c) for c in self.checks]}


def two_proportion_z_test(x1: float, n1: float, x2: float, n2: float) -> tuple[float, float]:
    """One-sided test that proportion 1 (x1/n1) is GREATER than proportion 2 (x2/n2).

    Returns (z, p-value) with the pooled standard error. No evidence either way (an empty
    sample, or both proportions 0 or both 1) gives (0.0, 1.0)."""
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / se
    return z, 0.5 * math.erfc(z / math.sqrt(2))


def margin_z_test(x1: float, n1: float, x2: float, n2: float, scale: float) -> tuple[float, float]:
    """One-sided test that proportion 1 (x1/n1) is GREATER than `scale` x proportion 2 (x2/n2):
    the non-inferiority form with a relative margin (scale 1/(1 - m): "2 is worse than 1 by more
    than m"). Returns (z, p-value) with the unpooled (Wald) standard error of p1 - scale x p2. No
    evidence (an empty sample, or no variance at all) gives (0.0, 1.0)."""
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    p1, p2 = x1 / n1, x2 / n2
    se = math.sqrt(p1 * (1 - p1) / n1 + scale * scale * p2 * (1 - p2) / n2)
    if se == 0:
        return 0.0, 1.0
    z = (p1 - scale * p2) / se
    return z, 0.5 * math.erfc(z / math.sqrt(2))


def _share_variance(counts: QualityCounts) -> float:
    """The cluster-robust (delta method) variance of watched / recommended, the user the unit."""
    units, x2, xn, n2 = counts.per_user()
    n, p = counts.recommended, counts.watched / counts.recommended
    spread = max(x2 - 2 * p * xn + p * p * n2, 0.0)  # sum over users of (x_u - p n_u)^2
    return spread / (n * n) * (units / (units - 1) if units > 1 else 1.0)


def per_user_z_test(first: QualityCounts, second: QualityCounts, scale: float = 1.0) -> tuple[float, float]:
    """One-sided test that `first`'s share watched is GREATER than `scale` x `second`'s, each user
    one unit (see the module's header): (z, p-value). No evidence (an empty variant, no variance
    at all) gives (0.0, 1.0)."""
    if first.recommended <= 0 or second.recommended <= 0:
        return 0.0, 1.0
    se = math.sqrt(_share_variance(first) + scale * scale * _share_variance(second))
    if se == 0:
        return 0.0, 1.0
    z = (first.watched / first.recommended - scale * second.watched / second.recommended) / se
    return z, 0.5 * math.erfc(z / math.sqrt(2))


def one_proportion_z_test(x: float, n: float, bound: float) -> tuple[float, float]:
    """One-sided test that the proportion x/n is GREATER than the fixed `bound`, with the bound's
    own (null) standard error sqrt(b (1 - b) / n): (z, p-value). No evidence (n 0, or a bound of
    1) gives (0.0, 1.0); against a bound of 0 any x > 0 is infinitely significant."""
    if n <= 0 or bound >= 1:
        return 0.0, 1.0
    if bound <= 0:
        return (math.inf, 0.0) if x > 0 else (0.0, 1.0)
    z = (x / n - bound) / math.sqrt(bound * (1 - bound) / n)
    return z, 0.5 * math.erfc(z / math.sqrt(2))


def look_bound(alpha: float, fraction: float) -> float:
    """The z a sequential check must reach to fail at a look `fraction` (0, 1] into its window:
    z_(1 - alpha/2) / sqrt(fraction), so that over all looks of the window it fails an equal
    canary at most `alpha` of the time (the module's header). Infinite at fraction <= 0."""
    if fraction <= 0:
        return math.inf
    return NormalDist().inv_cdf(1 - alpha / 2) / math.sqrt(min(fraction, 1.0))


# -- the kinds of check ----------------------------------------------------------------------------
Quality = Mapping[str, QualityCounts] | None


@dataclass(frozen=True)
class Bound:
    """`figure` of the canary at least (MIN) / at most (MAX) config field `limit`. `detail` gets
    `value` and `limit`, both times `scale`. An unknown figure fails with `unknown` when given,
    else counts as 0."""

    name: str
    figure: str
    kind: str
    limit: str
    detail: str
    scale: float = 1.0
    unknown: str | None = None

    def judge(self, canary: VariantMetrics, stable: VariantMetrics, config: ReleaseConfig,
              quality: Quality, elapsed_s: float | None = None) -> Check | None:
        value = getattr(canary, self.figure)
        if value is None and self.unknown is not None:
            return Check(self.name, False, self.unknown)
        value = value or 0.0
        limit = getattr(config, self.limit)
        passed = value >= limit if self.kind == MIN else value <= limit
        return Check(self.name, passed, self.detail.format(value=_scaled(value, self.scale),
                                                           limit=_scaled(limit, self.scale)))


@dataclass(frozen=True)
class NotWorse:
    """The canary's `counts` proportion (successes, trials) not significantly `worse` (HIGHER or
    LOWER) than stable's at config field `alpha`. Counts come from the variants' metrics or from
    the online quality (the check is left out when no quality was measured). `detail` gets
    canary_x, canary_n, stable_x, stable_n, z, p, alpha and `tolerance` (text, "" without one).

    `minimum` (a config field): a variant with fewer trials makes the check pending (passed None,
    detail `waiting` with the same names and `minimum`): no evidence is not "not worse".
    `unit` USER: the counts are QualityCounts and each user is one unit (`per_user_z_test`; the
    detail also gets canary_units, stable_units, units). `sequential`: it fails only beyond
    `look_bound` at elapsed / window_s (the detail gets `look`); otherwise at p < alpha.
    `margin` (a config field, a relative tolerance m): fails only when the canary is significantly
    worse than stable's proportion x (1 - m) (LOWER) or x (1 + m) (HIGHER), `margin_z_test`; at
    m = 0 it is the pooled `two_proportion_z_test` (unit TRIAL)."""

    name: str
    source: str
    counts: tuple[str, str]
    worse: str
    detail: str
    alpha: str = "alpha"
    minimum: str | None = None
    margin: str | None = None
    unit: str = TRIAL
    sequential: bool = False
    waiting: str = ("too little evidence yet: {canary_n:g} canary and {stable_n:g} stable trials"
                    " (at least {minimum} each)")

    def judge(self, canary: VariantMetrics, stable: VariantMetrics, config: ReleaseConfig,
              quality: Quality, elapsed_s: float | None = None) -> Check | None:
        if self.source == QUALITY:
            if quality is None:
                return None
            c: Any = quality.get(CANARY, QualityCounts())
            s: Any = quality.get(STABLE, QualityCounts())
        else:
            c, s = canary, stable
        x, n = self.counts
        cx, cn, sx, sn = getattr(c, x), getattr(c, n), getattr(s, x), getattr(s, n)
        alpha = getattr(config, self.alpha)
        if self.minimum is not None and min(cn, sn) < getattr(config, self.minimum):
            return Check(self.name, None, self.waiting.format(canary_x=cx, canary_n=cn, stable_x=sx, stable_n=sn,
                                                              minimum=getattr(config, self.minimum), alpha=alpha))
        margin = getattr(config, self.margin) if self.margin is not None else 0.0
        # The tests ask "is proportion 1 greater": put the variant that would be worse first.
        scale = 1.0 if not margin else (1 + margin if self.worse == HIGHER else 1 / (1 - margin))
        first, second = (c, s) if self.worse == HIGHER else (s, c)
        if self.unit == USER:
            z, p = per_user_z_test(first, second, scale)
        elif not margin:
            z, p = two_proportion_z_test(getattr(first, x), getattr(first, n), getattr(second, x), getattr(second, n))
        else:
            z, p = margin_z_test(getattr(first, x), getattr(first, n), getattr(second, x), getattr(second, n), scale)
        tolerance = "" if not margin else f" (tolerating {margin:.0%} {'more' if self.worse == HIGHER else 'fewer'})"
        passed, look = _judged(z, p, alpha, self.sequential, config, elapsed_s)
        units = {}
        if self.unit == USER:
            units = {"canary_units": c.per_user()[0], "stable_units": s.per_user()[0],
                     "units": "users" if c.users or s.users else "trials"}
        return Check(self.name, passed, self.detail.format(canary_x=cx, canary_n=cn, stable_x=sx, stable_n=sn,
                                                           z=z, p=p, alpha=alpha, tolerance=tolerance, look=look,
                                                           **units))


@dataclass(frozen=True)
class RatioToStable:
    """canary `figure` / stable `figure` at most config field `limit`, or passed while the canary
    figure is at most config field `floor`. Left out when either figure is unknown (or stable's
    is 0). `detail` gets `ratio`, `limit` and `floor` (times `scale`)."""

    name: str
    figure: str
    limit: str
    floor: str
    detail: str
    scale: float = 1.0

    def judge(self, canary: VariantMetrics, stable: VariantMetrics, config: ReleaseConfig,
              quality: Quality, elapsed_s: float | None = None) -> Check | None:
        value, base = getattr(canary, self.figure), getattr(stable, self.figure)
        if value is None or not base:
            return None
        ratio, limit, floor = value / base, getattr(config, self.limit), getattr(config, self.floor)
        return Check(self.name, ratio <= limit or value <= floor,
                     self.detail.format(ratio=ratio, limit=limit, floor=_scaled(floor, self.scale)))


@dataclass(frozen=True)
class ShareAtMost:
    """The canary's `counts` proportion (x, n: VariantMetrics fields) not significantly above
    config field `limit` at config field `alpha` (`one_proportion_z_test`). Left out when the
    canary's n was not measured (None). Fewer than config field `minimum` trials: pending (detail
    `waiting`). `sequential`: judged against `look_bound` as NotWorse's are. `detail` gets x, n,
    share, limit, z, p, alpha and look."""

    name: str
    counts: tuple[str, str]
    limit: str
    detail: str
    minimum: str
    alpha: str = "alpha"
    sequential: bool = True
    waiting: str = "too little evidence yet: {n:g} canary trials (at least {minimum})"

    def judge(self, canary: VariantMetrics, stable: VariantMetrics, config: ReleaseConfig,
              quality: Quality, elapsed_s: float | None = None) -> Check | None:
        x, n = (getattr(canary, f) for f in self.counts)
        if n is None:
            return None
        x, limit, alpha, minimum = x or 0.0, getattr(config, self.limit), getattr(config, self.alpha), \
            getattr(config, self.minimum)
        if n < minimum:
            return Check(self.name, None, self.waiting.format(x=x, n=n, minimum=minimum, limit=limit))
        z, p = one_proportion_z_test(x, n, limit)
        passed, look = _judged(z, p, alpha, self.sequential, config, elapsed_s)
        return Check(self.name, passed, self.detail.format(x=x, n=n, share=x / n if n else 0.0, limit=limit,
                                                           z=z, p=p, alpha=alpha, look=look))


def _judged(z: float, p: float, alpha: float, sequential: bool, config: ReleaseConfig,
            elapsed_s: float | None) -> tuple[bool, str]:
    """(passed, look text): at p >= alpha; or, `sequential`, below `look_bound` at elapsed /
    window_s (None: the whole window), the text saying where that look is."""
    if not sequential:
        return p >= alpha, ""
    fraction = 1.0 if elapsed_s is None else min(max(elapsed_s, 0.0) / config.window_s, 1.0)
    bound = look_bound(alpha, fraction)
    return z < bound, (f"; fails at z >= {bound:.2f} (p < {0.5 * math.erfc(bound / math.sqrt(2)):.2g}) "
                       f"{fraction:.0%} into the window (alpha {alpha} over all looks)")


CheckSpec = Bound | NotWorse | RatioToStable | ShareAtMost


def _scaled(value: float, scale: float) -> float:
    return value if scale == 1 else value * scale  # unscaled values print as configured

RELEASE_CHECKS: tuple[CheckSpec, ...] = (
    Bound("success_rate", figure="success_rate", kind=MIN, limit="min_success_rate",
          detail="canary success {value:.4f} (floor {limit})"),
    Bound("p99_latency", figure="p99_latency_s", kind=MAX, limit="max_p99_s", scale=1000,
          detail="canary p99 {value:.0f} ms (bound {limit:.0f} ms)",
          unknown="canary p99 latency unknown (no histogram samples)"),
    NotWorse("error_rate_vs_stable", source=METRICS, counts=("errors", "requests"), worse=HIGHER,
             detail="canary errors {canary_x:g}/{canary_n:g} vs stable {stable_x:g}/{stable_n:g}:"
                    " z={z:.2f} p={p:.4f} (alpha {alpha})"),
    RatioToStable("p99_vs_stable", figure="p99_latency_s", limit="max_p99_ratio", floor="p99_ratio_floor_s",
                  scale=1000, detail="p99 ratio to stable {ratio:.2f} (bound {limit}, judged above {floor:.0f} ms)"),
    ShareAtMost("canary_over_budget_share", counts=("over_budget_calls", "timed_calls"), limit="max_over_budget_share",
                minimum="min_requests",
                detail="canary calls over 250 ms (after 300 ms nginx serves stable's answer)"
                       " {x:g}/{n:g} = {share:.2%} (bound {limit:.2%}): z={z:.2f} p={p:.4f}{look}",
                waiting="canary calls over 250 ms: {n:g} timed, too little evidence (at least {minimum}), waiting"),
    NotWorse("watched_share_vs_stable", source=QUALITY, counts=("watched", "recommended"), worse=LOWER,
             detail="watched canary {canary_x}/{canary_n} vs stable {stable_x}/{stable_n}"
                    " ({canary_units} and {stable_units} {units}): z={z:.2f} p={p:.4f}{look}{tolerance}",
             minimum="min_recommended", margin="quality_margin", unit=USER, sequential=True,
             waiting="watched canary {canary_x}/{canary_n} vs stable {stable_x}/{stable_n}: too little evidence"
                     " (at least {minimum} recommended per variant), waiting"),
)


def evaluate_checks(
    canary: VariantMetrics,
    stable: VariantMetrics,
    config: ReleaseConfig,
    quality: Quality = None,
    checks: tuple[CheckSpec, ...] = RELEASE_CHECKS,
    elapsed_s: float | None = None,
) -> list[Check]:
    """Every spec of `checks` judged in order; the ones with nothing to judge are left out.
    `elapsed_s`: how far into the window this look is (sequential checks; None: the whole window)."""
    results = []
    for spec in checks:
        check = spec.judge(canary, stable, config, quality, elapsed_s)
        if check is not None:
            results.append(check)
    return results


def decide(
    canary: VariantMetrics,
    stable: VariantMetrics,
    config: ReleaseConfig,
    elapsed_s: float,
    quality: Quality = None,
    release_age_s: float | None = None,
) -> Decision:
    """`elapsed_s`: the analysis window so far; `release_age_s`: since the release started (what
    the timeout counts; `elapsed_s` when not given)."""
    age_s = elapsed_s if release_age_s is None else release_age_s
    if canary.requests < config.min_requests:
        if age_s >= config.timeout_s:
            return Decision(
                ROLLBACK,
                f"timed out after {age_s:.0f}s with {canary.requests:g} canary requests"
                f" (< {config.min_requests}): not enough evidence to promote",
            )
        return Decision(WAIT, f"{canary.requests:g} of {config.min_requests} canary requests so far")
    checks = tuple(evaluate_checks(canary, stable, config, quality, elapsed_s=elapsed_s))
    failed = [c for c in checks if c.passed is False]
    if failed:
        return Decision(ROLLBACK, "; ".join(c.detail for c in failed), checks)
    pending = [c for c in checks if c.pending]
    if pending:
        detail = "; ".join(f"{c.name}: {c.detail}" for c in pending)
        if elapsed_s >= config.timeout_s:
            return Decision(ROLLBACK, f"timed out after {elapsed_s:.0f}s: not enough evidence to promote ({detail})",
                            checks)
        return Decision(WAIT, detail, checks)
    if elapsed_s < config.window_s:
        return Decision(WAIT, f"checks pass; window {elapsed_s:.0f}s of {config.window_s:.0f}s", checks)
    return Decision(PROMOTE, "all checks pass over the full window", checks)
