"""The Kafka consumer loop of ingest: topic -> immutable batches in the object store, exactly once.

Owns `run_ingest` (one bounded run: consume in the consumer group until caught up with the log end
it last fetched, even while the stream flows, or a bound: INGEST_MAX_SECONDS/RECORDS, idle; hand records to the batch
builders, store each batch, commit after it, measure the lag, push the summary as job "ingest"
through `movierec.adapters.pushgateway`), the consumer (`_Ingester`, kafka-python), the broker
probe and the CLI: `python -m movierec.adapters.kafka_ingest [--max-records N] [-v]`.

Exactly once, across crashes at any point (with `movierec.batches`' write-once, pure-bytes
objects and manifest-last commit point):
- the store is the truth: each partition resumes where its current epoch's stored batches end
  (a committed offset behind it is skipped forward, one ahead of it, which only a stale commit can
  be, is sought back), so a crash after the manifest but before the Kafka commit does not
  re-ingest the range;
- Kafka offsets are committed only after the manifest is stored;
- records handed to the builders but not stored when a partition is revoked or rewound are
  dropped and re-read by whoever consumes the partition next.

Log epochs (`movierec.ingest.LogEpoch`): before consuming a partition, its log is compared with
the one its current epoch was stored from (topic id and cluster id from kafka-python's cluster
metadata, the high watermark of a fetch: Tansu's end-offset listing under-reports). A log that
was reset or replaced starts a new epoch at the new log's start: earlier batches stay as they
are, nothing is skipped, and the run's summary and metrics say so (`log_resets`,
`ingest_log_epoch`). A log replaced while a run consumes it stops the run before anything more is
stored (the next run starts the new epoch).

One run per consumer group: the run holds the group's lease (`movierec.lease`) from before it
reads the store until it has left the group, checks it before storing each batch, and a second
run is refused at once (`movierec.lease.LeaseHeld`, 409) naming the holder and when it is free.

Must not touch: the batch format, quality checks and loaders (`movierec.batches`), what a setting
means (`movierec.ingest.IngestConfig`), HTTP replies (`functions/ingest`).
"""
from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import time
from collections import defaultdict

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from movierec.adapters.kafka_epochs import PartitionEpochs, log_facts
from movierec.adapters.pushgateway import push
from movierec.adapters.retry import retry
from movierec.adapters.stores import open_store
from movierec.batches.builder import VOLUME_HISTORY, store_batch
from movierec.batches.builders import InlineBuilders, ProcessBuilders
from movierec.errors import Conflict, MovierecError, Unavailable
from movierec.ingest import IngestConfig, IngestError, IngestSummary, ingest_lease_name, summary_families
from movierec.lease import Lease, acquire, default_holder
from movierec.store import ObjectStore, StoreError

log = logging.getLogger("movierec.ingest")  # the component's name: operators grep "movierec.ingest: stored"


class _Ingester:
    def __init__(self, config: IngestConfig, store: ObjectStore):
        self.config = config
        self.store = store
        self.summary = IngestSummary(config.topic, config.group_id)
        # partition -> (records handed to the builders and not stored yet, the last one's offset)
        self.pending: dict[int, tuple[int, int]] = {}
        self.next_stored: dict[int, int] = {}  # partition -> first offset of its epoch not yet stored
        self.volumes: dict[int, list[int]] = defaultdict(list)  # partition -> recent batch sizes
        self.epochs = PartitionEpochs(config, store, self.summary)
        self.sought: dict[int, int] = {}  # partition -> offset last sought to close a gap
        self.revoked: list[int] = []  # partitions revoked on kafka-python's IO thread, not yet dropped
        self.builders: InlineBuilders | ProcessBuilders | None = None
        self.consumer = None
        self.assigned = False
        self.lease: Lease | None = None

    # The store is read once up front (after taking the lease): it fails fast (naming the store)
    # before anything is consumed, and gives each partition's epoch, resume point and volumes.
    def read_store_state(self) -> None:
        try:
            self.epochs.read()
        except StoreError as e:
            raise IngestError(f"object store unavailable before consuming: {e}") from e
        self.next_stored.update(self.epochs.stored_end)
        self.volumes.update(self.epochs.volumes)

    def check_new_partitions(self) -> None:
        """Compare the log of each newly assigned partition with its epoch once its high watermark
        is known (every fetch response carries it), and resume where its epoch's batches end."""
        for tp in self.consumer.assignment():
            if tp.partition not in self.epochs.checked and self.consumer.highwater(tp) is not None:
                resume = self.epochs.check(tp, log_facts(self.consumer, tp), self.lease)
                if self.next_stored.get(tp.partition) != resume:
                    self.sought.pop(tp.partition, None)
                self.next_stored[tp.partition] = resume
                if self.consumer.position(tp) != resume:
                    self.consumer.seek(tp, resume)

    def connect(self) -> None:
        def attempt():
            # kafka-python keeps retrying an unreachable bootstrap quietly: probe it first.
            _probe_tcp(self.config.bootstrap)
            return KafkaConsumer(**self.config.consumer_settings())

        try:
            self.consumer = retry(attempt, what=f"Kafka broker at {self.config.bootstrap} unreachable",
                                  attempts=self.config.connect_attempts, backoff_s=0.5,
                                  retry_on=(KafkaError, OSError))
        except Unavailable as e:
            raise IngestError(str(e)) from e

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
        store may be ahead of it (a crash between storing a batch and committing it): skip there.
        Records after a hole are sought back once; a hole the log really has is then accepted."""
        p = tp.partition
        pending = self.pending.get(p)
        if pending and records[0].offset <= pending[1]:
            log.warning("partition %d rewound to offset %d: re-reading it", p, records[0].offset)
            self.drop(p)
            pending = None
        expected = pending[1] + 1 if pending else self.next_stored.get(p, 0)
        first = records[0].offset
        if first > expected:
            if self.sought.get(p) != expected:
                self.sought[p] = expected
                log.info("partition %d: at offset %d, the store ends at %d: seeking back", p, first, expected)
                self.consumer.seek(tp, expected)
                return []
            log.warning("partition %d: the log has no offsets %d-%d", p, expected, first - 1)
            self.summary.log_gaps[p] = self.summary.log_gaps.get(p, 0) + first - expected
            return records
        if first == expected:
            return records
        if records[-1].offset < expected:
            self.consumer.seek(tp, expected)
        log.info("partition %d: skipping to offset %d, already stored", p, expected)
        return [r for r in records if r.offset >= expected]

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
        batch = self.builders.build(partition, self.volumes[partition][-VOLUME_HISTORY:])
        batch.epoch = self.epochs.epoch[partition]
        replaced = self.epochs.replaced(self.consumer)
        if replaced:
            raise IngestError(f"Kafka broker at {self.config.bootstrap}: the log of {self.config.topic} was "
                              f"replaced ({replaced}): nothing more stored; the next run starts a new epoch")
        try:
            self.lease.check()  # a run that overran its lease stops before storing or committing
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
        log.info("stored %s/p%d %d-%d (%d records, epoch %d)", self.config.topic, partition, batch.first,
                 batch.last, batch.records, batch.epoch)

    def run(self) -> IngestSummary:
        cfg = self.config
        started = time.monotonic()
        # Started first, so the child's start-up overlaps connecting and joining the group.
        self.builders = ProcessBuilders(cfg.topic) if cfg.builder_process else InlineBuilders(cfg.topic)
        try:
            self.connect()  # a broker that is down fails here, before anything is written
            try:
                self.take_lease()  # before joining the group: one member per group at a time
                try:
                    self.read_store_state()
                    self.consume(started)
                finally:
                    self.free_lease()
            finally:
                self.close_consumer()
        finally:
            self.builders.close()
        self.summary.duration_seconds = time.monotonic() - started
        return self.summary

    def close_consumer(self) -> None:
        """Leave the group (before the lease is freed, so the next run joins without a stale
        member) and close; uncommitted positions are not committed."""
        if self.consumer is not None:
            consumer, self.consumer = self.consumer, None
            consumer.close(autocommit=False)

    def take_lease(self) -> None:
        """The group's lease, or LeaseHeld (409) naming who holds it and until when."""
        cfg = self.config
        holder = default_holder(f"{cfg.caller} ingest of {cfg.topic}")
        try:
            self.lease = acquire(self.store, ingest_lease_name(cfg.group_id), holder, cfg.lease_seconds)
        except StoreError as e:
            raise IngestError(f"object store unavailable before consuming: {e}") from e
        except Conflict as e:
            e.args = (f"ingest of consumer group {cfg.group_id} is already running: {e}",)
            raise
        self.summary.lease = self.lease.token

    def free_lease(self) -> None:
        try:
            self.lease.release()
        except StoreError as e:  # the lease then frees itself at its expiry
            log.warning("could not release the ingest lease (it expires at %s): %s", self.lease.expires_at, e)

    def consume(self, started: float) -> None:
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
                self.check_new_partitions()
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
                        if tp.partition not in self.epochs.checked:  # not compared with its epoch yet:
                            consumer.seek(tp, records[0].offset)  # read these again once it is
                            continue
                        records = self.accept(tp, records)
                        if records:
                            self.take(tp.partition, records)
                # Caught up, even while the stream still flows: stop and store what was read (the
                # next scheduled run takes the rest) rather than read on to INGEST_MAX_SECONDS.
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
            self.close_consumer()

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
    """One bounded ingest run; pushes its summary to the Pushgateway when one is configured
    (`summary.pushed_metrics`: True iff pushed; a Pushgateway that is down does not fail the run).

    Raises IngestError naming the broker or the store when one of them fails, LeaseHeld (409) at
    once when another run of the consumer group holds its lease, LeaseLost (409) when this run
    overran its lease (it stopped before storing anything more)."""
    store = open_store() if store is None else store
    summary = _Ingester(config, store).run()
    if config.pushgateway_url:
        summary.pushed_metrics = push_metrics(summary, config.pushgateway_url)
    return summary


def push_metrics(summary: IngestSummary, url: str) -> bool:
    """Push the run's gauges as job "ingest"; True iff the Pushgateway took them."""
    return push(url, "ingest", summary_families(summary, time.time())) == "pushed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m movierec.adapters.kafka_ingest",
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
                                       batch_records=args.batch_records, idle_seconds=args.idle_seconds,
                                       caller="command-line")
        summary = run_ingest(config)
    except (MovierecError, StoreError, ValueError) as e:
        print(f"ingest failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary.as_dict(), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
