"""The train function's pre-check: a frequent schedule is cheap, the first model comes as soon as
there is enough data, and nothing is retrained from the batches the last model already saw."""
from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from movierec.registry import Registry
from movierec.snapshot import take_snapshot
from movierec.store import LocalDirectoryStore
from movierec.traindue import training_due
from tests.test_trainjob import _event, put_batches, train_handler  # noqa: F401 (a fixture)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def world():
    from movierec.synthetic import SyntheticWorld

    return SyntheticWorld(n_users=200, n_movies=150, n_factors=4, noise=0.5, seed=7)


@pytest.fixture
def store(tmp_path):
    return LocalDirectoryStore(tmp_path / "store")


def register_on_current_batches(store, model_from, now=T0):
    snapshot, _ = take_snapshot(store, None)
    return Registry(store).register_model(model_from, snapshot_id=snapshot.id, now=now)


@pytest.fixture(scope="module")
def tiny_model():
    from movierec.synthetic import SyntheticWorld
    from movierec.training import SVDParams
    from tests.fitting import train_model

    return train_model(SyntheticWorld(n_users=120, n_movies=80, seed=5).sample_ratings(3000),
                       SVDParams(n_factors=4, n_epochs=3, random_state=0))


def test_without_batches_or_with_too_few_ratings_it_waits_for_data(store, world):
    assert training_due(store, 1000) == "waiting for data: no batches stored yet"
    put_batches(store, world, n_batches=1, lines_per_batch=400)
    reason = training_due(store, 100_000)
    assert reason.startswith("waiting for data: ") and "the first model needs 100000 (TRAIN_MIN_RATINGS)" in reason


def test_the_first_model_is_due_as_soon_as_the_minimum_is_stored(store, world):
    put_batches(store, world, n_batches=1, lines_per_batch=4000)
    assert training_due(store, 100) is None


def test_nothing_new_since_the_newest_model_is_not_due_and_a_new_batch_is(store, world, tiny_model):
    put_batches(store, world, n_batches=2)
    entry = register_on_current_batches(store, tiny_model)
    reason = training_due(store, 100)
    assert reason == f"nothing new: the 2 stored batches are model {entry.version}'s snapshot {entry.metadata['snapshot_id']}"
    put_batches(store, world, n_batches=1, start=2)
    assert training_due(store, 100) is None


def test_a_min_interval_holds_retraining_once_a_stable_model_serves(store, world, tiny_model):
    put_batches(store, world, n_batches=1)
    entry = register_on_current_batches(store, tiny_model)
    put_batches(store, world, n_batches=1, start=1)
    soon = T0 + timedelta(seconds=30)
    assert training_due(store, 100, min_interval_s=120, now=soon) is None  # no stable yet: never held
    Registry(store).set_alias("stable", entry.version)
    reason = training_due(store, 100, min_interval_s=120, now=soon)
    assert reason == f"model {entry.version} is 30s old: the next training waits until 120s (TRAIN_MIN_INTERVAL)"
    assert training_due(store, 100, min_interval_s=120, now=T0 + timedelta(seconds=121)) is None


def cron_event():
    """What the local cron sends: the topic header and the cron token (the train fixture's)."""
    return SimpleNamespace(method="POST", path="/", headers={"X-Topic": "cron-function",
                                                             "Authorization": "Bearer cron-tok"},
                           query={}, body=b"")


def test_a_cron_call_answers_at_once_when_nothing_is_due_and_a_manual_call_trains(train_handler, world):  # noqa: F811
    handler, store = train_handler
    reply = handler.handle(cron_event(), None)
    assert reply["statusCode"] == 200 and reply["body"] == {"trained": False,
                                                            "reason": "waiting for data: no batches stored yet"}
    put_batches(store, world)
    first = handler.handle(cron_event(), None)
    assert first["statusCode"] == 200 and "version" in first["body"]
    again = handler.handle(cron_event(), None)
    assert again["body"]["trained"] is False and again["body"]["reason"].startswith("nothing new")
    manual = handler.handle(_event("POST"), None)
    assert manual["statusCode"] == 200 and "version" in manual["body"]  # an operator asked: it trains


def test_one_training_at_a_time(train_handler, world, monkeypatch):  # noqa: F811
    handler, store = train_handler
    put_batches(store, world)
    inside, release = threading.Event(), threading.Event()
    real = handler.run_training

    def slow(*args, **kwargs):
        inside.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(handler, "run_training", slow)
    worker = threading.Thread(target=handler.handle, args=(_event("POST"), None))
    worker.start()
    try:
        assert inside.wait(10)
        assert handler.handle(cron_event(), None)["body"] == {"trained": False, "reason": "a training is running"}
        busy = handler.handle(_event("POST"), None)
        assert busy["statusCode"] == 409 and "a training is running" in busy["body"]["error"]
    finally:
        release.set()
        worker.join(30)
