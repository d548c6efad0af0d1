"""Running the simulator: the paced live loop, file replay, bounds, stop signals and the summary.

Owns: `run_live` (sessions paced at about `rate` lines/s; recommendation calls on worker threads, so
a slow service does not stall the stream; each answer logged as a recommendation line and the
user's reaction scheduled after it), `run_replay` (a file's lines as they are, in order, at a rate or
as fast as possible), `Bounds` (--duration / --events), `Stop` (SIGTERM/SIGINT) and `Stats` (the
periodic line, whose latency is over the interval since the previous one, and the final summary).

Must not touch: what the population does (scripts/simulator/simulation.py), how a call is made
(it is given a `caller`) or where lines go (it is given `send`); processes it did not start.
"""
from __future__ import annotations

import dataclasses
import heapq
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from movierec.events import RateEvent, RecommendationEvent, WatchEvent
from scripts.simulator.caller import CallResult
from scripts.simulator.simulation import Planned, RecommendationCall, Simulation, utc_now


@dataclass
class Stats:
    produced: Counter = field(default_factory=Counter)  # lines by kind
    requests: Counter = field(default_factory=Counter)  # recommendation calls by status
    # The most recent calls only, so a run without end keeps bounded memory (p50/p99 are over these).
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=50_000))
    new_users: int = 0
    started: float = field(default_factory=time.monotonic)
    # Latencies since the last periodic line: what `interval_line` reports (then starts afresh).
    window_ms: list = field(default_factory=list)
    window_started: float | None = None

    def record(self, status: int, latency_ms: float) -> None:
        """One recommendation call's outcome, in the totals and in the current interval."""
        self.requests[status] += 1
        self.latencies_ms.append(latency_ms)
        self.window_ms.append(latency_ms)

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
        """The run so far: counts and latency since the start (the final line)."""
        return self._line(self.latencies_ms, "")

    def interval_line(self) -> str:
        """The periodic line: counts since the start, latency over the calls since the previous
        periodic line (a window, so a slowdown shows when it happens); then the window starts afresh."""
        now = time.monotonic()
        window_s = now - (self.started if self.window_started is None else self.window_started)
        text = self._line(self.window_ms, f" over the last {window_s:.0f}s ({len(self.window_ms)} calls)")
        self.window_ms = []
        self.window_started = now
        return text

    def _line(self, latencies, over: str) -> str:
        s = self.summary()
        lat = np.array(latencies, dtype=float)
        produced = " ".join(f"{k}={v}" for k, v in s["produced"].items()) or "none"
        statuses = " ".join(f"{k}:{v}" for k, v in s["requests_by_status"].items()) or "none"
        p50 = f"{np.percentile(lat, 50):.0f}" if len(lat) else "-"
        p99 = f"{np.percentile(lat, 99):.0f}" if len(lat) else "-"
        return (f"simulator: {s['elapsed_s']:.0f}s produced {s['total']} ({produced}); requests by status "
                f"{statuses}; latency{over} p50 {p50} ms p99 {p99} ms; new users {s['new_users']}")


@dataclass
class Bounds:
    duration_s: float | None = 60.0  # None: no time bound
    events: int | None = None  # None: no count bound (lines produced)

    def reached(self, stats: Stats, now: float) -> bool:
        if self.events is not None and stats.total >= self.events:
            return True
        return self.duration_s is not None and now - stats.started >= self.duration_s


class Stop:
    """Set by SIGTERM/SIGINT; the loops check it between actions and wait with `wait`.

    The handler only sets a flag. Python runs it in the main thread between two bytecodes, which
    may be while that thread holds a lock inside `threading.Event.wait`; an `Event.set()` there
    waits for that lock forever (1 SIGTERM in about 1000 hung the simulator so)."""

    SLICE_S = 0.05  # the longest a wait goes on after a signal

    def __init__(self) -> None:
        self._requested = False

    def install(self) -> None:
        def handler(signum, _frame):
            self._requested = True
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def request(self) -> None:
        self._requested = True

    @property
    def requested(self) -> bool:
        return self._requested

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, less once a stop is requested; True when one is."""
        end = time.monotonic() + seconds
        while not self._requested:
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, self.SLICE_S))
        return self._requested


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
            stats.record(result.status, result.latency_ms)
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
                report(stats.interval_line())
                next_report = now + report_every_s
            if now < next_slot:
                stop.wait(min(next_slot - now, 0.05))
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
            if delay > 0 and stop.wait(delay):
                break
            next_slot = max(next_slot + interval, time.monotonic() - 1.0)
        send(line)
        stats.produced["replay"] += 1
        if time.monotonic() >= next_report:
            report(stats.interval_line())
            next_report = time.monotonic() + report_every_s
    return stats
