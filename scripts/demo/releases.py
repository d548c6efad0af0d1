"""Following releases from the demo: the current release, its analysis steps, its decision.

Owns: `current_release` (the release record in the store), `wait_release_decided` (each analysis
step printed, with its online quality when measured, until the controller decides), `wait_no_release_running`.

Must not touch: release policy or state (movierec.release decides and writes; this only reads).
"""
from __future__ import annotations

import time

from scripts.demo.handle import StackHandle
from scripts.demo.progress import DemoError, Progress, format_ms, format_rate, wait_for


def current_release(handle: StackHandle):
    from movierec.release import ReleaseStore

    return ReleaseStore(handle.store()).current()


def wait_release_decided(handle: StackHandle, release_id: str, progress: Progress, timeout_s: float):
    """Follow a running release's analysis steps (printing each) until the controller decides."""
    seen = None
    deadline = time.monotonic() + timeout_s
    while True:
        release = current_release(handle)
        if release is None or release.id != release_id:
            raise DemoError(f"release {release_id} is no longer the current release "
                            f"(now {getattr(release, 'id', None)}): another actor is releasing")
        analysis = release.analysis or {}
        if analysis.get("at") != seen and analysis:
            seen = analysis.get("at")
            m = analysis.get("metrics") or {}
            c, s = m.get("canary") or {}, m.get("stable") or {}
            q = analysis.get("quality") or {}
            watched = " ".join(f"{v} {(q.get(v) or {}).get('watched', 0)}/{(q.get(v) or {}).get('recommended', 0)}"
                               for v in ("canary", "stable"))
            progress.log(f"   step over {analysis.get('range')}: canary {c.get('requests', 0):g} req "
                         f"p99 {format_ms(c.get('p99_latency_s'))} success {format_rate(c.get('success_rate'))} | stable "
                         f"{s.get('requests', 0):g} req p99 {format_ms(s.get('p99_latency_s'))}"
                         f"{' | watched ' + watched if q else ''} -> "
                         f"{(analysis.get('decision') or {}).get('action')}: "
                         f"{(analysis.get('decision') or {}).get('reason')}")
        if not release.running and release.pending is None:
            return release
        if time.monotonic() > deadline:
            raise DemoError(f"release {release_id} still undecided after {timeout_s:g}s "
                            f"(see {handle.state_dir / 'logs' / 'function-release.log'})")
        time.sleep(1.0)


def wait_no_release_running(handle: StackHandle, progress: Progress, timeout_s: float) -> None:
    release = current_release(handle)
    if release is not None and release.running:
        progress.log(f"   waiting for the running release {release.id} to finish first")
        wait_for(lambda: not (current_release(handle) or release).running, f"release {release.id} to finish",
                 timeout_s, 2.0)
