"""Ingest: stream lines in Kafka (real Tansu) -> batches in the object store, each record once."""
from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from collections import Counter

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from movierec.adapters.kafka_ingest import run_ingest
from movierec.batches.loaders import load_quarantine, load_ratings, load_watches
from movierec.events import parse_line
from movierec.ingest import IngestConfig, IngestError
from movierec.store import LocalDirectoryStore
from scripts.broker import ensure_topic, free_port
from tests.test_batches import rating_multiset, stream_lines, table_multiset


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
    before = {k: store.get(k) for k in store.list("data/")}  # leases/ holds each group's run leases
    again = run_ingest(config(kafka_bootstrap, topic, group_id=f"other-{topic}"), store)
    assert again.batches_written == 0
    assert {k: store.get(k) for k in store.list("data/")} == before
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



def test_the_store_being_down_fails_before_consuming_and_names_it(kafka_bootstrap, topic):
    from movierec.adapters.s3store import S3Store

    endpoint = f"http://127.0.0.1:{free_port()}"
    store = S3Store("data", endpoint_url=endpoint, access_key="a", secret_key="b", attempts=2,
                    backoff_s=0.01, timeout_s=1)
    produce(kafka_bootstrap, topic, stream_lines(10))
    with pytest.raises(IngestError, match=f"object store unavailable.*{endpoint}"):
        run_ingest(config(kafka_bootstrap, topic), store)
    assert committed(kafka_bootstrap, f"g-{topic}", topic) == [None, None]



def test_building_batches_in_a_child_process_stores_the_same_bytes_as_inline(kafka_bootstrap, topic, tmp_path):
    produce(kafka_bootstrap, topic, stream_lines(3000))
    stores = {}
    for in_child in (True, False):
        stores[in_child] = LocalDirectoryStore(tmp_path / f"child-{in_child}")
        run_ingest(config(kafka_bootstrap, topic, group_id=f"g-{in_child}-{topic}", batch_records=700,
                          builder_process=in_child), stores[in_child])
    keys = stores[True].list("data/")  # leases/ differ: each group has its own
    assert keys == stores[False].list("data/") and len(keys) > 10
    assert all(stores[True].get(k) == stores[False].get(k) for k in keys)
