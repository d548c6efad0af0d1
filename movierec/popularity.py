"""Popularity from what was ingested so far: the answer a recommend replica gives before any model exists.

Why this and not a 503 that nginx turns into a canned answer: a replica that can only say "no
model" makes every call of the first minutes useless (and the canary's users fall back to a stable
that has nothing either); the stored batches already say which movies are watched and rated well,
so the function itself answers from them, in milliseconds, with `X-Model-Version: popularity`.

The cost is bounded: only the newest `max_batches` committed batches (their ratings and watches
objects) are read, so a replica computes it in milliseconds at warm-up and in at most
`max_batches` object reads when a store is large; the caller refreshes it at most every
POPULARITY_REFRESH_SECONDS, off the request path (movierec.serving).

The ranking is the model's own cold-start ranking (`movierec.model.cold_start_ranking`: damped
mean rating among movies with enough ratings), so an unknown user's answer does not change in kind
when the first model arrives; movies only watched so far follow, by how many users watched them.
As the design asks of every answer, a user never gets a movie they rated or watched in the batches
read.

Owns: `Popularity` (the ranked list, each user's seen movies among it, and what it was computed
from) and `popularity_from_batches`.
Must not touch: HTTP, service clients (the store is passed in), models and training.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from movierec.batches.encoding import decode_columns
from movierec.batches.layout import BatchRef, list_batches
from movierec.model import COLD_START_SIZE, cold_start_ranking
from movierec.store import ObjectNotFoundError, ObjectStore

DEFAULT_MAX_BATCHES = 64


@dataclass(frozen=True)
class Popularity:
    ranked: tuple[str, ...] = ()
    seen: dict[int, frozenset[str]] = field(default_factory=dict)  # only movies of `ranked`
    ratings: int = 0
    watches: int = 0
    batches: int = 0

    def recommend(self, user_id: int, k: int) -> list[str]:
        seen = self.seen.get(user_id)
        if not seen:
            return list(self.ranked[:k])
        return [m for m in self.ranked if m not in seen][:k]

    def describe(self) -> str:
        if not self.ranked:
            return "no ratings or watches ingested yet: answering an empty list"
        return (f"popularity of {self.ratings} ratings and {self.watches} watches from the newest "
                f"{self.batches} batches")


def _newest(refs: list[BatchRef], max_batches: int) -> list[BatchRef]:
    """The newest batches of each partition, taken in turn, `max_batches` in all."""
    by_partition: dict[tuple[str, int], list[BatchRef]] = {}
    for ref in refs:
        by_partition.setdefault((ref.topic, ref.partition), []).append(ref)
    queues = [sorted(batches, key=lambda r: r.last, reverse=True) for batches in by_partition.values()]
    chosen: list[BatchRef] = []
    depth = 0
    while len(chosen) < max_batches and any(depth < len(q) for q in queues):
        chosen.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return chosen[:max_batches]


def _columns(store: ObjectStore, refs: list[BatchRef], kind: str) -> list[dict[str, np.ndarray]]:
    out = []
    for ref in refs:
        try:
            out.append(decode_columns(store.get(ref.key(kind))))
        except ObjectNotFoundError:  # a batch without events of this kind
            continue
    return out


def _movies_users(batches: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not batches:
        return np.empty(0, dtype="<U1"), np.empty(0, dtype=np.int64)
    movies = np.concatenate([b["movie_vocab"][b["movie_code"]] for b in batches])
    users = np.concatenate([b["user_id"] for b in batches]).astype(np.int64)
    return movies, users


def popularity_from_batches(store: ObjectStore, topic: str | None = None,
                            max_batches: int = DEFAULT_MAX_BATCHES, size: int = COLD_START_SIZE) -> Popularity:
    """The popularity list of the newest `max_batches` committed batches (of `topic`, or all)."""
    refs = _newest(list_batches(store, topic), max_batches)
    rated = _columns(store, refs, "ratings")
    watched = _columns(store, refs, "watches")
    rating_movies, rating_users = _movies_users(rated)
    watch_movies, watch_users = _movies_users(watched)
    ratings = (np.concatenate([b["rating"] for b in rated]).astype(np.float64) if rated
               else np.empty(0, dtype=np.float64))

    ranked: list[str] = []
    if len(rating_movies):
        movies, idx = np.unique(rating_movies, return_inverse=True)
        ranked = movies[cold_start_ranking(idx, ratings, len(movies), size)].tolist()
    if len(ranked) < size and len(watch_movies):
        # Watched but not (yet) rated: by how many distinct users watched each.
        pairs = np.unique(np.rec.fromarrays([watch_movies, watch_users]))
        movies, counts = np.unique(pairs["f0"], return_counts=True)
        taken = set(ranked)
        for i in np.lexsort((np.arange(len(movies)), -counts)).tolist():
            if movies[i] not in taken:
                ranked.append(str(movies[i]))
                if len(ranked) >= size:
                    break

    top = set(ranked)
    seen: dict[int, set[str]] = {}
    for movies, users in ((rating_movies, rating_users), (watch_movies, watch_users)):
        keep = np.isin(movies, list(top)) if top else np.zeros(len(movies), dtype=bool)
        for user, movie in zip(users[keep].tolist(), movies[keep].tolist(), strict=True):
            seen.setdefault(user, set()).add(movie)
    return Popularity(tuple(ranked), {u: frozenset(m) for u, m in seen.items()},
                      ratings=len(ratings), watches=len(watch_movies), batches=len(refs))
