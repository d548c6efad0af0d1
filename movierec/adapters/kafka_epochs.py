"""Log epochs on the consumer's side: is each partition's log still the one its stored batches
came from, and where does consuming resume?

A partition's log can be reset or replaced under the same topic name: a broker that restarted
with an empty log (Tansu with memory storage, `make down`/`make up`), a topic deleted and
recreated on a real cluster. Its offsets then start again, and resuming "after the highest stored
offset" would skip every new record until the new log passed it. So, before a run consumes a
partition, `PartitionEpochs.check` compares what the broker reports now (`movierec.ingest.LogFacts`:
the topic id and cluster id of kafka-python 3's cluster metadata, read-only; the log start; the
high watermark of a fetch response, since Tansu's end-offset listing under-reports) with the
partition's current epoch record (`movierec.ingest.LogEpoch`), and `movierec.ingest.reset_reason`
decides. A reset starts the next epoch at the new log's start: earlier batches stay as they are,
and the new epoch's keys differ (`movierec.batches.layout`), so nothing is overwritten, skipped
or counted twice. `replaced` tells a run that the topic id changed under it while consuming.

Owns: `PartitionEpochs` (the epochs and resume points read from the store, the checks, the epoch
records it writes, write-once) and `log_facts`.
Must not touch: consuming, storing batches and committing (`movierec.adapters.kafka_ingest`), the
rule itself (`movierec.ingest.reset_reason`), the keys (`movierec.batches.layout`).
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict

from kafka.errors import KafkaError

from movierec.batches.builder import VOLUME_HISTORY
from movierec.batches.layout import BatchRef, epoch_key, list_batches, list_epoch_keys
from movierec.ingest import (
    IngestConfig,
    IngestError,
    IngestSummary,
    LogEpoch,
    LogFacts,
    first_epoch,
    next_epoch,
    reset_reason,
)
from movierec.lease import Lease, utc
from movierec.store import ObjectExistsError, ObjectStore, StoreError

log = logging.getLogger("movierec.ingest")


def _cluster(consumer):
    # kafka-python 3 keeps what Metadata v10+ reports (cluster id, topic ids) on the client's
    # ClusterMetadata; there is no public accessor. Read only; None where it is not there.
    return getattr(getattr(consumer, "_client", None), "cluster", None)


def _topic_id(consumer, topic: str) -> str | None:
    cluster = _cluster(consumer)
    value = cluster.topic_id(topic) if cluster is not None and hasattr(cluster, "topic_id") else None
    return str(value) if value else None


def log_facts(consumer, tp) -> LogFacts:
    """What the broker reports about `tp`'s log now; its high watermark must be known (fetched)."""
    cluster_id = getattr(_cluster(consumer), "cluster_id", None)
    try:
        log_start = consumer.beginning_offsets([tp], timeout_ms=10_000)[tp]
    except KafkaError as e:
        log.warning("partition %d: log start unknown (%s): taken as 0", tp.partition, e)
        log_start = 0
    return LogFacts(_topic_id(consumer, tp.topic), str(cluster_id) if cluster_id else None,
                    int(log_start or 0), int(consumer.highwater(tp)))


class PartitionEpochs:
    """Each partition's current epoch, its record and where its stored batches end."""

    def __init__(self, config: IngestConfig, store: ObjectStore, summary: IngestSummary):
        self.config, self.store, self.summary = config, store, summary
        self.epoch: dict[int, int] = {}  # partition -> its current log epoch
        self.record: dict[int, LogEpoch] = {}  # partition -> its current epoch's record
        self.stored_end: dict[int, int] = {}  # partition -> first offset of its epoch not stored yet
        self.volumes: dict[int, list[int]] = defaultdict(list)  # partition -> recent batch sizes
        self.has_batches: set[int] = set()
        self.checked: set[int] = set()  # partitions compared with their epoch in this run

    def read(self) -> None:
        """Read the batches and epoch records of the topic (StoreError when the store fails)."""
        topic = self.config.topic
        refs = list_batches(self.store, topic)
        for partition, entries in list_epoch_keys(self.store, topic).items():
            epoch, key = entries[-1]
            self.epoch[partition] = epoch
            self.record[partition] = LogEpoch.from_bytes(self.store.get(key))
        by_partition: dict[int, list[BatchRef]] = defaultdict(list)
        for ref in refs:
            by_partition[ref.partition].append(ref)
        for partition, prefs in by_partition.items():
            self.has_batches.add(partition)
            epoch = max(self.epoch.get(partition, 0), prefs[-1].epoch)
            self.epoch[partition] = epoch
            ends = [r.last + 1 for r in prefs if r.epoch == epoch]
            if ends:
                self.stored_end[partition] = max(ends)
            self.volumes[partition] = [r.last - r.first + 1 for r in prefs[-VOLUME_HISTORY:]]
        for partition, record in self.record.items():
            if record.epoch == self.epoch[partition]:
                self.stored_end[partition] = max(self.stored_end.get(partition, 0), record.start_offset)

    def check(self, tp, facts: LogFacts, lease: Lease) -> int:
        """Compare `tp`'s log with its epoch, start the next epoch if it was reset or replaced,
        and return the offset to resume at (the current epoch's stored end)."""
        p, cfg = tp.partition, self.config
        epoch, end = self.epoch.get(p, 0), self.stored_end.get(p, 0)
        record = self.record.get(p)
        current = record if record is not None and record.epoch == epoch else None
        reason = reset_reason(current, end, facts)
        if reason:
            new = self._write(next_epoch(cfg.topic, p, epoch, end, facts, reason), facts, lease)
            log.warning("partition %d of %s: log reset or replaced (%s): epoch %d starts at offset %d; "
                        "epoch %d had stored up to offset %d", p, cfg.topic, reason, new.epoch,
                        new.start_offset, epoch, end)
            self.summary.log_resets.append({"partition": p, "epoch": new.epoch, "previous_epoch": epoch,
                                            "previous_end": end, "resumed_at": new.start_offset, "reason": reason,
                                            "detected_at": utc(time.time())})
            self.record[p], end = new, new.start_offset
        elif current is None:  # first sight of this partition, or batches older than epochs
            adopted = first_epoch(cfg.topic, p, facts, p in self.has_batches)
            if epoch:  # batches of an epoch whose record is missing
                adopted = LogEpoch(**{**adopted.__dict__, "epoch": epoch, "start_offset": 0,
                                      "reason": "epoch record missing: adopted the current log"})
            self.record[p] = self._write(adopted, facts, lease)
            end = max(end, self.record[p].start_offset)
        if facts.log_start > end:
            log.warning("partition %d: the log starts at offset %d, after the %d stored: offsets %d-%d "
                        "were deleted before they were ingested", p, facts.log_start, end, end, facts.log_start - 1)
            self.summary.log_gaps[p] = self.summary.log_gaps.get(p, 0) + facts.log_start - end
            end = facts.log_start
        self.stored_end[p] = end
        self.summary.epochs[p] = self.epoch[p] = self.record[p].epoch
        self.checked.add(p)
        return end

    def _write(self, record: LogEpoch, facts: LogFacts, lease: Lease) -> LogEpoch:
        """Store an epoch's record once; a run that wrote the same epoch of the same log first wins."""
        key = epoch_key(record.topic, record.partition, record.epoch)
        try:
            lease.check()
            self.store.put_once(key, record.to_bytes())
            return record
        except ObjectExistsError:
            existing = LogEpoch.from_bytes(self.store.get(key))
            if existing.same_log(facts):
                return existing
            raise IngestError(f"{key} records another log (topic id {existing.topic_id}) than the broker's "
                              f"({facts.topic_id}): check the topic before ingesting") from None
        except StoreError as e:
            raise IngestError(f"object store failed writing {key}: {e}") from e

    def replaced(self, consumer) -> str | None:
        """Why the topic's log changed since this run checked it (its topic id), or None."""
        now = _topic_id(consumer, self.config.topic)
        for p in self.checked:
            was = self.record[p].topic_id
            if was and now and now != was:
                return f"topic id changed from {was} to {now} while consuming"
        return None
