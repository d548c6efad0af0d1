"""The compressed lifecycle's phases, in order, on a running stack.

Owns: `run_lifecycle` (functions ready, simulator backfill, ingest, a first training -> stable, a
second training -> canary, the controller's analysis and promotion, a forced bad release (a drill
model, `python -m scripts.release drill-bad-model`) and its automatic rollback, a worse ranking at the
same latency (a `--ranking reverse` drill) rolled back on online quality alone, and a replica killed
with SIGKILL under load, with steady load through nginx from the second training on),
`LifecycleOptions`, `LifecycleResult` (filled as it goes, so a caller keeps what was measured even
when a phase fails), and the steps `ingest_all`, `train`, `run_drill`, `KeepIngesting` (ingest in the
background while releases are analysed: online quality is read from the stored stream, and with too
little of it stored a release waits).

Must not touch: release policy, training, serving or the runtime's internals (it only calls them
like an operator or a client would); bringing the stack up or down (the caller does).
"""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from scripts.demo.handle import ROOT, StackHandle
from scripts.demo.load import DrillWindow, Sample, SteadyLoad, load_figures
from scripts.demo.progress import DemoError, Progress, wait_for
from scripts.demo.releases import current_release, wait_no_release_running, wait_release_decided
from scripts.demo.replicas import kill_one_replica


@dataclass
class LifecycleOptions:
    drill_delay_ms: int = 150  # under nginx's 300 ms canary budget: canary users still get (slow) answers
    drill_error_rate: float = 0.0
    load_rate: float = 25.0
    load_threads: int = 4
    kill_replica: bool = True
    ranking_drill: str | None = None  # the worse-ranking release, opt-in (None: skip that phase)
    release_timeout_s: float = 240.0
    train_timeout_s: float = 600.0
    wait_backfill: bool = True


@dataclass
class LifecycleResult:
    versions: dict[str, str] = field(default_factory=dict)
    releases: list[dict[str, Any]] = field(default_factory=list)  # the history entries of our releases
    trainings: list[dict[str, Any]] = field(default_factory=list)
    ingests: list[dict[str, Any]] = field(default_factory=list)
    stable_after_drill: dict[str, Any] = field(default_factory=dict)
    kill: dict[str, Any] | None = None
    drills: list[DrillWindow] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)

    def release(self, state: str) -> dict[str, Any] | None:
        return next((r for r in self.releases if r["state"] == state), None)

    def load(self) -> dict[str, Any]:
        return load_figures(self.samples, self.drills)


def ingest_all(handle: StackHandle, progress: Progress, result: LifecycleResult, runs: int = 4) -> None:
    """Ingest until the consumer has caught up (lag 0) or `runs` runs were made."""
    for _ in range(runs):
        summary = handle.invoke("ingest", timeout_s=120, max_seconds=8)
        result.ingests.append(summary)
        progress.log(f"   ingest: {summary.get('records')} records, events {summary.get('events')}, "
                     f"quarantined {sum((summary.get('quarantined') or {}).values())}, "
                     f"{summary.get('batches_written')} batches, lag {summary.get('lag_total')} "
                     f"({summary.get('stopped_because')})")
        if summary.get("lag_total") == 0 and summary.get("records", 0) > 0:
            return


def train(handle: StackHandle, progress: Progress, result: LifecycleResult, timeout_s: float,
          attempts: int = 3) -> dict[str, Any]:
    """One training through the train function; retried when a dependency fails (HTTP 503), e.g.
    a redeploy that times out while the runtime still waits for model-less replicas after start."""
    for attempt in range(1, attempts + 1):
        try:
            summary = handle.invoke("train", timeout_s=timeout_s)
            break
        except DemoError as e:
            if "HTTP 503" not in str(e) or attempt == attempts:
                raise
            progress.log(f"   training attempt {attempt} failed on a dependency, retrying in 5s: {e}")
            time.sleep(5.0)
    result.trainings.append({k: summary.get(k) for k in ("version", "metrics", "gates", "gates_passed",
                                                         "release", "duration_s", "snapshot_id")})
    metrics = summary.get("metrics") or {}
    progress.log(f"   trained {summary.get('version')}: rmse {metrics.get('rmse', float('nan')):.4f} "
                 f"(stable on the same holdout {metrics.get('stable_rmse_same_holdout', '-')}), gates "
                 f"{'passed' if summary.get('gates_passed') else 'FAILED'}, {summary.get('duration_s')}s -> "
                 f"{summary.get('release')}")
    return summary


class KeepIngesting:
    """Ingest runs one after another in the background (what the cron trigger does on `make up`;
    the demo leaves ingest to the driver) until stopped; each summary is kept in `result.ingests`.
    A refused or failed run is logged and the next one tried: the release waits meanwhile."""

    def __init__(self, handle: StackHandle, progress: Progress, result: LifecycleResult, pause_s: float = 1.0):
        self.handle, self.progress, self.result, self.pause_s = handle, progress, result, pause_s
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="demo-ingest")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the run in flight (bounded by its timeout); a no-op when not started."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=130)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.result.ingests.append(self.handle.invoke("ingest", timeout_s=120, max_seconds=4))
                self.runs += 1
            except DemoError as e:
                self.progress.log(f"   background ingest failed (trying again): {e}")
            self._stop.wait(self.pause_s)


def run_drill(handle: StackHandle, options: LifecycleOptions, progress: Progress, ranking: str | None = None) -> str:
    """Start a canary release of a deliberately bad model (`scripts.release drill-bad-model`): slow
    and/or failing as `options` say, or, with `ranking`, a worse list at the same latency; returns
    the drill version."""
    argv = [sys.executable, "-m", "scripts.release", "drill-bad-model"]
    if ranking:
        argv += ["--ranking", ranking]
    else:
        argv += ["--delay-ms", str(options.drill_delay_ms)]
        if options.drill_error_rate:
            argv += ["--error-rate", str(options.drill_error_rate)]
    done = subprocess.run(argv, cwd=ROOT, env=handle.env, capture_output=True, text=True, timeout=180, check=False)
    if done.returncode != 0:
        raise DemoError(f"`{' '.join(argv[2:])}` failed: {(done.stderr or done.stdout).strip()[-400:]}")
    release = current_release(handle)
    if release is None or not release.running:
        raise DemoError(f"`{' '.join(argv[2:])}` started no release: {done.stdout.strip()[-300:]}")
    return release.candidate


def run_lifecycle(handle: StackHandle, options: LifecycleOptions, progress: Progress,
                  result: LifecycleResult | None = None) -> LifecycleResult:
    """Every phase in order on a running stack; the caller brings the stack up and down. Fills
    `result` as it goes, so a caller keeps what was measured even when a phase fails."""
    from movierec.registry import STABLE, Registry

    result = result or LifecycleResult()
    result.phases = progress.phases
    load = SteadyLoad(handle.public_url, rate=options.load_rate, threads=options.load_threads)
    ingesting = KeepIngesting(handle, progress, result)
    try:
        with progress.phase("functions ready"):
            needed = ("ingest", "train", "release")
            wait_for(lambda: all(handle.functions().get(n, {}).get("availableReplicas", 0) >= 1 for n in needed),
                     f"{', '.join(needed)} to have a ready replica", 180)
        with progress.phase("simulator backfill"):
            if options.wait_backfill and handle.started_by_us:
                sim_log = handle.state_dir / "logs" / "simulator.log"
                line = wait_for(lambda: re.search(r"backfilled (\d+) lines",
                                                  sim_log.read_text(errors="replace") if sim_log.exists() else ""),
                                f"the simulator's backfill ({sim_log})", 180)
                progress.log(f"   simulator backfilled {line.group(1)} lines; streaming live events")
            else:
                progress.log("   attached: using the data the running simulator has produced")
        with progress.phase("ingest"):
            ingest_all(handle, progress, result)

        registry = Registry(handle.store())
        with progress.phase("first training -> stable"):
            if registry.alias_version(STABLE) is None:
                summary = train(handle, progress, result, options.train_timeout_s)
                if registry.alias_version(STABLE) is None:  # (an attached stack's cron may have won the race)
                    raise DemoError(f"the first model did not become stable: {summary.get('release')}")
            else:
                progress.log(f"   a stable model exists already: {registry.alias_version(STABLE)}")
            result.versions["first"] = first = registry.alias_version(STABLE)
            for fn in ("recommend", "recommend-canary"):
                wait_for(lambda fn=fn: handle.serving(fn) == first, f"{fn} to serve {first}", 120)
            progress.log(f"   recommend and recommend-canary serve {first}")

        load.phase = "second training"
        load.start()
        progress.log(f"   steady load started: ~{options.load_rate:g} req/s through {handle.public_url}")

        with progress.phase("second training -> canary"):
            ingest_all(handle, progress, result, runs=2)
            for _attempt in range(3):  # on a `make up` stack its own cron training may have released first
                wait_no_release_running(handle, progress, options.release_timeout_s)
                summary = train(handle, progress, result, options.train_timeout_s)
                if not str(summary.get("release", "")).startswith("not released: release"):
                    break
            if not str(summary.get("release", "")).startswith("canary started"):
                raise DemoError(f"the second model did not start a canary: {summary.get('release')} "
                                f"(gates: {summary.get('gates')})")
            result.versions["second"] = second = summary["version"]
            good_release = current_release(handle).id
            wait_for(lambda: handle.serving("recommend-canary") == second, f"the canary to serve {second}", 120)
        ingesting.start()  # online quality needs the release's stream stored: ingest meanwhile
        progress.log("   ingesting in the background while releases are analysed (online quality)")

        load.phase = "canary analysis + promotion"
        with progress.phase("canary analysis -> promotion"):
            release = wait_release_decided(handle, good_release, progress, options.release_timeout_s)
            progress.log(f"   {release.id}: {release.state} by {release.actor}: {release.reason}")
            wait_for(lambda: handle.serving("recommend") == release.candidate if release.state == "promoted"
                     else True, "recommend to serve the promoted version", 60)

        load.phase = "bad release + rollback"
        with progress.phase("forced bad release (drill) -> rollback"):
            drill = DrillWindow("?", time.time())
            result.drills.append(drill)
            drill.version = run_drill(handle, options, progress)
            result.versions["drill"] = drill.version
            bad_release = current_release(handle).id
            progress.log(f"   drill model {drill.version} (delay {options.drill_delay_ms} ms, error rate "
                         f"{options.drill_error_rate:g}) is the canary: {bad_release}")
            release = wait_release_decided(handle, bad_release, progress, options.release_timeout_s)
            progress.log(f"   {release.id}: {release.state} by {release.actor}: {release.reason}")
            stable = registry.alias_version(STABLE)
            wait_for(lambda: handle.serving("recommend-canary") == stable, "the canary back on stable", 60)
            drill.end = time.time() + 2.0  # requests sent just before the switch may still answer late
            result.stable_after_drill = {
                "alias": stable,
                "recommend_deployed": handle.deployed_version("recommend"),
                "recommend_serving": handle.serving("recommend"),
                "canary_deployed": handle.deployed_version("recommend-canary"),
            }
            progress.log(f"   stable untouched: {result.stable_after_drill}")

        if options.ranking_drill:
            load.phase = "worse ranking + rollback"
            with progress.phase(f"worse ranking ({options.ranking_drill} drill, same latency) -> rollback"):
                result.versions["ranking_drill"] = version = run_drill(handle, options, progress,
                                                                       ranking=options.ranking_drill)
                ranked_release = current_release(handle).id
                progress.log(f"   drill model {version} (ranking {options.ranking_drill}: the stable model's "
                             f"least preferred first, at its latency) is the canary: {ranked_release}")
                release = wait_release_decided(handle, ranked_release, progress, options.release_timeout_s)
                progress.log(f"   {release.id}: {release.state} by {release.actor}: {release.reason}")
                quality = (release.analysis or {}).get("quality") or {}
                progress.log("   watch-through " + ", ".join(
                    f"{v} {q.get('watched', 0)}/{q.get('recommended', 0)}" for v, q in sorted(quality.items())))
                stable = registry.alias_version(STABLE)
                wait_for(lambda: handle.serving("recommend-canary") == stable, "the canary back on stable", 60)
        ingesting.stop()
        progress.log(f"   background ingest stopped after {ingesting.runs} runs")

        if options.kill_replica and handle.started_by_us:
            load.phase = "replica killed"
            with progress.phase("kill -9 a recommend replica under load"):
                result.kill = kill_one_replica(handle, "recommend", progress)
                time.sleep(5.0)  # traffic on the restored set too
        load.phase = "end"
    finally:
        ingesting.stop()
        load.stop()
        result.samples = list(load.samples)
        result.releases = _our_releases(handle, result)
    return result


def _our_releases(handle: StackHandle, result: LifecycleResult) -> list[dict[str, Any]]:
    from movierec.release import ReleaseStore

    ours = {v for k, v in result.versions.items() if k != "first"}
    try:
        history = ReleaseStore(handle.store()).history(limit=50)
    except Exception:  # noqa: BLE001 (the report is best effort once the lifecycle ran)
        return []
    return [asdict(r) for r in reversed(history) if r.candidate in ours]
