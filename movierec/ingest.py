"""Stream ingestion: Kafka topic -> immutable batches in the object store, exactly once.

Owns the batch layout under `data/`, the ingest run (consume, parse, check quality, store, commit),
its summary and `ingest_*` metrics, and the loaders that read batches back (`load_ratings`,
`load_watches`).

Must not touch: parsing lines (that is `movierec.events.parse_line`, the one parser), HTTP or
OpenFaaS (the function in `functions/ingest` is a thin adapter), model training.

Layout (one range of offsets of one partition = one "batch"; every kind shares the range):

    data/ratings/<topic>/p<partition>/<first:020d>-<last:020d>.npz      columns, see _EventColumns
    data/watches/<topic>/p<partition>/<first:020d>-<last:020d>.npz
    data/recommendations/<topic>/p<partition>/<first:020d>-<last:020d>.jsonl
    data/quarantine/<topic>/p<partition>/<first:020d>-<last:020d>.jsonl  offset, reason, detail, raw line
    data/manifests/<topic>/p<partition>/<first:020d>-<last:020d>.json    written LAST: the batch's commit
                                                                         point, with its quality checks

Exactly once, across crashes at any point:
- every object is written with `put_once`, its bytes a pure function of the records (so a re-run of
  the same offsets writes identical bytes, which is a no-op);
- a batch exists only once its manifest exists; loaders read only batches named by manifests, so a
  crash between the data objects and the manifest leaves unreferenced objects, never duplicates;
- each partition restarts at max(committed offset, last manifest's end + 1), so a crash after the
  manifest but before the Kafka commit does not re-ingest the range;
- Kafka offsets are committed only after the manifest is stored;
- if two runs ever overlap on a range (a rebalance race), loaders keep each offset once, because
  every row carries its Kafka offset.

Throughput: batches are built (parsed, checked, encoded) in a child process on the other core
while this process keeps consuming (`ProcessBuilders`; `INGEST_BUILDER_PROCESS=0` keeps it all
in one process). The child only computes bytes: storing and committing stay here, in the order
above, so the guarantees do not depend on it.

Batch format: `.npz` written deterministically (fixed zip timestamps), loadable with
`numpy.load(allow_pickle=False)`: numeric columns plus a per-batch movie vocabulary and int32
codes, so 1M ratings load in well under a second.
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import os
import subprocess
import sys
import time
import zipfile
from collections import Counter, defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from movierec.events import (
    REJECTION_REASONS,
    RateEvent,
    RecommendationEvent,
    Rejection,
    WatchEvent,
    format_time,
    parse_line,
)
from movierec.store import ObjectExistsError, ObjectStore, StoreError, open_store

log = logging.getLogger("movierec.ingest")

KINDS = ("ratings", "watches", "recommendations", "quarantine")
EVENT_KINDS = ("watch", "rate", "recommendation")
MANIFEST_FORMAT = 1
# Volume anomaly: a batch far outside the recent median of its partition is flagged (not refused).
VOLUME_HISTORY = 10
VOLUME_LOW_RATIO = 0.1
VOLUME_HIGH_RATIO = 10.0
QUARANTINE_SHARE_HIGH = 0.05
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so identical records give identical bytes


class IngestError(RuntimeError):
    """A dependency (the broker or the store) failed; the message names it. Nothing uncommitted
    was lost: the next run starts where the last stored batch ended."""


# -- configuration ------------------------------------------------------------------------------
@dataclass
class IngestConfig:
    bootstrap: str = "127.0.0.1:9092"
    topic: str = "movielog1"
    group_id: str = "movierec-ingest"
    max_records: int = 2_000_000  # per run
    max_seconds: float = 120.0  # per run (the function's timeouts leave room above this)
    batch_records: int = 200_000  # per partition: a batch is stored once it holds this many
    idle_seconds: float = 3.0  # stop when nothing new arrived for this long after joining
    join_timeout_s: float = 30.0
    session_timeout_ms: int = 6000  # low: a batch consumer joins in ~session/2
    heartbeat_interval_ms: int = 1000
    connect_attempts: int = 3
    pushgateway_url: str = ""
    builder_process: bool = True  # parse in a child process, on another core (see ProcessBuilders)
    consumer_options: dict = field(default_factory=dict)  # extra KafkaConsumer settings

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> IngestConfig:
        env = os.environ if env is None else env
        cfg = cls(
            bootstrap=env.get("KAFKA_BOOTSTRAP_SERVERS") or cls.bootstrap,
            topic=env.get("KAFKA_TOPIC") or cls.topic,
            group_id=env.get("KAFKA_GROUP_ID") or cls.group_id,
            max_records=_int(env, "INGEST_MAX_RECORDS", cls.max_records),
            max_seconds=_float(env, "INGEST_MAX_SECONDS", cls.max_seconds),
            batch_records=_int(env, "INGEST_BATCH_RECORDS", cls.batch_records),
            idle_seconds=_float(env, "INGEST_IDLE_SECONDS", cls.idle_seconds),
            session_timeout_ms=_int(env, "KAFKA_SESSION_TIMEOUT_MS", cls.session_timeout_ms),
            pushgateway_url=env.get("PUSHGATEWAY_URL", ""),
            builder_process=env.get("INGEST_BUILDER_PROCESS", "1").strip() not in ("0", "false", "no"),
        )
        for name, value in overrides.items():
            if value is not None:
                setattr(cfg, name, value)
        if cfg.max_records < 1 or cfg.batch_records < 1 or cfg.max_seconds <= 0:
            raise ValueError("max_records, batch_records and max_seconds must be positive")
        return cfg

    def consumer_settings(self) -> dict:
        settings = dict(  # noqa: C408 (keyword form reads like kafka-python's docs)
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            client_id="movierec-ingest",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            # Large fetches: the consumer is batch-oriented, throughput beats latency.
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
            max_poll_records=50_000,
            fetch_min_bytes=1,
            fetch_max_wait_ms=200,
            request_timeout_ms=30_000,
        )
        settings.update(self.consumer_options)
        return settings


def _int(env, name, default):
    raw = env.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _float(env, name, default):
    raw = env.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


# -- keys ---------------------------------------------------------------------------------------
EXTENSIONS = {"ratings": "npz", "watches": "npz", "recommendations": "jsonl", "quarantine": "jsonl",
              "manifests": "json"}


def batch_key(kind: str, topic: str, partition: int, first: int, last: int) -> str:
    return f"data/{kind}/{topic}/p{partition}/{first:020d}-{last:020d}.{EXTENSIONS[kind]}"


@dataclass(frozen=True, order=True)
class BatchRef:
    """One stored batch, as named by its manifest key."""

    topic: str
    partition: int
    first: int
    last: int

    @classmethod
    def from_manifest_key(cls, key: str) -> BatchRef | None:
        # data/manifests/<topic>/p<partition>/<first>-<last>.json
        parts = key.split("/")
        if len(parts) != 5 or parts[0] != "data" or parts[1] != "manifests":
            return None
        try:
            first, last = parts[4].removesuffix(".json").split("-")
            return cls(parts[2], int(parts[3][1:]), int(first), int(last))
        except ValueError:
            return None

    def key(self, kind: str) -> str:
        return batch_key(kind, self.topic, self.partition, self.first, self.last)


def list_batches(store: ObjectStore, topic: str | None = None) -> list[BatchRef]:
    """Every committed batch (one with a manifest), sorted by topic, partition, first offset."""
    prefix = f"data/manifests/{topic}/" if topic else "data/manifests/"
    refs = (BatchRef.from_manifest_key(k) for k in store.list(prefix))
    return sorted(r for r in refs if r is not None)


# -- encoding -----------------------------------------------------------------------------------
def encode_columns(columns: dict[str, np.ndarray]) -> bytes:
    """An .npz archive whose bytes depend only on the columns (no timestamps, stable order)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(columns):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(columns[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def decode_columns(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


_EPOCH_DATETIME = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


def _times_us(times: list[datetime]) -> np.ndarray:
    # 5x faster than numpy's own conversion of datetime objects (which goes element by element).
    return np.array([(t - _EPOCH_DATETIME) // _MICROSECOND for t in times], dtype=np.int64)


class _EventColumns:
    """One kind's columns in one batch: offset, time_us (int64 microseconds since the epoch),
    user_id, movie_code (int32, into movie_vocab, first-seen order over the whole batch) and the
    value column (rating int8 or minute int32). Each added part is converted to numpy at once, so
    building the batch at the end only concatenates."""

    def __init__(self, value_name: str, value_dtype):
        self.value_name, self.value_dtype = value_name, value_dtype
        self.vocab: dict[str, int] = {}
        self.parts: list[dict[str, np.ndarray]] = []
        self.rows = 0

    def extend(self, offsets: list[int], times: list[datetime], users: list[int], movies: list[str],
               values: list[int]) -> None:
        if not offsets:
            return
        vocab = self.vocab
        self.parts.append({
            "offset": np.array(offsets, dtype=np.int64),
            "time_us": _times_us(times),
            "user_id": np.array(users, dtype=np.int64),
            "movie_code": np.fromiter((vocab.setdefault(m, len(vocab)) for m in movies), dtype=np.int32,
                                      count=len(movies)),
            self.value_name: np.array(values, dtype=self.value_dtype),
        })
        self.rows += len(offsets)

    def encode(self) -> bytes:
        columns = {name: np.concatenate([part[name] for part in self.parts]) for name in self.parts[0]}
        columns["movie_vocab"] = np.array(list(self.vocab), dtype=str)
        return encode_columns(columns)


# -- one batch ----------------------------------------------------------------------------------
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


class BatchBuilder:
    """One partition's consecutive records, parsed into columns as they arrive (`add`), then
    encoded as one batch (`build`). Records added in several parts give the same batch as added
    at once: the batch is a pure function of its records."""

    def __init__(self, topic: str, partition: int):
        self.topic, self.partition = topic, partition
        self.first: int | None = None
        self.last: int | None = None
        self.records = 0
        self.ratings = _EventColumns("rating", np.int8)
        self.watches = _EventColumns("minute", np.int32)
        self.reco_lines: list[str] = []
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
            if raw in seen_lines:
                self.duplicate_lines += 1
            else:
                seen_lines.add(raw)
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
                self.reco_lines.append(json.dumps({
                    "offset": offset, "time": format_time(event.time), "user_id": event.user_id,
                    "server": event.server, "status": event.status, "movie_ids": list(event.movie_ids),
                    "error": event.error, "latency_ms": event.latency_ms,
                }, separators=(",", ":")))
            else:
                assert isinstance(event, Rejection)
                self.quarantined[event.reason] += 1
                self.quarantine_lines.append(json.dumps(
                    {"offset": offset, "reason": event.reason, "detail": event.detail, "line": event.line},
                    separators=(",", ":"), ensure_ascii=False))
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
        events = Counter({"watch": self.watches.rows, "rate": self.ratings.rows,
                          "recommendation": len(self.reco_lines)})
        quality = check_quality(self.records, sum(self.quarantined.values()), self.duplicate_lines,
                                self.duplicate_ratings, recent_volumes)
        return ParsedBatch(self.topic, self.partition, self.first, self.last, self.records, events,
                           Counter(self.quarantined), objects, quality)


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
    ref = BatchRef(batch.topic, batch.partition, batch.first, batch.last)
    return json.dumps({
        "format": MANIFEST_FORMAT,
        "topic": batch.topic,
        "partition": batch.partition,
        "first_offset": batch.first,
        "last_offset": batch.last,
        "objects": {kind: ref.key(kind) for kind in KINDS if kind in batch.objects},
        "events": dict(sorted(batch.events.items())),
        "quarantined": dict(sorted(batch.quarantined.items())),
        "quality": batch.quality,
    }, indent=1, sort_keys=True).encode()


def store_batch(store: ObjectStore, batch: ParsedBatch) -> int:
    """Write the batch's objects, then its manifest (the commit point). Returns objects written."""
    ref = BatchRef(batch.topic, batch.partition, batch.first, batch.last)
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


# -- where batches are built ----------------------------------------------------------------------
class InlineBuilders:
    """Batch builders in this process: one core does everything (consume, parse, store)."""

    def __init__(self, topic: str):
        self.topic = topic
        self.builders: dict[int, BatchBuilder] = {}

    def add(self, partition: int, offsets: list[int], values: list[bytes | None]) -> None:
        if partition not in self.builders:
            self.builders[partition] = BatchBuilder(self.topic, partition)
        self.builders[partition].add(offsets, values)

    def build(self, partition: int, recent_volumes: list[int]) -> ParsedBatch:
        return self.builders.pop(partition).build(recent_volumes)

    def drop(self, partition: int) -> None:
        self.builders.pop(partition, None)

    def close(self) -> None:
        self.builders.clear()


class ProcessBuilders:
    """Batch builders in a child process, so parsing runs on another core while this process keeps
    consuming: `add` only ships the raw records; `build` waits for the finished batch.

    The child only computes bytes; this process stores the batch and then commits, exactly as
    inline. So a crash or kill of either process at any point cannot store or commit anything
    the other did not finish. The child exits when its input pipe closes, which also happens when
    this process is killed with SIGKILL."""

    def __init__(self, topic: str):
        from multiprocessing.connection import Connection

        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        package_root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root,
                                                                         os.environ.get("PYTHONPATH")])))
        code = "import sys; from movierec.ingest import serve_builders; serve_builders(*sys.argv[1:])"
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, topic, str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.to_child = Connection(to_child_w, readable=False)
        self.from_child = Connection(from_child_r, writable=False)

    def _send(self, message: tuple) -> None:
        try:
            self.to_child.send(message)
        except OSError as e:
            raise self._died(e) from e

    def _died(self, cause: BaseException) -> IngestError:
        code = self.process.poll()
        return IngestError(f"batch builder process (pid {self.process.pid}) ended unexpectedly "
                           f"(exit code {code}, {type(cause).__name__}); nothing was committed for "
                           "the batch it was building")

    def add(self, partition: int, offsets: list[int], values: list[bytes | None]) -> None:
        self._send(("add", partition, offsets, values))

    def build(self, partition: int, recent_volumes: list[int]) -> ParsedBatch:
        self._send(("build", partition, recent_volumes))
        try:
            reply = self.from_child.recv()
        except (EOFError, OSError) as e:
            raise self._died(e) from e
        if isinstance(reply, str):
            raise IngestError(f"batch builder process failed: {reply}")
        return reply

    def drop(self, partition: int) -> None:
        self._send(("drop", partition, None))

    def close(self) -> None:
        self.to_child.close()  # the child sees end-of-input and exits
        self.from_child.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def serve_builders(topic: str, read_fd: str, write_fd: str) -> None:
    """The child of `ProcessBuilders`: build batches from the records it is sent, until its input
    ends. Between slices of records it takes in whatever arrived, so the ingest process never
    waits on a full pipe while this one parses."""
    from multiprocessing.connection import Connection

    # Columns of plain ints and strings, no reference cycles: the cyclic collector would only
    # rescan the growing columns again and again.
    gc.disable()
    inbox, outbox = Connection(int(read_fd), writable=False), Connection(int(write_fd), readable=False)
    builders = InlineBuilders(topic)
    received: deque[tuple] = deque()
    slice_records = 2000  # ~10 ms of parsing
    try:
        while True:
            if not received:
                received.append(inbox.recv())
            op, partition, *args = received.popleft()
            if op == "add":
                offsets, values = args
                for i in range(0, len(offsets), slice_records):
                    builders.add(partition, offsets[i:i + slice_records], values[i:i + slice_records])
                    while inbox.poll():
                        received.append(inbox.recv())
            elif op == "build":
                try:
                    batch = builders.build(partition, *args)
                except Exception as e:  # noqa: BLE001 (reported to the ingest process, which stops)
                    outbox.send(f"{type(e).__name__}: {e}")
                    return
                outbox.send(batch)
            elif op == "drop":
                builders.drop(partition)
    except (EOFError, OSError):  # the ingest process ended or was killed
        return


# -- the run ------------------------------------------------------------------------------------
@dataclass
class IngestSummary:
    topic: str
    group_id: str
    records: int = 0
    events: dict = field(default_factory=lambda: dict.fromkeys(EVENT_KINDS, 0))
    quarantined: dict = field(default_factory=dict)
    batches_written: int = 0
    lag: dict = field(default_factory=dict)  # partition -> records behind the end
    lag_total: int = 0
    duration_seconds: float = 0.0
    consuming_seconds: float = 0.0  # from the first record received to the last batch stored
    stopped_because: str = ""
    pushed_metrics: bool = False

    def as_dict(self) -> dict:
        return {
            "topic": self.topic, "group_id": self.group_id, "records": self.records,
            "events": self.events, "quarantined": self.quarantined,
            "batches_written": self.batches_written,
            "lag": {str(p): n for p, n in sorted(self.lag.items())}, "lag_total": self.lag_total,
            "duration_seconds": round(self.duration_seconds, 3),
            "consuming_seconds": round(self.consuming_seconds, 3), "stopped_because": self.stopped_because,
            "pushed_metrics": self.pushed_metrics,
        }


class _Ingester:
    def __init__(self, config: IngestConfig, store: ObjectStore):
        self.config = config
        self.store = store
        self.summary = IngestSummary(config.topic, config.group_id)
        # partition -> (records handed to the builders and not stored yet, the last one's offset)
        self.pending: dict[int, tuple[int, int]] = {}
        self.next_stored: dict[int, int] = {}  # partition -> first offset not yet in the store
        self.volumes: dict[int, list[int]] = defaultdict(list)  # partition -> recent batch sizes
        self.revoked: list[int] = []  # partitions revoked on kafka-python's IO thread, not yet dropped
        self.builders: InlineBuilders | ProcessBuilders | None = None
        self.consumer = None
        self.assigned = False

    # The store is read once up front: it fails fast (naming the store) before anything is
    # consumed, and gives each partition's resume point and recent volumes.
    def read_store_state(self) -> None:
        try:
            refs = list_batches(self.store, self.config.topic)
        except StoreError as e:
            raise IngestError(f"object store unavailable before consuming: {e}") from e
        by_partition: dict[int, list[BatchRef]] = defaultdict(list)
        for ref in refs:
            by_partition[ref.partition].append(ref)
        for partition, prefs in by_partition.items():
            self.next_stored[partition] = max(r.last for r in prefs) + 1
            self.volumes[partition] = [r.last - r.first + 1 for r in prefs[-VOLUME_HISTORY:]]

    def connect(self):
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        last: Exception | None = None
        for attempt in range(self.config.connect_attempts):
            if attempt:
                time.sleep(0.5 * 2 ** (attempt - 1))
            try:
                # kafka-python keeps retrying an unreachable bootstrap quietly: probe it first.
                _probe_tcp(self.config.bootstrap)
                self.consumer = KafkaConsumer(**self.config.consumer_settings())
                return
            except (KafkaError, OSError) as e:
                last = e
        raise IngestError(
            f"Kafka broker at {self.config.bootstrap} unreachable after {self.config.connect_attempts} "
            f"attempts: {type(last).__name__}: {last}"
        )

    # Rebalance callbacks run on kafka-python's IO thread, where blocking calls (committed(),
    # commit()) are not allowed: they only record what happened, for the polling thread to act on.
    def on_assigned(self, partitions) -> None:
        self.assigned = True

    def on_revoked(self, partitions) -> None:
        self.revoked.extend(tp.partition for tp in partitions)

    def drop(self, partition: int) -> None:
        """Forget records not stored yet; they are not committed, so whoever consumes the
        partition next (the new owner after a rebalance, or this run after a rewind) reads them."""
        count, _ = self.pending.pop(partition, (0, -1))
        if count:
            self.summary.records -= count
            self.builders.drop(partition)

    def accept(self, tp, records) -> list:
        """The polled records not stored yet. The consumer resumes at the committed offset; the
        store may be ahead of it (a crash between storing a batch and committing it): skip there."""
        pending = self.pending.get(tp.partition)
        if pending and records[0].offset <= pending[1]:
            log.warning("partition %d rewound to offset %d: re-reading it", tp.partition, records[0].offset)
            self.drop(tp.partition)
        stored_up_to = self.next_stored.get(tp.partition)
        if stored_up_to is None or records[0].offset >= stored_up_to:
            return records
        if records[-1].offset < stored_up_to:
            self.consumer.seek(tp, stored_up_to)
        log.info("partition %d: skipping to offset %d, already stored", tp.partition, stored_up_to)
        return [r for r in records if r.offset >= stored_up_to]

    def take(self, partition: int, records) -> None:
        """Hand records to the builders, storing a batch each time one fills up."""
        size = self.config.batch_records
        while records:
            count, _ = self.pending.get(partition, (0, -1))
            part, records = records[:size - count], records[size - count:]
            self.builders.add(partition, [r.offset for r in part], [r.value for r in part])
            self.pending[partition] = (count + len(part), part[-1].offset)
            self.summary.records += len(part)
            if count + len(part) >= size:
                self.flush(partition)

    def flush(self, partition: int) -> None:
        """Store the partition's pending records as one batch, then commit after it."""
        count, _ = self.pending.pop(partition, (0, -1))
        if not count:
            return
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        batch = self.builders.build(partition, self.volumes[partition][-VOLUME_HISTORY:])
        try:
            self.summary.batches_written += store_batch(self.store, batch) > 0
        except StoreError as e:
            raise IngestError(f"object store failed, offsets not committed: {e}") from e
        self.volumes[partition].append(batch.records)
        self.next_stored[partition] = batch.last + 1
        for kind, n in batch.events.items():
            self.summary.events[kind] = self.summary.events.get(kind, 0) + n
        for reason, n in batch.quarantined.items():
            self.summary.quarantined[reason] = self.summary.quarantined.get(reason, 0) + n
        tp = TopicPartition(self.config.topic, partition)
        try:
            self.consumer.commit({tp: OffsetAndMetadata(batch.last + 1, "", -1)})
        except KafkaError as e:
            # The batch is stored; the next run resumes after it from the store. Say so and stop.
            raise IngestError(
                f"Kafka broker at {self.config.bootstrap}: commit of {self.config.topic}/p{partition} "
                f"offset {batch.last + 1} failed ({type(e).__name__}: {e}); the batch is stored and "
                "the next run resumes after it"
            ) from e
        log.info("stored %s/p%d %d-%d (%d records)", self.config.topic, partition, batch.first,
                 batch.last, batch.records)

    def run(self) -> IngestSummary:
        cfg = self.config
        started = time.monotonic()
        self.read_store_state()
        # Started before joining the group, so the child's start-up overlaps the join.
        self.builders = ProcessBuilders(cfg.topic) if cfg.builder_process else InlineBuilders(cfg.topic)
        try:
            self.connect()
            self.consume(started)
        finally:
            self.builders.close()
        self.summary.duration_seconds = time.monotonic() - started
        return self.summary

    def consume(self, started: float) -> None:
        from kafka import ConsumerRebalanceListener

        cfg = self.config
        ingester = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_assigned(self, assigned):
                ingester.on_assigned(assigned)

            def on_partitions_revoked(self, revoked):
                ingester.on_revoked(revoked)

        consumer = self.consumer
        try:
            consumer.subscribe([cfg.topic], listener=Listener())
            last_data = first_record_at = None
            stop = "max_seconds"
            while time.monotonic() - started < cfg.max_seconds:
                remaining = cfg.max_records - self.summary.records
                if remaining <= 0:
                    stop = "max_records"
                    break
                polled = consumer.poll(timeout_ms=200, max_records=min(remaining, 50_000))
                while self.revoked:
                    self.drop(self.revoked.pop())
                if not self.assigned:
                    if time.monotonic() - started > cfg.join_timeout_s:
                        raise IngestError(f"Kafka broker at {cfg.bootstrap}: no partitions of topic "
                                          f"{cfg.topic} assigned within {cfg.join_timeout_s:g}s")
                    continue
                now = time.monotonic()
                if last_data is None:
                    last_data = now
                if polled:
                    last_data = now
                    if first_record_at is None:
                        first_record_at = now
                    for tp, records in polled.items():
                        records = self.accept(tp, records)
                        if records:
                            self.take(tp.partition, records)
                    continue
                if self.caught_up():
                    stop = "caught_up"
                    break
                if now - last_data > cfg.idle_seconds:
                    stop = "idle"
                    break
            for partition in list(self.pending):
                self.flush(partition)
            if first_record_at is not None:
                self.summary.consuming_seconds = time.monotonic() - first_record_at
            self.summary.stopped_because = stop
            self.measure_lag()
        finally:
            consumer.close(autocommit=False)

    def caught_up(self) -> bool:
        """True when every assigned partition's position reached the high watermark of its last
        fetch. (Tansu's ListOffsets under-reports the end offset; the fetch watermark is right.)"""
        assignment = self.consumer.assignment()
        if not assignment:
            return False
        for tp in assignment:
            high = self.consumer.highwater(tp)
            if high is None or self.consumer.position(tp) < high:
                return False
        return True

    def measure_lag(self) -> None:
        assignment = self.consumer.assignment()
        # A partition not fetched yet has no watermark: a short extra poll fetches every partition
        # (its records are dropped, not stored nor committed: the next run reads them).
        for _ in range(5):
            known = [tp for tp in assignment if self.consumer.highwater(tp) is not None]
            if len(known) == len(assignment):
                break
            self.consumer.pause(*known)  # so the poll fetches the partitions still unknown
            self.consumer.poll(timeout_ms=300, max_records=1)
        for tp in assignment:
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            done = self.next_stored.get(tp.partition, 0)
            self.summary.lag[tp.partition] = max(0, high - done)
        self.summary.lag_total = sum(self.summary.lag.values())


def _probe_tcp(bootstrap: str, timeout_s: float = 3.0) -> None:
    """Raise OSError unless at least one bootstrap server accepts a TCP connection."""
    import socket

    error: OSError = OSError(f"no bootstrap servers in {bootstrap!r}")
    for server in filter(None, (s.strip() for s in bootstrap.split(","))):
        host, _, port = server.rpartition(":")
        try:
            socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s).close()
            return
        except (OSError, ValueError) as e:
            error = OSError(f"{server}: {e}")
    raise error


def run_ingest(config: IngestConfig, store: ObjectStore | None = None) -> IngestSummary:
    """One bounded ingest run; pushes its summary to the Pushgateway when one is configured.

    Raises IngestError naming the broker or the store when one of them fails."""
    store = open_store() if store is None else store
    summary = _Ingester(config, store).run()
    if config.pushgateway_url:
        summary.pushed_metrics = push_metrics(summary, config.pushgateway_url)
    return summary


# -- metrics --------------------------------------------------------------------------------------
METRICS_DOC = {
    "ingest_records": "records consumed by the last ingest run",
    "ingest_events": "events stored by the last run, by kind (watch, rate, recommendation)",
    "ingest_quarantined": "lines quarantined by the last run, by reason",
    "ingest_batches_written": "batches stored by the last run",
    "ingest_consumer_lag": "records behind the end of the partition after the last run",
    "ingest_consumer_lag_total": "records behind the end of the topic after the last run",
    "ingest_duration_seconds": "duration of the last run",
    "ingest_last_success_timestamp_seconds": "unix time the last run finished successfully",
}


def push_metrics(summary: IngestSummary, url: str) -> bool:
    """Push the run's gauges (job="ingest"). A Pushgateway that is down is logged, not fatal."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()

    def gauge(name, labels=()):
        return Gauge(name, METRICS_DOC[name], list(labels), registry=registry)

    gauge("ingest_records").set(summary.records)
    events = gauge("ingest_events", ["kind"])
    for kind in EVENT_KINDS:
        events.labels(kind).set(summary.events.get(kind, 0))
    quarantined = gauge("ingest_quarantined", ["reason"])
    for reason in REJECTION_REASONS:
        quarantined.labels(reason).set(summary.quarantined.get(reason, 0))
    gauge("ingest_batches_written").set(summary.batches_written)
    lag = gauge("ingest_consumer_lag", ["topic", "partition"])
    for partition, n in summary.lag.items():
        lag.labels(summary.topic, str(partition)).set(n)
    gauge("ingest_consumer_lag_total").set(summary.lag_total)
    gauge("ingest_duration_seconds").set(summary.duration_seconds)
    gauge("ingest_last_success_timestamp_seconds").set(time.time())
    try:
        push_to_gateway(url, job="ingest", registry=registry, timeout=5)
        return True
    except Exception as e:  # noqa: BLE001 (any failure to push must not fail the ingest)
        log.warning("Pushgateway at %s unreachable, metrics not pushed: %s", url, e)
        return False


# -- loaders (what training reads) ----------------------------------------------------------------
def _columns_once(store: ObjectStore, kind: str, topic: str | None) -> list[dict[str, np.ndarray]]:
    """The columns of every committed batch of `kind`, each Kafka offset kept once."""
    out = []
    covered: dict[tuple[str, int], int] = {}  # (topic, partition) -> last offset already taken
    for ref in list_batches(store, topic):
        manifest = json.loads(store.get(ref.key("manifests")))
        key = manifest.get("objects", {}).get(kind)
        seen = covered.get((ref.topic, ref.partition), -1)
        covered[(ref.topic, ref.partition)] = max(seen, ref.last)
        if key is None or ref.last <= seen:
            continue
        columns = decode_columns(store.get(key))
        if ref.first <= seen:  # overlapping ranges from a rebalance race: keep each offset once
            keep = columns["offset"] > seen
            columns = {n: (c if n == "movie_vocab" else c[keep]) for n, c in columns.items()}
        out.append(columns)
    return out


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

    merged = _merged(_columns_once(store, "ratings", topic), "rating")
    if merged is None:
        return RatingsTable.empty()
    _, users, movies, ratings = merged
    return RatingsTable(users, movies, ratings.astype(np.float32))


@dataclass(frozen=True)
class WatchColumns:
    time_us: np.ndarray  # int64 microseconds since the epoch (stream times are naive: UTC)
    user_ids: np.ndarray  # int64
    movie_ids: np.ndarray  # '<U'
    minutes: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.user_ids)


def load_watches(store: ObjectStore, topic: str | None = None) -> WatchColumns:
    merged = _merged(_columns_once(store, "watches", topic), "minute")
    if merged is None:
        return WatchColumns(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, "<U1"),
                            np.empty(0, np.int32))
    return WatchColumns(*merged)


def load_quarantine(store: ObjectStore, topic: str | None = None) -> list[dict]:
    """Quarantined lines (offset, reason, detail, line) of committed batches."""
    rows = []
    for ref in list_batches(store, topic):
        manifest = json.loads(store.get(ref.key("manifests")))
        key = manifest.get("objects", {}).get("quarantine")
        if key:
            rows.extend(json.loads(line) for line in store.get(key).decode().splitlines())
    return rows


def iter_recommendations(store: ObjectStore, topic: str | None = None) -> Iterable[dict]:
    for ref in list_batches(store, topic):
        manifest = json.loads(store.get(ref.key("manifests")))
        key = manifest.get("objects", {}).get("recommendations")
        if key:
            yield from (json.loads(line) for line in store.get(key).decode().splitlines())


# -- CLI --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m movierec.ingest",
        description="Ingest the Kafka topic into the object store (settings from env: "
                    "KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC, KAFKA_GROUP_ID, STORE_URL, PUSHGATEWAY_URL).")
    parser.add_argument("--max-records", type=int)
    parser.add_argument("--max-seconds", type=float)
    parser.add_argument("--batch-records", type=int)
    parser.add_argument("--idle-seconds", type=float)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every stored batch")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        config = IngestConfig.from_env(max_records=args.max_records, max_seconds=args.max_seconds,
                                       batch_records=args.batch_records, idle_seconds=args.idle_seconds)
        summary = run_ingest(config)
    except (IngestError, StoreError, ValueError) as e:
        print(f"ingest failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary.as_dict(), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
