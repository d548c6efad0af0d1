"""The synthetic world: realistic ids, skewed popularity, a known noise floor, parseable stream lines."""
from collections import Counter
from datetime import datetime

import numpy as np
import pytest

from movierec.batches.builder import parse_batch, store_batch
from movierec.batches.loaders import load_ratings
from movierec.events import RateEvent, WatchEvent, is_movie_id, parse_line
from movierec.store import LocalDirectoryStore
from movierec.synthetic import SyntheticWorld


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(n_users=500, n_movies=300, n_factors=5, noise=0.5, seed=7)


def test_same_seed_gives_the_same_world_and_ratings():
    a, b = SyntheticWorld(50, 40, seed=3), SyntheticWorld(50, 40, seed=3)
    assert a.movie_ids.tolist() == b.movie_ids.tolist()
    assert a.user_ids.tolist() == b.user_ids.tolist()
    ra, rb = a.sample_ratings(300), b.sample_ratings(300)
    assert ra.user_ids.tolist() == rb.user_ids.tolist()
    assert ra.movie_ids.tolist() == rb.movie_ids.tolist()
    assert ra.ratings.tolist() == rb.ratings.tolist()


def test_movie_ids_are_unique_valid_slugs_with_and_without_year():
    movies = SyntheticWorld(10, 2000, seed=1).movie_ids.tolist()
    assert len(set(movies)) == 2000
    assert all(is_movie_id(m) and " " not in m for m in movies)
    with_year = [m for m in movies if m.rsplit("+", 1)[-1].isdigit()]
    trailing_plus = [m for m in movies if m.endswith("+")]
    assert len(with_year) > 0.7 * len(movies)
    assert trailing_plus
    assert len(movies) - len(with_year) - len(trailing_plus) > 0  # no year, no trailing '+'


def test_user_ids_are_distinct_spread_out_integers():
    users = SyntheticWorld(1000, 10, seed=2).user_ids
    assert users.dtype == np.int64
    assert len(np.unique(users)) == 1000
    assert users.max() > 1_000_000  # not 0..n-1


def test_ratings_are_integers_1_to_5_on_distinct_pairs(world):
    table = world.sample_ratings(20_000)
    assert len(table) == 20_000
    assert set(np.unique(table.ratings).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    pairs = set(zip(table.user_ids.tolist(), table.movie_ids.tolist()))
    assert len(pairs) == len(table)


def test_popularity_is_skewed_few_movies_get_most_ratings():
    sparse_world = SyntheticWorld(n_users=5000, n_movies=300, seed=7)
    counts = sorted(Counter(sparse_world.sample_ratings(5000).movie_ids.tolist()).values(), reverse=True)
    top_tenth = sum(counts[:30])
    assert top_tenth > 0.5 * sum(counts)


def test_noise_floor_is_close_to_the_noise_plus_rounding_error(world):
    table = world.sample_ratings(20_000)
    floor = world.noise_floor_rmse(table)
    # N(0, 0.5) noise plus rounding to integers (uniform, variance 1/12), less a little for clipping.
    assert 0.45 < floor < np.sqrt(0.5**2 + 1 / 12) + 0.02


def test_noise_free_world_has_a_floor_of_pure_rounding():
    w = SyntheticWorld(200, 100, noise=0.0, seed=4)
    assert w.noise_floor_rmse(w.sample_ratings(5000)) < np.sqrt(1 / 12) + 0.02


def test_true_score_matches_the_bias_plus_dot_product_formula(world):
    user = int(world.user_ids[3])
    movies = world.movie_ids[:5]
    expected = (
        world.global_mean + world.user_bias[3] + world.movie_bias[:5] + world.movie_factors[:5] @ world.user_factors[3]
    )
    np.testing.assert_allclose(world.true_score(user, movies), expected)


def test_unknown_ids_are_refused_by_name(world):
    with pytest.raises(KeyError, match=r"no\+such\+movie"):
        world.true_score(int(world.user_ids[0]), ["no+such+movie"])


def test_stream_lines_parse_back_into_the_events_they_describe(world):
    lines = list(world.stream_lines(300, watches_per_rating=2, start=datetime(2024, 5, 1)))
    events = [parse_line(line) for line in lines]
    assert all(isinstance(e, (WatchEvent, RateEvent)) for e in events), [
        e for e in events if not isinstance(e, (WatchEvent, RateEvent))
    ][:1]
    rates = [e for e in events if isinstance(e, RateEvent)]
    watches = [e for e in events if isinstance(e, WatchEvent)]
    assert len(rates) == 300
    assert len(watches) >= 2 * 300  # plus the watch-only sessions
    times = [e.time for e in events]
    assert times == sorted(times) and times[0] >= datetime(2024, 5, 1)
    # Every rated movie was watched by that user first.
    watched = {(e.user_id, e.movie_id) for e in watches}
    assert all((r.user_id, r.movie_id) in watched for r in rates)
    # Both time shapes occur, as in real streams.
    assert any("." in line.split(",", 1)[0] for line in lines)
    assert any("." not in line.split(",", 1)[0] for line in lines)


def test_stream_ratings_become_a_table_of_world_users_and_movies(world, tmp_path):
    # The production path: ingest's batch builder and store, then the loader training reads.
    store = LocalDirectoryStore(tmp_path / "store")
    lines = list(world.stream_lines(200))
    store_batch(store, parse_batch("movielog1", 0, [(i, line.encode()) for i, line in enumerate(lines)], []))
    table = load_ratings(store)
    assert len(table) == 200
    assert np.isin(table.user_ids, world.user_ids).all()
    assert np.isin(table.movie_ids, world.movie_ids).all()


def test_what_users_watch_follows_preference_and_popularity():
    w = SyntheticWorld(n_users=400, n_movies=300, n_factors=5, seed=12)
    table = w.sample_ratings(20_000)
    u = np.searchsorted(w.user_ids, table.user_ids)
    m = np.array([w.movie_ids.tolist().index(x) for x in table.movie_ids.tolist()])
    taste = np.einsum("ij,ij->i", w.user_factors[u], w.movie_factors[m])
    everything = w.user_factors @ w.movie_factors.T
    assert taste.mean() > everything.mean() + 0.2  # users pick what they like...
    counts = np.bincount(m, minlength=300)
    popular = np.argsort(-w.movie_popularity)[:30]
    assert counts[popular].sum() > 2 * 0.1 * len(table)  # ...and the popular tenth, twice its share
    assert (np.bincount(u, minlength=400)[u] <= 300 - 60).all()  # nobody has seen everything
    # The weights are the documented ones.
    logits = w.watch_logits(np.array([3]))[0]
    np.testing.assert_allclose(logits, np.log(w.movie_popularity) + 3.0 * (everything[3] + w.movie_bias))
