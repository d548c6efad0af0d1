"""Before any model exists, recommend answers at once from what was ingested so far; the states of
movierec.serving (serving, waiting, failed) and what each says; the popularity list's cost bound."""
from __future__ import annotations

import logging
import time

import pytest

from movierec.batches.builder import parse_batch, store_batch
from movierec.popularity import Popularity, popularity_from_batches
from movierec.registry import Registry
from movierec.serving import FAILED, FATAL, SERVING, WAITING, ModelHolder, NoModelYet, load_configured_model
from movierec.store import LocalDirectoryStore
from movierec.synthetic import SyntheticWorld
from movierec.training import SVDParams
from tests.fitting import train_model

RATE = "2020-01-01T10:00:{s:02d},{u},GET /rate/{m}={r}"
WATCH = "2020-01-01T10:00:{s:02d},{u},GET /data/m/{m}/{minute}.mpg"


def lines_for(ratings, watches=()):
    out = [RATE.format(s=i % 60, u=u, m=m, r=r) for i, (u, m, r) in enumerate(ratings)]
    out += [WATCH.format(s=i % 60, u=u, m=m, minute=3) for i, (u, m) in enumerate(watches)]
    return out


def store_lines(store, lines, partition=0, first=0):
    records = [(first + i, line.encode()) for i, line in enumerate(lines)]
    store_batch(store, parse_batch("movielog1", partition, records, []))


@pytest.fixture(scope="module")
def small_model():
    table = SyntheticWorld(n_users=120, n_movies=80, seed=3).sample_ratings(3000)
    return train_model(table, SVDParams(n_factors=4, n_epochs=3, random_state=1))


@pytest.fixture
def store(tmp_path):
    return LocalDirectoryStore(tmp_path / "store")


def test_popularity_ranks_well_rated_movies_first_then_watched_ones_and_hides_what_a_user_saw(store):
    # "good" is rated 5 by six users, "fine" 3 by six, "bad" 1 by six; "new" is only watched.
    ratings = [(u, "good", 5) for u in range(6)] + [(u, "fine", 3) for u in range(10, 16)]
    ratings += [(u, "bad", 1) for u in range(20, 26)]
    store_lines(store, lines_for(ratings, watches=[(50, "new"), (51, "new")]))
    pop = popularity_from_batches(store)
    assert pop.ranked == ("good", "fine", "bad", "new")
    assert pop.recommend(999, 2) == ["good", "fine"]  # an unknown user: the list itself
    assert pop.recommend(0, 2) == ["fine", "bad"]  # user 0 rated good
    assert pop.recommend(50, 4) == ["good", "fine", "bad"]  # user 50 watched new
    assert pop.ratings == 18 and pop.watches == 2 and pop.batches == 1
    assert "18 ratings and 2 watches" in pop.describe()


def test_popularity_reads_only_the_newest_batches_of_each_partition(store):
    store_lines(store, lines_for([(1, "old", 5)] * 3), partition=0, first=0)
    store_lines(store, lines_for([(2, "newer", 4)] * 3), partition=0, first=100)
    store_lines(store, lines_for([(3, "other", 4)] * 3), partition=1, first=0)
    pop = popularity_from_batches(store, max_batches=2)
    assert pop.batches == 2 and set(pop.ranked) == {"newer", "other"}


def test_popularity_of_an_empty_store_is_an_empty_answer(store):
    pop = popularity_from_batches(store)
    assert pop.ranked == () and pop.recommend(1, 20) == []
    assert pop.describe().startswith("no ratings or watches ingested yet")


def test_an_unset_alias_is_no_model_yet_but_a_missing_pinned_version_is_a_fault(store, tmp_path):
    env = {"MODEL_VERSION": "stable", "MODEL_CACHE_DIR": str(tmp_path / "cache")}
    with pytest.raises(NoModelYet):
        load_configured_model(env, open_store=lambda e: store)
    pinned = {**env, "MODEL_VERSION": "v20250101-000000-deadbeef"}
    with pytest.raises(Exception) as caught:
        load_configured_model(pinned, open_store=lambda e: store)
    assert not isinstance(caught.value, NoModelYet)


def holder(store, tmp_path, **env):
    settings = {"MODEL_VERSION": "stable", "MODEL_CACHE_DIR": str(tmp_path / "cache"),
                "MODEL_RETRY_SECONDS": "0.05", "POPULARITY_REFRESH_SECONDS": "0.1", **env}
    return ModelHolder(settings, open_store=lambda e: store, background=False)


def test_waiting_for_the_first_model_answers_popularity_is_ready_and_is_logged_once_not_as_error(
        store, tmp_path, caplog):
    store_lines(store, lines_for([(u, "good", 5) for u in range(6)]))
    with caplog.at_level(logging.INFO, logger="movierec.serving"):
        h = holder(store, tmp_path)
        for _ in range(5):
            h.retry()
    assert h.state == WAITING and h.get() is None
    ok, text = h.ready()
    assert ok and text.startswith("waiting for a model (") and "popularity of 6 ratings" in text
    assert h.popularity().recommend(99, 20) == ["good"]
    records = [r for r in caplog.records if r.name == "movierec.serving"]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert records[0].getMessage().startswith("waiting for a model")


def test_the_popularity_list_follows_new_data_at_most_every_refresh_interval(store, tmp_path):
    h = holder(store, tmp_path)
    assert h.popularity().ranked == ()
    store_lines(store, lines_for([(u, "good", 5) for u in range(6)]))
    time.sleep(0.15)
    h.retry(force=False)
    assert h.popularity().ranked == ("good",)


def test_the_first_registered_model_replaces_popularity_without_a_restart(store, tmp_path, small_model):
    h = holder(store, tmp_path)
    assert h.state == WAITING
    registry = Registry(store)
    version = registry.register_model(small_model).version
    registry.set_alias("stable", version)
    assert h.retry() is not None
    assert h.state == SERVING and h.popularity() is None
    assert h.ready() == (True, h.describe()) and h.describe().startswith(f"loaded model {version}")


def test_a_pinned_model_that_cannot_be_served_is_failed_not_ready_and_logged_once(store, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="movierec.serving"):
        h = holder(store, tmp_path, MODEL_PATH=str(tmp_path / "missing"))
        for _ in range(4):
            h.retry()
    assert h.state == FAILED and h.popularity() is None
    ok, text = h.ready()
    assert not ok and text.startswith("no model:")
    errors = [r for r in caplog.records if r.name == "movierec.serving" and r.levelno >= logging.ERROR]
    assert len(errors) == 1


@pytest.mark.parametrize("spec", ["v9", "../stable", "v20261128-010203-abcdef12"])
def test_a_model_version_that_can_never_resolve_is_fatal_not_ready_and_never_tried_again(store, tmp_path, spec):
    attempts = []

    def loader(env):
        attempts.append(env["MODEL_VERSION"])
        return load_configured_model(env, open_store=lambda e: store)

    h = ModelHolder({"MODEL_VERSION": spec, "MODEL_CACHE_DIR": str(tmp_path / "cache"), "MODEL_RETRY_SECONDS": "0"},
                    loader=loader, background=False)
    for _ in range(3):
        assert h.retry() is None
    assert h.state == FATAL and attempts == [spec] and h.popularity() is None
    ok, text = h.ready()
    assert not ok and text == h.describe() and text.startswith(f"cannot serve: MODEL_VERSION {spec!r}: ")
    assert "\n" not in text


def test_requests_never_wait_for_a_load_attempt(store, tmp_path):
    slow_calls = []

    def slow_loader(env):
        slow_calls.append(1)
        time.sleep(0.3)
        raise NoModelYet("alias 'stable' is not set")

    h = ModelHolder({"MODEL_RETRY_SECONDS": "0.01"}, loader=slow_loader, popularity=lambda env: Popularity(("a",)))
    try:
        time.sleep(0.05)  # the background retry is now inside the slow loader
        t0 = time.perf_counter()
        for _ in range(50):
            assert h.get() is None and h.popularity().recommend(1, 20) == ["a"]
        assert time.perf_counter() - t0 < 0.05
        assert len(slow_calls) >= 1
    finally:
        h.stop()
