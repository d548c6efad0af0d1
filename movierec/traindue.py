"""Whether a scheduled training is worth running now: the train function's cheap pre-check.

Why: the first model should be trained as soon as enough data is stored, not at the next
(two-minute locally, two-day in production) tick; and a tick that finds nothing new must not fit,
register and release a model identical to the last one. So the schedule can be frequent (seconds,
locally) and each tick costs a listing and a few small reads when nothing is due:

- no model registered yet: due once the stored batches hold TRAIN_MIN_RATINGS rating events
  (counted from the batch manifests, stopping at the minimum), else "waiting for data";
- otherwise: not due when the stored batches are exactly those of the newest registered model's
  snapshot ("nothing new"), nor, once a stable model serves, while the newest model is younger
  than TRAIN_MIN_INTERVAL (a local cadence; 0 in production, where the schedule is the cadence).

Manual calls always train (the train function applies this to cron calls only); the data checks
of the training itself (unique ratings, users, movies) still decide whether a model comes out.

Owns: `training_due` (None when due, else the one-line reason). Must not touch: training itself
(movierec.trainjob), HTTP, services (the store is passed in).
"""
from __future__ import annotations

import json
from datetime import UTC, datetime

from movierec.batches.layout import list_batches
from movierec.registry import STABLE, Registry
from movierec.snapshot import SNAPSHOTS
from movierec.store import ObjectNotFoundError, ObjectStore


def _stored_ratings(store: ObjectStore, refs, enough: int) -> int:
    count = 0
    for ref in refs:
        try:
            manifest = json.loads(store.get(ref.key("manifests")))
        except (ObjectNotFoundError, ValueError):
            continue
        count += int((manifest.get("events") or {}).get("rate") or 0)
        if count >= enough:
            break
    return count


def _snapshot_manifests(store: ObjectStore, snapshot_id: str | None) -> set[str] | None:
    if not snapshot_id:
        return None
    try:
        manifest = json.loads(store.get(f"{SNAPSHOTS}/{snapshot_id}.json"))
    except (ObjectNotFoundError, ValueError):
        return None
    return {o["key"] for o in manifest.get("objects", []) if o.get("key", "").startswith("data/manifests/")}


def training_due(store: ObjectStore, min_ratings: int, topic: str | None = None, min_interval_s: float = 0.0,
                 now: datetime | None = None) -> str | None:
    """None when a training should run now; otherwise why not, in one line."""
    refs = list_batches(store, topic)
    if not refs:
        return "waiting for data: no batches stored yet"
    registry = Registry(store)
    versions = registry.versions()
    if not versions:
        ratings = _stored_ratings(store, refs, min_ratings)
        if ratings < min_ratings:
            return (f"waiting for data: {ratings} ratings stored, the first model needs {min_ratings} "
                    f"(TRAIN_MIN_RATINGS)")
        return None
    newest = registry.get(versions[-1])
    trained_on = _snapshot_manifests(store, newest.snapshot_id)
    if trained_on is not None and trained_on == {ref.key("manifests") for ref in refs}:
        return f"nothing new: the {len(refs)} stored batches are model {newest.version}'s snapshot {newest.snapshot_id}"
    if min_interval_s > 0 and registry.alias_version(STABLE) is not None:
        created = datetime.fromisoformat(newest.metadata["created"])
        age = ((now or datetime.now(UTC)) - created).total_seconds()
        if age < min_interval_s:
            return (f"model {newest.version} is {age:.0f}s old: the next training waits until "
                    f"{min_interval_s:g}s (TRAIN_MIN_INTERVAL)")
    return None
