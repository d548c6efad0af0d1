"""Online quality per variant (watch-through): of the movies recommended, how many did the user
then start watching.

A recommended movie counts as watched when the user's FIRST watch of it falls within `within_s`
after the recommendation: a movie the user was already watching (or had watched) before it was
recommended earns nothing, so a model that recommends what users are in the middle of (a "seen"
movie, which the contract forbids anyway) cannot buy watch-through with it. Every recommended
slot of every successful answer is a trial; failed calls recommend nothing. The counts are kept
per user too (`QualityCounts`' per-user sums): one user's recommendations are correlated (a user
who watches a lot watches many of them), so checks.py compares the variants with the user as the
unit, not the movie.
Which variant a user saw is taken from the user id (movierec.canary's rule): a canary user's call
that nginx answered from `recommend` instead (the canary failed or was late: gateway/README.md)
counts as the canary's, with stable's list. The stream's line (logged by the caller) does not say
which function answered; nginx's access log does (`variant=canary function=recommend`). Those
calls are the canary's 5xx or slow calls in the gateway's figures, which the other checks judge.

Owns `QualityCounts`, `online_quality` (from parsed stream events, in any order) and
`stored_quality_source` (the same over the stored recommendation and watch batches, as the
`quality_source(start, end)` the controller's step takes when RELEASE_ONLINE_QUALITY is on; it
reads only the batches whose manifests' `time_us` overlap the analysed span and HISTORY_S before).
Which variant a user saw is movierec.canary's rule, re-applied to the stream.

Must not touch: the statistical test and how much evidence is enough (checks.py,
RELEASE_MIN_RECOMMENDED), how batches are written or laid out (movierec.batches.loaders reads
them).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from movierec.canary import CANARY, STABLE, variant_for_user
from movierec.events import RecommendationEvent, WatchEvent
from movierec.store import ObjectStore


@dataclass(frozen=True)
class QualityCounts:
    """Online quality of one variant: recommended movies, and how many of them got watched; and,
    per USER (the test's unit, checks.py), the sufficient statistics of each user's (watched x_u,
    recommended n_u): how many users, sum x_u^2, sum x_u n_u, sum n_u^2.

    Counts without the per-user figures (users 0: written before they were kept, or made by
    hand) read as one unit per recommended movie (`per_user`), the binomial view."""

    recommended: int = 0
    watched: int = 0
    users: int = 0
    watched_sq: int = 0  # sum over users of watched^2
    watched_rec: int = 0  # sum over users of watched x recommended
    recommended_sq: int = 0  # sum over users of recommended^2

    @property
    def share(self) -> float | None:
        return None if self.recommended == 0 else self.watched / self.recommended

    def per_user(self) -> tuple[int, int, int, int]:
        """(units, sum x^2, sum x n, sum n^2): the users', or one unit per recommended movie."""
        if self.users:
            return self.users, self.watched_sq, self.watched_rec, self.recommended_sq
        return self.recommended, self.watched, self.watched, self.recommended

    @classmethod
    def of_users(cls, per_user: Iterable[tuple[int, int]]) -> QualityCounts:
        """From each user's (recommended, watched)."""
        n = x = users = x2 = xn = n2 = 0
        for rec, got in per_user:
            users, n, x = users + 1, n + rec, x + got
            x2, xn, n2 = x2 + got * got, xn + got * rec, n2 + rec * rec
        return cls(n, x, users, x2, xn, n2)


# How far before the analysed span watches are looked for, to tell a movie being watched (or
# watched lately) from one started after it was recommended.
HISTORY_S = 24 * 3600.0
QualitySource = Callable[[datetime, datetime], dict[str, QualityCounts]]


def online_quality(
    events: Iterable[Any], canary_percent: int, within_s: float = 3600.0
) -> dict[str, QualityCounts]:
    """Per variant, how many recommended movies the user started watching (first watch) within
    `within_s` after the recommendation. Events may come in any order (batches are read per
    partition)."""
    recommendations: list[RecommendationEvent] = []
    first_watch: dict[tuple[int, str], datetime] = {}
    for event in events:
        if isinstance(event, RecommendationEvent) and event.status == 200:
            recommendations.append(event)
        elif isinstance(event, WatchEvent):
            key = (event.user_id, event.movie_id)
            known = first_watch.get(key)
            if known is None or event.time < known:
                first_watch[key] = event.time
    counts: dict[str, dict[int, list[int]]] = {CANARY: {}, STABLE: {}}
    for rec in recommendations:
        user = counts[variant_for_user(rec.user_id, canary_percent)].setdefault(rec.user_id, [0, 0])
        for movie in rec.movie_ids:
            user[0] += 1
            first = first_watch.get((rec.user_id, movie))
            if first is not None and 0 <= (first - rec.time).total_seconds() <= within_s:
                user[1] += 1
    return {v: QualityCounts.of_users((n, x) for n, x in users.values()) for v, users in counts.items()}


def stored_quality_source(store: ObjectStore, canary_percent: int, within_s: float = 3600.0,
                          history_s: float = HISTORY_S) -> QualitySource:
    """A `quality_source(start, end)` over the stored recommendation and watch batches (the batch
    loaders). Stream times are naive UTC; recommendations in [start, end] count, and the first
    watches of their users up to `within_s` after them. Earlier watches tell a movie already being
    watched from one started after the recommendation; they are looked for `history_s` back from
    `start` (a movie last watched longer ago counts as started anew).

    Only the batches whose manifests say they hold events in that span are read (recommendations
    in [start, end], watches in [start - history_s, end + within_s]): a release step reads the
    time it analyses, not the whole store. Batches written before manifests carried their times
    are read whole, as before."""

    def source(start: datetime, end: datetime) -> dict[str, QualityCounts]:
        import numpy as np  # only this optional analysis needs numpy and the batch loaders

        from movierec.batches.loaders import iter_recommendations, load_watches
        from movierec.ratings import factorize_strings

        lo, hi = (t.astimezone(UTC).replace(tzinfo=None) for t in (start, end))
        epoch = datetime(1970, 1, 1)
        lo_us, end_us = (int((t - epoch).total_seconds() * 1e6) for t in (lo, hi))
        hi_us, from_us = end_us + int(within_s * 1e6), lo_us - int(history_s * 1e6)
        recs = []
        for r in iter_recommendations(store, window=(lo_us, end_us)):
            t = datetime.fromisoformat(r["time"])
            if r["status"] == 200 and lo <= t <= hi:
                recs.append(RecommendationEvent(t, r["user_id"], r["server"], 200, tuple(r["movie_ids"]), None,
                                                r["latency_ms"]))
        if not recs:
            return online_quality((), canary_percent, within_s)
        watches = load_watches(store, window=(from_us, hi_us))  # in event-time order
        users = np.array(sorted({r.user_id for r in recs}), dtype=np.int64)
        in_span = (watches.time_us >= from_us) & (watches.time_us <= hi_us)
        keep = np.flatnonzero(in_span & np.isin(watches.user_ids, users))
        # The first watch of each (user, movie); one first watched before `start` never counts.
        _, user_code = np.unique(watches.user_ids[keep], return_inverse=True)
        # Codes of the whole column, then of the kept rows: no copy of the (fixed-width) id column.
        movies, movie_code_all = factorize_strings(watches.movie_ids)
        movie_code = movie_code_all[keep]
        _, first = np.unique(user_code.astype(np.int64) * max(len(movies), 1) + movie_code, return_index=True)
        first = keep[first]
        first = first[watches.time_us[first] >= lo_us]
        events: list[Any] = list(recs)
        for t_us, user, movie in zip(watches.time_us[first].tolist(), watches.user_ids[first].tolist(),
                                     watches.movie_ids[first].tolist()):
            events.append(WatchEvent(epoch + timedelta(microseconds=t_us), user, movie, 0))
        return online_quality(events, canary_percent, within_s)

    return source
