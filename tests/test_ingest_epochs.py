"""Log epochs: a partition whose log was reset or replaced (the broker restarted with an empty log,
the topic deleted and recreated) starts a new epoch in the batch keys; nothing produced is skipped,
nothing is stored twice, earlier batches stay as they were, and the epoch shows in the summary,
the metrics and an alert. The trial runs over a real Tansu broker restarted on the same port."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from movierec.adapters.kafka_ingest import run_ingest
from movierec.batches.builder import parse_batch, store_batch
from movierec.batches.layout import BatchRef, batch_key, list_batches
from movierec.batches.loaders import iter_recommendations, load_quarantine, load_ratings, load_watches
from movierec.ingest import IngestConfig, LogEpoch, LogFacts, reset_reason, summary_families
from movierec.metrics import render_text
from movierec.snapshot import take_snapshot
from movierec.store import LocalDirectoryStore
from scripts.broker import ensure_topic, free_port, start_broker, stop_broker
from tests.test_kafka_ingest import committed, produce, pushgateway  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]


def unique_lines(phase: int, n: int) -> list[str]:
    """Lines each of which is a distinct fact (its user id names the phase and the line)."""
    lines = []
    for i in range(n):
        user = phase * 1_000_000 + i
        kind = i % 10
        if kind < 3:
            lines.append(f"2020-01-0{1 + i % 9}T10:00:00,{user},GET /rate/movie+{i % 41}+1999={1 + i % 5}")
        elif kind < 8:
            lines.append(f"2020-01-0{1 + i % 9}T10:00:00,{user},GET /data/m/movie+{i % 37}+2001/{i % 90}.mpg")
        elif kind == 8:
            lines.append(f"2020-01-01T10:00:00.5,{user},recommendation request host:8082, status 200, "
                         f"result: a+1, b+2, 12 ms")
        else:
            lines.append(f"garbage {phase} {i}")
    return lines


def facts(lines: list[str]) -> Counter:
    from tests.test_kafka_ingest_reliability import produced_facts

    return produced_facts(lines)


def stored(store) -> Counter:
    from tests.test_kafka_ingest_reliability import stored_lines

    return stored_lines(store)


def tally(produced: Counter, got: Counter) -> dict:
    return {"produced": sum(produced.values()), "stored": sum(got.values()),
            "missing": sum((produced - got).values()), "duplicated": sum((got - produced).values())}


def config(bootstrap: str, topic: str, **kw) -> IngestConfig:
    return IngestConfig(bootstrap=bootstrap, topic=topic, group_id=f"g-{topic}", idle_seconds=1.5,
                        session_timeout_ms=3000, batch_records=kw.pop("batch_records", 700), **kw)


def recreate_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        admin.delete_topics([topic])
        deadline = time.monotonic() + 10
        while topic in admin.list_topics() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        admin.close()
    ensure_topic(bootstrap, topic, partitions)


# -- the rule, without a broker ---------------------------------------------------------------
EPOCH0 = LogEpoch("t", 0, 0, 0, "topic-a", "cluster-1", "first ingest of this partition")


def test_the_same_log_is_no_reset_even_far_ahead_of_what_was_stored():
    assert reset_reason(EPOCH0, 1500, LogFacts("topic-a", "cluster-1", 0, 1500)) is None
    assert reset_reason(EPOCH0, 1500, LogFacts("topic-a", "cluster-1", 0, 90_000)) is None


def test_a_changed_topic_id_is_a_reset_even_when_the_new_log_is_longer():
    reason = reset_reason(EPOCH0, 1500, LogFacts("topic-b", "cluster-1", 0, 90_000))
    assert reason == "topic id changed from topic-a to topic-b"


def test_a_changed_cluster_id_is_a_reset():
    assert reset_reason(EPOCH0, 10, LogFacts("topic-a", "cluster-2", 0, 10)).startswith("cluster id changed")


def test_a_log_shorter_than_what_was_stored_is_a_reset_also_without_ids():
    legacy = None  # batches stored before epochs were recorded
    assert reset_reason(legacy, 1500, LogFacts(None, None, 0, 1500)) is None
    assert reset_reason(legacy, 1500, LogFacts(None, None, 0, 200)) == \
        "the log ends at offset 200, before the 1500 already stored"
    no_ids = LogEpoch("t", 0, 3, 0, None, None, "x")
    assert reset_reason(no_ids, 1500, LogFacts("topic-a", "c", 0, 1499)) is not None


def test_an_epoch_record_round_trips_and_its_bytes_depend_only_on_what_it_says():
    assert LogEpoch.from_bytes(EPOCH0.to_bytes()) == EPOCH0
    assert EPOCH0.to_bytes() == LogEpoch(**EPOCH0.__dict__).to_bytes()


# -- the keys and the loaders ------------------------------------------------------------------
def test_epoch_0_keeps_the_keys_of_old_batches_and_later_epochs_add_a_component():
    assert batch_key("ratings", "movielog1", 0, 0, 9) == \
        f"data/ratings/movielog1/p0/{0:020d}-{9:020d}.npz"
    assert batch_key("ratings", "movielog1", 0, 0, 9, epoch=2) == \
        f"data/ratings/movielog1/e2/p0/{0:020d}-{9:020d}.npz"
    for epoch in (0, 2):
        ref = BatchRef("movielog1", 3, 10, 19, epoch)
        assert BatchRef.from_manifest_key(ref.key("manifests")) == ref
    refs = [BatchRef("t", 0, 500, 999, 0), BatchRef("t", 0, 0, 99, 1), BatchRef("t", 0, 0, 499, 0),
            BatchRef("t", 1, 0, 9, 0)]
    assert sorted(refs) == [refs[2], refs[0], refs[1], refs[3]]


def test_the_same_offsets_in_two_epochs_are_two_records_and_an_overlap_within_one_is_one(tmp_path):
    store = LocalDirectoryStore(tmp_path)
    old = unique_lines(1, 40)
    new = unique_lines(2, 40)
    store_batch(store, parse_batch("t", 0, list(enumerate(x.encode() for x in old)), []))
    second = parse_batch("t", 0, list(enumerate(x.encode() for x in new)), [])
    second.epoch = 1
    store_batch(store, second)
    overlap = parse_batch("t", 0, [(i, new[i].encode()) for i in range(20, 40)], [])  # a rebalance race
    overlap.epoch = 1
    store_batch(store, overlap)
    assert [r.epoch for r in list_batches(store)] == [0, 1, 1]
    assert json.loads(store.get(second.ref.key("manifests")))["epoch"] == 1
    assert "epoch" not in json.loads(store.get(BatchRef("t", 0, 0, 39).key("manifests")))
    assert stored(store) == facts(old + new)
    assert len(load_quarantine(store)) == sum(1 for x in old + new if x.startswith("garbage"))
    assert len(list(iter_recommendations(store))) == sum(1 for x in old + new if "recommendation" in x)


# -- the trial over a real broker ---------------------------------------------------------------
@pytest.fixture
def broker(tmp_path):
    """Our own Tansu on a fixed port, restartable (memory storage: a restart empties its log)."""
    port = free_port()
    state = {"handle": start_broker(port, tmp_path / "broker.log"), "port": port}

    def restart():
        stop_broker(state["handle"])
        state["handle"] = start_broker(port, tmp_path / "broker.log")

    state["restart"] = restart
    try:
        yield state
    finally:
        stop_broker(state["handle"])


def test_broker_restart_and_topic_recreation_skip_nothing_and_duplicate_nothing(broker, tmp_path, pushgateway,  # noqa: F811
                                                                                capsys):
    bootstrap = f"127.0.0.1:{broker['port']}"
    topic = f"epochs-{uuid.uuid4().hex[:8]}"
    store = LocalDirectoryStore(tmp_path / "store")
    produced: list[str] = []
    figures = []

    def phase(name: str, lines: list[str], **kw):
        produce(bootstrap, topic, lines)
        produced.extend(lines)
        summary = run_ingest(config(bootstrap, topic, **kw), store)
        figures.append({"phase": name, "produced_now": len(lines), "ingested_now": summary.records,
                        "epochs": dict(summary.epochs), **tally(facts(produced), stored(store))})
        return summary

    first = phase("before any restart", unique_lines(1, 3000))
    assert first.epochs == {0: 0, 1: 0} and first.log_resets == []

    # 1. The broker restarts with an empty log; MORE records arrive than were stored before, so
    #    only the topic id tells the new log from the old one (offsets alone would skip 3000).
    broker["restart"]()
    ensure_topic(bootstrap, topic, 2)
    restarted = phase("after a broker restart", unique_lines(2, 5000), pushgateway_url=pushgateway)
    assert restarted.records == 5000
    assert restarted.epochs == {0: 1, 1: 1}
    assert [r["reason"].split(" from ")[0] for r in restarted.log_resets] == ["topic id changed"] * 2
    assert all(r["previous_end"] == 1500 and r["resumed_at"] == 0 for r in restarted.log_resets)
    assert restarted.as_dict()["log_resets_total"] == 2
    metrics = urllib.request.urlopen(pushgateway + "/metrics", timeout=5).read().decode()
    assert f'ingest_log_epoch{{instance="",job="ingest",partition="0",topic="{topic}"}} 1' in metrics
    assert f'ingest_log_resets{{instance="",job="ingest",topic="{topic}"}} 2' in metrics

    # 2. Nothing new happened to the log: the next run stays in epoch 1.
    steady = phase("the next run", unique_lines(3, 400))
    assert steady.records == 400 and steady.log_resets == [] and steady.epochs == {0: 1, 1: 1}

    # 3. The topic is deleted and recreated: a new topic id and a shorter log.
    recreate_topic(bootstrap, topic, 2)
    recreated = phase("after the topic was recreated", unique_lines(4, 300))
    assert recreated.records == 300 and recreated.epochs == {0: 2, 1: 2}
    assert committed(bootstrap, f"g-{topic}", topic) == [150, 150]
    text = render_text(summary_families(recreated, time.time()))
    assert f'ingest_log_epoch{{topic="{topic}",partition="1"}} 2' in text
    assert f'ingest_log_resets{{topic="{topic}"}} 2' in text

    with capsys.disabled():
        print("\nlog epochs trial (events produced / stored / missing / duplicated, cumulative):")
        for f in figures:
            print(f"  {f['phase']:<32} +{f['produced_now']:>5} produced, +{f['ingested_now']:>5} ingested; "
                  f"total {f['produced']:>5} / {f['stored']:>5} / {f['missing']} / {f['duplicated']}; "
                  f"epochs {f['epochs']}")
    assert all(f["missing"] == 0 and f["duplicated"] == 0 for f in figures)
    assert stored(store) == facts(produced)

    # Earlier epochs' batches kept their keys; each epoch has its own.
    keys = store.list(f"data/manifests/{topic}/")
    assert any(k.startswith(f"data/manifests/{topic}/p0/") for k in keys)
    assert any(k.startswith(f"data/manifests/{topic}/e1/p0/") for k in keys)
    assert any(k.startswith(f"data/manifests/{topic}/e2/p1/") for k in keys)
    assert [k.rsplit("/", 1)[1] for k in store.list(f"data/epochs/{topic}/p0/")] == \
        ["e000000.json", "e000001.json", "e000002.json"]
    # A snapshot (what training reads) holds every rating once, across the epochs.
    _, ratings = take_snapshot(store, topic)
    assert len(ratings) == sum(1 for x in produced if "/rate/" in x) == len(load_ratings(store, topic))
    assert len(load_watches(store, topic)) == sum(1 for x in produced if "/data/m/" in x)


def test_batches_stored_before_epochs_existed_are_epoch_0_and_a_reset_is_still_found(broker, tmp_path):
    """A store written by the previous version (no epoch records): its ids are unknown, so the
    shorter log after a restart is what tells."""
    bootstrap = f"127.0.0.1:{broker['port']}"
    topic = f"legacy-{uuid.uuid4().hex[:8]}"
    store = LocalDirectoryStore(tmp_path / "store")
    old = unique_lines(5, 2000)
    produce(bootstrap, topic, old)
    run_ingest(config(bootstrap, topic), store)
    for key in store.list("data/epochs/"):  # as the previous version left it
        (tmp_path / "store" / key).unlink()
    broker["restart"]()
    new = unique_lines(6, 600)
    produce(bootstrap, topic, new)
    summary = run_ingest(config(bootstrap, topic), store)
    assert summary.epochs == {0: 1, 1: 1} and summary.records == 600
    assert all(r["reason"] == "the log ends at offset 300, before the 1000 already stored"
               for r in summary.log_resets)
    assert stored(store) == facts(old + new)


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian package prometheus) is not installed")
def test_the_log_reset_alert_passes_its_promtool_tests():
    run = subprocess.run(["promtool", "test", "rules", "monitoring/tests/ingest_log_epochs_test.yml"],
                         check=False, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout
