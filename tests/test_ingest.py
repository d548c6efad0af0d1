"""Ingest: stream lines in Kafka (real Tansu) -> batches in the object store, each record once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from movierec import ingest
from movierec.events import RateEvent, parse_line
from movierec.ingest import (
    IngestConfig,
    IngestError,
    decode_columns,
    load_quarantine,
    load_ratings,
    load_watches,
    parse_batch,
    run_ingest,
)
from movierec.store import LocalDirectoryStore
from scripts.broker import ensure_topic, free_port

RATE = "2020-01-0{d}T10:00:{s:02d},{u},GET /rate/movie+{m}+1999={r}"
WATCH = "2020-01-0{d}T10:00:{s:02d},{u},GET /data/m/movie+{m}+1999/{minute}.mpg"
RECO = "2020-01-01T10:00:00.5,{u},recommendation request host:8082, status 200, result: a+1, b+2, 12 ms"


def stream_lines(n: int, garbage_every: int = 50) -> list[str]:
    lines = []
    for i in range(n):
        if i % garbage_every == 7:
            lines.append(["garbage", "2020-01-01T10:00:00,x,GET /rate/a=3",
                          "2020-01-01T10:00:00,5,GET /rate/a=9"][i % 3])
        elif i % 3 == 0:
            lines.append(RATE.format(d=1 + i % 9, s=i % 60, u=i % 97, m=i % 31, r=1 + i % 5))
        elif i % 11 == 1:
            lines.append(RECO.format(u=i % 97))
        else:
            lines.append(WATCH.format(d=1 + i % 9, s=i % 60, u=i % 97, m=i % 31, minute=i % 120))
    return lines


def produce(bootstrap: str, topic: str, lines: list[str], partitions: int = 2) -> dict[int, list[str]]:
    """Send lines round-robin over partitions; returns what each partition holds, in order."""
    ensure_topic(bootstrap, topic, partitions)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=256 * 1024)
    by_partition: dict[int, list[str]] = {p: [] for p in range(partitions)}
    for i, line in enumerate(lines):
        producer.send(topic, line.encode(), partition=i % partitions)
        by_partition[i % partitions].append(line)
    producer.flush()
    producer.close()
    return by_partition


def committed(bootstrap: str, group: str, topic: str, partitions: int = 2) -> list[int | None]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return [consumer.committed(TopicPartition(topic, p)) for p in range(partitions)]
    finally:
        consumer.close()


def config(bootstrap: str, topic: str, **kw) -> IngestConfig:
    return IngestConfig(bootstrap=bootstrap, topic=topic, group_id=kw.pop("group_id", f"g-{topic}"),
                        idle_seconds=kw.pop("idle_seconds", 2.0), **kw)


def rating_multiset(lines) -> Counter:
    events = (parse_line(x) for x in lines)
    return Counter((e.user_id, e.movie_id, float(e.rating)) for e in events if isinstance(e, RateEvent))


def table_multiset(table) -> Counter:
    return Counter(zip(table.user_ids.tolist(), table.movie_ids.tolist(), table.ratings.tolist()))


@pytest.fixture
def topic():
    return f"movielog-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def store(tmp_path):
    return LocalDirectoryStore(tmp_path / "store")


def test_ingest_stores_every_event_once_by_kind_and_commits_the_end(kafka_bootstrap, topic, store):
    lines = stream_lines(3000)
    produce(kafka_bootstrap, topic, lines)
    summary = run_ingest(config(kafka_bootstrap, topic, batch_records=700), store)

    parsed = [parse_line(x) for x in lines]
    kinds = Counter(type(e).__name__ for e in parsed)
    assert summary.records == 3000
    assert summary.events == {"rate": kinds["RateEvent"], "watch": kinds["WatchEvent"],
                              "recommendation": kinds["RecommendationEvent"]}
    assert sum(summary.quarantined.values()) == kinds["Rejection"] > 0
    assert summary.lag_total == 0 and summary.stopped_because == "caught_up"
    assert table_multiset(load_ratings(store, topic)) == rating_multiset(lines)
    assert len(load_watches(store, topic)) == kinds["WatchEvent"]
    assert sorted(q["line"] for q in load_quarantine(store, topic)) == sorted(
        e.line for e in parsed if type(e).__name__ == "Rejection")
    assert committed(kafka_bootstrap, f"g-{topic}", topic) == [1500, 1500]


def test_batches_are_keyed_by_topic_partition_and_offset_range(kafka_bootstrap, topic, store):
    produce(kafka_bootstrap, topic, stream_lines(1000))
    run_ingest(config(kafka_bootstrap, topic, batch_records=300), store)
    assert store.list(f"data/manifests/{topic}/p0/") == [
        f"data/manifests/{topic}/p0/{a:020d}-{b:020d}.json" for a, b in [(0, 299), (300, 499)]]
    manifest = json.loads(store.get(f"data/manifests/{topic}/p0/{0:020d}-{299:020d}.json"))
    assert manifest["objects"]["ratings"] == f"data/ratings/{topic}/p0/{0:020d}-{299:020d}.npz"
    assert manifest["quality"]["records"] == 300


def test_a_second_group_over_the_same_offsets_stores_nothing_twice(kafka_bootstrap, topic, store):
    lines = stream_lines(1000)
    produce(kafka_bootstrap, topic, lines)
    run_ingest(config(kafka_bootstrap, topic), store)
    before = {k: store.get(k) for k in store.list()}
    again = run_ingest(config(kafka_bootstrap, topic, group_id=f"other-{topic}"), store)
    assert again.batches_written == 0
    assert {k: store.get(k) for k in store.list()} == before
    assert table_multiset(load_ratings(store, topic)) == rating_multiset(lines)


def test_a_crash_after_storing_but_before_committing_resumes_after_the_stored_batch(
        kafka_bootstrap, topic, store, monkeypatch):
    lines = stream_lines(1200)
    produce(kafka_bootstrap, topic, lines)

    def crash(self, offsets=None):
        raise RuntimeError("simulated crash between the store write and the commit")

    monkeypatch.setattr(KafkaConsumer, "commit", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_ingest(config(kafka_bootstrap, topic, batch_records=400), store)
    monkeypatch.undo()
    assert committed(kafka_bootstrap, f"g-{topic}", topic) == [None, None]
    assert len(store.list("data/manifests/")) == 1  # one batch stored, then the "crash"

    summary = run_ingest(config(kafka_bootstrap, topic, batch_records=400), store)
    assert summary.records == 1200 - 400  # the stored batch was skipped, not re-read into the store
    assert table_multiset(load_ratings(store, topic)) == rating_multiset(lines)
    assert committed(kafka_bootstrap, f"g-{topic}", topic) == [600, 600]


def test_new_lines_after_a_run_are_picked_up_by_the_next_run(kafka_bootstrap, topic, store):
    first, second = stream_lines(600), stream_lines(400, garbage_every=7)
    produce(kafka_bootstrap, topic, first)
    run_ingest(config(kafka_bootstrap, topic), store)
    produce(kafka_bootstrap, topic, second)
    summary = run_ingest(config(kafka_bootstrap, topic), store)
    assert summary.records == 400
    assert table_multiset(load_ratings(store, topic)) == rating_multiset(first + second)


def test_max_records_bounds_a_run_and_reports_the_lag(kafka_bootstrap, topic, store):
    produce(kafka_bootstrap, topic, stream_lines(2000))
    summary = run_ingest(config(kafka_bootstrap, topic, max_records=500), store)
    assert summary.records == 500
    assert summary.stopped_because == "max_records"
    assert summary.lag_total == 1500


def test_the_same_records_give_byte_identical_batches():
    records = [(100 + i, line.encode()) for i, line in enumerate(stream_lines(500))]
    a, b = parse_batch("t", 0, records, []), parse_batch("t", 0, list(records), [])
    assert a.objects == b.objects and set(a.objects) == {"ratings", "watches", "recommendations", "quarantine"}
    ratings = decode_columns(a.objects["ratings"])
    assert ratings["offset"][0] == 100 and ratings["rating"].dtype == np.int8
    assert ratings["movie_vocab"][ratings["movie_code"]][0] == "movie+0+1999"


def test_quality_record_flags_duplicates_and_volume_anomalies():
    line = RATE.format(d=1, s=0, u=1, m=1, r=5).encode()
    records = [(0, line), (1, line), (2, RATE.format(d=1, s=1, u=1, m=1, r=5).encode())]
    quality = parse_batch("t", 0, records, recent_volumes=[1000, 1200, 900]).quality
    assert quality["duplicate_lines"] == 1
    assert quality["duplicate_ratings"] == 2
    assert {"duplicate_lines", "duplicate_ratings", "volume_low"} <= set(quality["flags"])
    assert not quality["ok"]
    high = parse_batch("t", 0, [(i, line) for i in range(100)], recent_volumes=[5, 5]).quality
    assert "volume_high" in high["flags"]


def test_loaders_keep_each_offset_once_when_stored_ranges_overlap(store):
    records = [(i, RATE.format(d=1, s=i % 60, u=i, m=i, r=3).encode()) for i in range(10)]
    ingest.store_batch(store, parse_batch("t", 0, records[:6], []))
    ingest.store_batch(store, parse_batch("t", 0, records[3:], []))  # overlaps offsets 3..5
    table = load_ratings(store, "t")
    assert sorted(table.user_ids.tolist()) == list(range(10))


def test_ratings_load_in_event_time_order(store):
    late = (0, b"2020-01-02T00:00:00,1,GET /rate/a=5")
    early = (0, b"2020-01-01T00:00:00,2,GET /rate/b=4")
    ingest.store_batch(store, parse_batch("t", 0, [late], []))
    ingest.store_batch(store, parse_batch("t", 1, [early], []))
    assert load_ratings(store).user_ids.tolist() == [2, 1]


def test_a_pushgateway_that_is_down_does_not_fail_the_ingest(kafka_bootstrap, topic, store):
    produce(kafka_bootstrap, topic, stream_lines(100))
    cfg = config(kafka_bootstrap, topic, pushgateway_url=f"http://127.0.0.1:{free_port()}")
    summary = run_ingest(cfg, store)
    assert summary.records == 100 and summary.pushed_metrics is False


@pytest.fixture
def pushgateway(tmp_path):
    port = free_port()
    proc = subprocess.Popen(["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/-/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_summary_is_pushed_to_the_pushgateway_as_ingest_metrics(kafka_bootstrap, topic, store,
                                                                     pushgateway):
    produce(kafka_bootstrap, topic, stream_lines(300))
    summary = run_ingest(config(kafka_bootstrap, topic, pushgateway_url=pushgateway), store)
    assert summary.pushed_metrics is True
    metrics = urllib.request.urlopen(pushgateway + "/metrics", timeout=5).read().decode()
    assert f'ingest_events{{instance="",job="ingest",kind="rate"}} {summary.events["rate"]}' in metrics
    assert 'ingest_quarantined{instance="",job="ingest",reason="truncated"}' in metrics
    assert "ingest_last_success_timestamp_seconds" in metrics
    assert 'ingest_consumer_lag_total{instance="",job="ingest"} 0' in metrics


def test_ingest_config_rejects_a_non_numeric_setting_in_one_line():
    with pytest.raises(ValueError, match="INGEST_MAX_RECORDS must be an integer, got 'lots'"):
        IngestConfig.from_env({"INGEST_MAX_RECORDS": "lots"})


def test_the_store_being_down_fails_before_consuming_and_names_it(kafka_bootstrap, topic):
    from movierec.adapters.s3store import S3Store

    endpoint = f"http://127.0.0.1:{free_port()}"
    store = S3Store("data", endpoint_url=endpoint, access_key="a", secret_key="b", attempts=2,
                    backoff_s=0.01, timeout_s=1)
    produce(kafka_bootstrap, topic, stream_lines(10))
    with pytest.raises(IngestError, match=f"object store unavailable.*{endpoint}"):
        run_ingest(config(kafka_bootstrap, topic), store)
    assert committed(kafka_bootstrap, f"g-{topic}", topic) == [None, None]


def test_records_added_to_a_batch_in_parts_give_the_same_bytes_as_added_at_once():
    records = [(100 + i, line.encode()) for i, line in enumerate(stream_lines(5000))]
    whole = parse_batch("t", 0, records, [10])
    builder = ingest.BatchBuilder("t", 0)
    for start in range(0, len(records), 777):
        part = records[start:start + 777]
        builder.add([o for o, _ in part], [v for _, v in part])
    parts = builder.build([10])
    assert parts.objects == whole.objects and parts.quality == whole.quality
    assert (parts.first, parts.last, parts.records) == (100, 5099, 5000)


def test_building_batches_in_a_child_process_stores_the_same_bytes_as_inline(kafka_bootstrap, topic, tmp_path):
    produce(kafka_bootstrap, topic, stream_lines(3000))
    stores = {}
    for in_child in (True, False):
        stores[in_child] = LocalDirectoryStore(tmp_path / f"child-{in_child}")
        run_ingest(config(kafka_bootstrap, topic, group_id=f"g-{in_child}-{topic}", batch_records=700,
                          builder_process=in_child), stores[in_child])
    keys = stores[True].list()
    assert keys == stores[False].list() and len(keys) > 10
    assert all(stores[True].get(k) == stores[False].get(k) for k in keys)


def test_a_builder_process_that_dies_stops_the_run_with_an_error_naming_it():
    builders = ingest.ProcessBuilders("t")
    try:
        builders.add(0, [0], [RATE.format(d=1, s=0, u=1, m=1, r=5).encode()])
        builders.process.kill()
        builders.process.wait(10)
        with pytest.raises(IngestError, match=r"batch builder process \(pid \d+\) ended unexpectedly"):
            builders.build(0, [])
    finally:
        builders.close()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2][:1]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited (it only waits for its new parent to reap it)


def test_the_builder_process_exits_when_the_ingest_process_is_killed():
    script = ("import sys, time; from movierec.ingest import ProcessBuilders; "
              "b = ProcessBuilders('t'); print(b.process.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(ingest.__file__).parents[1])
    try:
        child_pid = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        for _ in range(100):  # the child reads end-of-input and exits; bounded wait, no timing assert
            if not _running(child_pid):
                break
            time.sleep(0.1)
        else:
            os.kill(child_pid, signal.SIGKILL)
            pytest.fail("the builder process outlived the ingest process")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
