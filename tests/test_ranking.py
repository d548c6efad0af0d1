"""What the top-20 is and how it is judged: never a seen movie (property over whole snapshots),
a ranking model measured against popularity and random on the job's own holdout, the gate that
keeps a ranking worse than popularity from release, recent popularity for unknown users, and
snapshots that hold the watches."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from movierec.artifact import load_model, save_model
from movierec.batches.builder import parse_batch, store_batch
from movierec.events import RateEvent, WatchEvent
from movierec.ranking import (
    Interactions,
    RankingParams,
    _top_k_rows,
    fit_ranker,
    pair_keys,
    rank_metrics,
    recent_popularity,
)
from movierec.ratings import WatchPairs
from movierec.registry import Registry, load_serving_model
from movierec.selection import top_k_indices
from movierec.snapshot import (
    export_snapshot_data,
    load_snapshot_data,
    read_snapshot_file,
    take_snapshot,
    take_snapshot_data,
)
from movierec.store import LocalDirectoryStore
from movierec.synthetic import SyntheticWorld
from movierec.training import SVDParams
from movierec.trainjob import TrainConfig, gates, holdout_mask, run_training, train_families

T0 = datetime(2026, 11, 28, 3, 0, 0, tzinfo=UTC)
FAST = SVDParams(n_factors=8, n_epochs=15, random_state=0)


def store_lines(store, lines, first_offset=0):
    records = [(first_offset + i, line.encode()) for i, line in enumerate(lines)]
    store_batch(store, parse_batch("movielog1", 0, records, []))


def stored_world(tmp_path, seed, n_users=150, n_movies=120, n_ratings=2500):
    """A store holding one stream of the world: ratings, their watches, and watch-only movies."""
    world = SyntheticWorld(n_users=n_users, n_movies=n_movies, n_factors=4, seed=seed)
    store = LocalDirectoryStore(tmp_path / f"store-{seed}")
    store_lines(store, list(world.stream_lines(n_ratings, watches_per_rating=2, start=datetime(2026, 1, 1))))
    return world, store


def config_for(tmp_path, **overrides):
    base = {"svd": FAST, "min_ratings": 300, "cache_dir": str(tmp_path / "cache"), "pushgateway_url": None}
    return TrainConfig(**{**base, **overrides})


class RecordingNotifier:
    def __init__(self):
        self.sent = []

    def send(self, subject, payload):
        self.sent.append((subject, payload))
        return {"webhook": "sent"}


# -- seen means seen -----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_user_of_a_snapshot_is_ever_recommended_a_movie_they_rated_or_watched(tmp_path, seed):
    """Property, over whole snapshots: every user (training, holdout-only and watch-only users
    alike) of the served artifact, as the registry serves it."""
    _, store = stored_world(tmp_path, seed)
    extra_watcher = 4_000_000_000 + seed  # watched a few movies and rated none
    _, data_before = take_snapshot_data(store)
    watched = data_before.ratings.movie_ids[:3].tolist()
    # ...and a user whose only ratings are held out: the "rated it, got it recommended".
    held_only = 4_100_000_000 + seed
    popular = np.unique(data_before.ratings.movie_ids, return_counts=True)
    candidates = popular[0][np.argsort(-popular[1])][:40]
    held = candidates[holdout_mask(np.full(40, held_only), candidates, np.arange(40), 0.2, 0)][:2].tolist()
    assert held
    store_lines(store, [WatchEvent(datetime(2026, 3, 1) + timedelta(minutes=i), extra_watcher, m, 0).to_line()
                        for i, m in enumerate(watched)]
                + [RateEvent(datetime(2026, 3, 1), held_only, m, 2).to_line() for m in held], first_offset=10**7)
    summary = run_training(config_for(tmp_path), store, now=T0)
    served = load_serving_model(summary["version"], store, str(tmp_path / "cache"))
    _, data = load_snapshot_data(store, summary["snapshot_id"])
    seen: dict[int, set[str]] = {}
    for users, movies in ((data.ratings.user_ids, data.ratings.movie_ids), (data.watches.user_ids,
                                                                           data.watches.movie_ids)):
        for u, m in zip(users.tolist(), movies.tolist(), strict=True):
            seen.setdefault(u, set()).add(m)
    assert extra_watcher in seen and held_only in seen and len(seen) > 100
    assert not served.is_known_user(held_only)  # nothing of theirs was in training
    for user, movies in seen.items():
        recommended = served.recommend(user)
        assert recommended and not set(recommended) & movies, (user, set(recommended) & movies)


def test_the_served_model_excludes_the_holdout_the_evaluated_one_does_not(tmp_path):
    from movierec.trainjob import fit_and_evaluate

    _, store = stored_world(tmp_path, 4)
    _, data = take_snapshot_data(store)
    config = config_for(tmp_path)
    served, holdout, metrics = fit_and_evaluate(data.ratings.dedupe(), config, watches=data.watches)
    user, movie = int(holdout.user_ids[0]), str(holdout.movie_ids[0])
    row, col = served.user_rows(np.array([user]))[0], served.movie_indices(np.array([movie]))[0]
    assert col in served.seen_of_row(row)  # a holdout rating is seen for serving...
    assert metrics["n_train_watch_pairs"] > 0 and metrics["n_ranking_users"] > 0


# -- the ranking and its measure ---------------------------------------------------------------
def test_the_job_measures_the_model_popularity_and_random_on_the_same_holdout(tmp_path):
    _, store = stored_world(tmp_path, 5, n_users=200, n_movies=150, n_ratings=4000)
    summary = run_training(config_for(tmp_path), store, now=T0)
    metrics = summary["metrics"]
    ranking = metrics["ranking"]
    assert set(ranking) == {"model", "popularity", "random", "svd"}
    for figures in ranking.values():
        assert set(figures) == {"precision", "recall", "ndcg", "hit_rate", "coverage"}
        assert all(0 <= v <= 1 for v in figures.values())
    assert ranking["random"]["ndcg"] < ranking["popularity"]["ndcg"] < ranking["model"]["ndcg"]
    assert ranking["popularity"]["coverage"] < ranking["model"]["coverage"]
    assert metrics["ndcg_at_k"] == ranking["model"]["ndcg"] and metrics["hit_rate_at_k"] == ranking["model"]["hit_rate"]
    assert metrics["ndcg_lift_vs_popularity"] == pytest.approx(ranking["model"]["ndcg"] / ranking["popularity"]["ndcg"])
    meta = Registry(store).get(summary["version"]).metadata
    assert meta["metrics"]["ranking"] == ranking  # recorded with the model version
    assert meta["extra"]["ranking"]["model"] == "puresvd" and meta["extra"]["ranking"]["tuned_on_validation"]
    gate = next(g for g in summary["gates"] if g["gate"] == "ranking_vs_popularity")
    assert gate["passed"] and "popularity's" in gate["detail"]


def test_rank_metrics_by_hand():
    # Two users, five items; user 0 saw item 4; relevant: user 0 -> {0, 3}, user 1 -> {2}.
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 9.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    indptr, indices = np.array([0, 1, 1]), np.array([4])
    got = rank_metrics(lambda rows: scores[rows], np.array([0, 1]), indptr, indices,
                       pair_keys(np.array([0, 0, 1]), np.array([0, 3, 2]), 5), n_items=5, k=2)
    # user 0 top-2 = [0, 1]: one hit of two at rank 1; user 1 top-2 = [4, 3]: no hit.
    ndcg0 = 1.0 / (1.0 + 1 / np.log2(3))
    assert got == pytest.approx({"precision": (0.5 + 0) / 2, "recall": (0.5 + 0) / 2, "ndcg": ndcg0 / 2,
                                 "hit_rate": 0.5, "coverage": 4 / 5})


def test_batched_top_k_breaks_ties_exactly_as_recommend_does():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 30)).astype(float)  # many ties
    scores[3, 5:] = -np.inf  # a user with few movies left
    available = (scores > -np.inf).sum(axis=1)
    top = _top_k_rows(scores, 10, available)
    for j in range(len(scores)):
        exact = top_k_indices(scores[j], 10, n_available=int(available[j]))
        assert top[j][top[j] >= 0].tolist() == exact.tolist()


def test_the_ranking_model_is_tuned_on_training_pairs_and_can_be_fixed_by_settings():
    world = SyntheticWorld(n_users=300, n_movies=120, n_factors=4, seed=8)
    table = world.sample_ratings(6000)
    users, movies = table.codes.user_codes, table.codes.movie_codes
    inter = Interactions.build(users, movies, table.ratings, (table.n_users, table.n_movies))
    tuned = fit_ranker(inter, RankingParams(), seed=0)
    assert len(tuned.params["tuned_on_validation"]) >= 5
    best = max(tuned.params["tuned_on_validation"], key=lambda t: t["ndcg"])
    assert (tuned.params["factors"], tuned.params["pop_damping"]) == (best["factors"], best["damping"])
    fixed = fit_ranker(inter, RankingParams(ranking_factors=6, ranking_pop_damping=0.1), seed=0)
    assert fixed.item_factors.shape == (table.n_movies, 6) and fixed.params["pop_damping"] == 0.1
    assert {t["factors"] for t in fixed.params["tuned_on_validation"]} == {6}
    with pytest.raises(ValueError, match="ranking_pop_damping"):
        RankingParams(ranking_pop_damping=2.0)


# -- the gate ---------------------------------------------------------------------------------
def test_a_ranking_below_popularity_by_the_margin_fails_the_gate(tmp_path):
    ranking = {"model": {"ndcg": 0.30}, "popularity": {"ndcg": 0.31}, "random": {"ndcg": 0.01}}
    metrics = {"rmse": 0.9, "ranking": ranking, "k": 20}
    strict, lenient = config_for(tmp_path, ranking_min_lift=1.0), config_for(tmp_path, ranking_min_lift=0.95)
    assert [g["passed"] for g in gates(metrics, None, strict)] == [True, False]
    assert [g["passed"] for g in gates(metrics, None, lenient)] == [True, True]
    [unmeasured] = [g for g in gates({"rmse": 0.9, "ranking": None}, None, strict) if g["gate"].startswith("ranking")]
    assert not unmeasured["passed"] and "not measured" in unmeasured["detail"]


def test_a_model_that_does_not_beat_popularity_enough_is_not_released_and_the_notifier_says_why(tmp_path):
    from movierec.adapters.gateway import GatewayClient
    from tests.gateway_double import GatewayDouble

    _, store = stored_world(tmp_path, 6)
    notifier = RecordingNotifier()
    with GatewayDouble("admin", "pw", ["recommend", "recommend-canary"]) as gateway:
        summary = run_training(config_for(tmp_path, ranking_min_lift=50.0), store,
                               GatewayClient(gateway.url, "admin", "pw", backoff_s=0.01), notifier, now=T0)
        assert gateway.puts == []
    assert not summary["gates_passed"] and summary["release"] == "not released: a gate failed"
    [reason] = summary["not_released_because"]
    assert reason.startswith("ndcg@20 ") and "50 x popularity's" in reason
    [(subject, payload)] = notifier.sent
    assert subject == f"model {summary['version']} not released: {reason}"
    assert payload["event"] == "model_not_released" and payload["reasons"] == [reason]
    assert payload["metrics"]["ndcg_at_k_popularity"] == summary["metrics"]["ranking"]["popularity"]["ndcg"]
    assert summary["notifications"] == {"webhook": "sent"}
    families = {f.name: f for f in train_families(summary, now=0.0)}
    assert families["train_gates_passed"].samples == [((summary["version"],), 0.0)]


def test_the_ranking_settings_come_from_the_table():
    config = TrainConfig.from_env({"RANKING_MIN_LIFT": "1.2", "RANKING_FACTORS": "16", "COLD_START_WINDOW": "3d"},
                                  {"ranking_pop_damping": 0.5})
    assert (config.ranking_min_lift, config.ranking.ranking_factors, config.ranking.ranking_pop_damping,
            config.cold_start_window_s) == (1.2, 16, 0.5, 3 * 86400)
    assert TrainConfig.from_env({}, {}).ranking == RankingParams()


# -- cold start --------------------------------------------------------------------------------
def test_unknown_users_get_the_most_watched_movies_of_the_recent_window():
    day = 86_400 * 10**6
    # Movie 0 was the hit long ago; movies 2 and 1 are watched now.
    cols = np.array([0, 0, 0, 0, 1, 2, 2, 3])
    times = np.array([0, 1, 2, 3, 30, 30, 31, 5]) * day
    assert recent_popularity(cols, times, 4, window_s=7 * 86400, size=4).tolist() == [2, 1, 0, 3]
    assert recent_popularity(cols, times, 4, window_s=60 * 86400, size=4).tolist() == [0, 2, 1, 3]
    assert recent_popularity(cols, None, 4, window_s=7 * 86400, size=2).tolist() == [0, 2]


def test_the_served_cold_start_list_follows_the_snapshots_recent_watches(tmp_path):
    world, store = stored_world(tmp_path, 7)
    first = run_training(config_for(tmp_path), store, now=T0)
    stranger = 9_999_999_999
    before = load_serving_model(first["version"], store, str(tmp_path / "cache")).recommend(stranger)
    # A week later many people watch one movie that was not on the list.
    late = next(m for m in world.movie_ids.tolist() if m not in before)
    lines = [WatchEvent(datetime(2026, 6, 1) + timedelta(seconds=i), int(u), late, 0).to_line()
             for i, u in enumerate(world.user_ids[:60].tolist())]
    store_lines(store, lines, first_offset=10**7)
    second = run_training(config_for(tmp_path), store, now=T0 + timedelta(days=1))
    after = load_serving_model(second["version"], store, str(tmp_path / "cache")).recommend(stranger)
    assert after[0] == late and after != before


# -- snapshots and the artifact ---------------------------------------------------------------
def test_watches_are_part_of_the_snapshot_and_its_id(tmp_path):
    world, store = stored_world(tmp_path, 9)
    snapshot, data = take_snapshot_data(store)
    assert any(k.startswith("data/watches/") for k, _ in snapshot.objects)
    assert len(data.watches) > len(data.ratings)  # every rating was watched, and more
    assert data.ratings.time_us is not None and data.last_time_us >= int(data.watches.last_time_us.max())
    store_lines(store, [WatchEvent(datetime(2026, 5, 1), int(world.user_ids[0]), str(world.movie_ids[0]),
                                   0).to_line()], first_offset=10**8)
    assert take_snapshot(store)[0].id != snapshot.id  # a watch-only batch is a new snapshot
    again, reloaded = load_snapshot_data(store, snapshot.id)
    assert again.id == snapshot.id and len(reloaded.watches) == len(data.watches)


def test_watch_lines_fold_into_pairs_with_minutes_and_the_last_time():
    pairs = WatchPairs.from_lines(np.array([5, 1, 9, 2]), np.array([7, 7, 7, 3]), np.array(["b", "b", "a", "b"]))
    got = list(zip(pairs.user_ids.tolist(), pairs.movie_ids.tolist(), pairs.minutes.tolist(),
                   pairs.last_time_us.tolist(), strict=True))
    assert got == [(3, "b", 1, 2), (7, "a", 1, 9), (7, "b", 2, 5)]
    assert pairs.codes.movies.tolist() == ["a", "b"] and pairs.take(np.array([2])).codes.movies.tolist() == ["b"]


def test_the_exported_snapshot_file_carries_the_watches(tmp_path):
    _, store = stored_world(tmp_path, 10)
    snapshot, data = take_snapshot_data(store)
    export_snapshot_data(data, tmp_path / "ratings.npz", snapshot.id)
    loaded, snap_id = read_snapshot_file(tmp_path / "ratings.npz")
    assert snap_id == snapshot.id and len(loaded.watches) == len(data.watches)
    assert (loaded.ratings.time_us == data.ratings.time_us).all()


def test_a_ranked_artifact_round_trips_as_format_2_and_its_recommendations_are_equal(tmp_path):
    import json

    _, store = stored_world(tmp_path, 11)
    summary = run_training(config_for(tmp_path), store, now=T0)
    served = load_serving_model(summary["version"], store, str(tmp_path / "cache"))
    manifest = save_model(served, tmp_path / "copy")
    assert manifest["format_version"] == 2 and manifest["ranking"]["model"] == "puresvd"
    assert json.loads((tmp_path / "copy" / "manifest.json").read_text())["counts"]["users_ranked"] > 0
    copy = load_model(tmp_path / "copy")
    assert copy.has_ranker and copy.ranking_params == served.ranking_params
    for user in served.user_ids[:30].tolist():
        assert copy.recommend(user) == served.recommend(user)
