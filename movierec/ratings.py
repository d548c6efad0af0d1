"""Ratings as columns: the in-memory table that training, evaluation and the model are built from.

Owns `RatingsTable` (user ids int64, movie ids, ratings float32, one row per rating, rows in
chronological order, and each row's event time when it is known; movie ids either per row as a
numpy unicode array, or, from the batch loaders, as int32 codes into a sorted vocabulary with
per-row strings only built when asked for) and the operations on it that need no model: codes
(sorted distinct ids, computed once and carried by `take`), keeping the latest rating per (user,
movie), and the fast factorisers behind the codes. Also `WatchPairs` (the watch lines of a
snapshot folded into one row per (user, movie): minutes watched and the last time; coded the
same way) and the package's one 64-bit mixer, `splitmix64`.

Tables are built by the batch loaders (from stored ingest batches) and the ratings file of a
snapshot; the holdout split is the training job's (`movierec.trainjob.holdout_split`).

Must not touch: parsing stream lines (that is `movierec.events`), surprise, the model artifact,
the object store, HTTP.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from movierec.events import RATING_MAX, RATING_MIN


class Codes(NamedTuple):
    """The table's ids as positions in its sorted distinct ids (what surprise calls inner ids)."""

    users: np.ndarray  # sorted distinct user ids, int64
    user_codes: np.ndarray  # per row: position in `users`
    movies: np.ndarray  # sorted distinct movie ids, unicode
    movie_codes: np.ndarray  # per row: position in `movies`


def decoded_movie_ids(codes: Codes) -> np.ndarray:
    """Per-row movie ids as numpy unicode, from the codes (a coded table keeps no string column)."""
    if len(codes.movie_codes) == 0:
        return np.empty(0, dtype="<U1")
    return np.asarray(codes.movies[codes.movie_codes], dtype=str)


GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment (2**64 / golden ratio)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer over uint64 arrays (callers add GOLDEN_GAMMA to step the state);
    the one 64-bit mixer of the package (ids' hashes here, the holdout split in trainjob)."""
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
            h = splitmix64(h ^ (words[:, column] + GOLDEN_GAMMA))
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


class RatingsTable:
    """One row per rating. Row order is chronological: a later row is a later rating.

    Movie ids are held either per row (`RatingsTable(user_ids, movie_ids, ratings)`, a numpy
    unicode array or strings) or as codes into a sorted vocabulary (`from_codes`, what the batch
    loaders build: int32 per row and each distinct id once, no per-row strings). `movie_ids`
    gives per-row strings either way, built on demand for a coded table (tests, exports): the
    training path reads `codes` only.
    """

    __slots__ = ("__weakref__", "_codes", "_movie_ids", "ratings", "time_us", "user_ids")

    def __init__(self, user_ids, movie_ids, ratings, time_us=None) -> None:
        users, movies, ratings = np.asarray(user_ids), np.asarray(movie_ids), np.asarray(ratings)
        if not (users.ndim == movies.ndim == ratings.ndim == 1):
            raise ValueError("RatingsTable columns must be one-dimensional")
        if movies.dtype.kind != "U":
            if len(movies) and not all(isinstance(m, str) for m in movies.tolist()):
                raise ValueError("movie ids must be strings")
            movies = movies.astype(str) if len(movies) else np.empty(0, dtype="<U1")
        self._init(users, movies, ratings, time_us, None)

    def _init(self, users: np.ndarray, movies: np.ndarray | None, ratings: np.ndarray, time_us,
              codes: Codes | None) -> None:
        n_movies = len(movies) if movies is not None else len(codes.movie_codes)
        if time_us is not None:
            time_us = np.asarray(time_us, dtype=np.int64)
            if time_us.shape != users.shape:
                raise ValueError(f"RatingsTable time_us has {time_us.shape} rows, user ids {users.shape}")
        if not len(users) == n_movies == len(ratings):
            raise ValueError(
                f"RatingsTable columns differ in length: users {len(users)}, movies {n_movies}, "
                f"ratings {len(ratings)}"
            )
        if users.dtype.kind not in "iu" and len(users):
            raise ValueError(f"user ids must be integers, got dtype {users.dtype}")
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
        self.user_ids, self._movie_ids, self.ratings, self.time_us, self._codes = users, movies, ratings, time_us, codes

    def __setattr__(self, name: str, value) -> None:
        if name in ("user_ids", "ratings", "time_us") and hasattr(self, name):
            raise AttributeError(f"RatingsTable.{name} is read-only")
        object.__setattr__(self, name, value)

    @classmethod
    def from_codes(cls, user_ids: np.ndarray, movies: np.ndarray, movie_codes: np.ndarray, ratings: np.ndarray,
                   time_us: np.ndarray | None = None) -> RatingsTable:
        """A table whose movies are `movies[movie_codes]`: `movies` sorted and distinct (an
        object array of str, or unicode), every entry used by some row."""
        table = cls.__new__(cls)
        users = np.asarray(user_ids)
        user_values, user_codes = factorize_ints(users) if len(users) else (np.empty(0, np.int64), np.empty(0, np.int64))
        codes = Codes(user_values, user_codes, np.asarray(movies), np.asarray(movie_codes))
        table._init(users, None, np.asarray(ratings), time_us, codes)
        return table

    @property
    def movie_ids(self) -> np.ndarray:
        """Per-row movie ids (numpy unicode); built on demand for a coded table."""
        return self._movie_ids if self._movie_ids is not None else decoded_movie_ids(self._codes)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def empty(cls) -> RatingsTable:
        return cls(np.empty(0, np.int64), np.empty(0, dtype="<U1"), np.empty(0, np.float32))

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
        if self._codes is None:
            users, user_codes = factorize_ints(self.user_ids)
            movies, movie_codes = factorize_strings(self._movie_ids)
            self._codes = Codes(users, user_codes, movies, movie_codes)
        return self._codes

    def take(self, rows: np.ndarray) -> RatingsTable:
        """The rows selected by an index array or boolean mask, in that order.

        If this table's codes are known, the new table's are derived from them (integer work)
        and a coded table stays coded (no per-row strings).
        """
        times = None if self.time_us is None else self.time_us[rows]
        codes = self._codes
        if codes is None:
            return RatingsTable(self.user_ids[rows], self._movie_ids[rows], self.ratings[rows], times)
        users, user_codes = _compact(codes.users, codes.user_codes[rows])
        movies, movie_codes = _compact(codes.movies, codes.movie_codes[rows])
        taken = RatingsTable.__new__(RatingsTable)
        per_row = None if self._movie_ids is None else self._movie_ids[rows]
        taken._init(self.user_ids[rows], per_row, self.ratings[rows], times, Codes(users, user_codes, movies, movie_codes))
        return taken

    # -- cleaning ---------------------------------------------------------------
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


class WatchPairs:
    """One row per (user, movie) the user watched: how many watch lines (minutes) and the time
    of the last one. Built from a snapshot's watch lines by `from_lines` (per-line strings) or
    `from_coded_lines` (codes into a vocabulary, what the batch loaders give: the pairs stay
    coded and `movie_ids` is built on demand, as `RatingsTable`'s)."""

    __slots__ = ("_codes", "_movie_ids", "last_time_us", "minutes", "user_ids")

    def __init__(self, user_ids, movie_ids, minutes, last_time_us) -> None:
        movies = np.asarray(movie_ids)
        self._init(user_ids, movies if movies.dtype.kind == "U" else movies.astype(str), minutes, last_time_us, None)

    def _init(self, user_ids, movies, minutes, last_time_us, codes: Codes | None) -> None:
        n = len(user_ids)
        n_movies = len(movies) if movies is not None else len(codes.movie_codes)
        if not n_movies == len(minutes) == len(last_time_us) == n:
            raise ValueError("WatchPairs columns differ in length")
        self.user_ids = np.asarray(user_ids, dtype=np.int64)
        self._movie_ids = movies
        self.minutes = np.asarray(minutes, dtype=np.int32)
        self.last_time_us = np.asarray(last_time_us, dtype=np.int64)
        self._codes = codes

    @property
    def movie_ids(self) -> np.ndarray:
        """Per-pair movie ids (numpy unicode); built on demand for coded pairs."""
        return self._movie_ids if self._movie_ids is not None else decoded_movie_ids(self._codes)

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def empty(cls) -> WatchPairs:
        return cls(np.empty(0, np.int64), np.empty(0, "<U1"), np.empty(0, np.int32), np.empty(0, np.int64))

    @classmethod
    def from_lines(cls, time_us: np.ndarray, user_ids: np.ndarray, movie_ids: np.ndarray) -> WatchPairs:
        """Fold watch lines (any order) into pairs, sorted by user id then movie id."""
        if len(user_ids) == 0:
            return cls.empty()
        movies, movie_codes = factorize_strings(np.asarray(movie_ids))
        return cls.from_coded_lines(time_us, user_ids, movies, movie_codes)

    @classmethod
    def from_coded_lines(cls, time_us: np.ndarray, user_ids: np.ndarray, movies: np.ndarray,
                         movie_codes: np.ndarray) -> WatchPairs:
        """As `from_lines`, of lines whose movies are `movies[movie_codes]` (`movies` sorted and
        distinct, unicode or an object array of str): the pairs carry codes, not strings."""
        if len(user_ids) == 0:
            return cls.empty()
        users, user_codes = factorize_ints(np.asarray(user_ids, dtype=np.int64))
        keys = user_codes * len(movies) + np.asarray(movie_codes, dtype=np.int64)
        pair_keys, inverse, minutes = np.unique(keys, return_inverse=True, return_counts=True)
        del keys
        last = np.full(len(pair_keys), np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, inverse.reshape(-1), np.asarray(time_us, dtype=np.int64))
        u, m = np.divmod(pair_keys, len(movies))
        pairs = cls.__new__(cls)
        codes = Codes(*_compact(users, u), *_compact(np.asarray(movies), m))
        pairs._init(users[u], None, minutes.astype(np.int32), last, codes)
        return pairs

    @property
    def codes(self) -> Codes:
        """Sorted distinct ids and per-row codes, computed once (as `RatingsTable.codes`)."""
        if self._codes is None:
            self._codes = Codes(*factorize_ints(self.user_ids), *factorize_strings(self._movie_ids))
        return self._codes

    def take(self, rows: np.ndarray) -> WatchPairs:
        codes = self._codes
        if codes is None:
            return WatchPairs(self.user_ids[rows], self._movie_ids[rows], self.minutes[rows], self.last_time_us[rows])
        taken = WatchPairs.__new__(WatchPairs)
        per_row = None if self._movie_ids is None else self._movie_ids[rows]
        taken._init(self.user_ids[rows], per_row, self.minutes[rows], self.last_time_us[rows],
                    Codes(*_compact(codes.users, codes.user_codes[rows]), *_compact(codes.movies, codes.movie_codes[rows])))
        return taken
