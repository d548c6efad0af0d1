"""The release record and where it is kept: states, `Release`, `ReleaseStore`, the release errors.

A release moves `canary` -> `promoted` | `rolled_back` | `aborted` (by hand), nothing else.
- `releases/current.json` (atomic replace) holds the running release, or the last one once it
  finished; `releases/history/<id>.json` (write-once) holds every finished release with its
  decision, the metric values and the PromQL queries behind them, and who decided.
- `Release.pending` records a decision before its first redeploy, so a step interrupted half-way
  is finished the same way by the next one, never re-decided.
- The record is the desired state (drift.py): `serving_since` is when the canary was last verified
  serving the candidate after a start or a drift (the analysis window starts there, never before
  `started`), `verified_at` the latest verification, and `events` the release's own history (drift
  seen, re-applied, window restarted, serving verified: each with its time), the latest
  `MAX_EVENTS` kept; `probes` the controller's own health calls of each variant (drift.py), which
  the analysis subtracts from the gateway's counts.
- `ReleaseStore(store, fence)`: `fence()` (the lease's check, lease.py) runs before every write, so
  a step whose lease was taken over cannot write.

Errors (movierec.errors taxonomy): `ReleaseError` is a `Conflict` (409): the release state
excludes the action; `InvalidTransition` (nothing running, already finished, another move in
progress) and `ReleaseRunningError` (a release is already running) are ReleaseErrors.

Owns: the state names, the record's JSON, the two keys, the events list. Must not touch: decisions
(checks.py), deployments (controller.py), drift (drift.py), the lease (lease.py), the store's backends.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from movierec.errors import Conflict
from movierec.registry import iso
from movierec.store import ObjectExistsError, ObjectNotFoundError, ObjectStore

CURRENT_KEY = "releases/current.json"
HISTORY_PREFIX = "releases/history/"

RUNNING = "canary"
PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
ABORTED = "aborted"
FINAL_STATES = (PROMOTED, ROLLED_BACK, ABORTED)
MAX_EVENTS = 100


class ReleaseError(Conflict):
    """A release action the current release state excludes (one line)."""


class InvalidTransition(ReleaseError):
    pass


class ReleaseRunningError(ReleaseError):
    pass


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
    serving_since: str | None = None  # the analysis window starts here (None: not verified yet)
    verified_at: str | None = None  # the latest time both variants were verified serving
    events: list[dict[str, Any]] = field(default_factory=list)  # [{"at", "event", ...details}]
    probes: list[dict[str, Any]] = field(default_factory=list)  # the controller's own calls (drift.py)

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def add_event(self, at: datetime, event: str, **details: Any) -> dict[str, Any]:
        entry = {"at": iso(at), "event": event, **details}
        self.events = [*self.events, entry][-MAX_EVENTS:]
        return entry

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


class ReleaseStore:
    def __init__(self, store: ObjectStore, fence: Callable[[], None] | None = None):
        self.store = store
        self.fence = fence  # raises (LeaseLost) when this writer may no longer write

    def current(self) -> Release | None:
        try:
            return Release.from_json(self.store.get(CURRENT_KEY))
        except ObjectNotFoundError:
            return None

    def running(self) -> Release | None:
        release = self.current()
        return release if release is not None and release.running else None

    def save(self, release: Release) -> None:
        if self.fence is not None:
            self.fence()
        if not release.running:
            try:
                self.store.put_once(f"{HISTORY_PREFIX}{release.id}.json", release.to_json())
            except ObjectExistsError:
                pass  # a retry after a crash between these two writes: the first record stands
        self.store.replace(CURRENT_KEY, release.to_json())

    def history(self, limit: int = 20) -> list[Release]:
        keys = self.store.list(HISTORY_PREFIX)[-limit:]
        return [Release.from_json(self.store.get(k)) for k in reversed(keys)]


def utc_now(now: datetime | None = None) -> datetime:
    """`now` (the current time when None) as an aware UTC datetime."""
    return (now or datetime.now(UTC)).astimezone(UTC)


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)  # 3.11 reads the trailing Z
