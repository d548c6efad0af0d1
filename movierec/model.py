"""The recommendation model: its arrays and vectorised scoring.

Owns `RecommenderModel` (SVD factors and biases as float32 numpy arrays, sorted user and movie
ids, each user's seen movies as CSR, a cold-start list, and optionally the ranking model's
factors), `build_model` (from a fitted scikit-surprise SVD and its training table), `svd_arrays`,
`from_arrays`, top-k selection and `ModelIntegrityError` (raised when arrays are inconsistent).
The on-disk artifact is `movierec.artifact`; the ranking model is fitted by `movierec.ranking`.

Rating prediction follows surprise's SVD: est = mu + bu[u] + bi[i] + qi[i] . pu[u].
The top-k order: for a user with ranking factors (`user_ranked`), rank_bi[i] + rank_qi[i] . rank_pu[u]
(an implicit-feedback model of what users watch and rate); otherwise the SVD's est minus the
per-user constant (mu + bu[u]), which orders exactly as est does. Either way one matrix-vector
product over all movies at once.

Must not touch: HTTP, OpenFaaS, the object store (callers move the two files), training, and
importing surprise (the serving function does not ship it; `build_model` only reads attributes).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from movierec.errors import Rejected
from movierec.events import RATING_MAX, RATING_MIN, USER_ID_MAX
from movierec.ratings import RatingsTable

DEFAULT_K = 20
# Long enough that users who already watched many popular movies still get 20 unseen ones.
COLD_START_SIZE = 200
# Cold start ranks movies by a damped mean: (sum + DAMPING * mu) / (count + DAMPING), and
# prefers movies rated at least COLD_START_MIN_COUNT times, so one 5-star rating is not "best".
COLD_START_DAMPING = 10.0
COLD_START_MIN_COUNT = 5
# The arrays a model is made of (what `with_seen` copies and the artifact stores).
ARRAY_NAMES = ("global_mean", "user_ids", "user_has_factors", "user_bias", "user_factors", "movie_ids",
               "item_bias", "item_factors", "seen_indptr", "seen_indices", "cold_start", "user_ranked",
               "rank_user_factors", "rank_item_factors", "rank_item_bias")

class ModelIntegrityError(Rejected):
    """The artifact is missing, tampered with, or not a model this code can serve. A data error
    (loading the same files fails again): Rejected, answered 422 like every refusal of data."""

    status = 422


class RecommenderModel:
    """A loaded SVD model, ready to serve. Build with `build_model`/`from_arrays`, or `load_model`."""

    def __init__(
        self,
        *,
        global_mean: float,
        user_ids: np.ndarray,
        user_has_factors: np.ndarray,
        user_bias: np.ndarray,
        user_factors: np.ndarray,
        movie_ids: np.ndarray,
        item_bias: np.ndarray,
        item_factors: np.ndarray,
        seen_indptr: np.ndarray,
        seen_indices: np.ndarray,
        cold_start: np.ndarray,
        user_ranked: np.ndarray | None = None,
        rank_user_factors: np.ndarray | None = None,
        rank_item_factors: np.ndarray | None = None,
        rank_item_bias: np.ndarray | None = None,
        params: dict | None = None,
        ranking_params: dict | None = None,
        manifest: dict | None = None,
        sha256: str | None = None,
    ) -> None:
        self.global_mean = float(global_mean)
        self.user_ids = np.ascontiguousarray(user_ids, dtype=np.int64)
        self.user_has_factors = np.ascontiguousarray(user_has_factors, dtype=bool)
        self.user_bias = np.ascontiguousarray(user_bias, dtype=np.float32)
        self.user_factors = np.ascontiguousarray(user_factors, dtype=np.float32)
        self.movie_ids = np.asarray(movie_ids)
        self.item_bias = np.ascontiguousarray(item_bias, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        self.seen_indptr = np.ascontiguousarray(seen_indptr, dtype=np.int64)
        self.seen_indices = np.ascontiguousarray(seen_indices, dtype=np.int32)
        self.cold_start = np.ascontiguousarray(cold_start, dtype=np.int32)
        # No ranking model: zero-width factors, nobody ranked (the SVD orders every list).
        nu, nm, f32 = len(self.user_ids), len(self.movie_ids), np.float32
        self.user_ranked = np.ascontiguousarray(np.zeros(nu, bool) if user_ranked is None else user_ranked, bool)
        self.rank_user_factors = np.ascontiguousarray(np.zeros((nu, 0)) if rank_user_factors is None
                                                      else rank_user_factors, f32)
        self.rank_item_factors = np.ascontiguousarray(np.zeros((nm, 0)) if rank_item_factors is None
                                                      else rank_item_factors, f32)
        self.rank_item_bias = np.ascontiguousarray(np.zeros(nm) if rank_item_bias is None else rank_item_bias, f32)
        self.params = dict(params or {})
        self.ranking_params = dict(ranking_params or {})
        self.manifest = dict(manifest or {})
        self.sha256 = sha256
        _check_consistent(self)
        # Precomputed for the per-call path: plain Python strings and the cold-start list.
        self._movie_list: list[str] = self.movie_ids.tolist()
        self._cold_start_list: list[str] = [self._movie_list[i] for i in self.cold_start.tolist()]

    # -- identity -----------------------------------------------------------------------------
    @property
    def version(self) -> str | None:
        """The registry version from the manifest, if the registry set one."""
        v = self.manifest.get("version")
        return None if v is None else str(v)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_movies(self) -> int:
        return len(self.movie_ids)

    @property
    def n_factors(self) -> int:
        return self.item_factors.shape[1]

    @property
    def has_ranker(self) -> bool:
        """True when a ranking model (not the SVD) orders known users' lists."""
        return self.rank_item_factors.shape[1] > 0 or bool(self.user_ranked.any())

    def with_seen(self, seen_indptr: np.ndarray, seen_indices: np.ndarray,
                  cold_start: np.ndarray | None = None) -> RecommenderModel:
        """The same model (arrays shared) with another seen set and, optionally, cold-start list."""
        arrays = {name: getattr(self, name) for name in ARRAY_NAMES}
        arrays.update(seen_indptr=seen_indptr, seen_indices=seen_indices)
        if cold_start is not None:
            arrays["cold_start"] = cold_start
        return RecommenderModel(**arrays, params=self.params, ranking_params=self.ranking_params)

    def counts(self) -> dict[str, int]:
        return {
            "users": self.n_users,
            "users_with_factors": int(self.user_has_factors.sum()),
            "movies": self.n_movies,
            "factors": self.n_factors,
            "seen_pairs": len(self.seen_indices),
            "cold_start": len(self.cold_start),
            **({"users_ranked": int(self.user_ranked.sum()), "ranking_factors": self.rank_item_factors.shape[1]}
               if self.has_ranker else {}),
        }

    # -- lookups ------------------------------------------------------------------------------
    def _user_row(self, user_id: int) -> int:
        """Row of a user id, or -1 if the model has never seen the user."""
        if not 0 <= user_id <= USER_ID_MAX:
            return -1
        row = int(np.searchsorted(self.user_ids, user_id))
        if row < len(self.user_ids) and self.user_ids[row] == user_id:
            return row
        return -1

    def is_known_user(self, user_id: int) -> bool:
        """True if the user had ratings (SVD factors) or interactions (ranking factors) in training."""
        row = self._user_row(user_id)
        return row >= 0 and bool(self.user_has_factors[row] or self.user_ranked[row])


    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        """Rows of many user ids; -1 for users the model has never seen."""
        return lookup_sorted(self.user_ids, np.asarray(user_ids, dtype=np.int64))

    def movie_indices(self, movie_ids: np.ndarray) -> np.ndarray:
        """Indices of many movie ids; -1 for movies the model does not know."""
        return lookup_sorted(self.movie_ids, np.asarray(movie_ids, dtype=str))

    def seen_of_row(self, row: int) -> np.ndarray:
        return self.seen_indices[self.seen_indptr[row]: self.seen_indptr[row + 1]]

    # -- scoring ------------------------------------------------------------------------------
    def predict(self, user_ids: np.ndarray, movie_ids: np.ndarray, clip: bool = True) -> np.ndarray:
        """Predicted ratings of (user, movie) pairs, with surprise's rules for unknowns.

        Known user and movie: mu + bu + bi + qi.pu; unknown user: mu + bi; unknown movie:
        mu + bu; both unknown: mu. Clipped to the rating scale unless clip=False.
        """
        rows = self.user_rows(user_ids)
        items = self.movie_indices(movie_ids)
        ku, ki = rows >= 0, items >= 0
        ku[ku] = self.user_has_factors[rows[ku]]  # watch-only users are unknown to the SVD
        est = np.full(len(rows), self.global_mean, dtype=np.float64)
        est[ku] += self.user_bias[rows[ku]]
        est[ki] += self.item_bias[items[ki]]
        both = ku & ki
        est[both] += np.einsum(
            "ij,ij->i", self.user_factors[rows[both]], self.item_factors[items[both]], dtype=np.float64
        )
        return np.clip(est, RATING_MIN, RATING_MAX) if clip else est

    def _ranking_scores(self, row: int) -> np.ndarray:
        """The top-k order's scores of every movie for one user row: a fresh array."""
        if self.user_ranked[row]:
            scores = self.rank_item_factors @ self.rank_user_factors[row]
            scores += self.rank_item_bias
            return scores
        scores = self.item_factors @ self.user_factors[row]  # est minus the per-user constant
        scores += self.item_bias
        return scores

    def recommend(self, user_id: int, k: int = DEFAULT_K) -> list[str]:
        """Up to k movie ids, best first, never one the user rated or watched.

        Users without personal factors get the cold-start list (minus what they watched).
        Ties are broken by movie index (ascending), so the answer is deterministic.
        """
        if k <= 0:
            return []
        row = self._user_row(user_id)
        if row < 0:
            return self._cold_start_list[:k]
        seen = self.seen_of_row(row)
        if not (self.user_has_factors[row] or self.user_ranked[row]):
            if len(seen) == 0:
                return self._cold_start_list[:k]
            keep = ~np.isin(self.cold_start, seen)
            return [self._movie_list[i] for i in self.cold_start[keep][:k].tolist()]
        scores = self._ranking_scores(row)
        scores[seen] = -np.inf
        top = top_k_indices(scores, k, n_available=self.n_movies - len(seen))
        movies = self._movie_list
        return [movies[i] for i in top.tolist()]

    def cold_start_ids(self, k: int = DEFAULT_K) -> list[str]:
        return self._cold_start_list[:k]


def lookup_sorted(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """Position of each needle in a sorted, unique haystack, or -1 where it is absent."""
    if len(needles) == 0 or len(haystack) == 0:
        return np.full(len(needles), -1, dtype=np.int64)
    pos = np.searchsorted(haystack, needles)
    found = haystack[np.minimum(pos, len(haystack) - 1)] == needles
    return np.where(found & (pos < len(haystack)), pos, -1)


def top_k_indices(scores: np.ndarray, k: int, n_available: int | None = None) -> np.ndarray:
    """Indices of the k largest scores, ordered by score desc then index asc.

    `n_available` says how many scores are real (the rest are -inf placeholders for excluded
    items). Ties at the k-th place are all considered, so the tie-break is exact.
    """
    n = len(scores)
    k = min(k, n if n_available is None else n_available)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k < n:
        kth_largest = np.partition(scores, n - k)[n - k]
        candidates = np.flatnonzero(scores >= kth_largest)
    else:
        candidates = np.arange(n)
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order[:k]]


# -- building ---------------------------------------------------------------------------------
def _check_consistent(m: RecommenderModel) -> None:
    n_users, n_movies = len(m.user_ids), len(m.movie_ids)
    problems = []
    if m.movie_ids.dtype.kind != "U":
        problems.append(f"movie_ids must be a unicode array, got {m.movie_ids.dtype}")
    if m.user_factors.ndim != 2 or m.item_factors.ndim != 2:
        problems.append("factor matrices must be 2-dimensional")
    elif m.user_factors.shape[1] != m.item_factors.shape[1]:
        problems.append(f"factor counts differ: users {m.user_factors.shape[1]}, movies {m.item_factors.shape[1]}")
    elif m.user_factors.shape[0] != n_users or m.item_factors.shape[0] != n_movies:
        problems.append("factor matrix rows do not match the id arrays")
    if len(m.user_bias) != n_users or len(m.user_has_factors) != n_users or len(m.item_bias) != n_movies:
        problems.append("bias arrays do not match the id arrays")
    if n_users > 1 and not np.all(m.user_ids[1:] > m.user_ids[:-1]):
        problems.append("user_ids must be sorted and unique")
    if n_movies > 1 and not np.all(m.movie_ids[1:] > m.movie_ids[:-1]):
        problems.append("movie_ids must be sorted and unique")
    if len(m.seen_indptr) != n_users + 1 or (n_users and (m.seen_indptr[0] != 0
                                                          or m.seen_indptr[-1] != len(m.seen_indices))):
        problems.append("seen_indptr does not match the users and seen_indices")
    elif n_users and np.any(np.diff(m.seen_indptr) < 0):
        problems.append("seen_indptr must be non-decreasing")
    for name, idx in (("seen_indices", m.seen_indices), ("cold_start", m.cold_start)):
        if len(idx) and (idx.min() < 0 or idx.max() >= n_movies):
            problems.append(f"{name} point outside the movie list")
    if (m.rank_user_factors.ndim != 2 or m.rank_item_factors.ndim != 2
            or m.rank_user_factors.shape != (n_users, m.rank_item_factors.shape[1])
            or len(m.rank_item_factors) != n_movies or len(m.user_ranked) != n_users
            or len(m.rank_item_bias) != n_movies):
        problems.append("ranking arrays do not match the id arrays")
    if not np.isfinite(m.global_mean):
        problems.append("global_mean is not finite")
    for name in ("user_bias", "user_factors", "item_bias", "item_factors", "rank_user_factors",
                 "rank_item_factors", "rank_item_bias"):
        if not _all_finite(getattr(m, name)):
            problems.append(f"{name} holds NaN or infinite values")
    if problems:
        raise ModelIntegrityError("inconsistent model: " + "; ".join(problems))


def _all_finite(a: np.ndarray, chunk: int = 1 << 20) -> bool:
    """np.isfinite(a).all() in chunks: no temporary the size of a (a memory-mapped model's
    factor matrices are checked at load without a second copy's worth of booleans)."""
    flat = a.reshape(-1)
    return all(np.isfinite(flat[i: i + chunk]).all() for i in range(0, flat.size, chunk))


def seen_csr(
    user_ids: np.ndarray, seen_user_ids: np.ndarray, seen_movie_idx: np.ndarray, n_movies: int
) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, indices) of distinct seen movies per user row; pairs of unknown users are dropped."""
    rows = lookup_sorted(user_ids, seen_user_ids)
    ok = (rows >= 0) & (seen_movie_idx >= 0)
    keys = np.unique(rows[ok].astype(np.int64) * n_movies + seen_movie_idx[ok])
    pair_rows, indices = np.divmod(keys, n_movies)
    indptr = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(np.bincount(pair_rows, minlength=len(user_ids)), out=indptr[1:])
    return indptr, indices.astype(np.int32)


def cold_start_ranking(
    movie_idx: np.ndarray, ratings: np.ndarray, n_movies: int, size: int = COLD_START_SIZE
) -> np.ndarray:
    """Popular, well-rated movies first: damped mean rating among movies with enough ratings."""
    counts = np.bincount(movie_idx, minlength=n_movies).astype(np.float64)
    sums = np.bincount(movie_idx, weights=ratings.astype(np.float64), minlength=n_movies)
    mu = sums.sum() / counts.sum() if counts.sum() else (RATING_MIN + RATING_MAX) / 2
    damped = (sums + COLD_START_DAMPING * mu) / (counts + COLD_START_DAMPING)
    enough = counts >= min(COLD_START_MIN_COUNT, counts.max() if n_movies else 0)
    # Sort keys, last is primary: enough ratings first, then damped mean desc, count desc, index asc.
    order = np.lexsort((np.arange(n_movies), -counts, -damped, ~enough))
    return order[:size].astype(np.int32)


def from_arrays(
    *,
    global_mean: float,
    user_ids: np.ndarray,
    user_bias: np.ndarray,
    user_factors: np.ndarray,
    movie_ids: np.ndarray,
    item_bias: np.ndarray,
    item_factors: np.ndarray,
    seen_user_ids: np.ndarray,
    seen_movie_idx: np.ndarray,
    cold_start: np.ndarray,
    watches: tuple[np.ndarray, np.ndarray] | None = None,
    params: dict | None = None,
) -> RecommenderModel:
    """A model from factor arrays (any order of users; movies sorted and unique).

    `seen_*` are (user id, movie index) pairs from the ratings; `watches` are (user id, movie id)
    pairs. Watching users without ratings are added without personal factors, so their
    watched movies are still excluded from their cold-start answers.
    """
    user_ids = np.asarray(user_ids, dtype=np.int64)
    order = np.argsort(user_ids, kind="stable")
    user_ids = user_ids[order]
    user_bias = np.asarray(user_bias, dtype=np.float32)[order]
    user_factors = np.asarray(user_factors, dtype=np.float32)[order]
    has_factors = np.ones(len(user_ids), dtype=bool)
    movie_ids = np.asarray(movie_ids)
    seen_user_ids = np.asarray(seen_user_ids, dtype=np.int64)
    seen_movie_idx = np.asarray(seen_movie_idx, dtype=np.int64)

    if watches is not None:
        watch_users = np.asarray(watches[0], dtype=np.int64)
        watch_movies = np.asarray(watches[1])
        if len(watch_users) != len(watch_movies):
            raise ValueError("watches must be two arrays of equal length: user ids and movie ids")
        if len(watch_users):
            watch_idx = lookup_sorted(movie_ids, watch_movies.astype(str))
            extra_users = np.setdiff1d(watch_users, user_ids)
            if len(extra_users):
                all_users = np.concatenate([user_ids, extra_users])
                order = np.argsort(all_users, kind="stable")
                n_extra, k = len(extra_users), user_factors.shape[1]
                user_ids = all_users[order]
                user_bias = np.concatenate([user_bias, np.zeros(n_extra, np.float32)])[order]
                user_factors = np.concatenate([user_factors, np.zeros((n_extra, k), np.float32)])[order]
                has_factors = np.concatenate([has_factors, np.zeros(n_extra, bool)])[order]
            seen_user_ids = np.concatenate([seen_user_ids, watch_users])
            seen_movie_idx = np.concatenate([seen_movie_idx, watch_idx])

    indptr, indices = seen_csr(user_ids, seen_user_ids, seen_movie_idx, len(movie_ids))
    return RecommenderModel(
        global_mean=global_mean, user_ids=user_ids, user_has_factors=has_factors, user_bias=user_bias,
        user_factors=user_factors, movie_ids=movie_ids, item_bias=item_bias, item_factors=item_factors,
        seen_indptr=indptr, seen_indices=indices, cold_start=cold_start, params=params,
    )


def svd_arrays(algo: Any, train: RatingsTable) -> dict[str, Any]:
    """A fitted surprise SVD's parameters in the table's order: sorted distinct user ids and
    movie ids (`users`, `movies`) with their biases and factors, and the global mean."""
    if len(train) == 0:
        raise ValueError("cannot build a model from an empty training table")
    trainset = algo.trainset
    users, _, movies, _ = train.codes
    try:
        u_inner = np.fromiter((trainset.to_inner_uid(u) for u in users.tolist()), np.int64, len(users))
        i_inner = np.fromiter((trainset.to_inner_iid(m) for m in movies.tolist()), np.int64, len(movies))
    except ValueError as e:
        raise ValueError(f"the SVD was not fitted on this training table: {e}") from None
    return {"global_mean": float(trainset.global_mean), "users": users, "user_bias": algo.bu[u_inner],
            "user_factors": algo.pu[u_inner], "movies": movies, "item_bias": algo.bi[i_inner],
            "item_factors": algo.qi[i_inner]}


def svd_params(algo: Any) -> dict:
    return {
        name: getattr(algo, name)
        for name in ("n_factors", "n_epochs", "lr_pu", "reg_pu", "random_state")
        if isinstance(getattr(algo, name, None), (int, float, str, type(None)))
    }


def build_model(
    algo: Any,
    train: RatingsTable,
    watches: tuple[np.ndarray, np.ndarray] | None = None,
    params: dict | None = None,
) -> RecommenderModel:
    """The SVD-ranked model of a fitted surprise SVD and the table it was fitted on.

    Seen = every (user, movie) of `train`, plus the optional `watches` (user ids, movie ids).
    Works with any trainset whose raw ids are the table's ids (int users, str movies). The
    training job's model (with a ranking model) is `movierec.training.build_models`'.
    """
    svd = svd_arrays(algo, train)
    movie_idx = train.codes.movie_codes
    return from_arrays(
        global_mean=svd["global_mean"],
        user_ids=svd["users"],
        user_bias=svd["user_bias"],
        user_factors=svd["user_factors"],
        movie_ids=svd["movies"],
        item_bias=svd["item_bias"],
        item_factors=svd["item_factors"],
        seen_user_ids=train.user_ids,
        seen_movie_idx=movie_idx,
        cold_start=cold_start_ranking(movie_idx, train.ratings, len(svd["movies"])),
        watches=watches,
        params=svd_params(algo) if params is None else params,
    )
