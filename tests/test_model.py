"""The serving model: surprise's ranking, never a seen movie, cold start, and an artifact that cannot be tampered with."""
import hashlib
import json
import zipfile

import numpy as np
import pytest

from movierec.artifact import (
    MANIFEST_FILE,
    MODEL_FILE,
    load_model,
    load_model_bytes,
    save_model,
    serialize_model,
)
from movierec.model import ModelIntegrityError, build_model, from_arrays
from movierec.ratings import RatingsTable
from movierec.selection import top_k_indices
from movierec.synthetic import SyntheticWorld
from movierec.training import SVDParams, evaluate, fit_svd


@pytest.fixture(scope="module")
def fitted():
    """A small real surprise SVD, the table it saw, and the model built from both."""
    world = SyntheticWorld(n_users=120, n_movies=80, n_factors=4, seed=11)
    train = world.sample_ratings(3000).dedupe()
    algo = fit_svd(train, SVDParams(n_factors=8, n_epochs=15, random_state=1))
    return world, train, algo, build_model(algo, train)


def seen_by(table, user_id):
    return set(table.movie_ids[table.user_ids == user_id].tolist())


def test_ranking_equals_surprise_predict_order_for_several_users(fitted):
    _, train, algo, model = fitted
    for user in np.unique(train.user_ids)[:8].tolist():
        unseen = sorted(set(model.movie_ids.tolist()) - seen_by(train, user))
        estimates = {m: algo.predict(user, m, clip=False).est for m in unseen}
        expected = sorted(unseen, key=lambda m: -estimates[m])[:20]
        assert model.recommend(user) == expected


def test_predictions_equal_surprise_estimates(fitted):
    _, train, algo, model = fitted
    users, movies = train.user_ids[:50], train.movie_ids[::-1][:50]
    expected = [algo.predict(int(u), str(m), clip=False).est for u, m in zip(users, movies)]
    np.testing.assert_allclose(model.predict(users, movies, clip=False), expected, rtol=1e-5)


def test_recommend_never_returns_a_rated_movie(fitted):
    _, train, _, model = fitted
    for user in np.unique(train.user_ids).tolist():
        assert not set(model.recommend(user)) & seen_by(train, user)


def test_recommend_returns_at_most_k_distinct_known_movies(fitted):
    _, train, _, model = fitted
    user = int(train.user_ids[0])
    result = model.recommend(user)
    assert len(result) == 20 == len(set(result))
    assert set(result) <= set(model.movie_ids.tolist())
    assert model.recommend(user, k=5) == result[:5]
    assert model.recommend(user, k=0) == []


def test_recommend_returns_fewer_when_the_user_has_seen_almost_everything():
    model = from_arrays(
        global_mean=3.0, user_ids=[1], user_bias=[0.0], user_factors=[[1.0]],
        movie_ids=np.array(["a", "b", "c"]), item_bias=[0.0, 0.0, 0.0], item_factors=[[1.0], [2.0], [3.0]],
        seen_user_ids=[1, 1], seen_movie_idx=[1, 2], cold_start=np.array([0, 1, 2]),
    )
    assert model.recommend(1) == ["a"]


def test_watched_movies_are_excluded_too(fitted):
    _, train, algo, _ = fitted
    user = int(train.user_ids[0])
    first_choice = build_model(algo, train).recommend(user)[0]
    model = build_model(algo, train, watches=(np.array([user]), np.array([first_choice])))
    assert first_choice not in model.recommend(user)


def test_unknown_user_gets_the_cold_start_list(fitted):
    model = fitted[3]
    stranger = 9_999_999_999
    assert not model.is_known_user(stranger)
    assert model.recommend(stranger) == model.cold_start_ids(20)
    assert len(model.recommend(stranger)) == 20
    assert model.recommend(2**70) == model.cold_start_ids(20)  # beyond int64: unknown, not a crash


def test_cold_start_prefers_popular_well_rated_movies(fitted):
    _, train, _, model = fitted
    top = model.cold_start_ids(5)
    ratings = {m: train.ratings[train.movie_ids == m] for m in top}
    assert all(len(r) >= 5 for r in ratings.values())
    assert np.mean([r.mean() for r in ratings.values()]) > train.ratings.mean()


def test_watch_only_user_gets_cold_start_minus_what_they_watched(fitted):
    _, train, algo, _ = fitted
    newcomer = 123_456_789_012
    cold = build_model(algo, train).cold_start_ids(20)
    model = build_model(algo, train, watches=(np.array([newcomer, newcomer]), np.array([cold[0], cold[3]])))
    assert not model.is_known_user(newcomer)
    result = model.recommend(newcomer)
    assert len(result) == 20 and cold[0] not in result and cold[3] not in result
    assert result[:2] == [cold[1], cold[2]]


def test_known_user_is_a_user_with_training_ratings(fitted):
    _, train, _, model = fitted
    assert model.is_known_user(int(train.user_ids[0]))


def test_ties_break_by_movie_index_ascending():
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0, -np.inf])
    assert top_k_indices(scores, 2).tolist() == [1, 2]
    assert top_k_indices(scores, 4).tolist() == [1, 2, 4, 3]
    assert top_k_indices(scores, 10, n_available=5).tolist() == [1, 2, 4, 3, 0]


def _top_k_by_full_partition(scores, k, n_available=None):
    """The selection as it was before the sampled threshold: partition everything, then sort the
    ties at the k-th place exactly (score desc, index asc)."""
    k = min(k, len(scores) if n_available is None else n_available)
    if k <= 0:
        return []
    kth = np.partition(scores, len(scores) - k)[len(scores) - k] if k < len(scores) else -np.inf
    candidates = np.flatnonzero(scores >= kth)
    return candidates[np.lexsort((candidates, -scores[candidates]))][:k].tolist()


@pytest.mark.parametrize("seed", range(40))
def test_the_sampled_threshold_selects_exactly_what_the_full_partition_selects(seed):
    """Property over random catalogues: sizes on both sides of the sampling cut-off, many ties
    (scores rounded), excluded items (-inf, as recommend marks what a user saw), sorted and
    reverse-sorted scores, a few outliers at evenly spaced positions (a threshold from a strided
    sample then keeps fewer than k), k from 1 to past n_available."""
    rng = np.random.default_rng(seed)
    n = int(rng.choice([5, 300, 511, 512, 2000, 5003, 20000]))
    scores = rng.standard_normal(n).astype(rng.choice([np.float32, np.float64]))
    if seed % 4 == 1:
        scores = np.round(scores, 1)  # heavy ties, also at the k-th place
    if seed % 4 == 2:
        scores = np.sort(scores)[::-1].copy() if seed % 8 == 2 else np.sort(scores)
    if seed % 4 == 3:  # a few outliers at evenly spaced positions: a strided sample overrates them
        scores[:: max(1, n // 256)][: int(rng.integers(1, 12))] = 50.0
    excluded = rng.random(n) < rng.choice([0.0, 0.3, 0.99])
    scores[excluded] = -np.inf
    n_available = int(n - excluded.sum())
    for k in (1, 20, 64, n_available, n_available + 5):
        got = top_k_indices(scores, k, n_available=n_available).tolist()
        assert got == _top_k_by_full_partition(scores, k, n_available=n_available), (n, k)


def test_equal_scores_give_the_same_answer_every_time():
    movies = np.array([f"m{i:03d}" for i in range(50)])
    model = from_arrays(
        global_mean=3.0, user_ids=[5], user_bias=[0.0], user_factors=[[0.0, 0.0]],
        movie_ids=movies, item_bias=np.zeros(50), item_factors=np.zeros((50, 2)),
        seen_user_ids=[5], seen_movie_idx=[0], cold_start=np.arange(50),
    )
    assert model.recommend(5) == movies[1:21].tolist()
    assert all(model.recommend(5) == model.recommend(5) for _ in range(3))


# -- the artifact -----------------------------------------------------------------------------
def test_artifact_round_trip_gives_the_same_answers(fitted, tmp_path):
    _, train, _, model = fitted
    manifest = save_model(model, tmp_path / "v1", extra_manifest={"version": "v1", "metrics": {"rmse": 0.9}})
    loaded = load_model(tmp_path / "v1")
    assert loaded.version == "v1" and loaded.sha256 == manifest["sha256"]
    assert loaded.manifest["metrics"] == {"rmse": 0.9}
    assert loaded.params == model.params and loaded.counts() == model.counts()
    for user in np.unique(train.user_ids)[:10].tolist() + [42]:
        assert loaded.recommend(user) == model.recommend(user)


def test_manifest_describes_the_artifact(fitted, tmp_path):
    _, _, _, model = fitted
    save_model(model, tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["format"] == "movierec-svd" and manifest["format_version"] == 1
    assert len(manifest["sha256"]) == 64 and manifest["size_bytes"] == (tmp_path / MODEL_FILE).stat().st_size
    assert manifest["counts"]["movies"] == model.n_movies and manifest["counts"]["factors"] == 8
    assert manifest["params"]["n_factors"] == 8 and manifest["created_at"]
    assert load_model(tmp_path).version is None


def test_npz_holds_no_object_arrays(fitted, tmp_path):
    save_model(fitted[3], tmp_path)
    with np.load(tmp_path / MODEL_FILE, allow_pickle=False) as npz:
        kinds = {name: npz[name].dtype.kind for name in npz.files}
    assert "O" not in kinds.values()
    assert kinds["movie_ids"] == "U" and kinds["item_factors"] == "f"


def test_tampered_model_file_is_refused(fitted, tmp_path):
    save_model(fitted[3], tmp_path)
    data = bytearray((tmp_path / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="sha256 mismatch"):
        load_model(tmp_path)


def test_missing_file_is_refused_naming_it(fitted, tmp_path):
    save_model(fitted[3], tmp_path)
    (tmp_path / MODEL_FILE).unlink()
    with pytest.raises(ModelIntegrityError, match="missing model.npz"):
        load_model(tmp_path)


def test_pickled_object_array_is_refused_even_with_a_matching_sha256(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, movie_ids=np.array([object()], dtype=object))
    data = path.read_bytes()
    _, manifest = serialize_model(from_arrays(
        global_mean=3.0, user_ids=[1], user_bias=[0.0], user_factors=[[0.0]], movie_ids=np.array(["a"]),
        item_bias=[0.0], item_factors=[[0.0]], seen_user_ids=[], seen_movie_idx=[], cold_start=np.array([0]),
    ))
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    with pytest.raises(ModelIntegrityError):
        load_model_bytes(data, manifest)


def test_foreign_npz_is_refused_for_its_arrays(fitted, tmp_path):
    _, manifest = serialize_model(fitted[3])
    with zipfile.ZipFile(tmp_path / "x.npz", "w") as z:
        z.writestr("other.npy", b"")
    foreign = (tmp_path / "x.npz").read_bytes()
    manifest["sha256"] = hashlib.sha256(foreign).hexdigest()
    with pytest.raises(ModelIntegrityError, match="arrays missing"):
        load_model_bytes(foreign, manifest)


def test_load_from_bytes_equals_load_from_directory(fitted):
    data, manifest = serialize_model(fitted[3], {"version": "7"})
    loaded = load_model_bytes(data, manifest)
    assert loaded.version == "7" and loaded.recommend(1) == fitted[3].recommend(1)


def test_extra_manifest_cannot_override_the_checksum(fitted, tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        save_model(fitted[3], tmp_path, extra_manifest={"sha256": "0" * 64})


def test_ranking_metric_uses_the_same_ranking_as_recommend(fitted):
    _, train, _, model = fitted
    # A holdout made of exactly each user's top recommendation rated 5 gives precision 1/k.
    users = np.unique(train.user_ids)[:20]
    holdout = RatingsTable(users, np.array([model.recommend(int(u))[0] for u in users]), np.full(len(users), 5.0))
    metrics = evaluate(model, holdout, k=20)
    assert metrics["precision_at_k"] == pytest.approx(1 / 20)
    assert metrics["recall_at_k"] == pytest.approx(1.0) and metrics["ndcg_at_k"] == pytest.approx(1.0)


def test_a_saved_artifact_is_readable_by_the_functions_own_user(tmp_path):
    """In a container the function runs as another user than the one who wrote a mounted model."""
    model = from_arrays(
        global_mean=3.0, user_ids=[1], user_bias=[0.0], user_factors=[[1.0]],
        movie_ids=np.array(["a", "b", "c"]), item_bias=[0.0, 0.0, 0.0], item_factors=[[1.0], [2.0], [3.0]],
        seen_user_ids=[1], seen_movie_idx=[1], cold_start=np.array([0, 1, 2]),
    )
    save_model(model, tmp_path / "m")
    for name in (MODEL_FILE, MANIFEST_FILE):
        assert (tmp_path / "m" / name).stat().st_mode & 0o777 == 0o644
