"""Ratings table, training and evaluation: clean data in, a model that beats the mean and nears the noise floor."""
import numpy as np
import pytest

from movierec.ratings import RatingsTable, factorize_strings
from movierec.synthetic import SyntheticWorld
from movierec.training import SVDParams, build_trainset, evaluate
from movierec.trainjob import TrainConfig, fit_and_evaluate, holdout_split


def table_of(*rows: tuple[int, str, int]) -> RatingsTable:
    """(user, movie, stars) rows, in time order (as the batch loaders give them)."""
    users, movies, stars = zip(*rows)
    return RatingsTable(np.array(users), np.array(movies), np.array(stars, dtype=np.float32))


def test_table_columns_are_int64_users_unicode_movies_float32_ratings():
    table = table_of((2, "a+1999", 2), (1, "b+2000", 4))
    assert table.user_ids.tolist() == [2, 1]
    assert table.movie_ids.tolist() == ["a+1999", "b+2000"]
    assert table.ratings.dtype == np.float32 and table.ratings.tolist() == [2.0, 4.0]
    assert table.user_ids.dtype == np.int64 and table.movie_ids.dtype.kind == "U"


def test_dedupe_keeps_the_latest_rating_per_user_and_movie():
    table = table_of((7, "x+2001", 1), (8, "x+2001", 3), (7, "x+2001", 5), (7, "y+", 2)).dedupe()
    got = sorted(zip(table.user_ids.tolist(), table.movie_ids.tolist(), table.ratings.tolist()))
    assert got == [(7, "x+2001", 5.0), (7, "y+", 2.0), (8, "x+2001", 3.0)]


def test_table_refuses_ratings_outside_1_to_5_with_a_clear_message():
    with pytest.raises(ValueError, match="outside 1..5"):
        RatingsTable(np.array([1]), np.array(["a"]), np.array([6.0]))


def test_table_refuses_columns_of_different_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        RatingsTable(np.array([1, 2]), np.array(["a"]), np.array([3.0]))


def test_factorize_strings_agrees_with_numpy_unique():
    values = np.array(["b", "a", "c", "a", "b+", "b"])
    distinct, codes = factorize_strings(values)
    np_distinct, np_codes = np.unique(values, return_inverse=True)
    assert distinct.tolist() == np_distinct.tolist() and codes.tolist() == np_codes.tolist()


def test_split_holds_out_about_the_fraction_and_no_pair_is_on_both_sides():
    table = SyntheticWorld(300, 200, seed=1).sample_ratings(6000)
    train, holdout = holdout_split(table, 0.2, seed=3)
    assert len(train) + len(holdout) == len(table)
    assert 0.17 < len(holdout) / len(table) < 0.23
    train_pairs = set(zip(train.user_ids.tolist(), train.movie_ids.tolist()))
    assert not train_pairs & set(zip(holdout.user_ids.tolist(), holdout.movie_ids.tolist()))


def test_split_is_deterministic_for_a_seed():
    table = SyntheticWorld(100, 50, seed=1).sample_ratings(1000)
    a, b = holdout_split(table, 0.25, seed=9)[1], holdout_split(table, 0.25, seed=9)[1]
    assert a.user_ids.tolist() == b.user_ids.tolist() and a.movie_ids.tolist() == b.movie_ids.tolist()
    other = holdout_split(table, 0.25, seed=10)[1]
    assert other.user_ids.tolist() != a.user_ids.tolist()


def test_trainset_built_from_arrays_holds_every_rating_with_raw_ids():
    table = table_of((10, "a+", 4), (30, "b+1990", 2), (10, "b+1990", 5))
    ts = build_trainset(table)
    assert (ts.n_users, ts.n_items, ts.n_ratings) == (2, 2, 3)
    assert ts.global_mean == pytest.approx(11 / 3)
    assert sorted((ts.to_raw_uid(u), ts.to_raw_iid(i), r) for u, i, r in ts.all_ratings()) == [
        (10, "a+", 4.0), (10, "b+1990", 5.0), (30, "b+1990", 2.0)
    ]
    assert ts.rating_scale == (1, 5)


def test_svd_params_default_to_surprise_defaults_and_reject_nonsense():
    p = SVDParams()
    assert (p.n_factors, p.n_epochs, p.lr_all, p.reg_all) == (100, 20, 0.005, 0.02)
    with pytest.raises(ValueError, match="lr_all"):
        SVDParams(lr_all=0)


@pytest.fixture(scope="module")
def synthetic_fit():
    """The training job's own split, fit and evaluation (movierec.trainjob.fit_and_evaluate)."""
    world = SyntheticWorld(n_users=1000, n_movies=300, n_factors=5, noise=0.5, seed=3)
    config = TrainConfig(svd=SVDParams(n_factors=10, n_epochs=30, lr_all=0.01, reg_all=0.05, random_state=0),
                         test_fraction=0.2, split_seed=1)
    model, holdout, metrics = fit_and_evaluate(world.sample_ratings(100_000).dedupe(), config)
    return world, metrics["n_train"], holdout, model, metrics


def test_trained_model_beats_the_global_mean_baseline(synthetic_fit):
    _, _, _, _, metrics = synthetic_fit
    assert metrics["rmse"] < 0.75 * metrics["rmse_global_mean"]


def test_trained_model_is_within_15_percent_of_the_noise_floor(synthetic_fit):
    world, _, holdout, _, metrics = synthetic_fit
    assert metrics["rmse"] < 1.15 * world.noise_floor_rmse(holdout)


def test_evaluation_reports_rating_and_ranking_metrics(synthetic_fit):
    _, _, holdout, _, m = synthetic_fit
    assert m["n_holdout"] == len(holdout) and m["k"] == 20
    assert 0 < m["mae"] < m["rmse"]
    assert m["n_ranking_users"] > 900
    for name in ("precision_at_k", "recall_at_k", "ndcg_at_k"):
        assert 0 < m[name] <= 1


def test_trained_ranking_beats_a_popularity_free_random_ranking(synthetic_fit):
    _, n_train, holdout, model, m = synthetic_fit
    # A random ranking hits relevant movies at the rate they occur among unseen candidates.
    relevant = (holdout.ratings >= 4).sum()
    candidates = model.n_movies * len(np.unique(holdout.user_ids)) - n_train
    assert m["precision_at_k"] > 3 * relevant / candidates


def test_rating_predictions_are_clipped_to_1_5_like_surprise(synthetic_fit):
    _, _, holdout, model, _ = synthetic_fit
    raw = model.predict(holdout.user_ids, holdout.movie_ids, clip=False)
    clipped = model.predict(holdout.user_ids, holdout.movie_ids, clip=True)
    assert raw.max() > 5  # some true favourites score above the scale...
    np.testing.assert_array_equal(clipped, np.clip(raw, 1, 5))  # ...and are reported at 5


def test_evaluate_refuses_an_empty_holdout(synthetic_fit):
    with pytest.raises(ValueError, match="empty holdout"):
        evaluate(synthetic_fit[3], RatingsTable.empty())


def test_the_trained_model_records_its_params():
    table = SyntheticWorld(50, 30, seed=2).sample_ratings(500).dedupe()
    model, _, _ = fit_and_evaluate(table, TrainConfig(svd=SVDParams(n_factors=4, n_epochs=2, random_state=5)))
    assert model.params == {"n_factors": 4, "n_epochs": 2, "lr_all": 0.005, "reg_all": 0.02, "random_state": 5}
    assert model.n_factors == 4
