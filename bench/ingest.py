"""Benchmark: ingest throughput (topic -> stored batches) against raw kafka-python consumption.

Produces N stream lines (default 300k: watches, ratings, recommendation lines and ~2% garbage)
to a fresh 2-partition topic on a local Tansu broker (or KAFKA_BOOTSTRAP_SERVERS), then measures
in this one run, from the first record received to the end (group join time is printed apart):
- baseline: a kafka-python consumer that only iterates the records (same fetch settings), run
  before and after ours; the faster of the two counts (so warm caches cannot favour ours);
- ours: `run_ingest` into a fresh local-directory store (parse, quality checks, write-once
  batches with fsync, commits), batches built in a child process (the default);
- for reference, ours with everything in one process (`builder_process=False`).
Prints a table and writes bench/results/ingest.json (`events_per_s`, `raw_consume_per_s`,
`ratio`, `events`, `one_process_events_per_s`). Targets: >= 50k events/s and >= 60% of raw
consumption.
Run: `python -m bench.ingest [--events N]` (or `make bench-ingest`).

Owns nothing but this measurement; uses movierec's and scripts.broker's public API only.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import tempfile
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from movierec.adapters.kafka_ingest import run_ingest
from movierec.ingest import IngestConfig
from movierec.store import LocalDirectoryStore
from scripts.broker import ensure_topic, free_port, start_broker, stop_broker

RESULTS = Path(__file__).resolve().parent / "results" / "ingest.json"
PARTITIONS = 2


def make_lines(n: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        user, movie = rng.randrange(100_000), f"movie+{rng.randrange(20_000)}+{1950 + rng.randrange(70)}"
        t = f"2024-03-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}"
        roll = rng.random()
        if roll < 0.02:
            line = rng.choice(["garbage", f"{t},{user}", f"{t},x{user},GET /rate/{movie}=3", f"{t},{user},GET /rate/{movie}=9"])
        elif roll < 0.30:
            line = f"{t},{user},GET /rate/{movie}={1 + rng.randrange(5)}"
        elif roll < 0.35:
            line = f"{t}.123456,{user},recommendation request host:8082, status 200, result: {movie}, a+1, 41 ms"
        else:
            line = f"{t},{user},GET /data/m/{movie}/{rng.randrange(120)}.mpg"
        lines.append(line.encode())
    return lines


def produce(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    ensure_topic(bootstrap, topic, PARTITIONS)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1024 * 1024)
    for i, line in enumerate(lines):
        producer.send(topic, line, partition=i % PARTITIONS)
    producer.flush()
    producer.close()


def raw_consume(bootstrap: str, topic: str, n: int, settings: dict) -> float:
    """Records per second of a consumer that only iterates the records (no group)."""
    settings = {k: v for k, v in settings.items() if k not in ("group_id", "session_timeout_ms",
                                                                "heartbeat_interval_ms")}
    consumer = KafkaConsumer(**{**settings, "group_id": None})
    consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
    consumer.seek_to_beginning()
    count, started = 0, None
    try:
        while count < n:
            for records in consumer.poll(timeout_ms=1000).values():
                if started is None:
                    started = time.perf_counter()
                for record in records:
                    count += record.value is not None
    finally:
        consumer.close()
    return count / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    args = parser.parse_args(argv)

    handle = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        if not bootstrap:
            handle = start_broker(free_port(), Path(tmp) / "broker.log")
            bootstrap = handle.bootstrap
        try:
            topic = f"bench-{uuid.uuid4().hex[:8]}"
            lines = make_lines(args.events)
            t0 = time.perf_counter()
            produce(bootstrap, topic, lines)
            produce_s = time.perf_counter() - t0
            config = IngestConfig(bootstrap=bootstrap, topic=topic, group_id=f"bench-{topic}",
                                  idle_seconds=2.0, max_records=args.events)
            raw_runs = [raw_consume(bootstrap, topic, args.events, config.consumer_settings())]
            summary = run_ingest(config, LocalDirectoryStore(Path(tmp) / "store"))
            raw_runs.append(raw_consume(bootstrap, topic, args.events, config.consumer_settings()))
            one_process = run_ingest(
                dataclasses.replace(config, group_id=f"bench-one-{topic}", builder_process=False),
                LocalDirectoryStore(Path(tmp) / "store-one-process"))
        finally:
            if handle is not None:
                stop_broker(handle)
    for run in (summary, one_process):
        if run.records != args.events:
            raise SystemExit(f"ingest stored {run.records} of {args.events} records")
    raw_per_s = max(raw_runs)
    events_per_s = summary.records / summary.consuming_seconds
    one_process_per_s = one_process.records / one_process.consuming_seconds
    ratio = events_per_s / raw_per_s
    result = {
        "events": args.events,
        "events_per_s": round(events_per_s),
        "raw_consume_per_s": round(raw_per_s),
        "raw_consume_runs_per_s": [round(r) for r in raw_runs],
        "ratio": round(ratio, 3),
        "one_process_events_per_s": round(one_process_per_s),
        "produce_per_s": round(args.events / produce_s),
        "ingest_run_seconds": round(summary.duration_seconds, 2),
        "ingest_consuming_seconds": round(summary.consuming_seconds, 2),
        "batches_written": summary.batches_written,
        "quarantined": sum(summary.quarantined.values()),
        "targets": {"events_per_s": 50_000, "ratio": 0.6},
    }
    print(f"{'measure':<34}{'value':>14}")
    print(f"{'events':<34}{args.events:>14,}")
    print(f"{'raw kafka-python consume /s':<34}{raw_per_s:>14,.0f}   (best of "
          f"{', '.join(f'{r:,.0f}' for r in raw_runs)})")
    print(f"{'ingest (parse+store+commit) /s':<34}{events_per_s:>14,.0f}   (target >= 50,000)")
    print(f"{'ratio ingest / raw':<34}{ratio:>14.2f}   (target >= 0.60)")
    print(f"{'  same, all in one process /s':<34}{one_process_per_s:>14,.0f}   (reference)")
    print(f"{'ingest run incl. group join, s':<34}{summary.duration_seconds:>14.2f}")
    print(f"{'quarantined lines':<34}{result['quarantined']:>14,}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
