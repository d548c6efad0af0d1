"""Dataset snapshots: a named, reproducible set of stored rating and watch batches.

A snapshot is the set of committed ingest batches at one moment (see `movierec.batches` for the
layout): for each batch, its manifest key and its ratings and watches object keys, each with the
sha256 of its bytes. Its id is derived from that list only,
`snap-<first 16 hex of sha256("<key> <sha256>\\n" for each object, sorted)>`, so the same batches
always give the same id, and any added, removed or changed batch gives another. The snapshot
manifest is stored write-once at `data/snapshots/<id>.json`; it holds nothing time-dependent,
so taking the same snapshot twice is a no-op.

Ratings and watches are read with the batches' own loaders (`movierec.batches.loaders`, which keep
every Kafka offset once, batch by batch, as integer codes): while a snapshot is taken through
`_TakingView` (each object read once and hashed as it is read: one batch's bytes in memory at a
time, one hash per object), and later through `SnapshotView`: a read-only store that shows only
the snapshot's objects and refuses any whose bytes changed. One loader, and a snapshot cannot silently grow.
`take_snapshot`/`load_snapshot` give the ratings; `take_snapshot_data`/`load_snapshot_data` give
`SnapshotData`: the ratings (with their times) and the watches folded into (user, movie) pairs
(`movierec.ratings.WatchPairs`), what training reads. A snapshot recorded before watches were
part of snapshots holds no watch objects: its watches are empty.

`export_ratings` / `read_ratings_file` / `read_snapshot_file` write and read a snapshot's ratings
and watch pairs as one `.npz` file (plain arrays, loaded without pickle): the file DVC tracks and
the offline training reads.

Must not touch: how batches are written (ingest), training, the registry.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from movierec.batches.layout import list_batches
from movierec.batches.loaders import load_ratings, load_watch_codes
from movierec.errors import Rejected
from movierec.ratings import RatingsTable, WatchPairs
from movierec.store import ObjectNotFoundError, ObjectStore, sha256_hex

SNAPSHOTS = "data/snapshots"
SNAPSHOT_KINDS = ("ratings", "watches")  # the batch objects a snapshot holds, besides manifests


class SnapshotError(Rejected):
    """A snapshot cannot be taken or read: no batches, a changed object, an unreadable file.
    The data is wrong and retrying will not help (422, as the train function answered it)."""

    status = 422


@dataclass(frozen=True)
class Snapshot:
    id: str
    topic: str | None
    objects: tuple[tuple[str, str], ...]  # (key, sha256), sorted by key

    @property
    def n_batches(self) -> int:
        return sum(1 for k, _ in self.objects if k.startswith("data/manifests/"))

    def manifest(self) -> dict:
        return {
            "id": self.id,
            "topic": self.topic,
            "n_batches": self.n_batches,
            "objects": [{"key": k, "sha256": s} for k, s in self.objects],
        }


def snapshot_id(objects) -> str:
    digest = hashlib.sha256("".join(f"{k} {s}\n" for k, s in sorted(objects)).encode()).hexdigest()
    return f"snap-{digest[:16]}"


class SnapshotView:
    """A read-only ObjectStore showing only a snapshot's objects, each checked by sha256."""

    def __init__(self, store: ObjectStore, objects: dict[str, str]):
        self.store, self.objects = store, objects

    def describe(self) -> str:
        return f"snapshot view of {self.store.describe()}"

    def get(self, key: str) -> bytes:
        if key not in self.objects:
            raise ObjectNotFoundError(f"{self.describe()}: {key} is not in the snapshot")
        data = self.store.get(key)
        if sha256_hex(data) != self.objects[key]:
            raise SnapshotError(f"{key} changed since the snapshot was taken (sha256 mismatch)")
        return data

    def exists(self, key: str) -> bool:
        return key in self.objects

    def list(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def put_once(self, key: str, data: bytes) -> bool:
        raise SnapshotError("a snapshot is read-only")

    replace = put_once


@dataclass(frozen=True, eq=False)
class SnapshotData:
    """What training reads from a snapshot: every rating (event-time order, with times) and every
    watched (user, movie) pair."""

    ratings: RatingsTable
    watches: WatchPairs

    @property
    def last_time_us(self) -> int | None:
        """The latest event time in the snapshot (ratings and watches), or None without times."""
        ends = [int(t.max()) for t in (self.ratings.time_us, self.watches.last_time_us) if t is not None and len(t)]
        return max(ends) if ends else None


class _TakingView:
    """The store while a snapshot is taken: the committed batches listed once (the snapshot's
    moment), each object read once and hashed as it is read (that sha256 is the snapshot's
    record of it), nothing kept but the (small) manifests. The loaders stream through it batch
    by batch, so taking a snapshot holds one batch's bytes at a time."""

    def __init__(self, store: ObjectStore, topic: str | None):
        self.store = store
        self.manifest_keys = [ref.key("manifests") for ref in list_batches(store, topic)]
        self.objects: dict[str, str] = {}
        self._manifests: dict[str, bytes] = {}

    def describe(self) -> str:
        return self.store.describe()

    def get(self, key: str) -> bytes:
        data = self._manifests.get(key)
        if data is not None:
            return data
        data = self.store.get(key)
        digest = sha256_hex(data)
        if self.objects.setdefault(key, digest) != digest:
            raise SnapshotError(f"{key} changed while the snapshot was taken (sha256 mismatch)")
        if key.startswith("data/manifests/"):
            self._manifests[key] = data
        return data

    def exists(self, key: str) -> bool:
        return self.store.exists(key)

    def list(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.manifest_keys if k.startswith(prefix))

    def put_once(self, key: str, data: bytes) -> bool:
        raise SnapshotError("a snapshot is read-only")

    replace = put_once

    def record_rest(self) -> None:
        """Hash the snapshot's objects the loaders did not need (a batch whose offsets an
        overlapping range already holds, the watches of a ratings-only read): the snapshot
        names every batch object either way."""
        for manifest_key in self.manifest_keys:
            batch_objects = json.loads(self.get(manifest_key)).get("objects", {})
            for kind in SNAPSHOT_KINDS:
                key = batch_objects.get(kind)
                if key and key not in self.objects:
                    self.get(key)


def _collect(store: ObjectStore, topic: str | None, with_watches: bool):
    """Snapshot every committed batch (of `topic`, or all) now, reading each object once, and
    store its manifest: (snapshot, ratings, watch pairs or None)."""
    view = _TakingView(store, topic)
    if not view.manifest_keys:
        where = f"topic {topic!r}" if topic else "any topic"
        raise SnapshotError(f"no committed rating batches for {where} in {store.describe()}")
    ratings = load_ratings(view, topic)
    watches = _watch_pairs(view, topic) if with_watches else None
    view.record_rest()
    objects = view.objects
    snapshot = Snapshot(snapshot_id(objects.items()), topic, tuple(sorted(objects.items())))
    store.put_once(f"{SNAPSHOTS}/{snapshot.id}.json", _dump(snapshot.manifest()))
    return snapshot, ratings, watches


def _watch_pairs(view: ObjectStore, topic: str | None) -> WatchPairs:
    lines = load_watch_codes(view, topic)
    return WatchPairs.empty() if lines is None else WatchPairs.from_coded_lines(*lines)


def _recorded(store: ObjectStore, snap_id: str) -> tuple[Snapshot, SnapshotView]:
    try:
        manifest = json.loads(store.get(f"{SNAPSHOTS}/{snap_id}.json"))
    except ObjectNotFoundError:
        raise SnapshotError(f"no snapshot {snap_id} in {store.describe()}") from None
    objects = tuple((o["key"], o["sha256"]) for o in manifest["objects"])
    if snapshot_id(objects) != snap_id:
        raise SnapshotError(f"snapshot {snap_id}: manifest does not match its id")
    return Snapshot(snap_id, manifest.get("topic"), objects), SnapshotView(store, dict(objects))


def _data(snapshot: Snapshot, view: SnapshotView) -> SnapshotData:
    ratings = load_ratings(view, snapshot.topic)
    if not any(k.startswith("data/watches/") for k, _ in snapshot.objects):
        return SnapshotData(ratings, WatchPairs.empty())  # recorded before snapshots held watches
    return SnapshotData(ratings, _watch_pairs(view, snapshot.topic))


def take_snapshot(store: ObjectStore, topic: str | None = None) -> tuple[Snapshot, RatingsTable]:
    """Snapshot every committed batch (of `topic`, or all) now, store its manifest, and return
    its ratings."""
    snapshot, ratings, _ = _collect(store, topic, with_watches=False)
    return snapshot, ratings


def take_snapshot_data(store: ObjectStore, topic: str | None = None) -> tuple[Snapshot, SnapshotData]:
    """As `take_snapshot`, returning the ratings and the watches."""
    snapshot, ratings, watches = _collect(store, topic, with_watches=True)
    return snapshot, SnapshotData(ratings, watches)


def load_snapshot(store: ObjectStore, snap_id: str) -> tuple[Snapshot, RatingsTable]:
    """The ratings of an earlier snapshot, each object verified against its recorded sha256."""
    snapshot, view = _recorded(store, snap_id)
    return snapshot, load_ratings(view, snapshot.topic)


def load_snapshot_data(store: ObjectStore, snap_id: str) -> tuple[Snapshot, SnapshotData]:
    """The ratings and watches of an earlier snapshot, each object verified."""
    snapshot, view = _recorded(store, snap_id)
    return snapshot, _data(snapshot, view)


def export_ratings(table: RatingsTable, path: str | os.PathLike[str], snap_id: str | None = None,
                   watches: WatchPairs | None = None) -> str:
    """Write the ratings (and their times, and the watch pairs, when given) to one .npz file
    (deterministic bytes); returns its sha256."""
    buf = io.BytesIO()
    arrays = {"user_ids": table.user_ids, "movie_ids": table.movie_ids, "ratings": table.ratings}
    if table.time_us is not None:
        arrays["time_us"] = table.time_us
    if watches is not None:
        arrays.update(watch_user_ids=watches.user_ids, watch_movie_ids=watches.movie_ids,
                      watch_minutes=watches.minutes, watch_last_time_us=watches.last_time_us)
    if snap_id:
        arrays["snapshot_id"] = np.array(snap_id)
    np.savez(buf, **arrays)
    data = buf.getvalue()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
    return sha256_hex(data)


def export_snapshot_data(data: SnapshotData, path: str | os.PathLike[str], snap_id: str | None = None) -> str:
    """A snapshot's ratings and watch pairs as one .npz file; returns its sha256."""
    return export_ratings(data.ratings, path, snap_id, data.watches)


def read_snapshot_file(path: str | os.PathLike[str]) -> tuple[SnapshotData, str | None]:
    """(ratings and watches, snapshot id if recorded) from a file written by `export_ratings`;
    a file without watch pairs gives none."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = set(npz.files)
            times = npz["time_us"] if "time_us" in files else None
            table = RatingsTable(npz["user_ids"], npz["movie_ids"], npz["ratings"], times)
            watches = WatchPairs.empty()
            if "watch_user_ids" in files:
                watches = WatchPairs(npz["watch_user_ids"], npz["watch_movie_ids"], npz["watch_minutes"],
                                     npz["watch_last_time_us"])
            snap_id = str(npz["snapshot_id"]) if "snapshot_id" in files else None
    except (OSError, KeyError, ValueError) as e:
        raise SnapshotError(f"cannot read ratings file {path}: {str(e).splitlines()[0]}") from None
    return SnapshotData(table, watches), snap_id


def read_ratings_file(path: str | os.PathLike[str]) -> tuple[RatingsTable, str | None]:
    """(ratings, snapshot id if recorded) from a file written by `export_ratings`."""
    data, snap_id = read_snapshot_file(path)
    return data.ratings, snap_id


def _dump(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
