"""Leases in the object store: one holder at a time of a named job, with an expiry and a fencing
token, over nothing but the store's two writes (`put_once`, `replace`).

How it is exclusive (no compare-and-swap needed):
- every acquisition is a NEW write-once object `leases/<name>/<token:012d>.json` holding the
  holder, when it was taken and when it expires; `token` is one more than the latest one. Two
  callers racing for the same token write different bytes, so `put_once` lets exactly one of them
  create it (an exclusive link on a local folder, `If-None-Match: *` on S3/MinIO): the token is the
  fencing token;
- a lease is free when its latest token was released (a write-once marker
  `leases/<name>/<token:012d>.released`), has expired, or its holder is a process that is
  provably gone: same host, same boot, same PID namespace, and its PID is not running or is
  another process now (its start time differs). A holder that died elsewhere frees it at expiry;
- `leases/<name>.json` is only a hint (atomic replace) naming the latest token, so that finding it
  costs a few reads instead of a listing; a stale hint costs one more read, never exclusivity;
- a holder calls `Lease.check()` before each write that must not race a successor (ingest: before
  storing a batch and committing its offsets): it raises `LeaseLost` once a newer token exists or
  its own expiry has passed, so a run that overran its lease stops instead of acting twice.

Clocks: expiry is wall-clock time (unix seconds) written by the holder and compared by the
others, so hosts sharing a lease need clocks within a few seconds of each other (NTP); the
expiry's margin (ingest: INGEST_LEASE_GRACE) is far larger.

The one lease of the project: ingest holds `leases/ingest/<group>` per consumer group
(movierec.adapters.kafka_ingest), the release controller holds `leases/release` for each step or
action (movierec.release.state: its clock and its wording).

Owns: `acquire`, `Lease`,
`LeaseHeld` / `LeaseLost` (both `Conflict`, 409: the message names the holder and when the lease
is free), `lease_state` (who holds it, for operators), `utc`.
Must not touch: what the lease protects (its callers), services (it sees only `ObjectStore`).
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from movierec.errors import Conflict
from movierec.store import ObjectExistsError, ObjectNotFoundError, ObjectStore

PREFIX = "leases"
_MAX_PROBES = 1000  # a hint that is this stale means the store was tampered with


class LeaseHeld(Conflict):
    """Someone else holds the lease: `holder` (who), `token`, `expires` (until when, UTC) and
    `record` (the holder's whole record)."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = record
        self.holder = str(record.get("holder", "unknown"))
        self.token = record.get("token")
        self.expires = utc(record.get("expires_at", 0))

    @property
    def retry_after_s(self) -> int:
        return max(1, int(self.record.get("expires_at", 0) - time.time()) + 1)


class LeaseLost(Conflict):
    """This holder's lease expired or was taken over: it must stop before acting again."""


def utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def describe_holder(holder: dict, now: float | None = None) -> str:
    """`<who> (lease <token>) since <t>; free when it ends, at the latest <t> (in N s)`."""
    now = time.time() if now is None else now
    left = max(0, round(holder.get("expires_at", 0) - now))
    return (f"{holder.get('holder', 'unknown')} (lease {holder.get('token')}) since "
            f"{utc(holder.get('acquired_at', 0))}; free when it ends, at the latest "
            f"{utc(holder.get('expires_at', 0))} (in {left} s)")


def default_holder(what: str) -> str:
    """`<what> on <host> pid <pid>`: enough for an operator to find the process."""
    return f"{what} on {socket.gethostname()} pid {os.getpid()}"


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None when it does not exist."""
    stat = _read_text(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def process_identity() -> dict:
    """What lets another process on the same machine tell that this one is gone (Linux)."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot_id": _read_text("/proc/sys/kernel/random/boot_id"),
            "pid_ns": pid_ns, "pid": pid, "start_ticks": _start_ticks(pid)}


def holder_gone(record: dict) -> bool:
    """True only when the holder was a process of this machine, boot and PID namespace that is
    not running any more (its PID is free, or taken by a process started at another time)."""
    theirs, mine = record.get("process") or {}, process_identity()
    if not all(theirs.get(k) and theirs.get(k) == mine[k] for k in ("host", "boot_id", "pid_ns")):
        return False
    if not theirs.get("pid") or not theirs.get("start_ticks"):
        return False
    return _start_ticks(int(theirs["pid"])) != theirs["start_ticks"]


@dataclass
class Lease:
    store: ObjectStore
    name: str
    token: int
    record: dict
    clock: Callable[[], float] = time.time
    released: bool = False

    @property
    def expires_at(self) -> float:
        return self.record["expires_at"]

    def check(self) -> None:
        """LeaseLost unless this is still the latest token, not released, and it has not expired."""
        if self.released:
            raise LeaseLost(f"lease {self.name} (token {self.token}) was already released: "
                            "stopped before writing anything more")
        now = self.clock()
        if now >= self.expires_at:
            raise LeaseLost(f"lease {self.name} (token {self.token}) expired at {utc(self.expires_at)}: "
                            "stopped before writing anything more")
        successor = _token_key(self.name, self.token + 1)
        if self.store.exists(successor):
            taker = _read(self.store, successor) or {}
            raise LeaseLost(f"lease {self.name} (token {self.token}) was taken over by "
                            f"{taker.get('holder', 'another holder')}: stopped before writing anything more")

    def release(self) -> None:
        """Free the lease now (idempotent). A lease already taken over is left alone."""
        if self.released:
            return
        self.released = True
        marker = {"token": self.token, "holder": self.record["holder"], "released_at": self.clock()}
        self.store.put_once(_released_key(self.name, self.token), _dump(marker))


def acquire(store: ObjectStore, name: str, holder: str, ttl_s: float,
            clock: Callable[[], float] = time.time) -> Lease:
    """Take lease `name` for `ttl_s` seconds, or raise LeaseHeld naming its holder at once."""
    if ttl_s <= 0:
        raise ValueError("a lease needs a positive duration")
    latest, record = _latest(store, name)
    while True:
        now = clock()
        if record is not None and _holds(store, name, latest, record, now):
            raise LeaseHeld(f"held by {describe_holder(record, now)}", record)
        token = latest + 1
        mine = {"token": token, "holder": holder, "id": uuid.uuid4().hex, "acquired_at": now,
                "expires_at": now + ttl_s, "process": process_identity()}
        try:
            store.put_once(_token_key(name, token), _dump(mine))
        except ObjectExistsError:  # another caller took this token first: it is the latest now
            latest, record = token, _read(store, _token_key(name, token))
            continue
        store.replace(f"{PREFIX}/{name}.json", _dump({"token": token}))
        return Lease(store, name, token, mine, clock)


def lease_state(store: ObjectStore, name: str, clock: Callable[[], float] = time.time) -> dict | None:
    """The latest holder's record with `"held"`, `"released"` and `"holder_gone"` (bools: the
    holder is a process of this machine that has exited, so the next taker gets the lease at
    once, as `acquire` decides), or None when the lease was never taken."""
    latest, record = _latest(store, name)
    if record is None:
        return None
    gone = holder_gone(record)
    return {**record, "held": _holds(store, name, latest, record, clock(), gone),
            "released": store.exists(_released_key(name, latest)), "holder_gone": gone}


def _holds(store: ObjectStore, name: str, token: int, record: dict, now: float,
           gone: bool | None = None) -> bool:
    return (now < record.get("expires_at", 0) and not store.exists(_released_key(name, token))
            and not (holder_gone(record) if gone is None else gone))


def _latest(store: ObjectStore, name: str) -> tuple[int, dict | None]:
    """(latest token, its record): from the hint, then forward while newer tokens exist."""
    hint = _read(store, f"{PREFIX}/{name}.json") or {}
    token = int(hint.get("token", 0))
    record = _read(store, _token_key(name, token)) if token else None
    for _ in range(_MAX_PROBES):
        newer = _read(store, _token_key(name, token + 1))
        if newer is None:
            return token, record
        token, record = token + 1, newer
    raise Conflict(f"lease {name}: more than {_MAX_PROBES} tokens past its hint; check {PREFIX}/{name}/")


def _token_key(name: str, token: int) -> str:
    return f"{PREFIX}/{name}/{token:012d}.json"


def _released_key(name: str, token: int) -> str:
    return f"{PREFIX}/{name}/{token:012d}.released"


def _read(store: ObjectStore, key: str) -> dict | None:
    try:
        return json.loads(store.get(key))
    except ObjectNotFoundError:
        return None


def _dump(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()
