"""Fitting and evaluating: from ratings and watches to the models and their metrics.

Owns `SVDParams` (scikit-surprise SVD hyper-parameters, defaults as surprise's), `build_trainset`
(a surprise Trainset made straight from the table's arrays, no pandas/Dataset detour, so the
pipeline costs little beyond surprise's own SGD), `fit_svd`, `build_models` (the SVD and the
ranking model of `movierec.ranking` over the snapshot's whole catalogue, as two models sharing
their arrays: the EVALUATION model, whose seen movies are the training pairs, and the SERVED
model, whose seen movies are every rating and watch of the snapshot, holdout included, and whose
cold-start list is recent popularity) and `evaluate` (RMSE, MAE with predictions clipped to 1..5
as surprise does, and precision/recall/NDCG/hit rate/coverage@k of the model, of popularity and
of random on the same holdout, where relevant means a holdout rating >= 4 and candidates are all
movies the user has not seen in training: `movierec.ranking.ranking_report`), all on the
holdout's codes, predictions in chunks (`predict_rows`: never holdout x factors arrays). The job that
splits, fits, builds and evaluates is `movierec.trainjob.fit_and_evaluate`.

Must not touch: stream parsing, data snapshots, the object store/registry, release policy, HTTP.
"""
from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np

from movierec.events import RATING_MAX, RATING_MIN
from movierec.model import (
    COLD_START_SIZE,
    DEFAULT_K,
    RecommenderModel,
    seen_csr,
    svd_arrays,
)
from movierec.ranking import (
    METRICS,
    RANKERS,
    RELEVANT_RATING,  # noqa: F401 (re-exported: what "relevant" means for every ranking metric)
    Interactions,
    RankingParams,
    fit_ranker,
    ranking_report,
    recent_popularity,
    table_coordinates,
)
from movierec.ratings import RatingsTable, WatchPairs
from movierec.selection import lookup_sorted
from movierec.settings import setting_field

# Ranking metrics on more users than this use a seeded random sample of them (keeps evaluation
# time bounded on big holdouts; the metric's standard error is already small at this size).
MAX_RANKING_USERS = 10_000


@dataclass(frozen=True)
class SVDParams:
    n_factors: int = setting_field("SVD_N_FACTORS", 100)
    n_epochs: int = setting_field("SVD_N_EPOCHS", 20)
    lr_all: float = setting_field("SVD_LR_ALL", 0.005)
    reg_all: float = setting_field("SVD_REG_ALL", 0.02)
    random_state: int | None = setting_field("SVD_RANDOM_STATE", 0)

    def __post_init__(self) -> None:
        if self.n_factors < 1 or self.n_epochs < 0:
            raise ValueError(f"n_factors must be >= 1 and n_epochs >= 0, got {self.n_factors}, {self.n_epochs}")
        if self.lr_all <= 0 or self.reg_all < 0:
            raise ValueError(f"lr_all must be > 0 and reg_all >= 0, got {self.lr_all}, {self.reg_all}")

    def as_dict(self) -> dict:
        return asdict(self)


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: a trainset is millions of small tuples (no cycles), and each full
    collection during building or SGD would rescan all of them. Refcounting still frees memory."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def build_trainset(table: RatingsTable):
    """A surprise Trainset over the table (deduplicate first: every row becomes a rating).

    Inner ids are positions in the sorted unique user ids / movie ids. Raw ids are Python ints
    (users) and strs (movies), so `algo.predict(user_id, movie_id)` works with the table's ids.
    """
    from surprise import Trainset  # training-only dependency; the serving path never imports it

    if len(table) == 0:
        raise ValueError("cannot train on an empty ratings table")
    users, user_codes, movies, movie_codes = table.codes
    ratings = table.ratings
    rating_values, rating_codes = np.unique(ratings, return_inverse=True)
    rating_codes = rating_codes.reshape(-1)
    rating_list = rating_values.astype(np.float64).tolist()

    def sort_order(keys: np.ndarray, n_keys: int) -> np.ndarray:
        # A stable sort of small integer codes is a radix sort when they fit 16 bits.
        return np.argsort(keys.astype(np.uint16) if n_keys <= 1 << 16 else keys, kind="stable")

    def grouped(keys: np.ndarray, values: np.ndarray, n_keys: int, n_values: int) -> defaultdict:
        """key -> [(value, rating), ...] in table order. The (value, rating) tuples are shared:
        one per distinct combination (a few per movie or user), not one per rating; each key's
        list is cut straight from one object array (no intermediate list of every rating)."""
        order = sort_order(keys, n_keys)
        bounds = np.searchsorted(keys[order], np.arange(n_keys + 1)).tolist()
        if n_values * len(rating_list) <= len(order):
            combos = values[order].astype(np.int64) * len(rating_list) + rating_codes[order]
            del order
            shared = np.empty(n_values * len(rating_list), dtype=object)
            shared[:] = [(v, r) for v in range(n_values) for r in rating_list]
            pairs = shared[combos]
            del combos
        else:  # many distinct ratings: one tuple per rating is cheaper than the table
            pairs = np.empty(len(order), dtype=object)
            pairs[:] = list(zip(values[order].tolist(), ratings[order].astype(np.float64).tolist()))
        grouped_pairs = defaultdict(list)
        for key in range(n_keys):
            grouped_pairs[key] = pairs[bounds[key]: bounds[key + 1]].tolist()
        return grouped_pairs

    with _cyclic_gc_paused():
        ur = grouped(user_codes, movie_codes, len(users), len(movies))
        ir = grouped(movie_codes, user_codes, len(movies), len(users))
    trainset = Trainset(
        ur=ur,
        ir=ir,
        n_users=len(users),
        n_items=len(movies),
        n_ratings=len(table),
        rating_scale=(RATING_MIN, RATING_MAX),
        raw2inner_id_users={u: i for i, u in enumerate(users.tolist())},
        raw2inner_id_items={m: i for i, m in enumerate(movies.tolist())},
    )
    # Surprise would compute this lazily with a Python-level pass over all ratings.
    trainset._global_mean = float(ratings.astype(np.float64).mean())
    return trainset


def fit_svd(table: RatingsTable, params: SVDParams = SVDParams()):
    """A fitted surprise SVD on the table."""
    from surprise import SVD

    algo = SVD(
        n_factors=params.n_factors,
        n_epochs=params.n_epochs,
        lr_all=params.lr_all,
        reg_all=params.reg_all,
        random_state=params.random_state,
    )
    trainset = build_trainset(table)
    with _cyclic_gc_paused():
        return algo.fit(trainset)


def predict_rows(model: RecommenderModel, rows: np.ndarray, items: np.ndarray, clip: bool = True,
                 chunk: int = 1 << 16) -> np.ndarray:
    """`model.predict` of (model row, movie index) pairs (-1: unknown), the same figures, in
    chunks: at most `chunk` x factors floats are gathered at a time, never holdout x factors."""
    ku, ki = rows >= 0, items >= 0
    ku[ku] = model.user_has_factors[rows[ku]]  # watch-only users are unknown to the SVD
    est = np.full(len(rows), model.global_mean, dtype=np.float64)
    est[ku] += model.user_bias[rows[ku]]
    est[ki] += model.item_bias[items[ki]]
    both = np.flatnonzero(ku & ki)
    for start in range(0, len(both), chunk):
        at = both[start: start + chunk]
        est[at] += np.einsum("ij,ij->i", model.user_factors[rows[at]], model.item_factors[items[at]],
                             dtype=np.float64)
    return np.clip(est, RATING_MIN, RATING_MAX) if clip else est


def _rmse_mae(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    err = pred - truth
    return float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err)))


def evaluate(
    model: RecommenderModel,
    holdout: RatingsTable,
    k: int = DEFAULT_K,
    max_ranking_users: int = MAX_RANKING_USERS,
    seed: int = 0,
    batch_users: int = 512,
) -> dict:
    """Rating and ranking quality of `model` on `holdout`.

    Returns rmse, mae (clipped predictions), rmse_global_mean (the predict-the-mean baseline on
    the same rows), precision_at_k, recall_at_k, ndcg_at_k, hit_rate_at_k, coverage_at_k of the
    model (means over holdout users with a personal ranking and at least one relevant holdout
    movie the model knows), `ranking` ({model, popularity, random, and svd when a ranking model
    ranks} -> {precision, recall, ndcg, hit_rate, coverage} on those same users),
    ndcg_lift_vs_popularity, and counts.
    """
    if len(holdout) == 0:
        raise ValueError("cannot evaluate on an empty holdout")
    truth = holdout.ratings.astype(np.float64)
    rmse, mae = _rmse_mae(predict_rows(model, *table_coordinates(model, holdout)), truth)
    rmse_mean, _ = _rmse_mae(np.full(len(truth), np.clip(model.global_mean, RATING_MIN, RATING_MAX)), truth)
    metrics = {"rmse": rmse, "mae": mae, "rmse_global_mean": rmse_mean, "n_holdout": len(holdout), "k": k}
    report = ranking_report(model, holdout, k, max_ranking_users, seed, batch_users) if max_ranking_users else {}
    metrics["n_ranking_users"] = report.get("n_users", 0)
    if not metrics["n_ranking_users"]:
        metrics.update({f"{name}_at_k": None for name in METRICS}, ranking=None, ndcg_lift_vs_popularity=None)
        return metrics
    metrics.update({f"{name}_at_k": report["model"][name] for name in METRICS})
    metrics["ranking"] = {ranker: report[ranker] for ranker in RANKERS if ranker in report}
    popular = report["popularity"]["ndcg"]
    metrics["ndcg_lift_vs_popularity"] = report["model"]["ndcg"] / popular if popular > 0 else None
    return metrics


# -- the job's models -------------------------------------------------------------------------
def _unicode(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    return ids if ids.dtype.kind == "U" else (np.array(ids.tolist(), dtype=str) if len(ids) else np.empty(0, "<U1"))


def _pairs(users: np.ndarray, movies: np.ndarray, table: RatingsTable | WatchPairs):
    """(catalogue row, catalogue column) of each row of `table`, through its codes (only the
    distinct ids are looked up)."""
    codes = table.codes
    return (lookup_sorted(users, codes.users)[codes.user_codes],
            lookup_sorted(movies, _unicode(codes.movies))[codes.movie_codes])


def build_models(
    algo,
    train: RatingsTable,
    train_watches: WatchPairs,
    everything: RatingsTable,
    watches: WatchPairs,
    ranking: RankingParams | None = None,
    cold_start_window_s: float = 7 * 86400,
    seed: int = 0,
    params: dict | None = None,
) -> tuple[RecommenderModel, RecommenderModel]:
    """(evaluation model, served model) of a fitted SVD (on `train`) and a ranking model fitted
    here on `train` + `train_watches`. `everything` and `watches` are the whole snapshot (train
    and holdout): the catalogue of both models and the served model's seen set."""
    users = np.union1d(everything.codes.users, watches.codes.users)
    # The model's movie ids are a unicode array (its artifact's type): the vocabulary, not rows.
    movies = np.union1d(_unicode(everything.codes.movies), _unicode(watches.codes.movies))
    nu, nm = len(users), len(movies)
    svd = svd_arrays(algo, train)
    rows, cols = lookup_sorted(users, svd["users"]), lookup_sorted(movies, svd["movies"])
    f = svd["user_factors"].shape[1]
    has_factors, user_bias, user_factors = np.zeros(nu, bool), np.zeros(nu), np.zeros((nu, f))
    has_factors[rows], user_bias[rows], user_factors[rows] = True, svd["user_bias"], svd["user_factors"]
    item_bias, item_factors = np.zeros(nm), np.zeros((nm, f))
    item_bias[cols], item_factors[cols] = svd["item_bias"], svd["item_factors"]

    (tr_r, tr_c), (tw_r, tw_c) = _pairs(users, movies, train), _pairs(users, movies, train_watches)
    inter = Interactions.build(np.concatenate([tr_r, tw_r]), np.concatenate([tr_c, tw_c]),
                               np.concatenate([train.ratings, np.zeros(len(tw_r))]), (nu, nm))
    ranker = fit_ranker(inter, ranking or RankingParams(), seed)

    (all_r, all_c), (aw_r, aw_c) = _pairs(users, movies, everything), _pairs(users, movies, watches)
    seen_rows, seen_cols = np.concatenate([all_r, aw_r]), np.concatenate([all_c, aw_c])
    times = None
    if everything.time_us is not None or len(watches):
        rating_times = (everything.time_us if everything.time_us is not None
                        else np.full(len(everything), np.iinfo(np.int64).min))
        times = np.concatenate([rating_times, watches.last_time_us])
    cold_start = recent_popularity(*_last_per_pair(seen_rows, seen_cols, times, nm), nm, cold_start_window_s,
                                   COLD_START_SIZE)
    served = RecommenderModel(
        global_mean=svd["global_mean"], user_ids=users, user_has_factors=has_factors, user_bias=user_bias,
        user_factors=user_factors, movie_ids=movies, item_bias=item_bias, item_factors=item_factors,
        seen_indptr=np.zeros(nu + 1, np.int64), seen_indices=np.empty(0, np.int32), cold_start=cold_start,
        user_ranked=ranker.users_ranked, rank_user_factors=ranker.user_factors,
        rank_item_factors=ranker.item_factors, rank_item_bias=ranker.item_bias,
        params=params, ranking_params=ranker.params,
    )
    evaluation = served.with_seen(*inter.csr())
    served = served.with_seen(*seen_csr(users, users[seen_rows], seen_cols, nm))
    return evaluation, served


def _last_per_pair(rows: np.ndarray, cols: np.ndarray, times: np.ndarray | None, n_cols: int):
    """(columns, last time or None) of the distinct (row, column) pairs."""
    keys = rows.astype(np.int64) * n_cols + cols
    if times is None:
        return np.unique(keys) % n_cols, None
    order = np.lexsort((times, keys))
    last = np.r_[keys[order][1:] != keys[order][:-1], True]
    return keys[order][last] % n_cols, times[order][last]
