"""The analysis of a running release: its window, the figures measured over it, the decision.

- The window (`window_of`) runs from max(started, serving_since): from when the canary was last
  verified serving the candidate (drift.py), never before the release started, for `window_s`;
  the release times out `timeout_s` after it started.
- `measure`: per variant (the `recommend` and `recommend-canary` functions), from the OpenFaaS
  gateway metrics in Prometheus over the window so far, capped at its length: request count, 5xx
  count, mean latency and p99 latency (promql.py's templates). The counts are `increase()` over
  the range, which extrapolates to the range's edges (2.571 of 20.569 requests): they are ROUNDED
  to whole requests here (COUNTS says so wherever they are shown), so the evidence, the checks and
  the operator's screen all show the same integers.
- `analyse`: measure and decide (checks.py's `decide`), recording `release.analysis` (window,
  range, figures, queries, decision). A step that could not verify what the variants serve
  measures nothing and does not decide: only the timeout, counted from the start, still rolls
  back (never a promotion without evidence from the candidate).

Owns: `measure`, `window_of`, `analyse`, COUNTS. Must not touch: the lease, deployments or state
writes (controller.py), the policy (checks.py), service clients (the MetricsSource is injected).
"""
from __future__ import annotations

import math
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from movierec.canary import CANARY, STABLE
from movierec.ports import MetricsSource
from movierec.registry import iso
from movierec.release.checks import WAIT, Decision, VariantMetrics, decide
from movierec.release.config import ReleaseConfig
from movierec.release.promql import prom_range, variant_queries
from movierec.release.quality import QualitySource
from movierec.release.state import Release, parse_iso

COUNTS = "increase() over the window, rounded to whole requests"


def measure(
    prometheus: MetricsSource, config: ReleaseConfig, range_s: float, at: datetime
) -> tuple[dict[str, VariantMetrics], dict[str, dict[str, str]]]:
    """Metrics and the queries that produced them, for both variants (counts: see COUNTS)."""
    metrics, queries = {}, {}
    for variant, function in ((CANARY, config.canary_function), (STABLE, config.stable_function)):
        q = variant_queries(function, config.namespace, range_s)
        values = {name: prometheus.query_value(promql, at.timestamp()) for name, promql in q.items()}
        metrics[variant] = VariantMetrics(
            requests=round(values["requests"] or 0.0),
            errors=round(values["errors"] or 0.0),
            mean_latency_s=_finite(values["mean_latency_s"]),
            p99_latency_s=_finite(values["p99_latency_s"]),
        )
        queries[variant] = q
    return metrics, queries


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


def analyse(config: ReleaseConfig, release: Release, prometheus: MetricsSource, at: datetime, verified: bool,
            quality_source: QualitySource | None = None) -> Decision:
    """Measure the window (when `verified`) and decide; records `release.analysis`."""
    age_s = (at - parse_iso(release.started)).total_seconds()
    window = window_of(release, config)
    if not verified or window["start"] is None:
        decision = decide(VariantMetrics(), VariantMetrics(), config, 0.0, release_age_s=age_s)
        if decision.action == WAIT:
            decision = Decision(WAIT, f"not counting evidence: {config.canary_function} is not verified serving "
                                      f"{release.candidate} (see the events); the window starts when it is")
        release.analysis = {"at": iso(at), "window": window, "metrics": None, "decision": decision.as_dict()}
        return decision
    start = parse_iso(window["start"])
    elapsed = max((at - start).total_seconds(), 0.0)
    range_s = min(max(elapsed, 1.0), config.window_s)
    metrics, queries = measure(prometheus, config, range_s, at)
    quality = quality_source(start, at) if quality_source is not None else None
    decision = decide(metrics[CANARY], metrics[STABLE], config, elapsed, quality, release_age_s=age_s)
    release.analysis = {
        "at": iso(at),
        "range": prom_range(range_s),
        "window": window,
        "counts": COUNTS,
        "metrics": {v: m.as_dict() for v, m in metrics.items()},
        "queries": queries,
        "decision": decision.as_dict(),
        **({"quality": {v: asdict(q) for v, q in quality.items()}} if quality else {}),
    }
    return decision
