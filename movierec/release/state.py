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
- `ReleaseStore(store, fence)`: `fence()` (the lease's check) runs before every write, so a step
  whose lease was taken over cannot write.
- One release step or action at a time: they hold THE lease (movierec.lease) named `release`
  (`leases/release/<token>.json`, write-once, the token fencing every write): `acquire_lease`,
  `holding`, `read_lease` give it the release's clock and wording. A second taker gets
  `LeaseHeld` (409) at once naming the holder and its expiry; a holder that died on this machine
  (a killed release replica) frees it at once, one elsewhere at its expiry (RELEASE_LEASE_TTL,
  longer than the release function's exec_timeout). Times: `clock_from(now)` is a fixed clock
  for the times a call records (tests, replays) or the wall clock; the lease's own clock starts
  at `now` and runs on the monotonic clock, so a lease taken at a fixed `now` still expires.

Errors (movierec.errors taxonomy): `ReleaseError` is a `Conflict` (409): the release state
excludes the action; `InvalidTransition` (nothing running, already finished, another move in
progress) and `ReleaseRunningError` (a release is already running) are ReleaseErrors.

Owns: the state names, the record's JSON, the two keys, the events list, the release's use of the
lease (`RELEASE_LEASE`, `acquire_lease`, `holding`, `read_lease`) and its clocks (`Clock`,
`clock_from`). Must not touch: decisions (checks.py), deployments (controller.py), drift
(drift.py), how the lease is exclusive (movierec.lease), the store's backends.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from movierec import lease as leases
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


# -- the release lease (movierec.lease) ---------------------------------------------------------------
RELEASE_LEASE = "release"
Clock = Callable[[], datetime]


def clock_from(now: datetime | None) -> Clock:
    """A fixed clock at `now` (tests, replays: every time the call records is `now`), or the wall
    clock (UTC) when `now` is None."""
    if now is not None:
        fixed = now.astimezone(UTC)
        return lambda: fixed
    return lambda: datetime.now(UTC)


def _lease_clock(now: datetime | None) -> Callable[[], float]:
    """Unix seconds from `now` (the wall clock when None) on, advancing with the monotonic clock."""
    start, mono = utc_now(now).timestamp(), time.monotonic()
    return lambda: start + (time.monotonic() - mono)


def acquire_lease(store: ObjectStore, actor: str, ttl_s: float, now: datetime | None = None,
                  holder: str | None = None) -> leases.Lease:
    """Take the release lease for `ttl_s` seconds, or raise LeaseHeld (409) at once."""
    try:
        return leases.acquire(store, RELEASE_LEASE, holder or leases.default_holder(actor), ttl_s,
                              _lease_clock(now))
    except leases.LeaseHeld as e:
        e.args = (f"release lease {e}: one release step acts at a time; try again after that",)
        raise


@contextmanager
def holding(store: ObjectStore, actor: str, ttl_s: float, now: datetime | None = None,
            lease: leases.Lease | None = None) -> Iterator[leases.Lease]:
    """The given lease, or a new one taken now and released at the end (also on errors)."""
    if lease is not None:
        yield lease
        return
    taken = acquire_lease(store, actor, ttl_s, now)
    try:
        yield taken
    finally:
        taken.release()


def read_lease(store: ObjectStore, now: datetime | None = None) -> dict[str, Any] | None:
    """The latest holder of the release lease: holder, token, acquired, expires (UTC stamps),
    released, held and holder_exited (bools: its holder was a process of this machine that no
    longer exists, so the lease is free for the next step at once, whatever its expiry says), and
    the holder's pid; None before any lease."""
    found = leases.lease_state(store, RELEASE_LEASE, _lease_clock(now))
    if found is None:
        return None
    return {"holder": found["holder"], "token": found["token"], "acquired": leases.utc(found["acquired_at"]),
            "expires": leases.utc(found["expires_at"]), "released": found["released"], "held": found["held"],
            "holder_exited": found["holder_gone"], "pid": (found.get("process") or {}).get("pid")}
