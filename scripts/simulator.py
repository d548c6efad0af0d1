"""The stream simulator: synthetic users who watch, rate and ask for recommendations, on one machine.

Owns:
- `Simulation`, the pure, seeded behaviour of a population drawn from `movierec.synthetic.SyntheticWorld`:
  what the next session is (a recommendation request, or an organic watch/rate session), how a user
  reacts to the movies recommended to them (watch probability rising with their TRUE score, ratings =
  true score + noise), new users now and then (cold start), and a small share of realistic garbage.
  It returns planned actions (`Planned`) and never does I/O, so it is tested without sockets.
- The I/O around it: `call_recommend` (the real caller: `GET /recommend/<uid>` on the public entry with an
  800 ms timeout, never raises), `KafkaSink` (kafka-python producer, flushed on stop), the paced live loop
  (`run_live`), file replay (`run_replay`), bounds (--duration / --events), SIGTERM/SIGINT handling and
  the periodic and final summary (`Stats`).

Every stream line it writes comes from `movierec.events` formatters (`...Event.to_line()`), except the
deliberate garbage and replayed files, which are sent as they are.

Must not touch: parsing rules (movierec.events), the model, the object store, the services it calls
(it only calls them, like a client would), processes it did not start.

The population: `--users` users of the world, of which `--new-user-share` are held back and appear
over time as users the stream has never seen (they still have true preferences). Watching a
recommended movie: p = max_watch x sigmoid((true score - center) / spread) x attention**rank, so a model
that ranks what users truly like first earns more watches (the release controller's online quality).

CLI (`python -m scripts.simulator --help`):
    python -m scripts.simulator [--rate 20] [--duration 60 | --events N] [--duration 0 (forever)]
        [--users 2000 --movies 800 --seed 0] [--garbage-share 0.01] [--request-share 0.3]
        [--new-user-share 0.05] [--backfill RATINGS] [--report-every 10]
    python -m scripts.simulator --replay FILE [--rate 0 (as fast as possible)] [--partition P]
Env: KAFKA_BOOTSTRAP_SERVERS (127.0.0.1:9092), KAFKA_TOPIC (movielog1), RECOMMEND_URL
(http://127.0.0.1:8082, else PUBLIC_URL).
The final summary is also printed as one JSON line starting with `summary ` (tests and scripts read it).
"""
from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import math
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import numpy as np

from movierec.events import (
    RATING_MAX,
    RATING_MIN,
    RateEvent,
    RecommendationEvent,
    Rejection,
    WatchEvent,
    format_time,
    is_movie_id,
    parse_line,
)
from movierec.synthetic import SyntheticWorld

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_TOPIC = "movielog1"
DEFAULT_RECOMMEND_URL = "http://127.0.0.1:8082"
CALLER_TIMEOUT_MS = 800  # what the real caller waits; slower answers are failures (status 0)
MAX_BODY_BYTES = 64 * 1024


def utc_now() -> datetime:
    """Stream times are naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


# -- the pure core -------------------------------------------------------------------------------
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


# -- the real caller -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CallResult:
    status: int  # HTTP status, or 0 when there was no answer in time
    movie_ids: tuple[str, ...]
    error: str | None
    latency_ms: int


def server_name(base_url: str) -> str:
    parts = urlsplit(base_url)
    return parts.netloc or base_url


def call_recommend(session, base_url: str, user_id: int, timeout_ms: int = CALLER_TIMEOUT_MS) -> CallResult:
    """`GET <base_url>/recommend/<user_id>` like the real caller: never raises; a timeout or a
    refused connection is status 0 with the error text, any non-200 keeps its status."""
    import requests

    server = server_name(base_url)
    start = time.perf_counter()
    try:
        response = session.get(f"{base_url.rstrip('/')}/recommend/{user_id}", timeout=timeout_ms / 1000,
                               stream=True)
        try:
            body = response.raw.read(MAX_BODY_BYTES, decode_content=True)
        finally:
            response.close()
    except requests.Timeout:
        return CallResult(0, (), f"TimeoutException: Request timeout to {server} after {timeout_ms} ms",
                          _elapsed_ms(start))
    except requests.RequestException as e:
        kind = "ConnectException" if isinstance(e, requests.ConnectionError) else type(e).__name__
        return CallResult(0, (), f"{kind}: {_one_line(str(e))[:160] or 'connection failed'}", _elapsed_ms(start))
    latency = _elapsed_ms(start)
    if latency > timeout_ms:  # headers came in time but the whole answer did not
        return CallResult(0, (), f"TimeoutException: Request timeout to {server} after {timeout_ms} ms", latency)
    text = body.decode("utf-8", "replace").strip()
    if response.status_code != 200:
        return CallResult(response.status_code, (), _one_line(text)[:160] or f"HTTP {response.status_code}",
                          latency)
    ids = tuple(x for x in (s.strip() for s in text.split(",")) if is_movie_id(x))
    return CallResult(200, ids, None, latency)


def _elapsed_ms(start: float) -> int:
    return round((time.perf_counter() - start) * 1000)


def _one_line(text: str) -> str:
    # The result field ends at ", <n> ms": newlines would break the line.
    return " ".join(text.split())


# -- the Kafka side ------------------------------------------------------------------------------
class SinkError(RuntimeError):
    pass


class KafkaSink:
    """Produces lines (UTF-8, no key) to one topic; `close()` flushes what is buffered."""

    def __init__(self, bootstrap: str, topic: str, partition: int | None = None, attempts: int = 5) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self.topic = topic
        self.partition = partition
        self.failed = 0
        self._lock = threading.Lock()
        last: Exception | None = None
        for attempt in range(attempts):
            try:
                self._producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                                               max_in_flight_requests_per_connection=1)
                return
            except KafkaError as e:
                last = e
                time.sleep(min(0.5 * 2 ** attempt, 4.0))
        raise SinkError(f"cannot reach the Kafka broker at {bootstrap} (KAFKA_BOOTSTRAP_SERVERS): {last}")

    def send(self, line: str) -> None:
        future = self._producer.send(self.topic, line.encode("utf-8"), partition=self.partition)
        future.add_errback(self._on_error)

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            if self.failed in (1, 10, 100, 1000):
                print(f"simulator: producing to {self.topic} failed ({self.failed} so far): {exc}",
                      file=sys.stderr, flush=True)

    def close(self, timeout_s: float = 30.0) -> None:
        try:
            self._producer.flush(timeout=timeout_s)
        finally:
            self._producer.close(timeout=timeout_s)


# -- running -----------------------------------------------------------------------------------
@dataclass
class Stats:
    produced: Counter = field(default_factory=Counter)  # lines by kind
    requests: Counter = field(default_factory=Counter)  # recommendation calls by status
    # The most recent calls only, so a run without end keeps bounded memory (p50/p99 are over these).
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=50_000))
    new_users: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def total(self) -> int:
        return sum(self.produced.values())

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms, dtype=float)
        elapsed = time.monotonic() - self.started
        return {
            "produced": dict(sorted(self.produced.items())),
            "total": self.total,
            "requests_by_status": {str(k): v for k, v in sorted(self.requests.items())},
            "latency_p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "latency_p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "new_users": self.new_users,
            "elapsed_s": round(elapsed, 2),
            "lines_per_s": round(self.total / elapsed, 1) if elapsed > 0 else None,
        }

    def line(self) -> str:
        s = self.summary()
        produced = " ".join(f"{k}={v}" for k, v in s["produced"].items()) or "none"
        statuses = " ".join(f"{k}:{v}" for k, v in s["requests_by_status"].items()) or "none"
        p50 = "-" if s["latency_p50_ms"] is None else f"{s['latency_p50_ms']:.0f}"
        p99 = "-" if s["latency_p99_ms"] is None else f"{s['latency_p99_ms']:.0f}"
        return (f"simulator: {s['elapsed_s']:.0f}s produced {s['total']} ({produced}); requests by status "
                f"{statuses}; latency p50 {p50} ms p99 {p99} ms; new users {s['new_users']}")


@dataclass
class Bounds:
    duration_s: float | None = 60.0  # None: no time bound
    events: int | None = None  # None: no count bound (lines produced)

    def reached(self, stats: Stats, now: float) -> bool:
        if self.events is not None and stats.total >= self.events:
            return True
        return self.duration_s is not None and now - stats.started >= self.duration_s


class Stop:
    """Set by SIGTERM/SIGINT; the loops check it between actions."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        def handler(signum, _frame):
            self.event.set()
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    @property
    def requested(self) -> bool:
        return self.event.is_set()


def _kind(item) -> str:
    if isinstance(item, WatchEvent):
        return "watch"
    if isinstance(item, RateEvent):
        return "rate"
    if isinstance(item, RecommendationEvent):
        return "recommendation"
    return "garbage"


def run_live(sim: Simulation, send: Callable[[str], None], caller: Callable[[int], CallResult], server: str,
             rate: float, bounds: Bounds, stop: Stop, stats: Stats, report_every_s: float = 10.0,
             report: Callable[[str], None] = print, workers: int = 4) -> Stats:
    """Pace sessions at about `rate` lines/s until a bound or a stop. Recommendation calls run on
    `workers` threads (a slow service does not stall the stream); each answer is logged as a
    recommendation line and the user's reaction is scheduled after it."""
    if rate <= 0:
        raise ValueError("--rate must be > 0 for a live simulation")
    interval = 1.0 / rate
    pending: list[tuple[float, int, object]] = []  # (due monotonic, seq, item)
    seq = 0
    in_flight: list[tuple[Future, int]] = []
    next_slot = time.monotonic()
    next_report = time.monotonic() + report_every_s

    def schedule(plans: list[Planned], base: float) -> None:
        nonlocal seq
        for p in plans:
            seq += 1
            heapq.heappush(pending, (base + p.delay_s, seq, p.item))

    def emit(item) -> None:
        if isinstance(item, (WatchEvent, RateEvent)):
            item = dataclasses.replace(item, time=utc_now())
            send(item.to_line())
        else:
            send(item)
        stats.produced[_kind(item)] += 1

    def collect(block: bool) -> None:
        for entry in list(in_flight):
            future, user = entry
            if not (block or future.done()):
                continue
            in_flight.remove(entry)
            result: CallResult = future.result()
            event = RecommendationEvent(utc_now(), user, server, result.status, result.movie_ids,
                                        result.error if result.status != 200 else None, result.latency_ms)
            send(event.to_line())
            stats.produced["recommendation"] += 1
            stats.requests[result.status] += 1
            stats.latencies_ms.append(result.latency_ms)
            if result.status == 200:
                schedule(sim.on_recommendations(user, result.movie_ids, event.time), time.monotonic())

    def bound_reached(now: float) -> bool:
        # A call in flight will become one line: count it, so --events is met exactly.
        if bounds.events is not None and stats.total + len(in_flight) >= bounds.events:
            return True
        return bounds.duration_s is not None and now - stats.started >= bounds.duration_s

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recommend-call")
    try:
        while not stop.requested:
            now = time.monotonic()
            collect(block=False)
            if bound_reached(now):
                break
            if now >= next_report:
                report(stats.line())
                next_report = now + report_every_s
            if now < next_slot:
                stop.event.wait(min(next_slot - now, 0.05))
                continue
            next_slot = max(next_slot + interval, now - 1.0)  # catch up at most one second of slots
            if pending and pending[0][0] <= now:
                emit(heapq.heappop(pending)[2])
                continue
            if len(in_flight) >= workers * 4:  # the service is slow: do not pile up calls
                continue
            before = sim.unseen_count
            plans = sim.next_session(utc_now())
            stats.new_users += before - sim.unseen_count
            first, rest = plans[0], plans[1:]
            schedule(rest, now)
            if isinstance(first.item, RecommendationCall):
                in_flight.append((pool.submit(caller, first.item.user_id), first.item.user_id))
            else:
                emit(first.item)
        # The caller logs every call it made; each waits at most its timeout.
        collect(block=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return stats


def run_replay(lines: Iterable[str], send: Callable[[str], None], rate: float, bounds: Bounds, stop: Stop,
               stats: Stats, report_every_s: float = 10.0, report: Callable[[str], None] = print) -> Stats:
    """Send the file's lines as they are, in order, at `rate` lines/s (0: as fast as possible)."""
    interval = 1.0 / rate if rate > 0 else 0.0
    next_slot = time.monotonic()
    next_report = next_slot + report_every_s
    for raw in lines:
        line = raw.rstrip("\r\n")
        if stop.requested or bounds.reached(stats, time.monotonic()):
            break
        if interval:
            delay = next_slot - time.monotonic()
            if delay > 0 and stop.event.wait(delay):
                break
            next_slot = max(next_slot + interval, time.monotonic() - 1.0)
        send(line)
        stats.produced["replay"] += 1
        if time.monotonic() >= next_report:
            report(stats.line())
            next_report = time.monotonic() + report_every_s
    return stats


# -- CLI ---------------------------------------------------------------------------------------
def _nonneg_float(text: str) -> float:
    value = float(text)
    if value < 0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _pos_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(prog="python -m scripts.simulator",
                                description="Synthetic users producing stream lines and calling /recommend.")
    p.add_argument("--bootstrap", default=env.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP,
                   help="Kafka bootstrap servers (env KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--topic", default=env.get("KAFKA_TOPIC") or DEFAULT_TOPIC, help="topic (env KAFKA_TOPIC)")
    p.add_argument("--partition", type=int, default=None,
                   help="produce to this partition only (default: the producer spreads lines)")
    p.add_argument("--recommend-url", default=env.get("RECOMMEND_URL") or env.get("PUBLIC_URL")
                   or DEFAULT_RECOMMEND_URL, help="public entry serving GET /recommend/<uid> (env RECOMMEND_URL)")
    p.add_argument("--rate", type=_nonneg_float, default=None,
                   help="lines per second (live default 20; replay default 0 = as fast as possible)")
    p.add_argument("--duration", type=_nonneg_float, default=60.0,
                   help="stop after this many seconds; 0 = run until SIGTERM/SIGINT (default 60)")
    p.add_argument("--events", type=_pos_int, default=None, help="stop after producing this many lines")
    p.add_argument("--users", type=_pos_int, default=2000)
    p.add_argument("--movies", type=_pos_int, default=800)
    p.add_argument("--seed", type=int, default=0, help="seeds the world and the behaviour")
    p.add_argument("--garbage-share", type=_share, default=Behaviour.garbage_share)
    p.add_argument("--request-share", type=_share, default=Behaviour.request_share)
    p.add_argument("--new-user-share", type=_share, default=Behaviour.new_user_share,
                   help="share of the population held back to appear later as never-seen users")
    p.add_argument("--backfill", type=int, default=0, metavar="RATINGS",
                   help="first produce this many historical rated sessions (past week), as fast as possible; "
                        "its lines count towards --events")
    p.add_argument("--timeout-ms", type=_pos_int, default=CALLER_TIMEOUT_MS, help="caller timeout (800)")
    p.add_argument("--workers", type=_pos_int, default=4, help="concurrent recommendation calls")
    p.add_argument("--report-every", type=_nonneg_float, default=10.0, help="seconds between summary lines")
    p.add_argument("--replay", metavar="FILE", default=None, help="send this file's lines instead of simulating")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bounds = Bounds(duration_s=args.duration or None, events=args.events)
    stop = Stop()
    stop.install()
    report_every = args.report_every or float("inf")

    def report(text: str) -> None:
        print(text, flush=True)

    if args.replay and not (os.path.isfile(args.replay) and os.access(args.replay, os.R_OK)):
        print(f"error: cannot read replay file {args.replay}: not a readable file", file=sys.stderr)
        return 2
    try:
        sink = KafkaSink(args.bootstrap, args.topic, args.partition)
    except SinkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stats = Stats()
    try:
        if args.replay:
            with open(args.replay, encoding="utf-8", errors="surrogateescape", newline="") as lines:
                run_replay(lines, sink.send, args.rate or 0.0, bounds, stop, stats, report_every, report)
        else:
            behaviour = Behaviour(request_share=args.request_share, new_user_share=args.new_user_share,
                                  garbage_share=args.garbage_share)
            world = SyntheticWorld(args.users, args.movies, seed=args.seed)
            sim = Simulation(world, behaviour, seed=args.seed + 1)
            if args.backfill > 0:
                for line in sim.backfill(args.backfill, utc_now()):
                    if stop.requested or bounds.reached(stats, time.monotonic()):
                        break
                    sink.send(line)
                    stats.produced["backfill"] += 1
                report(f"simulator: backfilled {stats.produced['backfill']} lines")
            import requests

            with requests.Session() as session:
                run_live(sim, sink.send,
                         lambda user: call_recommend(session, args.recommend_url, user, args.timeout_ms),
                         server_name(args.recommend_url), args.rate or 20.0, bounds, stop, stats,
                         report_every, report, workers=args.workers)
    finally:
        sink.close()
    summary = stats.summary()
    summary["send_failures"] = sink.failed
    report(stats.line())
    report("summary " + json.dumps(summary, sort_keys=True))
    return 0 if sink.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
