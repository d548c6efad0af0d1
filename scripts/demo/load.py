"""Steady client load through the public entry, and what the clients saw.

Owns: `SteadyLoad` (`threads` clients calling GET /recommend/<uid> on nginx at about `rate` requests
per second in total, bounded in count and time, each answer a `Sample` tagged with the current
phase), `DrillWindow` (while a drill model is the canary, its deliberate 500s are expected),
`is_failure` / `is_drill_fault`, `percentile` and `load_figures` (requests, failures, drill faults
and latency, overall and per phase).

Must not touch: the services (it only calls them, like a client would); the release.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import requests


@dataclass(frozen=True)
class Sample:
    t: float  # wall-clock time the request was sent
    latency_s: float
    status: int  # 0: connection error or timeout
    served_by: str
    model_version: str
    phase: str
    user_id: int


class SteadyLoad:
    """`threads` clients calling GET /recommend/<uid> on the public entry at about `rate` requests
    per second in total, cycling over `users`; bounded by `max_requests` and `max_seconds`."""

    def __init__(self, public_url: str, rate: float = 25.0, threads: int = 4, users: int = 1000,
                 timeout_s: float = 5.0, max_requests: int = 40_000, max_seconds: float = 900.0):
        self.url = public_url.rstrip("/")
        self.interval_s = threads / rate
        self.threads = threads
        self.users = users
        self.timeout_s = timeout_s
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.phase = "start"
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> SteadyLoad:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True, name=f"load-{n}")
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=self.timeout_s + 5)

    def _run(self, n: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        user = n
        with requests.Session() as session:
            next_at = time.monotonic()
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    if len(self.samples) >= self.max_requests:
                        return
                user_id = user % self.users
                user += self.threads
                sent, t0 = time.time(), time.perf_counter()
                phase = self.phase
                try:
                    reply = session.get(f"{self.url}/recommend/{user_id}", timeout=self.timeout_s)
                    sample = Sample(sent, time.perf_counter() - t0, reply.status_code,
                                    reply.headers.get("X-Served-By", "-"), reply.headers.get("X-Model-Version", "-"),
                                    phase, user_id)
                except requests.RequestException:
                    sample = Sample(sent, time.perf_counter() - t0, 0, "-", "-", phase, user_id)
                with self._lock:
                    self.samples.append(sample)
                next_at += self.interval_s
                self._stop.wait(max(0.0, next_at - time.monotonic()))


@dataclass
class DrillWindow:
    """While a drill model is the canary, its deliberate 500s are expected, not failures."""

    version: str
    start: float
    end: float | None = None

    def covers(self, t: float) -> bool:
        return self.start <= t <= (self.end if self.end is not None else float("inf"))


def is_drill_fault(sample: Sample, drills: list[DrillWindow]) -> bool:
    return (sample.status == 500 and sample.served_by == "recommend-canary"
            and any(d.covers(sample.t) for d in drills))


def is_failure(sample: Sample, drills: list[DrillWindow]) -> bool:
    """A failed request: a connection error or timeout, or a 5xx from the public entry, except a
    drill model's deliberate 500 from the canary during its drill."""
    return (sample.status == 0 or sample.status >= 500) and not is_drill_fault(sample, drills)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def load_figures(samples: list[Sample], drills: list[DrillWindow]) -> dict[str, Any]:
    """Requests, failures, expected drill faults and client latency (ms), overall and per phase."""

    def figures(group: list[Sample]) -> dict[str, Any]:
        answered = [s.latency_s * 1000 for s in group if s.status != 0]
        p50, p99 = percentile(answered, 0.50), percentile(answered, 0.99)
        return {
            "requests": len(group),
            "failures": sum(is_failure(s, drills) for s in group),
            "drill_faults": sum(is_drill_fault(s, drills) for s in group),
            "p50_ms": None if p50 is None else round(p50, 1),
            "p99_ms": None if p99 is None else round(p99, 1),
            "max_ms": round(max(answered), 1) if answered else None,
            "statuses": dict(sorted(Counter(str(s.status) for s in group).items())),
            "served_by": dict(sorted(Counter(s.served_by for s in group).items())),
        }

    phases: dict[str, list[Sample]] = {}
    for s in samples:
        phases.setdefault(s.phase, []).append(s)
    failed = [asdict(s) for s in samples if is_failure(s, drills)][:20]
    return {"total": figures(samples), "phases": {name: figures(g) for name, g in phases.items()},
            "first_failures": failed}
