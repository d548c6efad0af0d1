"""How the demo tells what it does: timed phases, one-line failures, and waiting with a deadline.

Owns: `Progress` (each step printed with the time since the start; `phase(name)` times a phase and
records whether it finished), `DemoError` (one line saying which phase failed and where to look),
`wait_for` (the first truthy value of a poll, or DemoError naming what was awaited), and the report
formats `format_ms` / `format_rate`.

Must not touch: the stack, the release, anything it reports on.
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any


class DemoError(RuntimeError):
    """One line saying which phase failed and where to look."""


class Progress:
    """Prints each step with the time since the start, and times the phases."""

    def __init__(self, out=None, quiet: bool = False):
        self.t0 = time.monotonic()
        self.out = out or sys.stdout
        self.quiet = quiet
        self.phases: list[dict[str, Any]] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"[{self.elapsed():6.1f}s] {message}", file=self.out, flush=True)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.log(f"== {name}")
        start = time.monotonic()
        entry = {"phase": name, "seconds": None, "ok": False}
        self.phases.append(entry)
        try:
            yield
            entry["ok"] = True
        finally:
            entry["seconds"] = round(time.monotonic() - start, 1)
            self.log(f"   {name}: {'done' if entry['ok'] else 'FAILED'} in {entry['seconds']:.1f}s")


def wait_for(predicate: Callable[[], Any], what: str, timeout_s: float, interval_s: float = 0.5) -> Any:
    """The first truthy value of `predicate()`, or DemoError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


def format_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}ms"


def format_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
