"""The simulated population, pure and seeded: what synthetic users do, planned but never done.

Owns: `Simulation`, the behaviour of a population drawn from `movierec.synthetic.SyntheticWorld`:
what the next session is (a recommendation request, or an organic watch/rate session), how a user
reacts to the movies recommended to them (watch probability rising with their TRUE score, ratings =
true score + noise), new users now and then (cold start), a small share of realistic garbage
(`GARBAGE_KINDS`, always lines `parse_line` rejects) and the backfill history. It returns planned
actions (`Planned`: an event, a garbage line or a `RecommendationCall`) and never does I/O, so it is
tested without sockets. `Behaviour` holds the knobs; `utc_now` is the stream's clock.

The population: `--users` users of the world, of which `--new-user-share` are held back and appear
over time as users the stream has never seen (they still have true preferences). Watching a
recommended movie: p = max_watch x sigmoid((true score - center) / spread) x attention**rank, so a model
that ranks what users truly like first earns more watches (the release controller's online quality).

Every stream line comes from `movierec.events` formatters (`...Event.to_line()`), except the
deliberate garbage.

Must not touch: I/O of any kind (sockets, Kafka, files, clocks other than the `t` it is given),
parsing rules (movierec.events).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from movierec.events import (
    RATING_MAX,
    RATING_MIN,
    RateEvent,
    Rejection,
    WatchEvent,
    format_time,
    parse_line,
)
from movierec.synthetic import SyntheticWorld


def utc_now() -> datetime:
    """Stream times are naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True, slots=True)
class RecommendationCall:
    """Ask the service for recommendations for `user_id` (the driver does the HTTP)."""

    user_id: int


@dataclass(frozen=True, slots=True)
class Planned:
    """One action, due `delay_s` after the moment it was planned: an event to produce (its time is
    re-stamped when it is actually produced), a garbage line, or a recommendation call."""

    delay_s: float
    item: WatchEvent | RateEvent | RecommendationCall | str


@dataclass(frozen=True)
class Behaviour:
    """How simulated users behave. Defaults give ~4-5 lines per session."""

    request_share: float = 0.3  # sessions that start by asking for recommendations
    new_user_share: float = 0.05  # share of the population held back, appearing later as new users
    new_user_rate: float = 0.02  # chance that a session belongs to a not-yet-seen user (while any remain)
    garbage_share: float = 0.01  # share of sessions that are one garbage line
    max_watch: float = 0.6  # watch probability of a perfect match at rank 0
    center: float = 4.0  # true score at which watch probability is half of max_watch
    spread: float = 0.35
    attention: float = 0.93  # per-rank decay: users look less at the bottom of the list
    rate_share: float = 0.5  # watched movies that also get rated
    max_minutes: int = 6  # watch lines (minutes) per watched movie, compressed
    minute_gap_s: float = 0.3  # mean gap between a user's successive lines
    think_s: float = 1.0  # mean delay between seeing recommendations and starting to watch

    def __post_init__(self) -> None:
        for name in ("request_share", "new_user_share", "new_user_rate", "garbage_share", "max_watch",
                     "attention", "rate_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name.replace('_', '-')} must be between 0 and 1, got {value}")
        if self.spread <= 0 or self.max_minutes < 1 or self.minute_gap_s < 0 or self.think_s < 0:
            raise ValueError("spread must be > 0, max_minutes >= 1, gaps >= 0")

    def watch_probability(self, scores: np.ndarray) -> np.ndarray:
        """Probability of watching each recommended movie, given true scores in rank order."""
        scores = np.asarray(scores, dtype=np.float64)
        ranks = np.arange(len(scores))
        liking = 1.0 / (1.0 + np.exp(-(scores - self.center) / self.spread))
        return self.max_watch * liking * self.attention ** ranks


GARBAGE_KINDS = ("truncated", "bad_user_id", "rating_out_of_range", "bad_movie_id", "bad_time",
                 "missing_field", "bad_minute")


class Simulation:
    """The seeded population and its behaviour. Pure: it plans, the driver acts."""

    def __init__(self, world: SyntheticWorld, behaviour: Behaviour | None = None, seed: int = 0) -> None:
        self.world = world
        self.behaviour = behaviour or Behaviour()
        self.rng = np.random.default_rng(seed)
        n = len(world.user_ids)
        held = min(round(n * self.behaviour.new_user_share), n - 1)
        order = self.rng.permutation(n)
        self._new_pool: list[int] = order[:held].tolist()  # world indices of users not seen yet
        self._active = np.sort(order[held:])
        self._refresh_activity()
        self._seen: dict[int, set[str]] = {}  # user id -> movies watched or rated (no re-watching)
        self._movie_set = set(world.movie_ids.tolist())

    def _refresh_activity(self) -> None:
        weights = self.world.user_activity[self._active]
        self._activity = weights / weights.sum()

    @property
    def known_user_ids(self) -> list[int]:
        """Users that may appear in the stream now (new users join this list when they appear)."""
        return self.world.user_ids[self._active].tolist()

    def most_active_user_ids(self, n: int = 3) -> list[int]:
        """The `n` established users who act most often: the backfill and the stream are sure to carry
        them, so a model trained on either knows them (`make up` prints them as examples)."""
        top = np.argsort(-self._activity, kind="stable")[:n]
        return self.world.user_ids[self._active[top]].tolist()

    @property
    def unseen_user_ids(self) -> list[int]:
        return self.world.user_ids[self._new_pool].tolist()

    @property
    def unseen_count(self) -> int:
        return len(self._new_pool)

    def _pick_user(self) -> tuple[int, bool]:
        b = self.behaviour
        if self._new_pool and self.rng.random() < b.new_user_rate:
            idx = self._new_pool.pop()
            self._active = np.sort(np.append(self._active, idx))
            self._refresh_activity()
            return int(self.world.user_ids[idx]), True
        idx = self._active[self.rng.choice(len(self._active), p=self._activity)]
        return int(self.world.user_ids[idx]), False

    def next_session(self, t: datetime) -> list[Planned]:
        """The next thing that happens in the world, planned from time `t`."""
        b = self.behaviour
        if self.rng.random() < b.garbage_share:
            return [Planned(0.0, self.garbage_line(t))]
        user, _new = self._pick_user()
        if self.rng.random() < b.request_share:
            return [Planned(0.0, RecommendationCall(user))]
        return self.browse(user, t)

    def browse(self, user: int, t: datetime) -> list[Planned]:
        """An organic session: the user finds a popular movie on their own, watches, maybe rates."""
        seen = self._seen.setdefault(user, set())
        for _ in range(5):
            movie = str(self.world.movie_ids[self.rng.choice(len(self.world.movie_ids),
                                                             p=self.world.movie_popularity)])
            if movie not in seen:
                break
        score = float(self.world.true_score(user, [movie])[0])
        return self._watch(user, movie, score, t, 0.0)

    def on_recommendations(self, user: int, movie_ids: Iterable[str], t: datetime) -> list[Planned]:
        """What `user` does after being shown `movie_ids` (best first) at time `t`: watch some of
        them according to their true scores, and rate some of those. Movies the world does not
        know (or the user has already seen) are not watched."""
        b = self.behaviour
        movies = list(movie_ids)
        seen = self._seen.setdefault(user, set())
        if not self._is_world_user(user):
            return []
        known = [m in self._movie_set and m not in seen for m in movies]
        scores = np.full(len(movies), -np.inf)
        if any(known):
            picked = [m for m, k in zip(movies, known) if k]
            scores[np.array(known)] = self.world.true_score(user, picked)
        p = b.watch_probability(scores)
        watch = self.rng.random(len(movies)) < p
        plans: list[Planned] = []
        delay = 0.0
        for movie, score, w in zip(movies, scores.tolist(), watch.tolist()):
            if not w:
                continue
            delay += float(self.rng.exponential(b.think_s))
            session = self._watch(user, movie, score, t, delay)
            plans.extend(session)
            delay = session[-1].delay_s
        return plans

    def _is_world_user(self, user: int) -> bool:
        i = int(np.searchsorted(self.world.user_ids, user))
        return i < len(self.world.user_ids) and int(self.world.user_ids[i]) == user

    def _watch(self, user: int, movie: str, score: float, t: datetime, start_s: float) -> list[Planned]:
        b = self.behaviour
        self._seen.setdefault(user, set()).add(movie)
        # Liked movies are watched longer: minutes ~ 1 + binomial scaled by how much they like it.
        liking = 1.0 / (1.0 + math.exp(-(score - b.center) / b.spread))
        minutes = 1 + int(self.rng.binomial(b.max_minutes - 1, 0.3 + 0.6 * liking))
        plans: list[Planned] = []
        delay = start_s
        for minute in range(minutes):
            plans.append(Planned(delay, WatchEvent(t + timedelta(seconds=delay), user, movie, minute)))
            delay += float(self.rng.exponential(b.minute_gap_s))
        if self.rng.random() < b.rate_share:
            rating = int(np.clip(np.rint(score + self.rng.normal(0.0, self.world.noise)), RATING_MIN, RATING_MAX))
            plans.append(Planned(delay, RateEvent(t + timedelta(seconds=delay), user, movie, rating)))
        return plans

    def backfill(self, n_ratings: int, end: datetime, span: timedelta = timedelta(days=7)) -> Iterator[str]:
        """`n_ratings` organic sessions (each watched, then rated) spread over `span` before `end`,
        in time order, as stream lines: history for a first model to train on."""
        if n_ratings <= 0:
            return
        offsets = np.sort(self.rng.uniform(0.0, span.total_seconds(), size=n_ratings))
        start = end - span
        b = self.behaviour
        for offset in offsets.tolist():
            user, _ = self._pick_user_established()
            t = start + timedelta(seconds=offset)
            plans = self.browse(user, t)
            if not any(isinstance(p.item, RateEvent) for p in plans):
                movie = plans[0].item.movie_id
                score = float(self.world.true_score(user, [movie])[0])
                rating = int(np.clip(np.rint(score + self.rng.normal(0.0, self.world.noise)), RATING_MIN,
                                     RATING_MAX))
                plans.append(Planned(plans[-1].delay_s + b.minute_gap_s,
                                     RateEvent(t + timedelta(seconds=plans[-1].delay_s + b.minute_gap_s),
                                               user, movie, rating)))
            for p in plans:
                yield p.item.to_line()

    def _pick_user_established(self) -> tuple[int, bool]:
        idx = self._active[self.rng.choice(len(self._active), p=self._activity)]
        return int(self.world.user_ids[idx]), False

    def garbage_line(self, t: datetime, kind: str | None = None) -> str:
        """A line like the garbage real streams carry; always one `parse_line` rejects."""
        for _ in range(20):
            line = self._garbage_candidate(t, kind or GARBAGE_KINDS[self.rng.integers(len(GARBAGE_KINDS))])
            if isinstance(parse_line(line), Rejection):
                return line
        return f"{format_time(t)},"  # certainly truncated

    def _garbage_candidate(self, t: datetime, kind: str) -> str:
        rng = self.rng
        user = int(self.world.user_ids[rng.integers(len(self.world.user_ids))])
        movie = str(self.world.movie_ids[rng.integers(len(self.world.movie_ids))])
        good = (WatchEvent(t, user, movie, int(rng.integers(120))).to_line() if rng.random() < 0.5
                else RateEvent(t, user, movie, int(rng.integers(1, 6))).to_line())
        time_text, _, rest = good.partition(",")
        if kind == "truncated":
            return good[: int(rng.integers(len(time_text) + 1, len(good) - 1))]
        if kind == "bad_user_id":
            bad = ("", "-1", f"{user}x", f"u{user}", "null", f"{user}.0", "9" * 25)[rng.integers(7)]
            return f"{time_text},{bad},{rest.split(',', 1)[1]}"
        if kind == "rating_out_of_range":
            rating = (0, 6, 7, 10, -1, 55)[rng.integers(6)]
            return f"{time_text},{user},GET /rate/{movie}={rating}"
        if kind == "bad_movie_id":
            bad = ("", movie.replace("+", " "), f"{movie}/extra")[rng.integers(3)]
            return f"{time_text},{user},GET /data/m/{bad}/{int(rng.integers(60))}.mpg"
        if kind == "bad_time":
            bad = ("2024-13-45T25:61:00", "yesterday", time_text.replace("T", " "), "")[rng.integers(4)]
            return f"{bad},{user},GET /data/m/{movie}/{int(rng.integers(60))}.mpg"
        if kind == "missing_field":
            return f"{time_text},GET /rate/{movie}={int(rng.integers(1, 6))}"
        if kind == "bad_minute":
            return f"{time_text},{user},GET /data/m/{movie}/{('x', '-3', '')[rng.integers(3)]}.mpg"
        raise ValueError(f"unknown garbage kind {kind!r}")
