"""Fitting and evaluating the SVD: from a RatingsTable to a RecommenderModel and its metrics.

Owns `SVDParams` (scikit-surprise SVD hyper-parameters, defaults as surprise's), `build_trainset`
(a surprise Trainset made straight from the table's arrays, no pandas/Dataset detour, so the
pipeline costs little beyond surprise's own SGD), `fit_svd` and `evaluate` (RMSE,
MAE with predictions clipped to 1..5 as surprise does, and precision/recall/NDCG@k where relevant
means a holdout rating >= 4 and candidates are all movies the user has not seen in training).
The serving model is built from a fit by `movierec.model.build_model`; the job that splits, fits,
builds and evaluates is `movierec.trainjob.fit_and_evaluate`.

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
from movierec.model import DEFAULT_K, RecommenderModel, top_k_indices
from movierec.ratings import RatingsTable
from movierec.settings import setting_field

RELEVANT_RATING = 4.0
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
    ratings = table.ratings.astype(np.float64)
    rating_values, rating_codes = np.unique(ratings, return_inverse=True)
    rating_codes = rating_codes.reshape(-1)
    rating_list = rating_values.tolist()

    def sort_order(keys: np.ndarray, n_keys: int) -> np.ndarray:
        # A stable sort of small integer codes is a radix sort when they fit 16 bits.
        return np.argsort(keys.astype(np.uint16) if n_keys <= 1 << 16 else keys, kind="stable")

    def grouped(keys: np.ndarray, values: np.ndarray, n_keys: int, n_values: int) -> defaultdict:
        """key -> [(value, rating), ...] in table order. The (value, rating) tuples are shared:
        one per distinct combination (a few per movie or user), not one per rating."""
        order = sort_order(keys, n_keys)
        combos = values[order] * len(rating_list) + rating_codes[order]
        if n_values * len(rating_list) <= len(combos):
            shared = np.empty(n_values * len(rating_list), dtype=object)
            shared[:] = [(v, r) for v in range(n_values) for r in rating_list]
            pairs = shared[combos].tolist()
        else:  # many distinct ratings: one tuple per rating is cheaper than the table
            pairs = list(zip(values[order].tolist(), ratings[order].tolist()))
        bounds = np.searchsorted(keys[order], np.arange(n_keys + 1)).tolist()
        grouped_pairs = defaultdict(list)
        for key in range(n_keys):
            grouped_pairs[key] = pairs[bounds[key]: bounds[key + 1]]
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
    trainset._global_mean = float(ratings.mean())
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
    the same rows), precision_at_k, recall_at_k, ndcg_at_k (means over holdout users with
    personal factors and at least one relevant holdout movie the model knows), and counts.
    """
    if len(holdout) == 0:
        raise ValueError("cannot evaluate on an empty holdout")
    truth = holdout.ratings.astype(np.float64)
    rmse, mae = _rmse_mae(model.predict(holdout.user_ids, holdout.movie_ids, clip=True), truth)
    rmse_mean, _ = _rmse_mae(np.full(len(truth), np.clip(model.global_mean, RATING_MIN, RATING_MAX)), truth)
    metrics = {"rmse": rmse, "mae": mae, "rmse_global_mean": rmse_mean, "n_holdout": len(holdout), "k": k}

    # Relevant (row, movie) pairs of users the SVD knows.
    rows = model.user_rows(holdout.user_ids)
    items = model.movie_indices(holdout.movie_ids)
    ok = (rows >= 0) & (items >= 0) & (holdout.ratings >= RELEVANT_RATING)
    ok[ok] = model.user_has_factors[rows[ok]]
    rel_rows, rel_items = rows[ok], items[ok]
    users = np.unique(rel_rows)
    if len(users) > max_ranking_users:
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_ranking_users, replace=False))
    metrics["n_ranking_users"] = len(users)
    if len(users) == 0:
        metrics.update(precision_at_k=None, recall_at_k=None, ndcg_at_k=None)
        return metrics

    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    precision, recall, ndcg = [], [], []
    rel_order = np.argsort(rel_rows, kind="stable")
    rel_rows, rel_items = rel_rows[rel_order], rel_items[rel_order]
    for start in range(0, len(users), batch_users):
        batch = users[start: start + batch_users]
        # One matrix product scores the whole batch; ranking drops the per-user constant, as recommend().
        scores = model.user_factors[batch] @ model.item_factors.T
        scores += model.item_bias
        lengths = model.seen_indptr[batch + 1] - model.seen_indptr[batch]
        seen_pos = np.repeat(model.seen_indptr[batch] - np.cumsum(np.r_[0, lengths[:-1]]), lengths)
        seen_pos += np.arange(lengths.sum())
        scores[np.repeat(np.arange(len(batch)), lengths), model.seen_indices[seen_pos]] = -np.inf
        relevant = np.zeros(scores.shape, dtype=bool)
        lo, hi = np.searchsorted(rel_rows, batch[0]), np.searchsorted(rel_rows, batch[-1], side="right")
        in_batch = np.searchsorted(batch, rel_rows[lo:hi])
        member = (in_batch < len(batch)) & (batch[np.minimum(in_batch, len(batch) - 1)] == rel_rows[lo:hi])
        relevant[in_batch[member], rel_items[lo:hi][member]] = True
        n_relevant = relevant.sum(axis=1)
        for j in range(len(batch)):
            top = top_k_indices(scores[j], k, n_available=model.n_movies - int(lengths[j]))
            hits = relevant[j, top]
            n_hits = int(hits.sum())
            precision.append(n_hits / k)
            recall.append(n_hits / n_relevant[j])
            ideal = discounts[: min(int(n_relevant[j]), k)].sum()
            ndcg.append(float(discounts[: len(top)][hits].sum() / ideal))
    metrics.update(
        precision_at_k=float(np.mean(precision)),
        recall_at_k=float(np.mean(recall)),
        ndcg_at_k=float(np.mean(ndcg)),
    )
    return metrics
