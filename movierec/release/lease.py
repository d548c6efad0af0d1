"""One release step at a time: the lease in the object store, with a fencing token.

Why not only an atomic replace of `releases/lease.json`: the store has no compare-and-swap, so two
steps that both read "free" and both replace the object would both believe they hold it. A lease
is therefore TAKEN by a write-once claim, `releases/lease/<token>.json` through
`ObjectStore.put_once`, which is exclusive on both backends (local folder: a hard link, which fails
when the file exists; S3/MinIO: a conditional PUT with `If-None-Match: *`). Tokens count up, so of
two steps racing for token n+1 exactly one writes it; the other gets ObjectExistsError and answers
`LeaseHeld` (409) naming the winner. (An S3 server without conditional PUT makes S3Store fall back
to HEAD-then-PUT, which narrows the race but cannot exclude it: use S3, MinIO or a local folder.)

`releases/lease.json` (atomic replace) is the pointer people and the next taker read: the latest
claim's holder, token, expiry, and whether it was released. A taker starts from the pointer and
walks forward over newer claims (one HEAD each, normally one), so a stale pointer is never
trusted. A lease is free when the latest claim is released (the pointer says so for that token)
or has expired.

Fencing: before every write of release state (the record, an alias, a redeploy) the holder calls
`check()`, which raises `LeaseLost` when a claim with a higher token exists (the lease expired and
was taken over) or when its own TTL has passed on its own clock: a step that outlives its lease
stops before another can act, and a step whose lease was taken over cannot write. The store cannot
check the token itself; a takeover between a check and the write it guards needs a step that
overruns its TTL at that instant, so RELEASE_LEASE_TTL (3m) is longer than the release function's
exec_timeout (120s). A step that dies holding the lease blocks the next ones (409 naming it and
its expiry) until the TTL passes. Steps take the lease only while a release is running: one small
claim per acting step, never read again once a newer one exists.

Owns: LEASE_KEY, CLAIM_PREFIX, `Lease`, `acquire_lease`, `holding`, `read_lease`, `LeaseHeld`,
`LeaseLost`, `Clock`/`clock_from`. Must not touch: what is written under the lease (controller.py,
state.py), the store's backends.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from movierec.errors import Conflict
from movierec.store import ObjectExistsError, ObjectNotFoundError, ObjectStore

LEASE_KEY = "releases/lease.json"
CLAIM_PREFIX = "releases/lease/"
MAX_WALK = 1000  # claims walked past a stale pointer at most (one step writes one claim)

Clock = Callable[[], datetime]


def clock_from(now: datetime | None) -> Clock:
    """A fixed clock at `now` (tests, replays: every time the call records is `now`), or the wall
    clock (UTC) when `now` is None."""
    if now is not None:
        fixed = now.astimezone(UTC)
        return lambda: fixed
    return lambda: datetime.now(UTC)


class LeaseHeld(Conflict):
    """Another step or action holds the release lease (409): who, and until when."""

    def __init__(self, holder: str, token: int, expires: str):
        super().__init__(f"release lease held by {holder} (token {token}) until {expires}: "
                         "one release step acts at a time; try again after that")
        self.holder, self.token, self.expires = holder, token, expires


class LeaseLost(Conflict):
    """This step's lease expired or was taken over: it must not write release state."""


def _claim_key(token: int) -> str:
    return f"{CLAIM_PREFIX}{token:012d}.json"


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def default_holder(actor: str) -> str:
    return f"{actor} on {socket.gethostname()} pid {os.getpid()}"


@dataclass
class Lease:
    store: ObjectStore
    token: int
    holder: str
    acquired: datetime
    expires: datetime
    record: dict[str, Any]
    _mono: float = field(default_factory=time.monotonic)
    released: bool = False

    def now(self) -> datetime:
        """The lease's own clock: the acquisition time plus the (monotonic) time since."""
        return self.acquired + timedelta(seconds=time.monotonic() - self._mono)

    def check(self) -> None:
        """The fence, before every write of release state: LeaseLost when this lease expired or
        another step took a newer one."""
        if self.released:
            raise LeaseLost(f"release lease {self.token} of {self.holder} was already released")
        if self.now() >= self.expires:
            raise LeaseLost(f"release lease {self.token} of {self.holder} expired at {_iso(self.expires)}: "
                            "nothing more is written by this step")
        if self.store.exists(_claim_key(self.token + 1)):
            raise LeaseLost(f"release lease {self.token} of {self.holder} was taken over (token "
                            f"{self.token + 1}): nothing more is written by this step")

    def release(self) -> None:
        """Mark the lease free for the next step (nothing happens when it was lost meanwhile)."""
        if self.released:
            return
        try:
            self.check()
        except LeaseLost:
            self.released = True
            return
        pointer = {**self.record, "released": True, "released_at": _iso(self.now())}
        self.store.replace(LEASE_KEY, _dump(pointer))
        self.released = True


def _dump(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def _load(store: ObjectStore, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get(key))
    except ObjectNotFoundError:
        return None


def read_lease(store: ObjectStore) -> dict[str, Any] | None:
    """The pointer as stored (holder, token, acquired, expires, released), None before any lease."""
    return _load(store, LEASE_KEY)


def _latest(store: ObjectStore) -> tuple[int, dict[str, Any] | None, dict[str, Any] | None]:
    """(latest token, its claim, the pointer): from the pointer, walking forward over newer claims."""
    pointer = read_lease(store)
    token = int(pointer["token"]) if pointer else 0
    for _ in range(MAX_WALK):
        if not store.exists(_claim_key(token + 1)):
            break
        token += 1
    claim = _load(store, _claim_key(token)) if token else None
    return token, claim, pointer


def acquire_lease(store: ObjectStore, actor: str, ttl_s: float, now: datetime | None = None,
                  holder: str | None = None) -> Lease:
    """Take the release lease for `ttl_s` seconds, or raise LeaseHeld at once."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    holder = holder or default_holder(actor)
    token, claim, pointer = _latest(store)
    if claim is not None:
        released = bool(pointer and int(pointer["token"]) == token and pointer.get("released"))
        if not released and _parse(claim["expires"]) > now:
            raise LeaseHeld(claim["holder"], token, claim["expires"])
    expires = now + timedelta(seconds=ttl_s)
    record = {"token": token + 1, "holder": holder, "acquired": _iso(now), "expires": _iso(expires),
              "nonce": secrets.token_hex(8), "released": False}
    try:
        store.put_once(_claim_key(token + 1), _dump(record))
    except ObjectExistsError:
        winner = _load(store, _claim_key(token + 1)) or {"holder": "another step", "expires": "?"}
        raise LeaseHeld(winner["holder"], token + 1, winner["expires"]) from None
    lease = Lease(store, token + 1, holder, now, expires, record)
    store.replace(LEASE_KEY, _dump(record))
    return lease


@contextmanager
def holding(store: ObjectStore, actor: str, ttl_s: float, now: datetime | None = None,
            lease: Lease | None = None) -> Iterator[Lease]:
    """The given lease, or a new one taken now and released at the end (also on errors)."""
    if lease is not None:
        yield lease
        return
    taken = acquire_lease(store, actor, ttl_s, now)
    try:
        yield taken
    finally:
        taken.release()
