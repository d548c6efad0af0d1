"""A synthetic movie world: users, movies and ratings with a known ground truth.

Owns `SyntheticWorld`: latent preference vectors, user and movie biases, Zipf-like (long-tail)
movie popularity and log-normal user activity, Gaussian noise, integer 1..5 ratings (true score
+ noise, rounded and clipped). It knows the true score of every (user, movie), so the RMSE of a
perfect model (`noise_floor_rmse`) is known and trained models can be judged against it. Movie
ids are title slugs built from the word lists below; user ids are spread-out integers.

What a user watches (and then rates) follows popularity AND preference: user u picks movie m
with weight popularity[m] * exp(preference_strength * (taste(u, m) + movie_bias[m])), without
replacement (`watch_logits`). Every user therefore also watches popular movies, so a fixed
popularity list is a strong top-20 baseline here, as on real rating data, while a model of
what each user watches can beat it. With the defaults (popularity exponent 1, strength 3) a
ranking by the rating model's own scores is about a third as good as popularity by NDCG@20.

Everything is deterministic for a given seed and vectorised (1M ratings in a few seconds).
Stream lines are produced only through `movierec.events` (`WatchEvent`/`RateEvent.to_line()`).

Must not touch: parsing, training, the model artifact, the object store, HTTP.
"""
from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import numpy as np

from movierec.events import RATING_MAX, RATING_MIN, RateEvent, WatchEvent
from movierec.ratings import RatingsTable

_ADJECTIVES = (
    "last", "silent", "broken", "golden", "hidden", "crimson", "quiet", "lonely", "wild", "frozen",
    "burning", "distant", "endless", "secret", "little", "lost", "bright", "dark", "hollow", "electric",
    "savage", "gentle", "restless", "iron", "velvet", "paper", "midnight", "northern", "southern",
    "forgotten", "brave", "sleeping", "wicked", "sweet", "bitter", "shining", "crooked", "empty",
    "final", "first", "second", "narrow", "ancient", "modern", "strange", "lucky", "deadly", "tender",
    "falling", "rising", "wandering", "scarlet", "silver", "emerald", "painted",
)
_NOUNS = (
    "harbor", "river", "mountain", "garden", "city", "kingdom", "shadow", "dream", "road", "winter",
    "summer", "island", "station", "letter", "mirror", "forest", "storm", "bridge", "echo", "stranger",
    "promise", "engine", "horizon", "lantern", "orchard", "circus", "frontier", "empire", "voyage",
    "whisper", "canyon", "tide", "signal", "machine", "castle", "valley", "ocean", "desert", "highway",
    "planet", "memory", "heart", "crown", "comet", "ghost", "mission", "hunter", "dancer", "detective",
    "soldier", "teacher", "painter", "widow", "captain", "brother", "sister", "daughter", "son",
    "witness",
)
_PLACES = (
    "paris", "tokyo", "berlin", "chicago", "bombay", "havana", "cairo", "dublin", "lisbon", "memphis",
    "vienna", "sahara", "brooklyn", "texas", "alaska", "venice", "montana", "casablanca",
)
_YEARS = np.arange(1925, 2024)

# Slug shapes, as (template, weight). {a} adjective, {n}/{m} nouns, {p} place.
_SHAPES = (
    ("the+{a}+{n}", 4),
    ("{a}+{n}", 3),
    ("the+{n}+of+{p}", 2),
    ("{n}+and+{m}", 1),
    ("a+{n}+in+{p}", 1),
    ("{a}+{n}+{m}", 1),
    ("{n}", 1),
)


def _movie_slugs(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` distinct title slugs: mostly `words+year`, some with no year, a few ending in '+'."""
    shapes = [s for s, _ in _SHAPES]
    weights = np.array([w for _, w in _SHAPES], dtype=float)
    weights /= weights.sum()
    seen: set[str] = set()
    slugs: list[str] = []
    max_attempts = 50 * n + 1000
    attempts = 0
    while len(slugs) < n:
        batch = max(64, 2 * (n - len(slugs)))
        attempts += batch
        if attempts > max_attempts:
            raise ValueError(f"cannot make {n} distinct movie slugs from the word lists")
        shape_idx = rng.choice(len(shapes), size=batch, p=weights)
        a = rng.integers(len(_ADJECTIVES), size=batch)
        nn = rng.integers(len(_NOUNS), size=batch)
        m = (nn + 1 + rng.integers(len(_NOUNS) - 1, size=batch)) % len(_NOUNS)  # never the same noun twice
        p = rng.integers(len(_PLACES), size=batch)
        years = rng.choice(_YEARS, size=batch)
        ending = rng.random(batch)  # < 0.85: year; < 0.97: no year; else trailing '+'
        for j in range(batch):
            slug = shapes[shape_idx[j]].format(
                a=_ADJECTIVES[a[j]], n=_NOUNS[nn[j]], m=_NOUNS[m[j]], p=_PLACES[p[j]]
            )
            if ending[j] < 0.85:
                slug = f"{slug}+{years[j]}"
            elif ending[j] >= 0.97:
                slug = f"{slug}+"
            if slug not in seen:
                seen.add(slug)
                slugs.append(slug)
                if len(slugs) == n:
                    break
    return np.array(slugs)


class SyntheticWorld:
    """A ground-truth recommender world.

    true score(u, m) = global_mean + user_bias[u] + movie_bias[m] + user_factors[u] . movie_factors[m]
    rating = clip(round(true score + N(0, noise)), 1, 5)
    """

    def __init__(
        self,
        n_users: int,
        n_movies: int,
        n_factors: int = 10,
        noise: float = 0.5,
        seed: int = 0,
        global_mean: float = 3.4,
        user_bias_std: float = 0.3,
        movie_bias_std: float = 0.4,
        taste_std: float = 0.6,
        popularity_exponent: float = 1.0,
        preference_strength: float = 3.0,
        max_user_id: int = 10_000_000,
    ) -> None:
        if n_users < 1 or n_movies < 1 or n_factors < 1:
            raise ValueError("n_users, n_movies and n_factors must be at least 1")
        if n_users > max_user_id:
            raise ValueError(f"n_users {n_users} exceeds max_user_id {max_user_id}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.seed = seed
        self.noise = float(noise)
        self.preference_strength = float(preference_strength)
        self.global_mean = float(global_mean)
        rng = np.random.default_rng(seed)

        self.user_ids = np.sort(rng.choice(max_user_id, size=n_users, replace=False)).astype(np.int64)
        self.movie_ids = _movie_slugs(n_movies, rng)

        # Factor scale chosen so the taste term's standard deviation is about taste_std.
        scale = np.sqrt(taste_std / np.sqrt(n_factors))
        self.user_factors = rng.normal(0.0, scale, size=(n_users, n_factors))
        self.movie_factors = rng.normal(0.0, scale, size=(n_movies, n_factors))
        self.user_bias = rng.normal(0.0, user_bias_std, size=n_users)

        # Popularity: Zipf-like over a random ranking of movies; popular movies are a bit better.
        popularity_rank = rng.permutation(n_movies) + 1
        pop = popularity_rank.astype(float) ** -popularity_exponent
        self.movie_popularity = pop / pop.sum()
        log_pop = np.log(self.movie_popularity)
        log_pop_z = (log_pop - log_pop.mean()) / (log_pop.std() or 1.0)
        self.movie_bias = rng.normal(0.0, movie_bias_std, size=n_movies) + 0.15 * log_pop_z

        # User activity: log-normal, so a few users rate a lot.
        activity = rng.lognormal(0.0, 1.0, size=n_users)
        self.user_activity = activity / activity.sum()

        self._rng = rng
        self._user_index = {int(u): i for i, u in enumerate(self.user_ids.tolist())}
        self._movie_index = {m: i for i, m in enumerate(self.movie_ids.tolist())}

    # -- ground truth -------------------------------------------------------------------------
    def _user_idx(self, user_ids: np.ndarray) -> np.ndarray:
        user_ids = np.asarray(user_ids, dtype=np.int64)
        idx = np.searchsorted(self.user_ids, user_ids)
        idx = np.minimum(idx, len(self.user_ids) - 1)
        if not np.array_equal(self.user_ids[idx], user_ids):
            raise KeyError("user id not in this synthetic world")
        return idx

    def _movie_idx(self, movie_ids) -> np.ndarray:
        try:
            return np.fromiter((self._movie_index[m] for m in np.asarray(movie_ids).tolist()), dtype=np.int64)
        except KeyError as e:
            raise KeyError(f"movie id {e.args[0]!r} not in this synthetic world") from None

    def _true(self, u: np.ndarray, m: np.ndarray) -> np.ndarray:
        taste = np.einsum("ij,ij->i", self.user_factors[u], self.movie_factors[m])
        return self.global_mean + self.user_bias[u] + self.movie_bias[m] + taste

    def true_score(self, user_id: int, movie_ids) -> np.ndarray:
        """Noise-free scores of one user for the given movies (float64, not clipped)."""
        m = self._movie_idx(np.atleast_1d(movie_ids))
        u = np.full(len(m), self._user_idx(np.array([user_id]))[0])
        return self._true(u, m)

    def true_scores(self, user_ids, movie_ids) -> np.ndarray:
        """Noise-free scores of (user, movie) pairs given as two equal-length arrays."""
        return self._true(self._user_idx(np.asarray(user_ids)), self._movie_idx(movie_ids))

    def noise_floor_rmse(self, table: RatingsTable) -> float:
        """RMSE a perfect model (predicting the clipped true score) gets on the table's ratings."""
        if len(table) == 0:
            raise ValueError("noise_floor_rmse needs a non-empty table")
        best = np.clip(self.true_scores(table.user_ids, table.movie_ids), RATING_MIN, RATING_MAX)
        return float(np.sqrt(np.mean((best - table.ratings.astype(np.float64)) ** 2)))

    # -- sampling -----------------------------------------------------------------------------
    def watch_logits(self, user_idx: np.ndarray) -> np.ndarray:
        """log of the (unnormalised) weight each given user (by index) picks each movie with:
        log popularity + preference_strength * (taste + movie bias); one row per user."""
        taste = np.asarray(self.user_factors[user_idx]) @ self.movie_factors.T
        return np.log(self.movie_popularity) + self.preference_strength * (taste + self.movie_bias)

    def _sample_pairs(self, n: int, chunk_cells: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
        """`n` distinct (user index, movie index) pairs, in random order: how many per user by
        activity, which movies by `watch_logits` without replacement (Gumbel top-k per user)."""
        n_users, n_movies = len(self.user_ids), len(self.movie_ids)
        if n > n_users * n_movies // 2:
            raise ValueError(f"{n} ratings is too dense for {n_users} users x {n_movies} movies")
        rng = self._rng
        if n <= 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        counts = rng.multinomial(n, self.user_activity)
        cap = max(1, n_movies - max(1, n_movies // 5))  # even the heaviest users leave a fifth unseen
        while (over := counts > cap).any():
            spill = int((counts[over] - cap).sum())
            counts[over] = cap
            room = np.where(counts < cap, self.user_activity, 0.0)
            counts += rng.multinomial(spill, room / room.sum())
        by_count = np.argsort(counts, kind="stable")
        rows = max(1, chunk_cells // n_movies)
        users, movies = [], []
        for start in range(0, n_users, rows):
            chunk = by_count[start: start + rows]
            wanted = counts[chunk]
            top = int(wanted.max())
            if top == 0:
                continue
            keys = self.watch_logits(chunk) + rng.gumbel(size=(len(chunk), n_movies))
            picked = np.argpartition(-keys, top - 1, axis=1)[:, :top]
            order = np.argsort(-np.take_along_axis(keys, picked, axis=1), axis=1)
            picked = np.take_along_axis(picked, order, axis=1)
            users.append(np.repeat(chunk, wanted))
            movies.append(picked[np.arange(top) < wanted[:, None]])
        shuffle = rng.permutation(n)
        return np.concatenate(users)[shuffle], np.concatenate(movies)[shuffle]

    def _ratings_for(self, u: np.ndarray, m: np.ndarray) -> np.ndarray:
        noisy = self._true(u, m) + self._rng.normal(0.0, self.noise, size=len(u))
        return np.clip(np.rint(noisy), RATING_MIN, RATING_MAX).astype(np.float32)

    def sample_ratings(self, n: int) -> RatingsTable:
        """`n` ratings of distinct (user, movie) pairs. Each call draws new pairs and noise."""
        u, m = self._sample_pairs(n)
        return RatingsTable(self.user_ids[u], self.movie_ids[m], self._ratings_for(u, m))

    def stream_lines(
        self,
        n_ratings: int,
        watches_per_rating: int = 3,
        start: datetime | None = None,
        watch_only_fraction: float = 0.2,
        mean_gap_seconds: float = 0.5,
    ) -> Iterator[str]:
        """Stream lines as a Kafka topic would carry them, in time order.

        Each rating is preceded by `watches_per_rating` watch lines of the same movie (minutes
        0, 1, ...); in addition about `watch_only_fraction` x n_ratings movies are watched and
        never rated. About half of the times carry fractional seconds, like real streams.
        """
        if watches_per_rating < 0 or watch_only_fraction < 0:
            raise ValueError("watches_per_rating and watch_only_fraction must be >= 0")
        start = start or datetime(2024, 1, 1)
        n_watch_only = round(n_ratings * watch_only_fraction)
        u, m = self._sample_pairs(n_ratings + n_watch_only)
        ratings = self._ratings_for(u, m)
        rated = np.zeros(len(u), dtype=bool)
        rated[: n_ratings] = True
        rng = self._rng
        order = rng.permutation(len(u))
        watch_count = np.where(rated, watches_per_rating, max(1, watches_per_rating))
        lines_per_session = watch_count + rated
        gaps = rng.exponential(mean_gap_seconds, size=int(lines_per_session.sum()))
        whole = rng.random(len(gaps)) < 0.5  # about half of the lines on a whole second
        offsets_us = np.cumsum(gaps) * 1e6
        offsets_us = np.where(whole, np.floor(offsets_us / 1e6) * 1e6, np.floor(offsets_us))
        offsets_us = np.maximum.accumulate(offsets_us).astype(np.int64).tolist()
        user_ids = self.user_ids.tolist()
        movie_ids = self.movie_ids.tolist()
        line = 0
        for s in order.tolist():
            user, movie = user_ids[u[s]], movie_ids[m[s]]
            for minute in range(int(watch_count[s])):
                t = start + timedelta(microseconds=offsets_us[line])
                line += 1
                yield WatchEvent(t, user, movie, minute).to_line()
            if rated[s]:
                t = start + timedelta(microseconds=offsets_us[line])
                line += 1
                yield RateEvent(t, user, movie, int(ratings[s])).to_line()
