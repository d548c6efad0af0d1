"""The top-k ranking: an implicit-feedback factor model of what users watch and rate, tuned on a
validation split of the training data, and the metrics that judge a ranking against a popularity
and a random baseline on the same holdout.

Why: a model fitted for RMSE ranks poorly, and popularity is a strong top-N baseline (Cremonesi,
Koren and Turrin, RecSys 2010). The rating model stays scikit-surprise's SVD (judged by RMSE);
the top-k list is ordered by PureSVD of the interaction matrix, which models what users choose
to watch, popularity included:
- X[u, i] is the confidence of user u's interest in movie i: 1 for a watched movie, and for a
  rated one 1 + RATING_WEIGHT * (stars - 3) (0.5 for one star .. 1.5 for five).
- D = diag(pop_i ** -damping), pop_i the number of users with an interaction with movie i: the
  damping keeps the first singular vectors from being only "how popular".
- A truncated SVD X D ~ U S V^T (`truncated_svd`, randomized, on scipy.sparse matrices;
  `factors` of them): movie factors V, user factors x_u D V W, score(u, i) = (x_u D V W) . V_i,
  where W = diag(s^2 / (s^2 + shrink * s_k^2)) shrinks the weakest factors (a low-rank ridge,
  as EASE's closed form is a full-rank one). Movies nobody interacted with in training get the
  bias UNSEEN_BIAS, so they come after every movie the model knows.
- A popularity blend: + blend * sd_u * z(log(1 + pop_i)), sd_u the spread of user u's factor
  scores; as the blend grows the list tends to the popularity list, which is what a stream whose
  users pick by popularity alone calls for (0 where the factors know better).
`factors`, `damping`, `shrink` and `blend` are chosen on a validation split carved from the
TRAINING pairs (never the reported holdout), by NDCG@k; the settings can fix the first two.
The blend is folded into the factors (one more column), so serving stays one product.

Owns `RankingParams` (settings RANKING_FACTORS, RANKING_POP_DAMPING), `Interactions` (the
training pairs as matrix coordinates), `fit_ranker` -> `Ranker`, `rank_metrics` (precision,
recall, NDCG, hit rate and catalogue coverage at k of any scoring), `table_coordinates` (a
table's rows as model rows and movie indices, through its codes), `ranking_report` (a model vs
popularity vs random on one holdout) and `recent_popularity` (the cold-start list).

Must not touch: the SVD (movierec.training), the artifact, the object store, HTTP. scipy is
imported only to fit (the serving function ships numpy alone and never imports this module).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from movierec.model import DEFAULT_K, RecommenderModel
from movierec.ratings import RatingsTable
from movierec.selection import top_k_indices
from movierec.settings import setting_field

RELEVANT_RATING = 4.0  # a holdout rating this high marks a movie the user wanted
RATING_WEIGHT = 0.25
UNSEEN_BIAS = -1e6
FACTOR_GRID = (4, 8, 16, 32, 64)
DAMPING_GRID = (0.0, 0.25, 0.5)
SHRINK_GRID = (0.0, 1.0, 4.0)
BLEND_GRID = (0.0, 0.5, 2.0, 8.0)
VALIDATION_FRACTION = 0.2
VALIDATION_SALT = 0x5EED_0F_7A1D  # the validation split's seed differs from the holdout's
MAX_VALIDATION_USERS = 1000
# The model's ranking, the baselines on the same holdout, and (when a ranking model orders the
# list) the SVD rating model's own ranking, for the record of why the ranking model is there.
RANKERS = ("model", "popularity", "random", "svd")
METRICS = ("precision", "recall", "ndcg", "hit_rate", "coverage")


@dataclass(frozen=True)
class RankingParams:
    ranking_factors: int | None = setting_field("RANKING_FACTORS", None)  # None: tuned over FACTOR_GRID
    ranking_pop_damping: float | None = setting_field("RANKING_POP_DAMPING", None)  # None: DAMPING_GRID

    def __post_init__(self) -> None:
        if self.ranking_factors is not None and self.ranking_factors < 1:
            raise ValueError(f"ranking_factors must be >= 1, got {self.ranking_factors}")
        if self.ranking_pop_damping is not None and not 0 <= self.ranking_pop_damping <= 1:
            raise ValueError(f"ranking_pop_damping must be within 0..1, got {self.ranking_pop_damping}")

    def grid(self) -> list[tuple[int, float]]:
        factors = FACTOR_GRID if self.ranking_factors is None else (self.ranking_factors,)
        dampings = DAMPING_GRID if self.ranking_pop_damping is None else (self.ranking_pop_damping,)
        return [(f, d) for d in dampings for f in factors]


@dataclass(frozen=True)
class Interactions:
    """Distinct (user row, movie column) training pairs with their confidence and stars (0: watched, unrated)."""

    rows: np.ndarray
    cols: np.ndarray
    stars: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def build(cls, rows: np.ndarray, cols: np.ndarray, stars: np.ndarray, shape: tuple[int, int]) -> Interactions:
        """From pairs that may repeat: a rated pair keeps its stars (put the rated pairs first)."""
        keys = np.asarray(rows, np.int64) * shape[1] + np.asarray(cols, np.int64)
        _, first = np.unique(keys, return_index=True)
        return cls(np.asarray(rows, np.int64)[first], np.asarray(cols, np.int64)[first],
                   np.asarray(stars, np.float32)[first], shape)

    @property
    def confidence(self) -> np.ndarray:
        return np.where(self.stars > 0, 1 + RATING_WEIGHT * (self.stars - 3), 1.0)

    def take(self, mask: np.ndarray) -> Interactions:
        return Interactions(self.rows[mask], self.cols[mask], self.stars[mask], self.shape)

    def popularity(self) -> np.ndarray:
        """Users with an interaction, per movie column."""
        return np.bincount(self.cols, minlength=self.shape[1])

    def csr(self) -> tuple[np.ndarray, np.ndarray]:
        """(indptr, indices) of each row's columns, sorted."""
        order = np.lexsort((self.cols, self.rows))
        indptr = np.zeros(self.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.rows, minlength=self.shape[0]), out=indptr[1:])
        return indptr, self.cols[order].astype(np.int32)


@dataclass
class Ranker:
    """A fitted ranking model in the interaction matrix's coordinates."""

    user_factors: np.ndarray  # rows x factors, float32
    item_factors: np.ndarray  # cols x factors
    item_bias: np.ndarray  # cols
    users_ranked: np.ndarray  # rows with at least one training interaction
    params: dict[str, Any] = field(default_factory=dict)


def _matrix(inter: Interactions, damping: float):
    """X D as a float32 CSR matrix."""
    import scipy.sparse as sp

    pop = inter.popularity().astype(np.float64)
    weight = np.zeros_like(pop)
    weight[pop > 0] = pop[pop > 0] ** -damping
    values = (inter.confidence * weight[inter.cols]).astype(np.float32)
    return sp.csr_matrix((values, (inter.rows, inter.cols)), shape=inter.shape, dtype=np.float32)


def truncated_svd(x, k: int, seed: int = 0, power_iterations: int = 4, oversample: int = 16):
    """(top-k singular values desc, right singular vectors as columns) of a sparse matrix, by
    randomized block power iterations (Halko, Martinsson and Tropp 2011): a few passes over
    the matrix, each a product with a block of vectors, instead of ARPACK's one-vector steps."""
    width = min(k + oversample, min(x.shape))
    k = min(k, width)
    if k < 1 or x.nnz == 0:
        return np.zeros(0, np.float32), np.zeros((x.shape[1], 0), np.float32)
    xt = x.T.tocsr()
    q = np.linalg.qr(x @ np.random.default_rng(seed).standard_normal((x.shape[1], width), dtype=np.float32))[0]
    for _ in range(power_iterations):
        q = np.linalg.qr(xt @ q)[0]
        q = np.linalg.qr(x @ q)[0]
    _, singular, vt = np.linalg.svd((xt @ q).T, full_matrices=False)
    return singular[:k], np.ascontiguousarray(vt[:k].T)


def _shrunk(singular: np.ndarray, factors: int, shrink: float) -> np.ndarray:
    """Per-factor weights s^2 / (s^2 + shrink * s_k^2): the last kept factor counts 1/(1+shrink)."""
    s2 = singular[:factors].astype(np.float64) ** 2
    return (s2 / (s2 + shrink * s2[-1])).astype(np.float32) if len(s2) else s2.astype(np.float32)


def _popularity_feature(inter: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """(z-scored log(1 + users) of the movies with interactions and 0 elsewhere, which are known)."""
    pop = inter.popularity()
    known = pop > 0
    feature = np.zeros(len(pop), np.float32)
    if known.any():
        logged = np.log1p(pop[known])
        feature[known] = (logged - logged.mean()) / (logged.std() or 1.0)
    return feature, known


def _blend(p: np.ndarray, v: np.ndarray, feature: np.ndarray, known: np.ndarray, blend: float):
    """(user factors, movie factors) scoring p.v + blend * sd_u * feature, where sd_u is the spread
    of user u's factor scores over the known movies (so `blend` means the same for every user):
    one more column when blend > 0."""
    if blend == 0 or v.shape[1] == 0:
        return p, v
    centred = v[known] - v[known].mean(axis=0)
    cov = centred.T @ centred / max(int(known.sum()), 1)
    spread = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", p, cov, p), 0.0)).astype(np.float32)
    return np.hstack([p, (blend * spread)[:, None]]), np.hstack([v, feature[:, None]])


def _ranker(x, singular: np.ndarray, v: np.ndarray, inter: Interactions, best: dict[str, Any],
            params: dict[str, Any]) -> Ranker:
    v = v[:, : best["factors"]].astype(np.float32)
    feature, known = _popularity_feature(inter)
    user_factors = np.asarray(x @ v, dtype=np.float32) * _shrunk(singular, best["factors"], best["shrink"])
    user_factors, item_factors = _blend(user_factors, v, feature, known, best["blend"])
    return Ranker(
        user_factors=np.ascontiguousarray(user_factors, np.float32),
        item_factors=np.ascontiguousarray(item_factors, np.float32),
        item_bias=np.where(known, 0.0, UNSEEN_BIAS).astype(np.float32),
        users_ranked=np.bincount(inter.rows, minlength=inter.shape[0]) > 0,
        params=params,
    )


def fit_ranker(inter: Interactions, params: RankingParams = RankingParams(), seed: int = 0,
               k: int = DEFAULT_K) -> Ranker:
    """The ranking model of the training pairs. Its factors and damping (unless `params` fix
    them), its shrinkage and its popularity blend are tuned by NDCG@k on a validation split of
    those pairs (a seeded random fifth; the model is fitted on the rest): factors x damping at
    shrinkage 1 and no blend, then the shrinkage, then the blend, each at the best so far.
    `params` of the result says what was tried and chosen."""
    grid = params.grid()
    tried: list[dict[str, Any]] = []
    best: dict[str, Any] = {"factors": 32, "damping": 0.25} if len(grid) > 1 else \
        {"factors": grid[0][0], "damping": grid[0][1]}
    best.update(shrink=1.0, blend=0.0)
    val = np.random.default_rng(seed ^ VALIDATION_SALT).random(len(inter.rows)) < VALIDATION_FRACTION
    fit, held = inter.take(~val), inter.take(val)
    relevant = held.stars >= RELEVANT_RATING
    users = np.unique(held.rows[relevant])
    users = users[np.bincount(fit.rows, minlength=inter.shape[0])[users] > 0]
    if len(users) > MAX_VALIDATION_USERS:
        users = np.sort(np.random.default_rng(seed).choice(users, MAX_VALIDATION_USERS, replace=False))
    if len(users):
        indptr, indices = fit.csr()
        rel_keys = pair_keys(held.rows[relevant], held.cols[relevant], inter.shape[1])
        feature, known = _popularity_feature(fit)
        bias = np.where(known, 0.0, UNSEEN_BIAS).astype(np.float32)
        x_users, decomposed = {}, {}
        for damping in sorted({d for _, d in grid}):
            x = _matrix(fit, damping)
            decomposed[damping] = truncated_svd(x, max(f for f, _ in grid), seed)
            x_users[damping] = x[users]

        def score(factors: int, damping: float, shrink: float, blend: float) -> None:
            singular, v = decomposed[damping]
            v = v[:, :factors]
            p, vb = _blend((x_users[damping] @ v) * _shrunk(singular, factors, shrink), v, feature, known, blend)
            scores = np.zeros((inter.shape[0], p.shape[1]), np.float32)
            scores[users] = p
            figures = rank_metrics(lambda b: scores[b] @ vb.T + bias, users, indptr, indices, rel_keys,
                                   inter.shape[1], k)
            tried.append({"factors": v.shape[1], "damping": damping, "shrink": shrink, "blend": blend,
                          "ndcg": round(figures["ndcg"], 5)})

        def top() -> dict[str, Any]:
            return max(tried, key=lambda t: t["ndcg"])  # the first best: the smaller model on ties

        for factors, damping in grid:
            score(factors, damping, 1.0, 0.0)
        for shrink in SHRINK_GRID:
            if shrink != 1.0:
                score(top()["factors"], top()["damping"], shrink, 0.0)
        for blend in BLEND_GRID:
            if blend != 0.0:
                score(top()["factors"], top()["damping"], top()["shrink"], blend)
        best = top()
    x = _matrix(inter, best["damping"])
    singular, v = truncated_svd(x, best["factors"], seed)
    best["factors"] = int(v.shape[1])
    chosen = {"model": "puresvd", "factors": best["factors"], "pop_damping": best["damping"],
              "shrink": best["shrink"], "popularity_blend": best["blend"], "rating_weight": RATING_WEIGHT,
              "tuned_on_validation": tried, **asdict(params)}
    return _ranker(x, singular, v, inter, best, chosen)


# -- metrics ----------------------------------------------------------------------------------
def _top_k_rows(scores: np.ndarray, k: int, n_available: np.ndarray) -> np.ndarray:
    """Each row's top-k columns by score desc then column asc (as `top_k_indices`); -1 pads rows
    with fewer than k available. Exact: rows with a tie at the k-th place are done one by one."""
    n = scores.shape[1]
    kk = min(k, n)
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    values = np.take_along_axis(scores, part, axis=1)
    top = np.take_along_axis(part, np.lexsort((part, -values), axis=-1), axis=1)
    kth = values.min(axis=1)
    inexact = ((scores >= kth[:, None]).sum(axis=1) > kk) | (n_available < kk)
    for j in np.flatnonzero(inexact).tolist():
        exact = top_k_indices(scores[j], kk, n_available=int(n_available[j]))
        top[j] = -1
        top[j, : len(exact)] = exact
    return top


def pair_keys(rows: np.ndarray, cols: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted distinct keys row * n_items + col of (row, col) pairs: `rank_metrics`' relevant set."""
    return np.unique(np.asarray(rows, np.int64) * n_items + np.asarray(cols, np.int64))


def rank_metrics(score_rows: Callable[[np.ndarray], np.ndarray], users: np.ndarray, exclude_indptr: np.ndarray,
                 exclude_indices: np.ndarray, rel_keys: np.ndarray, n_items: int, k: int = DEFAULT_K,
                 batch: int = 512) -> dict[str, float]:
    """precision, recall, ndcg, hit_rate (means over `users`, sorted row ids) and coverage (share
    of the `n_items` in anyone's top k) of the scoring `score_rows(rows) -> rows x n_items`, where
    each user's excluded columns (CSR) cannot be recommended and `rel_keys` (`pair_keys`) are the
    relevant pairs. Every user must have at least one relevant pair."""
    rel_of_row = rel_keys // max(n_items, 1)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal_cum = np.concatenate([[0.0], np.cumsum(discounts)])
    sums = dict.fromkeys(("precision", "recall", "ndcg", "hit_rate"), 0.0)
    shown = np.zeros(n_items, dtype=bool)
    for start in range(0, len(users), batch):
        rows = np.asarray(users[start: start + batch], dtype=np.int64)
        scores = np.array(score_rows(rows), dtype=np.float32)
        lengths = exclude_indptr[rows + 1] - exclude_indptr[rows]
        pos = np.repeat(exclude_indptr[rows] - np.cumsum(np.r_[0, lengths[:-1]]), lengths) + np.arange(lengths.sum())
        scores[np.repeat(np.arange(len(rows)), lengths), exclude_indices[pos]] = -np.inf
        top = _top_k_rows(scores, k, n_items - lengths)
        n_relevant = np.searchsorted(rel_of_row, rows, side="right") - np.searchsorted(rel_of_row, rows)
        keys = rows[:, None] * n_items + np.maximum(top, 0)
        at = np.minimum(np.searchsorted(rel_keys, keys), len(rel_keys) - 1)
        hits = (rel_keys[at] == keys) & (top >= 0)
        n_hits = hits.sum(axis=1)
        sums["precision"] += float((n_hits / k).sum())
        sums["recall"] += float((n_hits / n_relevant).sum())
        sums["hit_rate"] += float((n_hits > 0).sum())
        sums["ndcg"] += float(((hits * discounts[: top.shape[1]]).sum(axis=1)
                               / ideal_cum[np.minimum(n_relevant, k)]).sum())
        shown[top[top >= 0]] = True
    n = max(len(users), 1)
    return {**{name: value / n for name, value in sums.items()}, "coverage": float(shown.mean()) if n_items else 0.0}


def model_scores(model: RecommenderModel, rows: np.ndarray) -> np.ndarray:
    """What orders each given user row's list in `model.recommend`, for many rows at once."""
    rows = np.asarray(rows, dtype=np.int64)
    scores = np.empty((len(rows), model.n_movies), dtype=np.float32)
    ranked = model.user_ranked[rows]
    if ranked.any():
        scores[ranked] = model.rank_user_factors[rows[ranked]] @ model.rank_item_factors.T + model.rank_item_bias
    if not ranked.all():
        scores[~ranked] = model.user_factors[rows[~ranked]] @ model.item_factors.T + model.item_bias
    return scores


def table_coordinates(model: RecommenderModel, table: RatingsTable) -> tuple[np.ndarray, np.ndarray]:
    """(model row, movie index) of each row of `table` (-1 where the model does not know it),
    through the table's codes: only its distinct ids are looked up, no per-row strings."""
    users, user_codes, movies, movie_codes = table.codes
    movies = np.asarray(movies)
    if movies.dtype.kind != "U":
        movies = np.array(movies.tolist(), dtype=str) if len(movies) else np.empty(0, "<U1")
    return model.user_rows(users)[user_codes], model.movie_indices(movies)[movie_codes]


def ranking_report(model: RecommenderModel, holdout: RatingsTable, k: int = DEFAULT_K, max_users: int = 10_000,
                   seed: int = 0, batch: int = 512) -> dict[str, Any]:
    """The model's top-k against popularity (most users with a seen pair in the model, which
    for the evaluation model is training) and random, and the SVD's own order when a ranking
    model ranks, on the same holdout users, relevant movies (holdout rating >= RELEVANT_RATING)
    and excluded movies (the model's seen)."""
    rows, cols = table_coordinates(model, holdout)
    ok = (rows >= 0) & (cols >= 0) & (holdout.ratings >= RELEVANT_RATING)
    ok[ok] = model.user_has_factors[rows[ok]] | model.user_ranked[rows[ok]]  # a personal list
    users = np.unique(rows[ok])
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
    report: dict[str, Any] = {"n_users": len(users)}
    if len(users) == 0:
        return report
    n = model.n_movies
    popularity = np.bincount(model.seen_indices, minlength=n)
    # Unique scores in popularity order (count desc, movie index asc): no ties to break.
    pop_scores = np.empty(n)
    pop_scores[np.lexsort((np.arange(n), -popularity))] = -np.arange(n, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    scorings = {
        "model": lambda b: model_scores(model, b),
        "popularity": lambda b: np.broadcast_to(pop_scores, (len(b), n)),
        "random": lambda b: rng.random((len(b), n)),
    }
    if model.has_ranker:
        scorings["svd"] = lambda b: model.user_factors[b] @ model.item_factors.T + model.item_bias
    rel_keys = pair_keys(rows[ok], cols[ok], n)
    for name, scoring in scorings.items():
        report[name] = rank_metrics(scoring, users, model.seen_indptr, model.seen_indices, rel_keys, n, k, batch)
    return report


# -- cold start ---------------------------------------------------------------------------------
def recent_popularity(cols: np.ndarray, times_us: np.ndarray | None, n_items: int, window_s: float,
                      size: int) -> np.ndarray:
    """Columns by distinct (user, movie) pairs whose last event falls in the last `window_s` of
    the data, then by all-time pairs, then by column: the list a user nobody knows gets.
    `cols` are the columns of distinct pairs; without times it is the all-time order."""
    all_time = np.bincount(cols, minlength=n_items)
    recent = all_time
    if times_us is not None and len(times_us):
        since = int(times_us.max()) - int(window_s * 1e6)
        recent = np.bincount(cols[times_us >= since], minlength=n_items)
    order = np.lexsort((np.arange(n_items), -all_time, -recent))
    return order[:size].astype(np.int32)
