"""The analysis of a running release: its window, the figures measured over it, the decision.

- The window (`window_of`) runs from max(started, serving_since): from when the canary was last
  verified serving the candidate (drift.py), never before the release started, for `window_s`;
  the release times out `timeout_s` after it started.
- `measure`: per variant (the `recommend` and `recommend-canary` functions), from the OpenFaaS
  gateway metrics in Prometheus over the window so far, capped at its length: request count, 5xx
  count, mean latency, p99 latency, and the calls the latency histogram timed and those slower than
  the canary's budget bucket (promql.py's templates). The counts are `increase()` over
  the range, which extrapolates to the range's edges (2.571 of 20.569 requests): they are ROUNDED
  to whole requests here (COUNTS says so wherever they are shown), so the evidence, the checks and
  the operator's screen all show the same integers; the controller's own health probes in the
  range (drift.py keeps them) are subtracted, so they never count as evidence.
- No range shorter than two scrape intervals (RELEASE_SCRAPE_INTERVAL) is measured: over it
  increase()/rate() hold fewer than two samples (empty, or one interval extrapolated to the range),
  so until the evidence is that old the step waits without querying (`not_counted`).
- `analyse`: measure from `evidence_start` and decide (checks.py's `decide`), recording
  `release.analysis` (window, range, figures, queries, decision). Before the canary is verified
  serving the candidate, the range starts when the release's versions were last applied and its
  decision can only be a rollback (a candidate that never loads must not serve 20% of users until
  the timeout; a promotion needs the window). `not_counted`: a measurement that does not count
  (drift seen after it, or not verified and not a rollback) waits, its figures kept under
  "discarded"; only the timeout, counted from the start, still rolls back.

Owns: `measure`, `window_of`, `evidence_start`, `analyse`, `not_counted`, COUNTS. Must not touch: the lease, deployments or state
writes (controller.py), the policy (checks.py), service clients (the MetricsSource is injected).
"""
from __future__ import annotations

import math
from dataclasses import asdict, replace
from datetime import datetime, timedelta
from typing import Any

from movierec.canary import CANARY, STABLE
from movierec.ports import MetricsSource
from movierec.registry import iso
from movierec.release.checks import WAIT, Decision, VariantMetrics, decide
from movierec.release.config import ReleaseConfig
from movierec.release.drift import probes_between
from movierec.release.promql import prom_range, variant_queries
from movierec.release.quality import QualitySource
from movierec.release.state import Release, parse_iso

COUNTS = "increase() over the window, rounded to whole requests, less the controller's own probes"


def measure(
    prometheus: MetricsSource, config: ReleaseConfig, range_s: float, at: datetime
) -> tuple[dict[str, VariantMetrics], dict[str, dict[str, str]]]:
    """Metrics and the queries that produced them, for both variants (counts: see COUNTS)."""
    metrics, queries = {}, {}
    for variant, function in ((CANARY, config.canary_function), (STABLE, config.stable_function)):
        q = variant_queries(function, config.namespace, range_s, config.gateway_job)
        values = {name: prometheus.query_value(promql, at.timestamp()) for name, promql in q.items()}
        metrics[variant] = VariantMetrics(
            requests=round(values["requests"] or 0.0),
            errors=round(values["errors"] or 0.0),
            mean_latency_s=_finite(values["mean_latency_s"]),
            p99_latency_s=_finite(values["p99_latency_s"]),
            timed_calls=_count(values["timed_calls"]),
            over_budget_calls=_count(values["over_budget_calls"]),
        )
        queries[variant] = q
    return metrics, queries


def _count(value: float | None) -> int | None:
    """A histogram count rounded like the requests (COUNTS); None while it has no series."""
    value = _finite(value)
    return None if value is None else max(round(value), 0)


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) or math.isnan(value) else value


def window_of(release: Release, config: ReleaseConfig) -> dict[str, Any]:
    """Where the analysis window of `release` starts and ends (None: not started, the canary is
    not verified serving the candidate), its length, and when the release times out."""
    started = parse_iso(release.started)
    start = max(started, parse_iso(release.serving_since)) if release.serving_since else None
    return {
        "start": iso(start) if start else None,
        "ends": iso(start + timedelta(seconds=config.window_s)) if start else None,
        "seconds": config.window_s,
        "timeout_at": iso(started + timedelta(seconds=config.timeout_s)),
    }


def evidence_start(release: Release, config: ReleaseConfig) -> tuple[datetime, bool]:
    """Where this step's measurement starts, and whether it can count in full: the window's start
    when the canary was verified serving the candidate (True); else the latest time the release's
    versions were applied (its start, or the latest re-apply), which can only ever roll back (False)."""
    window = window_of(release, config)
    if window["start"] is not None:
        return parse_iso(window["start"]), True
    applied = [parse_iso(e["at"]) for e in release.events if e.get("event") == "reapplied"]
    return max([parse_iso(release.started), *applied]), False


def analyse(config: ReleaseConfig, release: Release, prometheus: MetricsSource, at: datetime,
            quality_source: QualitySource | None = None) -> Decision:
    """Measure from `evidence_start` to `at` and decide, recording `release.analysis` (the
    controller then keeps the decision or only a rollback of it, as the verification allows).
    The controller's own probes inside the range are subtracted (`probes_subtracted`)."""
    start, full = evidence_start(release, config)
    elapsed = max((at - start).total_seconds(), 0.0)
    shortest = min(2 * config.scrape_interval_s, config.window_s)
    if elapsed < shortest:  # increase()/rate() need two samples in the range: nothing to measure yet
        return not_counted(config, release, at, (
            f"the evidence is {elapsed:.0f}s old, shorter than two scrape intervals ({shortest:g}s): "
            "nothing measured yet"))
    range_s = min(max(elapsed, 1.0), config.window_s)
    metrics, queries = measure(prometheus, config, range_s, at)
    own = probes_between(release, at - timedelta(seconds=range_s), at)
    metrics = {v: _less(m, own[v]) for v, m in metrics.items()}
    quality = quality_source(start, at) if quality_source is not None else None
    decision = decide(metrics[CANARY], metrics[STABLE], config, elapsed, quality,
                      release_age_s=(at - parse_iso(release.started)).total_seconds())
    release.analysis = {
        "at": iso(at),
        "range": prom_range(range_s),
        "window": window_of(release, config),
        "evidence": "window" if full else "rollback only (the canary was not verified serving the candidate)",
        "counts": COUNTS,
        "probes_subtracted": own,
        "metrics": {v: m.as_dict() for v, m in metrics.items()},
        "queries": queries,
        "decision": decision.as_dict(),
        **({"quality": {v: asdict(q) for v, q in quality.items()}} if quality else {}),
    }
    return decision


def _less(m: VariantMetrics, probes: int) -> VariantMetrics:
    """`m` without `probes` successful calls (the controller's own). They leave the timed calls
    too; a probe slower than the budget stays among the over-budget ones (it was late as well)."""
    requests = max(m.requests - probes, 0)
    timed = None if m.timed_calls is None else max(m.timed_calls - probes, m.over_budget_calls or 0)
    return replace(m, requests=requests, errors=min(m.errors, requests), timed_calls=timed)


def not_counted(config: ReleaseConfig, release: Release, at: datetime, reason: str,
                measured: dict[str, Any] | None = None) -> Decision:
    """The measurement does not count (`reason` says why): wait, or roll back once the release,
    counted from its start, has timed out. What was `measured` stays in `release.analysis`
    under "discarded" (its figures and the decision they would have made)."""
    decision = decide(VariantMetrics(), VariantMetrics(), config, 0.0,
                      release_age_s=(at - parse_iso(release.started)).total_seconds())
    if decision.action == WAIT:
        decision = Decision(WAIT, reason)
    release.analysis = {"at": iso(at), "window": window_of(release, config), "metrics": None,
                        "decision": decision.as_dict(),
                        **({"discarded": {k: measured[k] for k in ("range", "metrics", "decision")}}
                           if measured and measured.get("metrics") else {})}
    return decision
