"""movierec.lease: one holder at a time over the object store's write-once and replace writes,
with an expiry, a fencing token, and a holder that died freeing it (at once on the same machine)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from movierec.errors import Conflict, http_status
from movierec.lease import LeaseHeld, LeaseLost, acquire, lease_state
from movierec.store import LocalDirectoryStore

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path):
    return LocalDirectoryStore(tmp_path / "store")


def test_a_second_holder_is_refused_at_once_with_409_naming_the_holder_and_when_it_is_free(store):
    clock = Clock()
    first = acquire(store, "ingest/g", "cron ingest on host-a pid 7", 105, clock)
    clock.now += 10
    with pytest.raises(LeaseHeld) as refused:
        acquire(store, "ingest/g", "manual ingest", 105, clock)
    assert isinstance(refused.value, Conflict) and http_status(refused.value) == 409
    assert str(refused.value) == ("held by cron ingest on host-a pid 7 (lease 1) since 2027-01-15T08:00:00Z; "
                                  "free when it ends, at the latest 2027-01-15T08:01:45Z (in 95 s)")
    assert first.token == 1 and lease_state(store, "ingest/g", clock)["held"] is True


def test_a_released_lease_is_free_at_once_and_the_token_grows(store):
    clock = Clock()
    first = acquire(store, "ingest/g", "a", 100, clock)
    first.release()
    first.release()  # idempotent
    second = acquire(store, "ingest/g", "b", 100, clock)
    assert second.token == 2
    assert lease_state(store, "ingest/g", clock)["holder"] == "b"


def test_a_released_lease_fences_its_own_holder_and_says_it_was_released(store):
    clock = Clock()
    lease = acquire(store, "ingest/g", "a", 100, clock)
    lease.release()
    with pytest.raises(LeaseLost, match="already released"):
        lease.check()
    assert lease_state(store, "ingest/g", clock) | {"process": None, "id": None} == {
        "token": 1, "holder": "a", "acquired_at": clock.now, "expires_at": clock.now + 100,
        "process": None, "id": None, "held": False, "released": True, "holder_gone": False}


def test_an_expired_lease_is_taken_over_and_its_old_holder_is_fenced(store):
    clock = Clock()
    old = acquire(store, "ingest/g", "hung run", 60, clock)
    old.check()
    clock.now += 61
    with pytest.raises(LeaseLost, match="expired"):
        old.check()
    new = acquire(store, "ingest/g", "next run", 60, clock)
    clock.now -= 30  # even with the old holder's clock behind, the newer token fences it
    with pytest.raises(LeaseLost, match="taken over by next run"):
        old.check()
    old.release()  # a fenced holder's release does not free its successor's lease
    with pytest.raises(LeaseHeld):
        acquire(store, "ingest/g", "third", 60, clock)
    assert new.token == 2


def test_a_stale_hint_costs_a_read_never_exclusivity(store):
    clock = Clock()
    acquire(store, "ingest/g", "a", 60, clock).release()
    store.replace("leases/ingest/g.json", b'{"token": 0}')  # as if a writer died before the hint
    assert acquire(store, "ingest/g", "b", 60, clock).token == 2
    store.replace("leases/ingest/g.json", b'{"token": 1}')
    with pytest.raises(LeaseHeld, match="held by b"):
        acquire(store, "ingest/g", "c", 60, clock)


def _race(store, n: int = 8) -> tuple[list, list]:
    won, refused = [], []
    barrier = threading.Barrier(n)

    def contender(i: int) -> None:
        barrier.wait()
        try:
            won.append(acquire(store, "ingest/race", f"contender {i}", 60))
        except LeaseHeld as e:
            refused.append(e)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return won, refused


def test_of_eight_simultaneous_contenders_exactly_one_wins_on_a_local_folder(store):
    for _ in range(5):
        won, refused = _race(store)
        assert len(won) == 1 and len(refused) == 7
        assert all(won[0].record["holder"] in str(e) for e in refused)
        won[0].release()


def test_of_eight_simultaneous_contenders_exactly_one_wins_on_s3(s3_endpoint):
    import boto3

    from movierec.adapters.s3store import S3Store

    bucket = f"lease-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="a", aws_secret_access_key="b",
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    store = S3Store(bucket, endpoint_url=s3_endpoint, access_key="a", secret_key="b")
    for _ in range(3):
        won, refused = _race(store)
        assert len(won) == 1 and len(refused) == 7
        won[0].release()


def test_a_holder_that_died_on_this_machine_frees_the_lease_at_once(store, tmp_path):
    code = ("import os, sys; from movierec.lease import acquire; from movierec.store import LocalDirectoryStore; "
            "acquire(LocalDirectoryStore(sys.argv[1]), 'ingest/g', 'doomed run', 3600); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "store")], check=True, cwd=ROOT)
    assert lease_state(store, "ingest/g")["held"] is False  # its process is gone, its expiry is not
    assert acquire(store, "ingest/g", "next run", 60).token == 2


def test_a_holder_on_another_machine_is_trusted_until_its_expiry(store):
    clock = Clock()
    acquire(store, "ingest/g", "remote run", 60, clock)
    key = "leases/ingest/g/000000000001.json"
    record = json.loads(store.get(key))
    record["process"].update(host="elsewhere", pid=2**22 + 1)  # a PID that is not running here
    (store.root / key).write_bytes(json.dumps(record).encode())
    with pytest.raises(LeaseHeld):
        acquire(store, "ingest/g", "local run", 60, clock)
    clock.now += 61
    assert acquire(store, "ingest/g", "local run", 60, clock).token == 2


def test_an_ingest_run_that_overran_its_lease_stores_and_commits_nothing_and_the_next_run_does(
        kafka_bootstrap, tmp_path, monkeypatch):
    import time

    from movierec.adapters import kafka_epochs
    from movierec.adapters.kafka_ingest import run_ingest
    from movierec.batches.loaders import load_ratings
    from tests.test_batches import rating_multiset, stream_lines, table_multiset
    from tests.test_kafka_ingest import committed, config, produce

    topic = f"overran-{uuid.uuid4().hex[:8]}"
    lines = stream_lines(2000)
    produce(kafka_bootstrap, topic, lines)
    store = LocalDirectoryStore(tmp_path / "store")
    # A run that hangs before storing its batch until past its lease (no grace), e.g. a stalled disk.
    overran = config(kafka_bootstrap, topic, max_seconds=6.0, lease_grace_s=0.0001)
    monkeypatch.setattr(kafka_epochs.PartitionEpochs, "replaced", lambda self, consumer: time.sleep(6.5))
    with pytest.raises(LeaseLost, match="expired"):
        run_ingest(overran, store)
    monkeypatch.undo()
    assert store.list("data/manifests/") == [] and committed(kafka_bootstrap, f"g-{topic}", topic) == [None, None]
    summary = run_ingest(config(kafka_bootstrap, topic), store)
    assert summary.records == 2000 and summary.lease == 2
    assert table_multiset(load_ratings(store, topic)) == rating_multiset(lines)
