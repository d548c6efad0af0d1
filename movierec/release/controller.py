"""The canary release controller: actions, the step, status, and its dashboard figures.

- A step (`run_release_step`) holds the release lease (movierec.lease, named in state.py: one
  step acts at a time, a second gets LeaseHeld, 409, naming the holder and its expiry; every
  write is fenced by the lease's check). It measures (analysis.py: the window from max(started, serving_since), counts rounded
  to whole requests, the controller's own probes subtracted), THEN makes the deployments match
  the release record (drift.py: re-applies drift, restarts the window, records events). The
  measurement counts in full only when the variants were verified both when the window started
  and after it; drift seen after it discards it; unverified evidence can only roll back;
  otherwise the step waits (and only the timeout, counted from the start, rolls back).
- Actions: promote redeploys `recommend` with the candidate's MODEL_VERSION (a rolling update
  through the gateway) and moves the `stable` alias; rollback and abort redeploy
  `recommend-canary` with the stable version. Each one sends a notification and is archived.
  Deploy first, record after: a failed redeploy leaves the release running, and the next step
  tries again (every action is idempotent). Starting, finishing and manual actions hold the
  lease too (their own, or the step's).
- Dashboard figures (`release_families`, job="release"): `release_serving_model_info{variant,
  function_name,model_version}` 1, `release_decision_timestamp_seconds{release_id,decision,
  model_version}` of recent decisions, `release_online_recommended{variant}` /
  `release_online_watched{variant}` of the latest analysis, `release_running`,
  `release_last_push_timestamp_seconds`, as movierec.metrics families; the Pushgateway adapter
  sends them (movierec.adapters.release_metrics.push_release_metrics).

Collaborators are injected (movierec.ports: MetricsSource, ReleaseDeployer, Notifier) so the whole
controller runs against real services or in-process fakes alike; the entry point for the cron
trigger is `run_release_step(config, store, prometheus, deployer, notifier, now)`. `now` given
fixes every time the call records (tests); None reads the wall clock as the step goes.

Must not touch: HTTP parsing and credentials (the function handler), service clients (adapters),
how models are trained.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from movierec.canary import CANARY, STABLE
from movierec.errors import Rejected, one_line
from movierec.lease import Lease, LeaseHeld
from movierec.metrics import Family
from movierec.ports import Deployer, MetricsSource, Notifier, ReleaseDeployer
from movierec.registry import CANDIDATE, ModelNotFoundError, Registry, iso
from movierec.registry import STABLE as STABLE_ALIAS
from movierec.release.analysis import analyse, not_counted
from movierec.release.checks import PROMOTE, ROLLBACK, WAIT
from movierec.release.config import ReleaseConfig
from movierec.release.drift import observe, reconcile
from movierec.release.quality import QualitySource
from movierec.release.state import (
    ABORTED,
    FINAL_STATES,
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    Clock,
    InvalidTransition,
    Release,
    ReleaseError,
    ReleaseRunningError,
    ReleaseStore,
    acquire_lease,
    clock_from,
    holding,
    parse_iso,
    read_lease,
    utc_now,
)
from movierec.store import ObjectStore

log = logging.getLogger("movierec.release")

MANUAL_ACTIONS = {"promote": PROMOTED, "rollback": ROLLED_BACK, "abort": ABORTED}


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
    """Serve `candidate` on the canary deployment and record a running release, under the lease
    (ReleaseRunningError naming the holder while a step or another action holds it)."""
    clock = clock_from(now)
    try:
        lease = acquire_lease(store, f"start ({actor})", config.lease_ttl_s, clock())
    except LeaseHeld as e:  # a step or an action is at work on a release: as good as running
        raise ReleaseRunningError(str(e)) from e
    try:
        return _start(config, store, deployer, candidate, clock, notifier, actor, lease)
    finally:
        lease.release()


def _start(config: ReleaseConfig, store: ObjectStore, deployer: Deployer, candidate: str, clock: Clock,
           notifier: Notifier | None, actor: str, lease: Lease) -> Release:
    now = clock()
    releases, registry = ReleaseStore(store, fence=lease.check), Registry(store)
    running = releases.running()
    if running is not None:
        raise ReleaseRunningError(f"release {running.id} ({running.candidate}) is still running")
    stable = registry.alias_version(STABLE_ALIAS)
    if stable is None:
        raise ReleaseError("no stable model yet: the first model goes to stable (bootstrap_stable)")
    if stable == candidate:
        raise ReleaseError(f"{candidate} is already the stable model")
    registry.get(candidate)  # must exist before anything is deployed
    lease.check()
    deployer.update_env(config.canary_function, {"MODEL_VERSION": candidate})
    lease.check()
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
    _verify_started(config, registry, deployer, release, clock)
    releases.save(release)
    if notifier is not None:
        release.notifications = notifier.send(
            f"canary started: {candidate}", {"event": "release_started", **_summary(release)}
        )
        releases.save(release)
    return release


def _verify_started(config: ReleaseConfig, registry: Registry, deployer: Any, release: Release,
                    clock: Clock) -> None:
    """Start the window now when both variants already answer with their versions (the redeploy
    returned once the new replicas were ready); otherwise the first step verifies them."""
    try:
        seen = observe(config, registry, deployer, release, clock)
    except Exception as e:  # noqa: BLE001 (a deployer that cannot read back or probe: the step will)
        log.info("release %s: serving not verified at start (%s)", release.id, one_line(e))
        return
    if all(o.verified for o in seen.values()):
        release.serving_since = release.verified_at = iso(clock())
        release.add_event(clock(), "serving_verified", canary=release.candidate, stable=release.stable)


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
    lease: Lease | None = None,
) -> Release:
    """Promote, roll back or abort a running release: redeploy, move aliases, notify, archive.
    Under `lease` (the caller's), or a lease of its own."""
    now = utc_now(now)
    with holding(store, f"{state} ({actor})", config.lease_ttl_s, now, lease) as held:
        return _finish(config, store, deployer, notifier, release, state, reason, actor, now, held)


def _finish(config: ReleaseConfig, store: ObjectStore, deployer: Deployer, notifier: Notifier | None,
            release: Release, state: str, reason: str, actor: str, now: datetime, lease: Lease) -> Release:
    if not release.running:
        raise InvalidTransition(f"release {release.id} is already {release.state}; cannot move it to {state}")
    if state not in FINAL_STATES:
        raise InvalidTransition(f"{state!r} is not a final release state")
    releases = ReleaseStore(store, fence=lease.check)
    if release.pending is None:
        release.pending = {"state": state, "reason": reason, "actor": actor}
        releases.save(release)
    elif release.pending["state"] != state:
        raise InvalidTransition(
            f"release {release.id} is already being moved to {release.pending['state']}; cannot move it to {state}"
        )
    registry = Registry(store)
    lease.check()
    if state == PROMOTED:
        # The rolling update of `recommend` (never scaled to zero) keeps serving through the change.
        deployer.update_env(config.stable_function, {"MODEL_VERSION": release.candidate})
        lease.check()
        registry.set_alias(STABLE_ALIAS, release.candidate, reason=f"promoted by {actor}: {reason}", now=now)
    else:
        deployer.update_env(config.canary_function, {"MODEL_VERSION": release.stable})
    lease.check()
    registry.set_alias(CANDIDATE, None, reason=f"release {state}", now=now)
    release.finish(state, reason, actor, now)
    if notifier is not None:
        release.notifications = notifier.send(
            f"release {state}: {release.candidate}", {"event": f"release_{state}", **_summary(release)}
        )
    releases.save(release)
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
        "serving_since": release.serving_since,
        "drift_events": sum(1 for e in release.events if e.get("event") == "drift_seen"),
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
    deployer: ReleaseDeployer,
    notifier: Notifier | None,
    now: datetime | None = None,
    quality_source: QualitySource | None = None,
) -> StepResult:
    """One analysis step of the running release (what the cron trigger runs every minute).

    `quality_source(start, end)`, when given, returns per-variant QualityCounts for the
    analysis window (from the stored recommendation and watch events). LeaseHeld (409) at once
    when another step or action holds the lease."""
    clock = clock_from(now)
    now = clock()
    if ReleaseStore(store).running() is None:  # nothing to do: no lease taken, nothing written
        return StepResult("idle", "no release running")
    with holding(store, "step", config.lease_ttl_s, now) as lease:
        releases = ReleaseStore(store, fence=lease.check)
        release = releases.running()  # again, under the lease
        if release is None:
            return StepResult("idle", "no release running")
        if release.pending is not None:  # finish what an interrupted step or action decided
            p = release.pending
            _finish(config, store, deployer, notifier, release, p["state"], p["reason"], p["actor"], now, lease)
            return StepResult(PROMOTE if p["state"] == PROMOTED else ROLLBACK, p["reason"], release)
        # Measure first, then verify: the evidence counts in full only when the variants were
        # verified at the window's start (a previous step) and again after the measurement.
        since, drifts, failure = release.serving_since, _drifts(release), None
        try:
            decision = analyse(config, release, prometheus, clock(), quality_source)
        except Exception as e:  # noqa: BLE001 (re-raised below, once drift is dealt with)
            failure = e
        measured = release.analysis
        verified = reconcile(config, Registry(store), deployer, release, clock, lease.check)
        release.updated = iso(clock())
        if failure is not None:
            releases.save(release)  # what was seen and re-applied stays recorded
            raise failure
        full = verified and since is not None and release.serving_since == since
        if _drifts(release) > drifts:
            decision = not_counted(config, release, clock(), "drift seen after the measurement: not counted; the "
                                   f"window starts again when {config.canary_function} serves {release.candidate}"
                                   " (see the events)", measured)
        elif not full and decision.action != ROLLBACK:  # unverified evidence may only roll back
            decision = not_counted(config, release, clock(), (
                f"the analysis window starts at {release.serving_since}: {config.canary_function} serves "
                f"{release.candidate}") if verified else (
                f"not counting evidence: {config.canary_function} is not verified serving {release.candidate}"
                " (see the events)"), measured)
        if decision.action == WAIT:
            releases.save(release)
            return StepResult(WAIT, decision.reason, release)
        state = PROMOTED if decision.action == PROMOTE else ROLLED_BACK
        _finish(config, store, deployer, notifier, release, state, decision.reason, "controller", now, lease)
        return StepResult(decision.action, decision.reason, release)


def _drifts(release: Release) -> int:
    return sum(1 for e in release.events if e.get("event") == "drift_seen")


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
    now = utc_now(now)
    if ReleaseStore(store).running() is None:  # said at once, without taking the lease
        raise InvalidTransition(f"no release is running: nothing to {action}")
    with holding(store, f"{action} ({actor})", config.lease_ttl_s, now) as lease:
        release = ReleaseStore(store).running()  # again, under the lease
        if release is None:
            raise InvalidTransition(f"no release is running: nothing to {action}")
        return _finish(config, store, deployer, notifier, release, MANUAL_ACTIONS[action],
                       reason or f"{action} by hand", actor, now, lease)


def status(store: ObjectStore, history: int = 5) -> dict[str, Any]:
    releases, registry = ReleaseStore(store), Registry(store)
    current = releases.current()
    return {
        "running": bool(current and current.running),
        "current": asdict(current) if current else None,
        "aliases": {name: registry.alias_version(name) for name in (STABLE_ALIAS, CANDIDATE)},
        "lease": read_lease(store),
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
