"""Ingestion, the domain side: what one ingest run is configured with, what it reports, how it fails.

A run (`movierec.adapters.kafka_ingest.run_ingest`, `python -m movierec.adapters.kafka_ingest`)
consumes the Kafka topic in a consumer group for a bounded time or number of records, stores
immutable batches (`movierec.batches`) and commits offsets only after each batch is stored.

Log epochs: a partition's log can be reset or replaced under the same name (a broker that
restarted with an empty log, a topic deleted and recreated). Offsets then start again, so an
offset alone no longer names a record: a record's identity is (epoch, offset). Each epoch of a
partition is recorded once (`LogEpoch`, write-once at `movierec.batches.layout.epoch_key`) with
the log's identity as the broker reports it (topic id, cluster id) and where it started;
`reset_reason` tells, from what the broker reports now (`LogFacts`), whether the log is still the
one the current epoch was stored from. Epoch 0 is every partition's first; batches stored before
epochs existed are epoch 0.

One run per consumer group: a run holds the lease `ingest_lease_name(group)` (`movierec.lease`)
for `IngestConfig.lease_seconds`; a second run is refused at once with 409 naming the holder.

Owns: `IngestConfig` (built from `movierec.settings`: KAFKA_*, INGEST_*, PUSHGATEWAY_URL; bounds
given by a caller are checked the same way), `IngestSummary` (the run's JSON summary),
`IngestError` (a dependency failed: 503), `LogEpoch` / `LogFacts` / `reset_reason` / `next_epoch`,
`ingest_lease_name` and the run's metric families (`summary_families`, the `ingest_*` gauges
pushed as job "ingest").

Must not touch: Kafka and the Pushgateway (`movierec.adapters.kafka_ingest`,
`movierec.adapters.pushgateway`), the batch format (`movierec.batches`), HTTP.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from movierec.batches.layout import EVENT_KINDS
from movierec.errors import ConfigError, Unavailable
from movierec.events import REJECTION_REASONS
from movierec.metrics import Family
from movierec.settings import Settings

_DEFAULT = Settings({})  # the table's defaults, so the dataclass and the environment agree


class IngestError(Unavailable):
    """A dependency (the broker, the store, the batch builder process) failed; the message names
    it. Nothing uncommitted was lost: the next run starts where the last stored batch ended."""


@dataclass
class IngestConfig:
    bootstrap: str = _DEFAULT.get("KAFKA_BOOTSTRAP_SERVERS")
    topic: str = _DEFAULT.get("KAFKA_TOPIC")
    group_id: str = _DEFAULT.get("KAFKA_GROUP_ID")
    max_records: int = _DEFAULT.get("INGEST_MAX_RECORDS")  # per run
    max_seconds: float = _DEFAULT.get("INGEST_MAX_SECONDS")  # per run (the function's timeouts leave room)
    batch_records: int = _DEFAULT.get("INGEST_BATCH_RECORDS")  # per partition: stored once it holds this many
    idle_seconds: float = _DEFAULT.get("INGEST_IDLE_SECONDS")  # stop when nothing new arrived for this long
    join_timeout_s: float = 30.0
    session_timeout_ms: int = _DEFAULT.get("KAFKA_SESSION_TIMEOUT_MS")  # low: a batch consumer joins in ~half
    heartbeat_interval_ms: int = 1000
    connect_attempts: int = 3
    pushgateway_url: str = _DEFAULT.get("PUSHGATEWAY_URL")  # blank: no push
    builder_process: bool = _DEFAULT.get("INGEST_BUILDER_PROCESS")  # parse on another core
    lease_grace_s: float = _DEFAULT.get("INGEST_LEASE_GRACE")  # lease = max_seconds + this
    caller: str = "manual"  # who started the run (cron, manual, cli): named to a refused second run
    consumer_options: dict = field(default_factory=dict)  # extra KafkaConsumer settings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> IngestConfig:
        """The settings from `env` (os.environ by default); `overrides` that are not None win
        (a caller's bounds, e.g. the function's query). ConfigError naming what is wrong."""
        s = Settings(env)
        cfg = cls(
            bootstrap=s.get("KAFKA_BOOTSTRAP_SERVERS"),
            topic=s.get("KAFKA_TOPIC"),
            group_id=s.get("KAFKA_GROUP_ID"),
            max_records=s.get("INGEST_MAX_RECORDS"),
            max_seconds=s.get("INGEST_MAX_SECONDS"),
            batch_records=s.get("INGEST_BATCH_RECORDS"),
            idle_seconds=s.get("INGEST_IDLE_SECONDS"),
            session_timeout_ms=s.get("KAFKA_SESSION_TIMEOUT_MS"),
            pushgateway_url=s.get("PUSHGATEWAY_URL"),
            builder_process=s.get("INGEST_BUILDER_PROCESS"),
            lease_grace_s=s.get("INGEST_LEASE_GRACE"),
        )
        for name, value in overrides.items():
            if value is not None:
                setattr(cfg, name, value)
        if cfg.max_records < 1 or cfg.batch_records < 1 or cfg.max_seconds <= 0:
            raise ConfigError("max_records, batch_records and max_seconds must be positive")
        return cfg

    @property
    def lease_seconds(self) -> float:
        """How long a run holds its group's lease: its own bound plus the grace for the last
        batch, the lag and leaving the group. A run that died frees the group after this."""
        return self.max_seconds + self.lease_grace_s

    def consumer_settings(self) -> dict:
        """kafka-python's KafkaConsumer settings for this run (plain data, no Kafka import)."""
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
    epochs: dict = field(default_factory=dict)  # partition -> the log epoch it was consumed in
    log_resets: list = field(default_factory=list)  # one dict per new epoch this run started
    log_gaps: dict = field(default_factory=dict)  # partition -> offsets the log no longer had
    lease: int = 0  # the fencing token this run held

    def as_dict(self) -> dict:
        return {
            "topic": self.topic, "group_id": self.group_id, "records": self.records,
            "events": self.events, "quarantined": self.quarantined,
            "batches_written": self.batches_written,
            "lag": {str(p): n for p, n in sorted(self.lag.items())}, "lag_total": self.lag_total,
            "duration_seconds": round(self.duration_seconds, 3),
            "consuming_seconds": round(self.consuming_seconds, 3), "stopped_because": self.stopped_because,
            "pushed_metrics": self.pushed_metrics,
            "epochs": {str(p): e for p, e in sorted(self.epochs.items())},
            "log_resets": self.log_resets, "log_resets_total": len(self.log_resets),
            "log_gaps": {str(p): n for p, n in sorted(self.log_gaps.items())}, "lease": self.lease,
        }


# -- log epochs ---------------------------------------------------------------------------------
EPOCH_FORMAT = 1


@dataclass(frozen=True)
class LogFacts:
    """What the broker reports about a partition's log now (ids are None where it reports none)."""

    topic_id: str | None
    cluster_id: str | None
    log_start: int
    high_watermark: int  # from a fetch response (an end-offset listing may under-report)


@dataclass(frozen=True)
class LogEpoch:
    """One epoch of one partition: the log it was stored from, and why it started. A pure function
    of what was stored and what the broker reported (no clock, no group), so two runs that notice
    the same reset write the same bytes."""

    topic: str
    partition: int
    epoch: int
    start_offset: int  # where this epoch's log started when the epoch began
    topic_id: str | None
    cluster_id: str | None
    reason: str
    previous_end: int | None = None  # first offset the previous epoch had not stored

    def to_bytes(self) -> bytes:
        return (json.dumps({"format": EPOCH_FORMAT, **asdict(self)}, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LogEpoch:
        record = json.loads(data)
        record.pop("format", None)
        return cls(**record)

    def same_log(self, facts: LogFacts) -> bool:
        return self.topic_id == facts.topic_id and self.cluster_id == facts.cluster_id


def reset_reason(current: LogEpoch | None, stored_end: int, facts: LogFacts) -> str | None:
    """Why the partition's log is not the one its current epoch was stored from, or None.

    `current` is the current epoch's record (None for batches stored before epochs existed),
    `stored_end` the first offset of that epoch not stored yet. An id counts only where both the
    record and the broker have one (a broker too old to report topic ids is judged by offsets)."""
    if current is not None:
        for what, was, now in (("cluster id", current.cluster_id, facts.cluster_id),
                               ("topic id", current.topic_id, facts.topic_id)):
            if was and now and was != now:
                return f"{what} changed from {was} to {now}"
    if facts.high_watermark < stored_end:
        return f"the log ends at offset {facts.high_watermark}, before the {stored_end} already stored"
    return None


def next_epoch(topic: str, partition: int, current_epoch: int, stored_end: int, facts: LogFacts,
               reason: str) -> LogEpoch:
    """The record of the epoch that starts after `current_epoch` (at the new log's start)."""
    return LogEpoch(topic, partition, current_epoch + 1, facts.log_start, facts.topic_id, facts.cluster_id,
                    reason, previous_end=stored_end)


def first_epoch(topic: str, partition: int, facts: LogFacts, stored: bool) -> LogEpoch:
    """The record of epoch 0: a partition seen for the first time, or stored before epochs existed
    (then the broker's current ids are adopted: the log was checked against the stored offsets)."""
    reason = "batches stored before log epochs were recorded" if stored else "first ingest of this partition"
    return LogEpoch(topic, partition, 0, 0 if stored else facts.log_start, facts.topic_id, facts.cluster_id,
                    reason)


def ingest_lease_name(group_id: str) -> str:
    """The lease of a consumer group's ingest runs (one store key part per group)."""
    part = re.sub(r"[^A-Za-z0-9._-]", "_", group_id).strip(".")
    return f"ingest/{part or '_'}"


# -- metrics (job "ingest"; monitoring/alerts.yml's IngestStale reads the last one) ---------------
METRICS_DOC = {
    "ingest_records": "records consumed by the last ingest run",
    "ingest_events": "events stored by the last run, by kind (watch, rate, recommendation)",
    "ingest_quarantined": "lines quarantined by the last run, by reason",
    "ingest_batches_written": "batches stored by the last run",
    "ingest_consumer_lag": "records behind the end of the partition after the last run",
    "ingest_consumer_lag_total": "records behind the end of the topic after the last run",
    "ingest_duration_seconds": "duration of the last run",
    "ingest_last_success_timestamp_seconds": "unix time the last run finished successfully",
    "ingest_log_epoch": "log epoch of each partition consumed by the last run (one more per log reset)",
    "ingest_log_resets": "partition logs found reset or replaced by the last run (each started a new epoch)",
}


def summary_families(summary: IngestSummary, now: float) -> list[Family]:
    """The run's gauges; `now` (unix seconds) is the run's success time."""

    def family(name: str, *labels: str) -> Family:
        return Family(name, METRICS_DOC[name], labels)

    events = family("ingest_events", "kind")
    for kind in EVENT_KINDS:
        events.set(summary.events.get(kind, 0), kind)
    quarantined = family("ingest_quarantined", "reason")
    for reason in REJECTION_REASONS:
        quarantined.set(summary.quarantined.get(reason, 0), reason)
    lag = family("ingest_consumer_lag", "topic", "partition")
    for partition, n in summary.lag.items():
        lag.set(n, summary.topic, str(partition))
    epochs = family("ingest_log_epoch", "topic", "partition")
    for partition, epoch in sorted(summary.epochs.items()):
        epochs.set(epoch, summary.topic, str(partition))
    return [
        family("ingest_records").set(summary.records),
        events,
        quarantined,
        family("ingest_batches_written").set(summary.batches_written),
        lag,
        family("ingest_consumer_lag_total").set(summary.lag_total),
        family("ingest_duration_seconds").set(summary.duration_seconds),
        family("ingest_last_success_timestamp_seconds").set(now),
        epochs,
        family("ingest_log_resets", "topic").set(len(summary.log_resets), summary.topic),
    ]
