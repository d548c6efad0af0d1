"""Reading batches back: what snapshots, training and the release's online quality read.

Every loader reads only committed batches (named by a manifest, `layout.list_batches`) and keeps
each record once, also where two stored ranges overlap (a rebalance race). A record is named by
(topic, partition, log epoch, offset): the same offset in two epochs is two records (the log was
reset or replaced in between), so each epoch's offsets are kept once on their own.

Ratings are read as integer codes, batch by batch (`_Coded`): one vocabulary merge, no per-row
strings, each batch's bytes dropped once decoded.

Owns: `load_ratings` (a coded `movierec.ratings.RatingsTable`), `load_watches` (`WatchColumns`), `load_watch_codes`,
`load_quarantine`, `iter_recommendations`.

Must not touch: writing batches (`builder`), Kafka, what readers do with the rows.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from movierec.batches.encoding import decode_columns
from movierec.batches.layout import list_batches
from movierec.store import ObjectStore

Window = tuple[int, int] | None  # (first, last) event time_us a reader needs; None: all


def _batches_once(store: ObjectStore, kind: str, topic: str | None, window: Window = None):
    """(key of the `kind` object, last offset already taken before it) of every committed batch
    that adds records, in layout order (topic, partition, epoch, offsets). With a `window`, a batch
    whose manifest says its `kind` events all lie outside it is not read (one written before
    manifests carried `time_us` always is)."""
    covered: dict[tuple[str, int, int], int] = {}  # (topic, partition, epoch) -> last offset taken
    for ref in list_batches(store, topic):
        manifest = json.loads(store.get(ref.key("manifests")))
        key = manifest.get("objects", {}).get(kind)
        identity = (ref.topic, ref.partition, ref.epoch)
        seen = covered.get(identity, -1)
        covered[identity] = max(seen, ref.last)
        span = manifest.get("time_us", {}).get(kind) if window else None
        if span is not None and (span[1] < window[0] or span[0] > window[1]):
            continue
        if key is not None and ref.last > seen:
            yield ref, key, seen


def _columns_once(store: ObjectStore, kind: str, topic: str | None,
                  window: Window = None) -> list[dict[str, np.ndarray]]:
    """The columns of every committed batch of `kind`, each record kept once."""
    out = []
    for ref, key, seen in _batches_once(store, kind, topic, window):
        columns = decode_columns(store.get(key))
        if ref.first <= seen:  # overlapping ranges from a rebalance race: keep each offset once
            keep = columns["offset"] > seen
            columns = {n: (c if n == "movie_vocab" else c[keep]) for n, c in columns.items()}
        out.append(columns)
    return out


class _Coded:
    """Batches of one kind read one at a time into integer columns: each batch's movie codes are
    remapped into one vocabulary (a dict lookup per distinct id of the batch, a small array per
    batch), so no per-row string is ever made and a batch's bytes are dropped once decoded."""

    def __init__(self, value_column: str, value_dtype):
        self.value_column, self.value_dtype = value_column, value_dtype
        self.index: dict[str, int] = {}
        self.parts: dict[str, list[np.ndarray]] = {"time_us": [], "user_id": [], "code": [], "value": []}

    def add(self, columns: dict, seen: int | None) -> None:
        vocab = columns["movie_vocab"]
        index = self.index
        lookup = np.fromiter((index.setdefault(m, len(index)) for m in vocab), np.int32, len(vocab))
        keep = None if seen is None else columns["offset"] > seen
        for name, column in (("time_us", columns["time_us"]), ("user_id", columns["user_id"]),
                             ("code", lookup[columns["movie_code"]] if len(lookup) else
                              np.empty(0, np.int32)), ("value", columns[self.value_column])):
            self.parts[name].append(column if keep is None else column[keep])

    def merged(self):
        """(time_us, user_id, sorted distinct movie ids (object array of str), int32 codes into
        them, values) in event-time order (ties keep stream order), or None without rows."""
        if not self.parts["time_us"]:
            return None
        columns = {}
        for name, dtype in (("time_us", np.int64), ("user_id", np.int64), ("code", np.int32),
                            ("value", self.value_dtype)):
            parts, self.parts[name] = self.parts[name], []
            columns[name] = np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype)
            del parts
        vocab = np.empty(len(self.index), dtype=object)
        vocab[:] = list(self.index)
        used = np.bincount(columns["code"], minlength=len(vocab)) > 0  # ids of dropped overlap rows
        order = np.flatnonzero(used)[np.argsort(vocab[used], kind="stable")]
        rank = np.full(len(vocab), -1, np.int32)
        rank[order] = np.arange(len(order), dtype=np.int32)
        codes = rank[columns["code"]]
        times = columns["time_us"]
        if len(times) > 1 and not (times[1:] >= times[:-1]).all():  # several partitions: interleave
            chrono = np.argsort(times, kind="stable")
            return (times[chrono], columns["user_id"][chrono], vocab[order], codes[chrono],
                    columns["value"][chrono])
        return times, columns["user_id"], vocab[order], codes, columns["value"]


def _coded_once(store: ObjectStore, kind: str, topic: str | None, value_column: str, value_dtype):
    coded = _Coded(value_column, value_dtype)
    for ref, key, seen in _batches_once(store, kind, topic):
        coded.add(decode_columns(store.get(key), vocab_as_list=True), seen if ref.first <= seen else None)
    return coded.merged()


def _rows_once(store: ObjectStore, kind: str, topic: str | None, window: Window = None) -> Iterable[dict]:
    """The JSON lines of every committed batch of `kind`, each record once."""
    for ref, key, seen in _batches_once(store, kind, topic, window):
        for line in store.get(key).decode().splitlines():
            row = json.loads(line)
            if row["offset"] > seen:
                yield row


def _merged(batches: list[dict[str, np.ndarray]], value_column: str):
    """Concatenate batches into (time_us, user_id, movie_ids '<U', values) in event-time order."""
    if not batches:
        return None
    movies = np.concatenate([b["movie_vocab"][b["movie_code"]] for b in batches])
    times = np.concatenate([b["time_us"] for b in batches])
    order = np.argsort(times, kind="stable")
    return (times[order], np.concatenate([b["user_id"] for b in batches])[order], movies[order],
            np.concatenate([b[value_column] for b in batches])[order])


def load_ratings(store: ObjectStore, topic: str | None = None):
    """Every stored rating (of `topic`, or of all topics) as a `movierec.ratings.RatingsTable`,
    in event-time order (ties keep stream order), each stream record once."""
    from movierec.ratings import RatingsTable

    merged = _coded_once(store, "ratings", topic, "rating", np.float32)
    if merged is None:
        return RatingsTable.empty()
    times, users, movies, codes, ratings = merged
    return RatingsTable.from_codes(users, movies, codes, ratings, time_us=times)


@dataclass(frozen=True)
class WatchColumns:
    time_us: np.ndarray  # int64 microseconds since the epoch (stream times are naive: UTC)
    user_ids: np.ndarray  # int64
    movie_ids: np.ndarray  # '<U'
    minutes: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.user_ids)


def load_watch_codes(store: ObjectStore, topic: str | None = None):
    """Every stored watch line as (time_us, user ids, sorted distinct movie ids (object array),
    int32 codes into them), event-time order, each record once; None without watches."""
    merged = _coded_once(store, "watches", topic, "minute", np.int32)
    return None if merged is None else merged[:4]


def load_watches(store: ObjectStore, topic: str | None = None, window: Window = None) -> WatchColumns:
    """Stored watches in event-time order; with a `window` (first, last time_us), those of the
    batches that may hold watches in it (whole batches: the caller filters the rows)."""
    merged = _merged(_columns_once(store, "watches", topic, window), "minute")
    if merged is None:
        return WatchColumns(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, "<U1"),
                            np.empty(0, np.int32))
    return WatchColumns(*merged)


def load_quarantine(store: ObjectStore, topic: str | None = None) -> list[dict]:
    """Quarantined lines (offset, reason, detail, line) of committed batches, each record once."""
    return list(_rows_once(store, "quarantine", topic))


def iter_recommendations(store: ObjectStore, topic: str | None = None, window: Window = None) -> Iterable[dict]:
    """Recommendation events of committed batches, each record once; with a `window`, those of the
    batches that may hold some in it (the caller filters the rows)."""
    return _rows_once(store, "recommendations", topic, window)

