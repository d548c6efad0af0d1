"""One batch: one partition's consecutive records parsed into the batch objects, checked, stored.

Owns: `BatchBuilder` (records in, as they arrive; a `ParsedBatch` out: a pure function of the
records and the log epoch the consumer sets on it), `parse_batch` (the same in one call), `check_quality` and its thresholds (flags for
people and alerts, never refusals), `manifest_bytes` (the batch's commit point, with
the first and last event time of each kind, `time_us`, so a reader can skip a batch outside the
time it asks for) and `store_batch`
(data objects first, the manifest last, each write-once).

Must not touch: Kafka and offset commits (the caller commits after `store_batch` returns), parsing
a line (`movierec.events.parse_line`), reading batches back (`loaders`).
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from movierec.batches.encoding import EventColumns, time_us
from movierec.batches.layout import KINDS, BatchRef
from movierec.events import (
    LINE_MAX_BYTES,
    RateEvent,
    RecommendationEvent,
    Rejection,
    WatchEvent,
    format_time,
    parse_line,
)
from movierec.store import ObjectExistsError, ObjectStore

log = logging.getLogger("movierec.batches")

MANIFEST_FORMAT = 1
# Volume anomaly: a batch far outside the recent median of its partition is flagged (not refused).
VOLUME_HISTORY = 10
VOLUME_LOW_RATIO = 0.1
VOLUME_HIGH_RATIO = 10.0
QUARANTINE_SHARE_HIGH = 0.05


@dataclass
class ParsedBatch:
    topic: str
    partition: int
    first: int
    last: int
    records: int
    events: Counter  # by kind
    quarantined: Counter  # by reason
    objects: dict[str, bytes]  # kind -> encoded bytes (only kinds with rows)
    quality: dict
    epoch: int = 0  # the partition's log epoch (set by the consumer; see layout)
    times: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (first, last) event time_us

    @property
    def ref(self) -> BatchRef:
        return BatchRef(self.topic, self.partition, self.first, self.last, self.epoch)


class BatchBuilder:
    """One partition's consecutive records, parsed into columns as they arrive (`add`), then
    encoded as one batch (`build`). Records added in several parts give the same batch as added
    at once: the batch is a pure function of its records."""

    def __init__(self, topic: str, partition: int):
        self.topic, self.partition = topic, partition
        self.first: int | None = None
        self.last: int | None = None
        self.records = 0
        self.ratings = EventColumns("rating", np.int8)
        self.watches = EventColumns("minute", np.int32)
        self.reco_lines: list[str] = []
        self.reco_times: list[datetime] = []
        self.quarantine_lines: list[str] = []
        self.quarantined: Counter = Counter()
        self.seen_lines: set[bytes] = set()
        self.duplicate_lines = 0
        self.rating_triples: set[tuple[int, str, int]] = set()
        self.duplicate_ratings = 0

    def add(self, offsets: list[int], values: list[bytes | None]) -> None:
        if not offsets:
            return
        if self.first is None:
            self.first = offsets[0]
        self.last = offsets[-1]
        self.records += len(offsets)
        seen_lines, rating_triples = self.seen_lines, self.rating_triples
        rate = rate_off, rate_time, rate_user, rate_movie, rate_value = [], [], [], [], []
        watch = watch_off, watch_time, watch_user, watch_movie, watch_minute = [], [], [], [], []
        for offset, value in zip(offsets, values):  # once per record: kept lean
            raw = value or b""
            # An over-long line (quarantined anyway) is remembered by its digest, not its bytes.
            seen = raw if len(raw) <= LINE_MAX_BYTES else b"\0sha256:" + hashlib.sha256(raw).digest()
            if seen in seen_lines:
                self.duplicate_lines += 1
            else:
                seen_lines.add(seen)
            event = parse_line(raw)
            kind = type(event)
            if kind is WatchEvent:
                watch_off.append(offset)
                watch_time.append(event.time)
                watch_user.append(event.user_id)
                watch_movie.append(event.movie_id)
                watch_minute.append(event.minute)
            elif kind is RateEvent:
                triple = (event.user_id, event.movie_id, event.rating)
                if triple in rating_triples:
                    self.duplicate_ratings += 1
                else:
                    rating_triples.add(triple)
                rate_off.append(offset)
                rate_time.append(event.time)
                rate_user.append(event.user_id)
                rate_movie.append(event.movie_id)
                rate_value.append(event.rating)
            elif kind is RecommendationEvent:
                self.reco_times.append(event.time)
                self.reco_lines.append(json.dumps({
                    "offset": offset, "time": format_time(event.time), "user_id": event.user_id,
                    "server": event.server, "status": event.status, "movie_ids": list(event.movie_ids),
                    "error": event.error, "latency_ms": event.latency_ms,
                }, separators=(",", ":")))
            else:
                assert isinstance(event, Rejection)
                self.quarantined[event.reason] += 1
                self.quarantine_lines.append(json.dumps(
                    {"offset": offset, **event.quarantine_record()}, separators=(",", ":"), ensure_ascii=False))
        self.ratings.extend(*rate)
        self.watches.extend(*watch)

    def build(self, recent_volumes: list[int]) -> ParsedBatch:
        if not self.records:
            raise ValueError("a batch needs at least one record")
        objects: dict[str, bytes] = {}
        if self.ratings.rows:
            objects["ratings"] = self.ratings.encode()
        if self.watches.rows:
            objects["watches"] = self.watches.encode()
        if self.reco_lines:
            objects["recommendations"] = ("\n".join(self.reco_lines) + "\n").encode()
        if self.quarantine_lines:
            objects["quarantine"] = ("\n".join(self.quarantine_lines) + "\n").encode()
        times = {"ratings": self.ratings.time_range()} if self.ratings.rows else {}
        if self.watches.rows:
            times["watches"] = self.watches.time_range()
        if self.reco_times:
            times["recommendations"] = (time_us(min(self.reco_times)), time_us(max(self.reco_times)))
        events = Counter({"watch": self.watches.rows, "rate": self.ratings.rows,
                          "recommendation": len(self.reco_lines)})
        quality = check_quality(self.records, sum(self.quarantined.values()), self.duplicate_lines,
                                self.duplicate_ratings, recent_volumes)
        return ParsedBatch(self.topic, self.partition, self.first, self.last, self.records, events,
                           Counter(self.quarantined), objects, quality, times=times)


def parse_batch(topic: str, partition: int, records: list[tuple[int, bytes | None]],
                recent_volumes: list[int]) -> ParsedBatch:
    """Parse one partition's consecutive records into the batch objects and its quality record.

    A pure function of its inputs: the same records give the same bytes."""
    builder = BatchBuilder(topic, partition)
    builder.add([offset for offset, _ in records], [value for _, value in records])
    return builder.build(recent_volumes)


def check_quality(records: int, quarantined: int, duplicate_lines: int, duplicate_ratings: int,
                  recent_volumes: list[int]) -> dict:
    """The batch's data-quality record. Flags are warnings for people and alerts, not refusals:
    nothing is dropped (quarantined lines are kept with their reason)."""
    flags = []
    share = quarantined / records if records else 0.0
    if share > QUARANTINE_SHARE_HIGH:
        flags.append("quarantine_share_high")
    if duplicate_lines:
        flags.append("duplicate_lines")
    if duplicate_ratings:
        flags.append("duplicate_ratings")
    median = float(np.median(recent_volumes)) if recent_volumes else None
    if median:
        if records < VOLUME_LOW_RATIO * median:
            flags.append("volume_low")
        elif records > VOLUME_HIGH_RATIO * median:
            flags.append("volume_high")
    return {
        "records": records,
        "quarantined": quarantined,
        "quarantine_share": round(share, 6),
        "duplicate_lines": duplicate_lines,
        "duplicate_ratings": duplicate_ratings,
        "volume_median_recent": median,
        "volume_history": len(recent_volumes),
        "flags": flags,
        "ok": not flags,
    }


def manifest_bytes(batch: ParsedBatch) -> bytes:
    """The manifest; epoch 0's has no `epoch` field, so its bytes are those written before
    epochs existed (a re-run of an old range stays a no-op)."""
    ref = batch.ref
    manifest = {
        "format": MANIFEST_FORMAT,
        "topic": batch.topic,
        "partition": batch.partition,
        "first_offset": batch.first,
        "last_offset": batch.last,
        "objects": {kind: ref.key(kind) for kind in KINDS if kind in batch.objects},
        "events": dict(sorted(batch.events.items())),
        "quarantined": dict(sorted(batch.quarantined.items())),
        "quality": batch.quality,
    }
    if batch.epoch:
        manifest["epoch"] = batch.epoch
    if batch.times:  # readers skip a batch outside the time they ask for; older manifests lack it
        manifest["time_us"] = {kind: list(span) for kind, span in sorted(batch.times.items())}
    return json.dumps(manifest, indent=1, sort_keys=True).encode()


def store_batch(store: ObjectStore, batch: ParsedBatch) -> int:
    """Write the batch's objects, then its manifest (the commit point). Returns objects written."""
    ref = batch.ref
    written = 0
    for kind in KINDS:
        if kind in batch.objects:
            written += store.put_once(ref.key(kind), batch.objects[kind])
    try:
        written += store.put_once(ref.key("manifests"), manifest_bytes(batch))
    except ObjectExistsError:
        # Another run stored this exact range first (its volume history differed): its data
        # objects are byte-identical to ours, so the range is stored once either way.
        log.warning("manifest %s already stored by another run; keeping it", ref.key("manifests"))
    return written

