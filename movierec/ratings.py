"""Ratings as columns: the in-memory table that training, evaluation and the model are built from.

Owns `RatingsTable` (user ids int64, movie ids as a numpy unicode array, ratings float32, one row
per rating, rows in chronological order) and the operations on it that need no model: building it
from parsed `RateEvent`s, keeping the latest rating per (user, movie), and the train/holdout split.

Must not touch: parsing stream lines (that is `movierec.events`), surprise, the model artifact,
the object store, HTTP.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from movierec.events import RATING_MAX, RATING_MIN, RateEvent


class Codes(NamedTuple):
    """The table's ids as positions in its sorted distinct ids (what surprise calls inner ids)."""

    users: np.ndarray  # sorted distinct user ids, int64
    user_codes: np.ndarray  # per row: position in `users`
    movies: np.ndarray  # sorted distinct movie ids, unicode
    movie_codes: np.ndarray  # per row: position in `movies`


def factorize_strings(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, code per value): np.unique's answer, about 3x faster on strings.

    np.unique sorts every row's string; a dict pass then sorting only the distinct ones is
    what keeps the training pipeline's overhead small next to the SGD itself.
    """
    first_seen: dict[str, int] = {}
    codes = np.fromiter(
        (first_seen.setdefault(v, len(first_seen)) for v in values.tolist()), dtype=np.int64, count=len(values)
    )
    distinct = np.array(list(first_seen), dtype=values.dtype) if first_seen else values[:0]
    order = np.argsort(distinct, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return distinct[order], rank[codes]


@dataclass(frozen=True, eq=False)
class RatingsTable:
    """One row per rating. Row order is chronological: a later row is a later rating."""

    user_ids: np.ndarray  # int64
    movie_ids: np.ndarray  # numpy unicode ('<U..')
    ratings: np.ndarray  # float32, RATING_MIN..RATING_MAX

    def __post_init__(self) -> None:
        users = np.asarray(self.user_ids)
        movies = np.asarray(self.movie_ids)
        ratings = np.asarray(self.ratings)
        if not (users.ndim == movies.ndim == ratings.ndim == 1):
            raise ValueError("RatingsTable columns must be one-dimensional")
        if not len(users) == len(movies) == len(ratings):
            raise ValueError(
                f"RatingsTable columns differ in length: users {len(users)}, movies {len(movies)}, "
                f"ratings {len(ratings)}"
            )
        if users.dtype.kind not in "iu" and len(users):
            raise ValueError(f"user ids must be integers, got dtype {users.dtype}")
        if movies.dtype.kind != "U":
            if len(movies) and not all(isinstance(m, str) for m in movies.tolist()):
                raise ValueError("movie ids must be strings")
            movies = movies.astype(str) if len(movies) else np.empty(0, dtype="<U1")
        users = users.astype(np.int64, copy=False)
        ratings = ratings.astype(np.float32, copy=False)
        if len(users) and users.min() < 0:
            raise ValueError(f"user ids must be non-negative, got {int(users.min())}")
        if len(ratings):
            bad = ~((ratings >= RATING_MIN) & (ratings <= RATING_MAX))
            if bad.any():
                raise ValueError(
                    f"{int(bad.sum())} rating(s) outside {RATING_MIN}..{RATING_MAX}, "
                    f"first {ratings[bad][0]!r}"
                )
        object.__setattr__(self, "user_ids", users)
        object.__setattr__(self, "movie_ids", movies)
        object.__setattr__(self, "ratings", ratings)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def empty(cls) -> RatingsTable:
        return cls(np.empty(0, np.int64), np.empty(0, dtype="<U1"), np.empty(0, np.float32))

    @classmethod
    def from_events(cls, events: Iterable[RateEvent]) -> RatingsTable:
        """Rows from rate events, ordered by event time (stable: equal times keep input order)."""
        events = list(events)
        if not events:
            return cls.empty()
        for e in events:
            if not isinstance(e, RateEvent):
                raise TypeError(f"RatingsTable.from_events takes RateEvent, got {type(e).__name__}")
        order = sorted(range(len(events)), key=lambda i: events[i].time)
        ordered = [events[i] for i in order]
        return cls(
            np.fromiter((e.user_id for e in ordered), dtype=np.int64, count=len(ordered)),
            np.array([e.movie_id for e in ordered]),
            np.fromiter((e.rating for e in ordered), dtype=np.float32, count=len(ordered)),
        )

    @classmethod
    def concat(cls, tables: Iterable[RatingsTable]) -> RatingsTable:
        """Tables appended in the given order (so later tables hold the later ratings)."""
        tables = [t for t in tables if len(t)]
        if not tables:
            return cls.empty()
        return cls(
            np.concatenate([t.user_ids for t in tables]),
            np.concatenate([t.movie_ids for t in tables]),
            np.concatenate([t.ratings for t in tables]),
        )

    # -- inspection ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ratings)

    @property
    def n_users(self) -> int:
        return len(np.unique(self.user_ids))

    @property
    def n_movies(self) -> int:
        return len(np.unique(self.movie_ids))

    @property
    def codes(self) -> Codes:
        """Sorted distinct ids and per-row codes, computed once per table."""
        cached = self.__dict__.get("_codes")
        if cached is None:
            users, user_codes = np.unique(self.user_ids, return_inverse=True)
            movies, movie_codes = factorize_strings(self.movie_ids)
            cached = Codes(users, user_codes.astype(np.int64), movies, movie_codes)
            object.__setattr__(self, "_codes", cached)
        return cached

    def take(self, rows: np.ndarray) -> RatingsTable:
        """The rows selected by an index array or boolean mask, in that order."""
        return RatingsTable(self.user_ids[rows], self.movie_ids[rows], self.ratings[rows])

    # -- cleaning and splitting ---------------------------------------------------------------
    def dedupe(self) -> RatingsTable:
        """Keep the latest rating per (user, movie): the last row wins. Surviving rows keep their order."""
        if len(self) == 0:
            return self
        codes = self.codes
        pair_keys = codes.user_codes * len(codes.movies) + codes.movie_codes
        # Scan from the end so np.unique's "first occurrence" is the latest row.
        _, first_from_end = np.unique(pair_keys[::-1], return_index=True)
        keep = np.sort(len(self) - 1 - first_from_end)
        if len(keep) == len(self):
            return self
        deduped = self.take(keep)
        # Dedupe drops no user and no movie entirely, so the distinct ids carry over.
        object.__setattr__(deduped, "_codes", codes._replace(
            user_codes=codes.user_codes[keep], movie_codes=codes.movie_codes[keep]
        ))
        return deduped

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[RatingsTable, RatingsTable]:
        """Per-user random holdout: (train, holdout).

        Each user with at least two ratings gives about `test_fraction` of them (rounded, at most
        all but one) to the holdout, so every holdout user is also a training user. Users with
        one rating stay in train. Deterministic for a given seed and table.
        """
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
        n = len(self)
        if n == 0:
            return self, self
        rng = np.random.default_rng(seed)
        shuffle_key = rng.random(n)
        order = np.lexsort((shuffle_key, self.user_ids))  # grouped by user, random within user
        sorted_users = self.user_ids[order]
        starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
        counts = np.diff(np.r_[starts, n])
        rank_in_user = np.arange(n) - np.repeat(starts, counts)
        n_holdout = np.minimum(np.rint(counts * test_fraction), counts - 1).astype(np.int64)
        holdout_sorted = rank_in_user < np.repeat(n_holdout, counts)
        is_holdout = np.zeros(n, dtype=bool)
        is_holdout[order] = holdout_sorted
        return self.take(~is_holdout), self.take(is_holdout)
