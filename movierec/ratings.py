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


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _as_words(values: np.ndarray) -> np.ndarray:
    """Each string of a numpy unicode array as a row of uint64 words (equal strings, equal rows).

    Latin-1 text (every code point < 256, what movie slugs are) packs one byte per character,
    so a row is a few words; anything else keeps the 4-byte code points.
    """
    n, width = len(values), values.dtype.itemsize // 4
    points = np.ascontiguousarray(values).view(np.uint32).reshape(n, width)
    chars = points.astype(np.uint8) if width and points.max() < 256 else points.view(np.uint8).reshape(n, -1)
    n_words = -(-chars.shape[1] // 8)
    packed = np.zeros((n, 8 * n_words), dtype=np.uint8)
    packed[:, : chars.shape[1]] = chars
    return packed.view(np.uint64)


def factorize_strings(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, code per value): np.unique's answer, several times faster.

    np.unique sorts every row's string. Here each string is hashed as a few 64-bit words, the
    hashes are factorised (an integer sort), every row is checked against its group's first
    string (so a hash collision can never merge two ids: it falls back to a dict pass), and
    only the distinct strings are sorted.
    """
    values = np.asarray(values)
    if len(values) == 0:
        return values[:0], np.empty(0, dtype=np.int64)
    words = _as_words(values)
    h = np.zeros(len(values), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in range(words.shape[1]):
            h = _splitmix64(h ^ (words[:, column] + np.uint64(0x9E3779B97F4A7C15)))
    _, first, codes = np.unique(h, return_index=True, return_inverse=True)
    if np.array_equal(words, words[first][codes]):
        distinct = values[first]
    else:  # a 64-bit collision: astronomically rare, but never wrong
        seen: dict[str, int] = {}
        codes = np.fromiter((seen.setdefault(v, len(seen)) for v in values.tolist()), np.int64, len(values))
        distinct = np.array(list(seen), dtype=values.dtype)
    order = np.argsort(distinct, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return distinct[order], rank[codes.reshape(-1)]


def factorize_ints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, code per value) of non-negative integers, as np.unique's answer.

    Ids spread over a range not much larger than the row count are factorised through a
    presence table (linear, no sort); others by np.unique.
    """
    values = np.asarray(values, dtype=np.int64)
    top = int(values.max()) if len(values) else 0
    if len(values) == 0 or top > 16 * len(values) + (1 << 20):
        distinct, codes = np.unique(values, return_inverse=True)
        return distinct, codes.reshape(-1).astype(np.int64, copy=False)
    present = np.zeros(top + 1, dtype=bool)
    present[values] = True
    distinct = np.flatnonzero(present)
    code_of = np.cumsum(present, dtype=np.int64 if len(distinct) >= 1 << 31 else np.int32) - 1
    return distinct.astype(np.int64, copy=False), code_of[values].astype(np.int64)


def _has_repeats(keys: np.ndarray, n_keys: int) -> bool:
    """Whether any of the non-negative `keys` (all < n_keys) occurs twice."""
    if n_keys <= 16 * len(keys) + (1 << 20):
        present = np.zeros(n_keys, dtype=bool)
        present[keys] = True
        return int(np.count_nonzero(present)) < len(keys)
    ordered = np.sort(keys)
    return bool((ordered[1:] == ordered[:-1]).any())


def _compact(distinct: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct, codes) restricted to the distinct values `codes` still uses, renumbered."""
    used = np.bincount(codes, minlength=len(distinct)) > 0
    if used.all():
        return distinct, codes
    renumber = np.cumsum(used) - 1
    return distinct[used], renumber[codes]


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
    def from_movie_codes(cls, user_ids: np.ndarray, movie_vocab: np.ndarray, movie_codes: np.ndarray,
                         ratings: np.ndarray) -> RatingsTable:
        """A table whose movie column comes dictionary-encoded (ids `movie_vocab[movie_codes]`,
        as ingest batches store it): its codes are derived from the small vocabulary instead of
        factorising a million strings again."""
        movie_vocab, movie_codes = np.asarray(movie_vocab), np.asarray(movie_codes, dtype=np.int64)
        if len(movie_codes) and (movie_codes.min() < 0 or movie_codes.max() >= len(movie_vocab)):
            raise ValueError("movie codes point outside the movie vocabulary")
        table = cls(user_ids, movie_vocab[movie_codes], ratings)
        if len(table):
            vocab, vocab_codes = np.unique(movie_vocab.astype(table.movie_ids.dtype), return_inverse=True)
            movies, codes = _compact(vocab, vocab_codes.reshape(-1)[movie_codes])
            users, user_codes = factorize_ints(table.user_ids)
            object.__setattr__(table, "_codes", Codes(users, user_codes, movies, codes))
        return table

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
        return len(self.codes.users)

    @property
    def n_movies(self) -> int:
        return len(self.codes.movies)

    @property
    def codes(self) -> Codes:
        """Sorted distinct ids and per-row codes, computed once per table."""
        cached = self.__dict__.get("_codes")
        if cached is None:
            users, user_codes = factorize_ints(self.user_ids)
            movies, movie_codes = factorize_strings(self.movie_ids)
            cached = Codes(users, user_codes, movies, movie_codes)
            object.__setattr__(self, "_codes", cached)
        return cached

    def take(self, rows: np.ndarray) -> RatingsTable:
        """The rows selected by an index array or boolean mask, in that order.

        If this table's codes are known, the new table's are derived from them (integer work)
        instead of factorising its movie-id strings again.
        """
        taken = RatingsTable(self.user_ids[rows], self.movie_ids[rows], self.ratings[rows])
        codes = self.__dict__.get("_codes")
        if codes is not None:
            users, user_codes = _compact(codes.users, codes.user_codes[rows])
            movies, movie_codes = _compact(codes.movies, codes.movie_codes[rows])
            object.__setattr__(taken, "_codes", Codes(users, user_codes, movies, movie_codes))
        return taken

    # -- cleaning and splitting ---------------------------------------------------------------
    def dedupe(self) -> RatingsTable:
        """Keep the latest rating per (user, movie): the last row wins. Surviving rows keep their order."""
        if len(self) == 0:
            return self
        codes = self.codes
        pair_keys = codes.user_codes * len(codes.movies) + codes.movie_codes
        if not _has_repeats(pair_keys, len(codes.users) * len(codes.movies)):  # the usual case
            return self
        # Scan from the end so np.unique's "first occurrence" is the latest row.
        _, first_from_end = np.unique(pair_keys[::-1], return_index=True)
        return self.take(np.sort(len(self) - 1 - first_from_end))  # take() carries the codes

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
