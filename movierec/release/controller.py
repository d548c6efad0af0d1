"""The canary release controller: actions, the analysis step, status, and its dashboard figures.

- Analysis (`measure`): per variant (the `recommend` and `recommend-canary` functions), from the
  OpenFaaS gateway metrics in Prometheus over the time since the release started, capped at the
  window: request count, 5xx count, mean latency and p99 latency (promql.py's templates); the
  decision is checks.py's `decide`.
- Actions: promote redeploys `recommend` with the candidate's MODEL_VERSION (a rolling update
  through the gateway) and moves the `stable` alias; rollback and abort redeploy
  `recommend-canary` with the stable version. Each one sends a notification and is archived.
  Deploy first, record after: a failed redeploy leaves the release running, and the next step
  tries again (every action is idempotent).
- Dashboard figures (`release_families`, job="release"): `release_serving_model_info{variant,
  function_name,model_version}` 1, `release_decision_timestamp_seconds{release_id,decision,
  model_version}` of recent decisions, `release_online_recommended{variant}` /
  `release_online_watched{variant}` of the latest analysis, `release_running`,
  `release_last_push_timestamp_seconds`, as movierec.metrics families; the Pushgateway adapter
  sends them (movierec.adapters.release_metrics.push_release_metrics).

Collaborators are injected (movierec.ports: MetricsSource, Deployer, Notifier) so the whole
controller runs against real services or in-process fakes alike; the entry point for the cron
trigger is `run_release_step(config, store, prometheus, deployer, notifier, now)`.

Must not touch: HTTP parsing and credentials (the function handler), service clients (adapters),
how models are trained.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from movierec.canary import CANARY, STABLE
from movierec.errors import Rejected, one_line
from movierec.metrics import Family
from movierec.ports import Deployer, MetricsSource, Notifier
from movierec.registry import CANDIDATE, ModelNotFoundError, Registry, iso
from movierec.registry import STABLE as STABLE_ALIAS
from movierec.release.checks import PROMOTE, ROLLBACK, WAIT, VariantMetrics, decide
from movierec.release.config import ReleaseConfig
from movierec.release.promql import prom_range, variant_queries
from movierec.release.quality import QualitySource
from movierec.release.state import (
    ABORTED,
    FINAL_STATES,
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    InvalidTransition,
    Release,
    ReleaseError,
    ReleaseRunningError,
    ReleaseStore,
    parse_iso,
    utc_now,
)
from movierec.store import ObjectStore

log = logging.getLogger("movierec.release")

MANUAL_ACTIONS = {"promote": PROMOTED, "rollback": ROLLED_BACK, "abort": ABORTED}


# -- analysis ------------------------------------------------------------------------------------
def measure(
    prometheus: MetricsSource, config: ReleaseConfig, range_s: float, at: datetime
) -> tuple[dict[str, VariantMetrics], dict[str, dict[str, str]]]:
    """Metrics and the queries that produced them, for both variants."""
    metrics, queries = {}, {}
    for variant, function in ((CANARY, config.canary_function), (STABLE, config.stable_function)):
        q = variant_queries(function, config.namespace, range_s, config.gateway_job)
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


# -- actions -------------------------------------------------------------------------------------
def bootstrap_stable(
    config: ReleaseConfig, store: ObjectStore, deployer: Deployer, version: str, now: datetime | None = None
) -> None:
    """The first model ever: straight to `stable`, both deployments serve it."""
    for function in (config.stable_function, config.canary_function):
        deployer.update_env(function, {"MODEL_VERSION": version})
    Registry(store).set_alias(STABLE_ALIAS, version, reason="first model", now=utc_now(now))


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
    now = utc_now(now)
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
    now = utc_now(now)
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
    quality_source: QualitySource | None = None,
) -> StepResult:
    """One analysis step of the running release (what the cron trigger runs every minute).

    `quality_source(start, end)`, when given, returns per-variant QualityCounts for the
    release's period (from the stored recommendation and watch events)."""
    now = utc_now(now)
    releases = ReleaseStore(store)
    release = releases.running()
    if release is None:
        return StepResult("idle", "no release running")
    if release.pending is not None:  # finish what an interrupted step or action decided
        p = release.pending
        finish_release(config, store, deployer, notifier, release, p["state"], p["reason"], p["actor"], now)
        return StepResult(PROMOTE if p["state"] == PROMOTED else ROLLBACK, p["reason"], release)
    started = parse_iso(release.started)
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
        raise Rejected(f"unknown action {action!r}: use one of {', '.join(MANUAL_ACTIONS)}")
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


# -- figures for dashboards ------------------------------------------------------------------------
def serving_versions(
    store: ObjectStore, config: ReleaseConfig, deployer: Any | None = None
) -> dict[str, tuple[str, str]]:
    """{variant: (function, model version)} of what each deployment serves right now.

    Read from the deployments' MODEL_VERSION (an alias is resolved through the registry) when the
    deployer can read them (movierec.ports.DeploymentReader); otherwise from the release state
    (the versions the controller deployed)."""
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
                log.warning("serving version of %s unknown (%s); using the release state", function, one_line(e))
        if version:
            found[variant] = (function, version)
    return found


def _epoch(text: str | None) -> float | None:
    return parse_iso(text).timestamp() if text else None


def release_families(
    store: ObjectStore, config: ReleaseConfig, deployer: Any | None = None, history: int = 20,
    now: float | None = None,
) -> list[Family]:
    """What only the controller knows, for the dashboards (pushed as job="release")."""
    info = Family("release_serving_model_info", "1 for the model version each variant serves",
                  ("variant", "function_name", "model_version"))
    for variant, (function, version) in serving_versions(store, config, deployer).items():
        info.set(1, variant, f"{function}.{config.namespace}", version)
    decisions = Family("release_decision_timestamp_seconds", "When a release was promoted, rolled back or aborted",
                       ("release_id", "decision", "model_version"))
    releases = ReleaseStore(store)
    for release in releases.history(history):
        decided = _epoch(release.decided)
        if decided is not None:
            decisions.set(decided, release.id, release.state, release.candidate)
    families = [info, decisions]
    current = releases.current()
    quality = ((current.analysis or {}).get("quality") or {}) if current else {}
    if quality:
        recommended = Family("release_online_recommended", "Recommended movies in the latest release analysis",
                             ("variant",))
        watched = Family("release_online_watched", "Of those, movies the user started watching", ("variant",))
        for variant, counts in quality.items():
            recommended.set(counts.get("recommended", 0), variant)
            watched.set(counts.get("watched", 0), variant)
        families += [recommended, watched]
    families.append(Family("release_running", "1 while a canary release is running").set(
        1 if current is not None and current.running else 0))
    families.append(Family("release_last_push_timestamp_seconds", "When the release controller last pushed").set(
        time.time() if now is None else now))
    return families
