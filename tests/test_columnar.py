"""The train job's columnar data path: stored batches load as integer codes into one vocabulary,
a snapshot reads each object once, and the split, the evaluation and the ranking metrics give
the same figures from codes as from per-row strings."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from movierec.batches.builder import parse_batch, store_batch
from movierec.batches.layout import list_batches
from movierec.batches.loaders import load_ratings
from movierec.events import MOVIE_ID_MAX_CHARS
from movierec.ratings import RatingsTable
from movierec.snapshot import snapshot_id, take_snapshot_data
from movierec.store import LocalDirectoryStore, sha256_hex
from movierec.synthetic import SyntheticWorld
from movierec.training import SVDParams, evaluate, predict_rows
from movierec.trainjob import _string_hash, _unicode_hash, holdout_split
from tests.fitting import train_model

T = "2020-01-01T10:00:00"


class CountingStore(LocalDirectoryStore):
    """A local store that counts the reads of each key."""

    def __init__(self, root):
        super().__init__(root)
        self.reads: Counter = Counter()

    def get(self, key: str) -> bytes:
        self.reads[key] += 1
        return super().get(key)


def store_lines(store, batches: list[list[str]]) -> None:
    offset = 0
    for lines in batches:
        store_batch(store, parse_batch("t", 0, [(offset + i, x.encode()) for i, x in enumerate(lines)], []))
        offset += len(lines)


@pytest.fixture
def store(tmp_path):
    return CountingStore(tmp_path / "store")


def test_batches_load_as_codes_into_one_sorted_vocabulary_with_the_same_rows(store):
    first = [f"{T},{u},GET /rate/m{u % 5}+1999={1 + u % 5}" for u in range(20)]
    second = [f"{T},{u},GET /rate/m{u % 7 + 3}+1999={1 + u % 4}" for u in range(20, 40)]
    store_lines(store, [first, second])
    table = load_ratings(store)
    _, _, movies, movie_codes = table.codes
    assert movies.tolist() == sorted({f"m{i}+1999" for i in range(10)})  # each id once, both batches merged
    assert movie_codes.dtype == np.int32 and len(movie_codes) == 40
    expected = Counter((int(x.split(",")[1]), x.split("/")[2].split("=")[0], float(x[-1])) for x in first + second)
    assert Counter(zip(table.user_ids.tolist(), table.movie_ids.tolist(), table.ratings.tolist())) == expected
    assert table.movie_ids.dtype.kind == "U"  # per-row strings only when asked for


def test_the_loaded_vocabulary_grows_with_the_ids_lengths_not_the_longest(store):
    long_id = "x" * MOVIE_ID_MAX_CHARS  # the longest a stream may carry
    lines = [f"{T},{i},GET /rate/m{i}+1999=4" for i in range(3000)] + [f"{T},1,GET /rate/{long_id}=3"]
    store_lines(store, [lines])
    movies = load_ratings(store).codes.movies
    held = sum(len(m) for m in movies.tolist()) + movies.nbytes
    assert long_id in movies.tolist()
    assert held < 100_000  # a fixed-width '<U' vocabulary would hold 3001 x 200 x 4 = 2.4 MB


def test_taking_a_snapshot_reads_each_object_once_and_names_every_batch_object(store):
    lines = [f"{T},{i % 30},GET /data/m/m{i % 11}+1999/{i}.mpg" if i % 3 else f"{T},{i % 30},GET /rate/m{i % 13}+1999=4"
             for i in range(300)]
    store_lines(store, [lines[:100], lines[100:200], lines[200:]])
    snapshot, data = take_snapshot_data(store)
    batch_objects = [k for k in store.list("data/") if k.split("/")[1] in ("manifests", "ratings", "watches")]
    assert {k: n for k, n in store.reads.items() if k in batch_objects} == dict.fromkeys(batch_objects, 1)
    assert snapshot.id == snapshot_id((k, sha256_hex(LocalDirectoryStore(store.root).get(k))) for k in batch_objects)
    assert len(list_batches(store)) == snapshot.n_batches == 3
    assert len(data.ratings) == 100 and len(data.watches) > 0


def test_the_split_is_the_same_from_codes_as_from_strings():
    table = SyntheticWorld(n_users=300, n_movies=120, seed=3).sample_ratings(6000)
    movies, codes = np.unique(table.movie_ids, return_inverse=True)
    vocab = np.empty(len(movies), dtype=object)
    vocab[:] = movies.tolist()
    coded = RatingsTable.from_codes(table.user_ids, vocab, codes.astype(np.int32), table.ratings)
    (a_train, a_hold), (b_train, b_hold) = holdout_split(table, 0.2), holdout_split(coded, 0.2)
    assert a_hold.user_ids.tolist() == b_hold.user_ids.tolist() and a_hold.movie_ids.tolist() == b_hold.movie_ids.tolist()
    assert len(a_train) == len(b_train) and 0 < len(a_hold) < len(table)


def test_hashing_ids_by_length_groups_gives_the_unicode_columns_hash():
    ids = ["a", "", "movie+42+1999", "é+2000", "x" * 300]
    assert _string_hash(ids).tolist() == _unicode_hash(np.array(ids, dtype=str)).tolist()


def test_chunked_evaluation_gives_the_models_own_predictions():
    world = SyntheticWorld(n_users=200, n_movies=80, seed=5)
    model = train_model(world.sample_ratings(4000), SVDParams(n_factors=4, n_epochs=5))
    probe = world.sample_ratings(500)
    rows, items = model.user_rows(probe.user_ids), model.movie_indices(probe.movie_ids)
    assert np.array_equal(predict_rows(model, rows, items, chunk=7), model.predict(probe.user_ids, probe.movie_ids))
    rmse = float(np.sqrt(np.mean((model.predict(probe.user_ids, probe.movie_ids) - probe.ratings) ** 2)))
    assert evaluate(model, probe, max_ranking_users=0)["rmse"] == pytest.approx(rmse, rel=1e-12)
