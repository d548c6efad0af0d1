"""The canary release controller: state machine, analysis and policy.

A release moves `canary` -> `promoted` | `rolled_back` | `aborted` (by hand), nothing else.
- State: `releases/current.json` (atomic replace) holds the running release, or the last one
  once it finished; `releases/history/<id>.json` (write-once) holds every finished release with
  its decision, the metric values and the PromQL queries behind them, and who decided.
- Analysis: per variant (the `recommend` and `recommend-canary` functions), from the OpenFaaS
  gateway metrics in Prometheus over the time since the release started, capped at the window:
  request count, 5xx count, mean latency and p99 latency.
- Policy (`decide`, pure): wait while the canary has fewer than `min_requests` requests (roll
  back when the release times out without them); roll back as soon as any check fails (fail
  fast: a bad canary should not keep serving 20% of users for the whole window); promote when
  every check passes and the window has elapsed. Checks: success rate >= floor; p99 <= bound;
  error rate not significantly higher than stable's (one-sided two-proportion z-test, alpha);
  p99 not more than `max_p99_ratio` x stable's (when above `p99_ratio_floor_s`); optionally the share of recommendations that
  get watched is not significantly lower than stable's.
- Actions: promote redeploys `recommend` with the candidate's MODEL_VERSION (a rolling update
  through the gateway) and moves the `stable` alias; rollback and abort redeploy
  `recommend-canary` with the stable version. Each one sends a notification and is archived.
  Deploy first, record after: a failed redeploy leaves the release running, and the next step
  tries again (every action is idempotent).

Collaborators are injected (`prometheus.query_value`, `deployer.update_env`, `notifier.send`)
so the whole controller runs against real services or in-process fakes alike; the entry point
for the cron trigger is `run_release_step(config, store, prometheus, deployer, notifier, now)`.

- Metrics: `push_release_metrics` pushes what only the controller knows to the Pushgateway
  (job="release", replaced on every push): `release_serving_model_info{variant,function_name,
  model_version}` 1, `release_decision_timestamp_seconds{release_id,decision,model_version}` of
  recent decisions, `release_online_recommended{variant}` / `release_online_watched{variant}` of
  the latest analysis, `release_running`, `release_last_push_timestamp_seconds`.
- Drills: `register_drill_version` copies a model version (the stable one by default) into a new
  version whose manifest carries a `drill` (movierec.serving applies it: slow and/or failing), so a
  canary release of a deliberately bad model can be rehearsed end to end. Only the operator command
  calls it; training never writes a drill.

Must not touch: HTTP parsing and credentials (the function handler), how models are trained.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from movierec.canary import CANARY, STABLE, canary_percent_from_env, variant_for_user
from movierec.events import RecommendationEvent, WatchEvent
from movierec.registry import CANDIDATE, ModelNotFoundError, ModelVersion, Registry, iso
from movierec.registry import STABLE as STABLE_ALIAS
from movierec.store import ObjectExistsError, ObjectNotFoundError, ObjectStore

log = logging.getLogger("movierec.release")

CURRENT_KEY = "releases/current.json"
HISTORY_PREFIX = "releases/history/"

RUNNING = "canary"
PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
ABORTED = "aborted"
FINAL_STATES = (PROMOTED, ROLLED_BACK, ABORTED)

WAIT = "wait"
PROMOTE = "promote"
ROLLBACK = "rollback"


class ReleaseError(Exception):
    """A release action that cannot be done (one line)."""


class InvalidTransition(ReleaseError):
    pass


class ReleaseRunningError(ReleaseError):
    pass


# -- collaborators -------------------------------------------------------------------------
class MetricsSource(Protocol):
    def query_value(self, promql: str, at: float | None = None) -> float | None: ...


class Deployer(Protocol):
    def update_env(self, name: str, changes: Mapping[str, str]) -> Any: ...


class Notifier(Protocol):
    def send(self, subject: str, payload: Mapping[str, Any]) -> dict[str, str]: ...


# -- configuration -------------------------------------------------------------------------
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNIT_S = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in `90`, `90s`, `1m`, `2h`, `1d`, `500ms`."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"invalid duration {text!r}: expected e.g. 90s, 1m, 2h")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


@dataclass(frozen=True)
class ReleaseConfig:
    window_s: float = 2 * 3600
    min_requests: int = 200
    min_success_rate: float = 0.99
    max_p99_s: float = 0.5
    max_p99_ratio: float = 1.5
    # Below this p99 the ratio to stable is not judged: histogram buckets double in width
    # (.01 .025 .05 .1 ...), so 20 ms vs 30 ms already reads as "2x", and no caller notices it.
    p99_ratio_floor_s: float = 0.1
    alpha: float = 0.05
    timeout_s: float = 24 * 3600
    stable_function: str = "recommend"
    canary_function: str = "recommend-canary"
    namespace: str = "openfaas-fn"
    canary_percent: int = 20

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReleaseConfig:
        env = dict(os.environ if env is None else env)

        def get(name: str, default: str) -> str:
            return (env.get(name) or "").strip() or default

        try:
            return cls(
                window_s=parse_duration(get("RELEASE_WINDOW", "2h")),
                min_requests=int(get("RELEASE_MIN_REQUESTS", "200")),
                min_success_rate=float(get("RELEASE_MIN_SUCCESS_RATE", "0.99")),
                max_p99_s=parse_duration(get("RELEASE_MAX_P99", "500ms")),
                max_p99_ratio=float(get("RELEASE_MAX_P99_RATIO", "1.5")),
                p99_ratio_floor_s=parse_duration(get("RELEASE_P99_RATIO_FLOOR", "100ms")),
                alpha=float(get("RELEASE_ALPHA", "0.05")),
                timeout_s=parse_duration(get("RELEASE_TIMEOUT", "24h")),
                stable_function=get("STABLE_FUNCTION", "recommend"),
                canary_function=get("CANARY_FUNCTION", "recommend-canary"),
                namespace=get("FUNCTION_NAMESPACE", "openfaas-fn"),
                canary_percent=canary_percent_from_env(env),
            )
        except ValueError as e:
            raise ReleaseError(f"release configuration: {e}") from None


# -- statistics ----------------------------------------------------------------------------
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


# -- analysis ------------------------------------------------------------------------------
@dataclass(frozen=True)
class VariantMetrics:
    requests: float = 0.0
    errors: float = 0.0
    mean_latency_s: float | None = None
    p99_latency_s: float | None = None

    @property
    def success_rate(self) -> float | None:
        return None if self.requests <= 0 else 1 - self.errors / self.requests

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "success_rate": self.success_rate}


@dataclass(frozen=True)
class QualityCounts:
    """Online quality of one variant: recommended movies, and how many of them got watched."""

    recommended: int = 0
    watched: int = 0

    @property
    def share(self) -> float | None:
        return None if self.recommended == 0 else self.watched / self.recommended


def prom_range(seconds: float) -> str:
    return f"{max(int(seconds), 1)}s"


def variant_queries(function: str, namespace: str, range_s: float) -> dict[str, str]:
    """The PromQL for one variant over the last `range_s` seconds, by metric name."""
    sel = f'function_name="{function}.{namespace}"'
    r = prom_range(range_s)
    return {
        "requests": f"sum(increase(gateway_function_invocation_total{{{sel}}}[{r}]))",
        "errors": f'sum(increase(gateway_function_invocation_total{{{sel},code=~"5.."}}[{r}]))',
        "mean_latency_s": (
            f"sum(rate(gateway_functions_seconds_sum{{{sel}}}[{r}]))"
            f" / sum(rate(gateway_functions_seconds_count{{{sel}}}[{r}]))"
        ),
        "p99_latency_s": (
            f"histogram_quantile(0.99, sum by (le) (rate(gateway_functions_seconds_bucket{{{sel}}}[{r}])))"
        ),
    }


def measure(
    prometheus: MetricsSource, config: ReleaseConfig, range_s: float, at: datetime
) -> tuple[dict[str, VariantMetrics], dict[str, dict[str, str]]]:
    """Metrics and the queries that produced them, for both variants."""
    metrics, queries = {}, {}
    for variant, function in ((CANARY, config.canary_function), (STABLE, config.stable_function)):
        q = variant_queries(function, config.namespace, range_s)
        values = {name: prometheus.query_value(promql, at.timestamp()) for name, promql in q.items()}
        metrics[variant] = VariantMetrics(
            requests=round(values["requests"] or 0.0, 3),
            errors=round(values["errors"] or 0.0, 3),
            mean_latency_s=_finite(values["mean_latency_s"]),
            p99_latency_s=_finite(values["p99_latency_s"]),
        )
        queries[variant] = q
    return metrics, queries


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) or math.isnan(value) else value


def online_quality(
    events: Iterable[Any], canary_percent: int, within_s: float = 3600.0
) -> dict[str, QualityCounts]:
    """Per variant, how many recommended movies the user started watching within `within_s`
    after the recommendation. Events may come in any order (batches are read per partition)."""
    recommendations: list[RecommendationEvent] = []
    first_watch: dict[tuple[int, str], list[datetime]] = {}
    for event in events:
        if isinstance(event, RecommendationEvent) and event.status == 200:
            recommendations.append(event)
        elif isinstance(event, WatchEvent):
            first_watch.setdefault((event.user_id, event.movie_id), []).append(event.time)
    counts = {CANARY: [0, 0], STABLE: [0, 0]}
    for rec in recommendations:
        bucket = counts[variant_for_user(rec.user_id, canary_percent)]
        for movie in rec.movie_ids:
            bucket[0] += 1
            times = first_watch.get((rec.user_id, movie), ())
            if any(0 <= (t - rec.time).total_seconds() <= within_s for t in times):
                bucket[1] += 1
    return {v: QualityCounts(*c) for v, c in counts.items()}


def stored_quality_source(store: ObjectStore, canary_percent: int, within_s: float = 3600.0):
    """A `quality_source(start, end)` over the stored recommendation and watch batches (ingest's
    loaders). Stream times are naive UTC; recommendations in [start, end] count, and watches up to
    `within_s` after them."""

    def source(start: datetime, end: datetime) -> dict[str, QualityCounts]:
        import numpy as np  # only this optional analysis needs numpy and the batch loaders

        from movierec.batches.loaders import iter_recommendations, load_watches

        lo, hi = (t.astimezone(UTC).replace(tzinfo=None) for t in (start, end))
        recs = []
        for r in iter_recommendations(store):
            t = datetime.fromisoformat(r["time"])
            if r["status"] == 200 and lo <= t <= hi:
                recs.append(RecommendationEvent(t, r["user_id"], r["server"], 200, tuple(r["movie_ids"]), None,
                                                r["latency_ms"]))
        watches = load_watches(store)
        epoch = datetime(1970, 1, 1)
        lo_us = int((lo - epoch).total_seconds() * 1e6)
        hi_us = int((hi - epoch).total_seconds() * 1e6 + within_s * 1e6)
        users = np.array(sorted({r.user_id for r in recs}), dtype=np.int64)
        keep = (watches.time_us >= lo_us) & (watches.time_us <= hi_us) & np.isin(watches.user_ids, users)
        events: list[Any] = list(recs)
        for t_us, user, movie in zip(watches.time_us[keep].tolist(), watches.user_ids[keep].tolist(),
                                     watches.movie_ids[keep].tolist()):
            events.append(WatchEvent(epoch + timedelta(microseconds=t_us), user, movie, 0))
        return online_quality(events, canary_percent, within_s)

    return source


# -- policy --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    action: str  # wait | promote | rollback
    reason: str
    checks: tuple[Check, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason, "checks": [asdict(c) for c in self.checks]}


def evaluate_checks(
    canary: VariantMetrics,
    stable: VariantMetrics,
    config: ReleaseConfig,
    quality: Mapping[str, QualityCounts] | None = None,
) -> list[Check]:
    checks = []
    rate = canary.success_rate or 0.0
    checks.append(
        Check(
            "success_rate",
            rate >= config.min_success_rate,
            f"canary success {rate:.4f} (floor {config.min_success_rate})",
        )
    )
    if canary.p99_latency_s is None:
        checks.append(Check("p99_latency", False, "canary p99 latency unknown (no histogram samples)"))
    else:
        checks.append(
            Check(
                "p99_latency",
                canary.p99_latency_s <= config.max_p99_s,
                f"canary p99 {canary.p99_latency_s * 1000:.0f} ms (bound {config.max_p99_s * 1000:.0f} ms)",
            )
        )
    z, p = two_proportion_z_test(canary.errors, canary.requests, stable.errors, stable.requests)
    checks.append(
        Check(
            "error_rate_vs_stable",
            p >= config.alpha,
            f"canary errors {canary.errors:g}/{canary.requests:g} vs stable {stable.errors:g}/{stable.requests:g}:"
            f" z={z:.2f} p={p:.4f} (alpha {config.alpha})",
        )
    )
    if canary.p99_latency_s is not None and stable.p99_latency_s:
        ratio = canary.p99_latency_s / stable.p99_latency_s
        checks.append(
            Check(
                "p99_vs_stable",
                ratio <= config.max_p99_ratio or canary.p99_latency_s <= config.p99_ratio_floor_s,
                f"p99 ratio to stable {ratio:.2f} (bound {config.max_p99_ratio},"
                f" judged above {config.p99_ratio_floor_s * 1000:.0f} ms)",
            )
        )
    if quality is not None:
        c, s = quality.get(CANARY, QualityCounts()), quality.get(STABLE, QualityCounts())
        # "canary worse" == stable's watched share greater than canary's.
        z, p = two_proportion_z_test(s.watched, s.recommended, c.watched, c.recommended)
        checks.append(
            Check(
                "watched_share_vs_stable",
                p >= config.alpha,
                f"watched canary {c.watched}/{c.recommended} vs stable {s.watched}/{s.recommended}:"
                f" z={z:.2f} p={p:.4f}",
            )
        )
    return checks


def decide(
    canary: VariantMetrics,
    stable: VariantMetrics,
    config: ReleaseConfig,
    elapsed_s: float,
    quality: Mapping[str, QualityCounts] | None = None,
) -> Decision:
    if canary.requests < config.min_requests:
        if elapsed_s >= config.timeout_s:
            return Decision(
                ROLLBACK,
                f"timed out after {elapsed_s:.0f}s with {canary.requests:g} canary requests"
                f" (< {config.min_requests}): not enough evidence to promote",
            )
        return Decision(WAIT, f"{canary.requests:g} of {config.min_requests} canary requests so far")
    checks = tuple(evaluate_checks(canary, stable, config, quality))
    failed = [c for c in checks if not c.passed]
    if failed:
        return Decision(ROLLBACK, "; ".join(c.detail for c in failed), checks)
    if elapsed_s < config.window_s:
        return Decision(WAIT, f"checks pass; window {elapsed_s:.0f}s of {config.window_s:.0f}s", checks)
    return Decision(PROMOTE, "all checks pass over the full window", checks)


# -- state ---------------------------------------------------------------------------------
@dataclass
class Release:
    id: str
    candidate: str
    stable: str
    state: str
    started: str
    updated: str
    decided: str | None = None
    reason: str = ""
    actor: str = ""
    analysis: dict[str, Any] | None = None  # the latest analysis: metrics, queries, decision
    notifications: dict[str, str] = field(default_factory=dict)
    # A decision taken but not yet fully applied ({"state", "reason", "actor"}): recorded before
    # the first redeploy, so a crash half-way is finished the same way, never re-decided.
    pending: dict[str, str] | None = None

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Release:
        return cls(**json.loads(data))

    def finish(self, state: str, reason: str, actor: str, now: datetime) -> None:
        if state not in FINAL_STATES:
            raise InvalidTransition(f"{state!r} is not a final release state")
        if not self.running:
            raise InvalidTransition(f"release {self.id} is already {self.state}; cannot move it to {state}")
        self.state, self.reason, self.actor = state, reason, actor
        self.decided = self.updated = iso(now)
        self.pending = None


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


class ReleaseStore:
    def __init__(self, store: ObjectStore):
        self.store = store

    def current(self) -> Release | None:
        try:
            return Release.from_json(self.store.get(CURRENT_KEY))
        except ObjectNotFoundError:
            return None

    def running(self) -> Release | None:
        release = self.current()
        return release if release is not None and release.running else None

    def save(self, release: Release) -> None:
        if not release.running:
            try:
                self.store.put_once(f"{HISTORY_PREFIX}{release.id}.json", release.to_json())
            except ObjectExistsError:
                pass  # a retry after a crash between these two writes: the first record stands
        self.store.replace(CURRENT_KEY, release.to_json())

    def history(self, limit: int = 20) -> list[Release]:
        keys = self.store.list(HISTORY_PREFIX)[-limit:]
        return [Release.from_json(self.store.get(k)) for k in reversed(keys)]


# -- actions -------------------------------------------------------------------------------
def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)


def bootstrap_stable(
    config: ReleaseConfig, store: ObjectStore, deployer: Deployer, version: str, now: datetime | None = None
) -> None:
    """The first model ever: straight to `stable`, both deployments serve it."""
    for function in (config.stable_function, config.canary_function):
        deployer.update_env(function, {"MODEL_VERSION": version})
    Registry(store).set_alias(STABLE_ALIAS, version, reason="first model", now=_now(now))


def start_release(
    config: ReleaseConfig,
    store: ObjectStore,
    deployer: Deployer,
    candidate: str,
    now: datetime | None = None,
    notifier: Notifier | None = None,
    actor: str = "train",
) -> Release:
    """Serve `candidate` on the canary deployment and record a running release."""
    now = _now(now)
    releases, registry = ReleaseStore(store), Registry(store)
    running = releases.running()
    if running is not None:
        raise ReleaseRunningError(f"release {running.id} ({running.candidate}) is still running")
    stable = registry.alias_version(STABLE_ALIAS)
    if stable is None:
        raise ReleaseError("no stable model yet: the first model goes to stable (bootstrap_stable)")
    if stable == candidate:
        raise ReleaseError(f"{candidate} is already the stable model")
    registry.get(candidate)  # must exist before anything is deployed
    deployer.update_env(config.canary_function, {"MODEL_VERSION": candidate})
    registry.set_alias(CANDIDATE, candidate, reason="release started", now=now)
    release = Release(
        id=f"r{now:%Y%m%d-%H%M%S}-{candidate}",
        candidate=candidate,
        stable=stable,
        state=RUNNING,
        started=iso(now),
        updated=iso(now),
        reason="canary started",
        actor=actor,
    )
    releases.save(release)
    if notifier is not None:
        release.notifications = notifier.send(
            f"canary started: {candidate}", {"event": "release_started", **_summary(release)}
        )
        releases.save(release)
    return release


def finish_release(
    config: ReleaseConfig,
    store: ObjectStore,
    deployer: Deployer,
    notifier: Notifier | None,
    release: Release,
    state: str,
    reason: str,
    actor: str,
    now: datetime | None = None,
) -> Release:
    """Promote, roll back or abort a running release: redeploy, move aliases, notify, archive."""
    now = _now(now)
    if not release.running:
        raise InvalidTransition(f"release {release.id} is already {release.state}; cannot move it to {state}")
    if state not in FINAL_STATES:
        raise InvalidTransition(f"{state!r} is not a final release state")
    if release.pending is None:
        release.pending = {"state": state, "reason": reason, "actor": actor}
        ReleaseStore(store).save(release)
    elif release.pending["state"] != state:
        raise InvalidTransition(
            f"release {release.id} is already being moved to {release.pending['state']}; cannot move it to {state}"
        )
    registry = Registry(store)
    if state == PROMOTED:
        # The rolling update of `recommend` (never scaled to zero) keeps serving through the change.
        deployer.update_env(config.stable_function, {"MODEL_VERSION": release.candidate})
        registry.set_alias(STABLE_ALIAS, release.candidate, reason=f"promoted by {actor}: {reason}", now=now)
    else:
        deployer.update_env(config.canary_function, {"MODEL_VERSION": release.stable})
    registry.set_alias(CANDIDATE, None, reason=f"release {state}", now=now)
    release.finish(state, reason, actor, now)
    if notifier is not None:
        release.notifications = notifier.send(
            f"release {state}: {release.candidate}", {"event": f"release_{state}", **_summary(release)}
        )
    ReleaseStore(store).save(release)
    return release


def _summary(release: Release) -> dict[str, Any]:
    analysis = release.analysis or {}
    return {
        "release": release.id,
        "state": release.state,
        "candidate_version": release.candidate,
        "stable_version": release.stable,
        "reason": release.reason,
        "actor": release.actor,
        "decided": release.decided,
        "metrics": analysis.get("metrics"),
        "queries": analysis.get("queries"),
        "checks": (analysis.get("decision") or {}).get("checks"),
    }


@dataclass(frozen=True)
class StepResult:
    action: str  # idle | wait | promote | rollback
    reason: str
    release: Release | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "release": asdict(self.release) if self.release else None,
        }


def run_release_step(
    config: ReleaseConfig,
    store: ObjectStore,
    prometheus: MetricsSource,
    deployer: Deployer,
    notifier: Notifier | None,
    now: datetime | None = None,
    quality_source=None,
) -> StepResult:
    """One analysis step of the running release (what the cron trigger runs every minute).

    `quality_source(start, end)`, when given, returns per-variant QualityCounts for the
    release's period (from the stored recommendation and watch events)."""
    now = _now(now)
    releases = ReleaseStore(store)
    release = releases.running()
    if release is None:
        return StepResult("idle", "no release running")
    if release.pending is not None:  # finish what an interrupted step or action decided
        p = release.pending
        finish_release(config, store, deployer, notifier, release, p["state"], p["reason"], p["actor"], now)
        return StepResult(PROMOTE if p["state"] == PROMOTED else ROLLBACK, p["reason"], release)
    started = _parse_iso(release.started)
    elapsed = (now - started).total_seconds()
    range_s = min(max(elapsed, 1.0), config.window_s)  # only the release's own traffic
    metrics, queries = measure(prometheus, config, range_s, now)
    quality = quality_source(started, now) if quality_source is not None else None
    decision = decide(metrics[CANARY], metrics[STABLE], config, elapsed, quality)
    release.analysis = {
        "at": iso(now),
        "range": prom_range(range_s),
        "metrics": {v: m.as_dict() for v, m in metrics.items()},
        "queries": queries,
        "decision": decision.as_dict(),
        **({"quality": {v: asdict(q) for v, q in quality.items()}} if quality else {}),
    }
    if decision.action == WAIT:
        release.updated = iso(now)
        releases.save(release)
        return StepResult(WAIT, decision.reason, release)
    state = PROMOTED if decision.action == PROMOTE else ROLLED_BACK
    finish_release(config, store, deployer, notifier, release, state, decision.reason, "controller", now)
    return StepResult(decision.action, decision.reason, release)


MANUAL_ACTIONS = {"promote": PROMOTED, "rollback": ROLLED_BACK, "abort": ABORTED}


def manual_action(
    action: str,
    config: ReleaseConfig,
    store: ObjectStore,
    deployer: Deployer,
    notifier: Notifier | None,
    actor: str = "operator",
    reason: str = "",
    now: datetime | None = None,
) -> Release:
    if action not in MANUAL_ACTIONS:
        raise ReleaseError(f"unknown action {action!r}: use one of {', '.join(MANUAL_ACTIONS)}")
    release = ReleaseStore(store).running()
    if release is None:
        raise InvalidTransition(f"no release is running: nothing to {action}")
    return finish_release(
        config, store, deployer, notifier, release, MANUAL_ACTIONS[action], reason or f"{action} by hand", actor, now
    )


def status(store: ObjectStore, history: int = 5) -> dict[str, Any]:
    releases, registry = ReleaseStore(store), Registry(store)
    current = releases.current()
    return {
        "running": bool(current and current.running),
        "current": asdict(current) if current else None,
        "aliases": {name: registry.alias_version(name) for name in (STABLE_ALIAS, CANDIDATE)},
        "history": [
            {"id": r.id, "state": r.state, "candidate": r.candidate, "decided": r.decided, "reason": r.reason}
            for r in releases.history(history)
        ],
    }


# -- drills --------------------------------------------------------------------------------
def register_drill_version(
    store: ObjectStore, drill: Any, source: str | None = None, now: datetime | None = None
) -> ModelVersion:
    """A new model version: the files of `source` (default: the stable model) with `drill` (a
    movierec.serving.Drill) in its manifest. The artifact is unchanged, so the drill model
    recommends exactly what its source does, only slower and/or failing on purpose."""
    import tempfile
    from pathlib import Path

    from movierec.serving import DRILL_KEY

    registry = Registry(store)
    source = source or registry.alias_version(STABLE_ALIAS)
    if source is None:
        raise ReleaseError("no stable model yet to copy into a drill model: train one first")
    entry = registry.get(source)
    with tempfile.TemporaryDirectory(prefix="movierec-drill-") as tmp:
        fetched = registry.fetch(source, Path(tmp) / "cache")
        copy = Path(tmp) / "drill"
        copy.mkdir()
        for name in entry.metadata["files"]:
            (copy / name).write_bytes((fetched / name).read_bytes())
        manifest_path = copy / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest[DRILL_KEY] = drill.as_manifest()
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return registry.publish(
            copy,
            params=entry.metadata.get("params"),
            metrics=entry.metadata.get("metrics"),
            snapshot_id=entry.snapshot_id,
            code=entry.metadata.get("code_version"),
            extra={"drill": drill.as_manifest(), "copied_from": source},
            now=_now(now),
        )


# -- metrics for dashboards ----------------------------------------------------------------
def serving_versions(
    store: ObjectStore, config: ReleaseConfig, deployer: Any | None = None
) -> dict[str, tuple[str, str]]:
    """{variant: (function, model version)} of what each deployment serves right now.

    Read from the deployments' MODEL_VERSION (an alias is resolved through the registry) when a
    deployer can read them; otherwise from the release state (the versions the controller deployed)."""
    registry = Registry(store)
    running = ReleaseStore(store).running()
    stable_alias = registry.alias_version(STABLE_ALIAS)
    expected = {
        STABLE: running.stable if running else stable_alias,
        CANARY: running.candidate if running else stable_alias,
    }
    found = {}
    for variant, function in ((STABLE, config.stable_function), (CANARY, config.canary_function)):
        version = expected[variant]
        if deployer is not None and hasattr(deployer, "env_of"):
            try:
                spec = (deployer.env_of(function).get("MODEL_VERSION") or "").strip()
                version = registry.resolve(spec) if spec else version
            except ModelNotFoundError:  # e.g. `stable` before the first model: nothing is served yet
                pass
            except Exception as e:  # noqa: BLE001 (a dashboard figure never fails a release step)
                log.warning("serving version of %s unknown (%s: %s); using the release state",
                            function, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        if version:
            found[variant] = (function, version)
    return found


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text).timestamp()  # 3.11 reads the trailing Z


def push_release_metrics(
    url: str | None,
    store: ObjectStore,
    config: ReleaseConfig,
    deployer: Any | None = None,
    history: int = 20,
) -> str:
    """Push the controller's figures to the Pushgateway (job="release"); never fails the caller.
    Returns "pushed", "skipped" (no URL) or "failed: <why>"."""
    if not url:
        return "skipped"
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    reg = CollectorRegistry()
    info = Gauge("release_serving_model_info", "1 for the model version each variant serves",
                 ["variant", "function_name", "model_version"], registry=reg)
    for variant, (function, version) in serving_versions(store, config, deployer).items():
        info.labels(variant, f"{function}.{config.namespace}", version).set(1)
    decisions = Gauge("release_decision_timestamp_seconds", "When a release was promoted, rolled back or aborted",
                      ["release_id", "decision", "model_version"], registry=reg)
    for release in ReleaseStore(store).history(history):
        decided = _epoch(release.decided)
        if decided is not None:
            decisions.labels(release.id, release.state, release.candidate).set(decided)
    current = ReleaseStore(store).current()
    quality = ((current.analysis or {}).get("quality") or {}) if current else {}
    if quality:
        recommended = Gauge("release_online_recommended", "Recommended movies in the latest release analysis",
                            ["variant"], registry=reg)
        watched = Gauge("release_online_watched", "Of those, movies the user started watching",
                        ["variant"], registry=reg)
        for variant, counts in quality.items():
            recommended.labels(variant).set(counts.get("recommended", 0))
            watched.labels(variant).set(counts.get("watched", 0))
    Gauge("release_running", "1 while a canary release is running", registry=reg).set(
        1 if current is not None and current.running else 0)
    Gauge("release_last_push_timestamp_seconds", "When the release controller last pushed",
          registry=reg).set_to_current_time()
    try:
        push_to_gateway(url, job="release", registry=reg, timeout=5)
    except OSError as e:
        log.warning("pushgateway %s unreachable: %s", url, e)
        return f"failed: pushgateway {url} unreachable"
    return "pushed"
