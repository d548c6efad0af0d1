"""The compressed lifecycle on a local stack: `make demo`, and the driver the end-to-end tests use.

Owns: driving one whole lifecycle against a running local stack through its public interfaces
only (the gateway's function routes and /system API through the one gateway client
`movierec.adapters.gateway`, the public entry, Prometheus through `movierec.adapters.prometheus`,
the object store, `python -m scripts.release`, and the replica pids the local runtime publishes in
its state file `<state>/run/localfaas-replicas.json`): simulator backfill and steady traffic, ingest, a first
training (-> stable), a second training (-> canary), the controller's analysis and promotion, a
forced bad release (a drill model) and its automatic rollback, and a replica killed with SIGKILL
under load. Along the way it measures what clients see through nginx (`SteadyLoad`), and at the
end writes a release report (`report.md`, `report.json`) and a picture (`report.png`) of canary
vs stable latency and success rate over each release, from Prometheus' range API.

It brings its own stack up (scripts/stack.py on free ports, a temp state dir, fast local
schedules) and stops it by PID with `scripts.stack down`, or, with `--attach`, drives an already
running `make up` stack and leaves it running (and then kills no replica: it did not start them).

Must not touch: release policy, training, serving or the runtime's internals (it only calls them
like an operator or a client would); processes it did not start.

CLI:
    python -m scripts.demo [--attach] [--out var/demo] [--drill-delay-ms 300] [--drill-error-rate 0]
                           [--load-rate 25] [--no-kill] [--keep-state]
Env: OPENFAAS_URL, PUBLIC_URL, PROMETHEUS_URL, PUSHGATEWAY_URL, KAFKA_BOOTSTRAP_SERVERS,
STACK_STATE_DIR (used as given; free ports and a temp dir otherwise), NOTIFY_WEBHOOK_URL / SMTP_*
(where the release notifications go; without them the demo receives them itself).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from localfaas.supervisor import read_replica_state
from movierec.adapters.gateway import FunctionError, GatewayClient, GatewayError
from movierec.adapters.prometheus import PrometheusClient, PrometheusError
from movierec.adapters.stores import open_store
from movierec.errors import MovierecError
from scripts._proc import free_port
from scripts.stack import StackConfig

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "var" / "demo"
NAMESPACE = "openfaas-fn"

# What a compressed lifecycle needs from the stack: releases judged within a minute on a small
# sample, small fast models, and ingest/train left to the driver (a cron run of its own would
# race the driver's and start releases nobody asked for). Set only where the caller has not.
FAST_LOCAL_ENV = {
    "INGEST_SCHEDULE": "@every 1000h",
    "TRAIN_SCHEDULE": "@every 1000h",
    "RELEASE_SCHEDULE": "@every 5s",
    "RELEASE_WINDOW": "30s",
    "RELEASE_MIN_REQUESTS": "40",
    "RELEASE_TIMEOUT": "5m",
    "SVD_N_FACTORS": "16",
    "SVD_N_EPOCHS": "10",
    "RMSE_TOLERANCE": "0.05",  # a second model fit on a little more data may be a hair worse by chance
    "TRAIN_MIN_RATINGS": "1000",
    "CANARY_PERCENT": "20",
    "LOCALFAAS_UPSTREAM_TIMEOUT": "900",
    # recommend starts with no model (none trained yet); the runtime holds a function's deploy lock
    # until its first replicas are ready or this times out, and the first model's redeploy waits on it.
    "LOCALFAAS_READY_TIMEOUT": "20",
    "LOCALFAAS_HEALTH_INTERVAL": "0.5",
    "LOCALFAAS_CRON_INTERVAL": "2",
    "SIMULATOR_ARGS": "--backfill 20000 --rate 20 --users 800 --movies 300 --seed 7 --report-every 5",
}


class DemoError(RuntimeError):
    """One line saying which phase failed and where to look."""


# -- progress ------------------------------------------------------------------------------------
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


# -- the stack -----------------------------------------------------------------------------------
@dataclass
class StackHandle:
    """A running local stack as the driver sees it: its URLs, state dir, credentials and store."""

    env: dict[str, str]  # what scripts.stack, scripts.release and the functions see
    config: StackConfig
    started_by_us: bool

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    @property
    def gateway_url(self) -> str:
        return self.config.url(self.config.gateway_port)

    @property
    def public_url(self) -> str:
        return self.config.url(self.config.public_port)

    @property
    def prometheus_url(self) -> str:
        return self.config.url(self.config.prometheus_port)

    def gateway(self) -> GatewayClient:
        """The gateway API client, one attempt per call (the driver polls); credentials are read
        each time (the runtime writes them when it first starts)."""
        return GatewayClient.from_env({"OPENFAAS_URL": self.gateway_url, "SECRETS_DIR": self.env["SECRETS_DIR"]},
                                      timeout_s=5.0, attempts=1)

    def store(self):
        return open_store(self.env)

    def runtime_pid(self) -> int | None:
        try:
            return int((self.state_dir / "run" / "localfaas.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    # -- the gateway ----------------------------------------------------------------------------
    def functions(self) -> dict[str, dict[str, Any]]:
        try:
            return {f["name"]: f for f in self.gateway().list_functions()}
        except MovierecError:
            return {}

    def deployed_version(self, function: str) -> str | None:
        return (self.functions().get(function, {}).get("envVars") or {}).get("MODEL_VERSION")

    def serving(self, function: str, user_id: int = 1) -> str | None:
        """The model version `function` answers with (through the gateway), None if it does not answer 200."""
        try:
            reply = self.gateway().invoke("GET", function, f"/{user_id}")
        except GatewayError:
            return None
        return reply.headers.get("X-Model-Version") if reply.status_code == 200 else None

    def invoke(self, function: str, path: str = "", timeout_s: float = 120, **params: Any) -> dict[str, Any]:
        """POST /function/<function><path> with the scheduler's cron-token (what the cron sends):
        the JSON reply, or DemoError with its one-line error."""
        from movierec.store import read_secret

        auth = {"Authorization": f"Bearer {read_secret('cron-token', self.env) or ''}"}
        try:
            body = self.gateway().call("POST", function, path, timeout_s=timeout_s, params=params or None,
                                       headers=auth)
        except (FunctionError, GatewayError) as e:
            raise DemoError(str(e)) from None
        return body if isinstance(body, dict) else {"text": str(body)[:300]}


def local_stack_env(base: dict[str, str] | None = None, state_dir: str | None = None) -> dict[str, str]:
    """The environment of a fresh stack: the caller's URLs where given, free ports otherwise, a
    temp state dir unless STACK_STATE_DIR is set, and the fast local settings."""
    env = dict(os.environ if base is None else base)
    for name, make in (
        ("OPENFAAS_URL", lambda: f"http://127.0.0.1:{free_port()}"),
        ("PUBLIC_URL", lambda: f"http://127.0.0.1:{free_port()}"),
        ("PROMETHEUS_URL", lambda: f"http://127.0.0.1:{free_port()}"),
        ("PUSHGATEWAY_URL", lambda: f"http://127.0.0.1:{free_port()}"),
        ("KAFKA_BOOTSTRAP_SERVERS", lambda: f"127.0.0.1:{free_port()}"),
    ):
        if not env.get(name):
            env[name] = make()
    env["STACK_STATE_DIR"] = state_dir or env.get("STACK_STATE_DIR") or tempfile.mkdtemp(prefix="movierec-demo-")
    for name, value in FAST_LOCAL_ENV.items():
        env.setdefault(name, value)
    return env


def attach_env(base: dict[str, str] | None = None) -> dict[str, str]:
    return dict(os.environ if base is None else base)


def handle_for(env: dict[str, str], started_by_us: bool) -> StackHandle:
    config = StackConfig.from_env(env=env)
    full = {**env,
            "STACK_STATE_DIR": str(config.state_dir),
            "OPENFAAS_URL": config.url(config.gateway_port),
            "PUBLIC_URL": config.url(config.public_port),
            "PROMETHEUS_URL": config.url(config.prometheus_port)}
    full.setdefault("SECRETS_DIR", str(config.state_dir / "secrets"))
    full.setdefault("STORE_URL", str(config.state_dir / "store"))
    return StackHandle(full, config, started_by_us)


def stack_cli(env: dict[str, str], action: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.stack", action], cwd=ROOT, env=env, check=False,
                          capture_output=True, text=True, timeout=timeout_s)


def bring_up(env: dict[str, str], progress: Progress) -> StackHandle:
    handle = handle_for(env, started_by_us=True)  # `up` makes the release token (scripts.stack)
    progress.log(f"starting the stack in {handle.state_dir} (gateway {handle.gateway_url}, "
                 f"public {handle.public_url}, prometheus {handle.prometheus_url})")
    result = stack_cli(handle.env, "up")
    if result.returncode != 0:
        stack_cli(handle.env, "down")
        raise DemoError(f"`scripts.stack up` failed: {(result.stderr or result.stdout).strip()[-600:]}")
    return handle


def bring_down(handle: StackHandle, progress: Progress | None = None) -> str:
    """Stop what we started (scripts.stack down, by PID); never a stack we only attached to."""
    if not handle.started_by_us:
        return "left running (attached)"
    from scripts.stack import running_pid, services

    result = stack_cli(handle.env, "down")
    if result.returncode != 0:  # never leave ours running: what `down` could not stop, by verified pid
        for service in services(handle.config):
            pid = running_pid(handle.config, service)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
    if progress:
        for line in result.stdout.strip().splitlines():
            progress.log(f"   {line}")
    if result.returncode != 0:
        raise DemoError(f"`scripts.stack down` failed: {result.stderr.strip()[-300:]}")
    return "stopped"


# -- steady load through the public entry --------------------------------------------------------
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


# -- releases ------------------------------------------------------------------------------------
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
            progress.log(f"   step over {analysis.get('range')}: canary {c.get('requests', 0):g} req "
                         f"p99 {_ms(c.get('p99_latency_s'))} success {_rate(c.get('success_rate'))} | stable "
                         f"{s.get('requests', 0):g} req p99 {_ms(s.get('p99_latency_s'))} -> "
                         f"{(analysis.get('decision') or {}).get('action')}: "
                         f"{(analysis.get('decision') or {}).get('reason')}")
        if not release.running and release.pending is None:
            return release
        if time.monotonic() > deadline:
            raise DemoError(f"release {release_id} still undecided after {timeout_s:g}s "
                            f"(see {handle.state_dir / 'logs' / 'function-release.log'})")
        time.sleep(1.0)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}ms"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def wait_no_release_running(handle: StackHandle, progress: Progress, timeout_s: float) -> None:
    release = current_release(handle)
    if release is not None and release.running:
        progress.log(f"   waiting for the running release {release.id} to finish first")
        wait_for(lambda: not (current_release(handle) or release).running, f"release {release.id} to finish",
                 timeout_s, 2.0)


# -- the replica killer --------------------------------------------------------------------------
def _ppid_and_state(pid: int) -> tuple[int, str] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0]


def replica_pids(handle: StackHandle, function: str) -> list[int]:
    """Live replica processes of `function`, from the runtime's replica state file
    (`<state>/run/localfaas-replicas.json`), that are children of the runtime process this driver
    started (so a pid reused by anything else is never chosen)."""
    runtime = handle.runtime_pid()
    state = read_replica_state(handle.state_dir)
    if runtime is None or state.get("runtime_pid") != runtime:
        return []
    found = []
    for replica in state["functions"].get(function, []):
        pid = int(replica["pid"])
        info = _ppid_and_state(pid)
        if info is not None and info[0] == runtime and info[1] != "Z" and pid not in found:
            found.append(pid)
    return found


def kill_one_replica(handle: StackHandle, function: str, progress: Progress, timeout_s: float = 90) -> dict[str, Any]:
    if not handle.started_by_us:
        raise DemoError("refusing to kill a replica of a stack this driver did not start")
    before = replica_pids(handle, function)
    wanted = int(handle.functions().get(function, {}).get("replicas", 0))
    if not before:
        raise DemoError(f"no live replica of {function} in the runtime's state file (see "
                        f"{handle.state_dir / 'logs' / 'localfaas.log'})")
    victim = before[-1]
    progress.log(f"   kill -9 {function} replica pid {victim} (live replicas {before})")
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)

    def restored() -> list[int] | None:
        pids = [p for p in replica_pids(handle, function) if p != victim]
        available = int(handle.functions().get(function, {}).get("availableReplicas", 0))
        return pids if len(pids) >= wanted and available >= wanted else None

    after = wait_for(restored, f"{function} back to {wanted} ready replicas after the kill", timeout_s, 0.2)
    seconds = round(time.monotonic() - t0, 2)
    progress.log(f"   {function} back to {wanted} ready replicas in {seconds}s (replicas now {after})")
    return {"function": function, "killed_pid": victim, "replicas_before": before, "replicas_after": after,
            "restored_s": seconds}


# -- the lifecycle -------------------------------------------------------------------------------
@dataclass
class LifecycleOptions:
    drill_delay_ms: int = 300
    drill_error_rate: float = 0.0
    load_rate: float = 25.0
    load_threads: int = 4
    kill_replica: bool = True
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


def run_drill(handle: StackHandle, options: LifecycleOptions, progress: Progress) -> str:
    """Start a canary release of a deliberately bad model (`scripts.release drill-bad-model`);
    returns the drill version."""
    argv = [sys.executable, "-m", "scripts.release", "drill-bad-model", "--delay-ms", str(options.drill_delay_ms)]
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

        if options.kill_replica and handle.started_by_us:
            load.phase = "replica killed"
            with progress.phase("kill -9 a recommend replica under load"):
                result.kill = kill_one_replica(handle, "recommend", progress)
                time.sleep(5.0)  # traffic on the restored set too
        load.phase = "end"
    finally:
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


# -- the report ----------------------------------------------------------------------------------
def query_range(prometheus_url: str, promql: str, start: float, end: float, step: float) -> list[tuple[float, float]]:
    """The points of a range query for the report ([] when Prometheus cannot answer: best effort)."""
    try:
        return PrometheusClient(prometheus_url, attempts=1).query_range(promql, start, end, step)
    except (PrometheusError, ValueError, KeyError, IndexError, TypeError):
        return []


def range_queries(function: str, rate_window: str = "15s") -> dict[str, str]:
    """The report's series per variant, from the release's PromQL templates (the one source)."""
    from movierec.release import promql

    sel = promql.function_is(function, NAMESPACE)
    return {
        "p50": promql.latency_quantile(0.5, sel, rate_window),
        "p99": promql.latency_quantile(0.99, sel, rate_window),
        "success_rate": promql.success_rate(sel, rate_window),
    }


def release_series(handle: StackHandle, release: dict[str, Any], until: float | None = None) -> dict[str, dict[str, list]]:
    """Per variant, p50/p99 latency and success rate over the release, from 10 s before it to 15 s
    after the decision (or `until`, the next release's start, whichever is first)."""
    start = datetime.fromisoformat(release["started"]).timestamp() - 10
    end = datetime.fromisoformat(release["decided"] or release["updated"]).timestamp() + 15
    end = min(end, time.time(), until or float("inf"))
    series = {}
    for variant, function in (("canary", "recommend-canary"), ("stable", "recommend")):
        series[variant] = {name: query_range(handle.prometheus_url, q, start, end, 2)
                           for name, q in range_queries(function).items()}
    return series


def draw_report(releases: list[dict[str, Any]], series: dict[str, dict], path: Path) -> Path | None:
    if not releases:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(releases), 2, figsize=(13, 3.6 * len(releases)), squeeze=False)
    colours = {"canary": "tab:red", "stable": "tab:blue"}
    for row, release in zip(axes, releases):
        t0 = datetime.fromisoformat(release["started"]).timestamp()
        decided = datetime.fromisoformat(release["decided"]).timestamp() if release.get("decided") else None
        data = series.get(release["id"], {})
        latency, success = row
        for variant, colour in colours.items():
            for name, style in (("p50", "-"), ("p99", "--")):
                points = data.get(variant, {}).get(name, [])
                if points:
                    latency.plot([t - t0 for t, _ in points], [v * 1000 for _, v in points], style, color=colour,
                                 label=f"{variant} {name}")
            points = data.get(variant, {}).get("success_rate", [])
            if points:
                success.plot([t - t0 for t, _ in points], [v * 100 for _, v in points], color=colour, label=variant)
        for ax in row:
            ax.axvline(0, color="grey", lw=0.8)
            if decided is not None:
                ax.axvline(decided - t0, color="black", lw=1, ls=":")
            ax.set_xlabel("seconds since the canary started (dotted: decision)")
            ax.grid(alpha=0.3)
        latency.set_ylabel("gateway latency (ms)")
        latency.set_yscale("log")
        success.set_ylabel("success rate (% non-5xx)")
        success.set_ylim(min(90.0, success.get_ylim()[0]), 100.5)
        latency.set_title(f"{release['state'].upper()}: canary {release['candidate']}\nvs stable {release['stable']}",
                          fontsize=8, loc="left")
        success.set_title(f"{release['id']}\n{release['reason'][:75]}", fontsize=8, loc="left")
        latency.legend(fontsize=7, loc="upper left")
        success.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def release_lines(release: dict[str, Any]) -> list[str]:
    analysis = release.get("analysis") or {}
    metrics = analysis.get("metrics") or {}
    lines = [
        f"### {release['id']}: {release['state']}",
        "",
        f"- versions: candidate `{release['candidate']}`, stable `{release['stable']}`",
        (f"- decision: **{release['state']}** by {release['actor']} at {release['decided']} "
         f"(started {release['started']})"),
        f"- reason: {release['reason']}",
        f"- notification: {', '.join(f'{k} {v}' for k, v in (release.get('notifications') or {}).items()) or 'none configured'}",
        "",
        "| variant | requests | errors | success rate | mean latency | p99 latency |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant in ("canary", "stable"):
        m = metrics.get(variant) or {}
        lines.append(f"| {variant} | {m.get('requests', 0):g} | {m.get('errors', 0):g} | "
                     f"{_rate(m.get('success_rate'))} | {_ms(m.get('mean_latency_s'))} | {_ms(m.get('p99_latency_s'))} |")
    checks = (analysis.get("decision") or {}).get("checks") or []
    if checks:
        lines += ["", "checks:"]
        lines += [f"- {'pass' if c['passed'] else 'FAIL'} {c['name']}: {c['detail']}" for c in checks]
    queries = analysis.get("queries") or {}
    if queries:
        lines += ["", f"queries (range {analysis.get('range')}, at {analysis.get('at')}):", "", "```"]
        for variant, q in queries.items():
            lines += [f"{variant} {name}: {promql}" for name, promql in q.items()]
        lines += ["```"]
    return lines + [""]


def write_report(handle: StackHandle, result: LifecycleResult, out: Path, progress: Progress,
                 notifications: dict[str, Any] | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    figures = result.load()
    starts = [datetime.fromisoformat(r["started"]).timestamp() for r in result.releases]
    series = {r["id"]: release_series(handle, r, until=next_start)
              for r, next_start in zip(result.releases, [*starts[1:], None])}
    picture = draw_report(result.releases, series, out / "report.png")
    report = {
        "phases": result.phases,
        "versions": result.versions,
        "load": figures,
        "releases": result.releases,
        "stable_after_drill": result.stable_after_drill,
        "replica_kill": result.kill,
        "trainings": result.trainings,
        "notifications_received": notifications or {},
        "picture": str(picture) if picture else None,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    total = figures["total"]
    md = ["# movierec lifecycle demo", "",
          f"Versions: {', '.join(f'{k} `{v}`' for k, v in result.versions.items())}", "",
          "## Phases", "", "| phase | seconds | ok |", "| --- | ---: | --- |"]
    md += [f"| {p['phase']} | {p['seconds']} | {'yes' if p['ok'] else 'NO'} |" for p in result.phases]
    md += ["", "## Client traffic through the public entry (nginx)", "",
           "| phase | requests | failures | drill faults | p50 ms | p99 ms | max ms |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, f in [*figures["phases"].items(), ("all", total)]:
        md.append(f"| {name} | {f['requests']} | {f['failures']} | {f['drill_faults']} | {f['p50_ms']} | "
                  f"{f['p99_ms']} | {f['max_ms']} |")
    md += ["", ("A failure is a connection error, a timeout or a 5xx from the public entry; a drill model's "
                "deliberate 500s from the canary during its drill are counted apart as drill faults."), ""]
    if result.kill:
        md += [(f"Replica kill: `kill -9` of recommend pid {result.kill['killed_pid']}, back to full strength in "
                f"{result.kill['restored_s']} s (replicas now {result.kill['replicas_after']})."), ""]
    md += ["## Releases", ""]
    for release in result.releases:
        md += release_lines(release)
    if notifications:
        md += ["## Notifications received", ""]
        md += [f"- {channel}: {', '.join(items) or 'none'}" for channel, items in notifications.items()]
        md.append("")
    if picture:
        md += ["![canary vs stable](report.png)", ""]
    (out / "report.md").write_text("\n".join(md))

    progress.log("== release report")
    for release in result.releases:
        for line in release_lines(release):
            if line.startswith("queries"):
                break  # the PromQL is in report.md / report.json
            if line and not line.startswith("|"):
                progress.log(f"   {line}")
        for variant, m in ((release.get("analysis") or {}).get("metrics") or {}).items():
            progress.log(f"   {variant:<7} {m.get('requests', 0):g} requests, {m.get('errors', 0):g} errors, success "
                         f"{_rate(m.get('success_rate'))}, mean {_ms(m.get('mean_latency_s'))}, "
                         f"p99 {_ms(m.get('p99_latency_s'))}")
    progress.log(f"   client traffic: {total['requests']} requests, {total['failures']} failures, "
                 f"{total['drill_faults']} expected drill faults, p50 {total['p50_ms']} ms, p99 {total['p99_ms']} ms")
    for p in result.phases:
        progress.log(f"   phase {p['phase']:<45} {p['seconds']:>6}s")
    progress.log(f"   wrote {out / 'report.md'}, {out / 'report.json'}" + (f", {picture}" if picture else ""))
    return report


# -- the command ---------------------------------------------------------------------------------
@contextlib.contextmanager
def notification_receivers(env: dict[str, str], own_stack: bool) -> Iterator[dict[str, Any] | None]:
    """Receive the release notifications ourselves when the caller configured none (the webhook
    and SMTP receivers of scripts/sinks.py), so the demo shows what was delivered. Only for a stack
    we start: an attached stack's functions already have their own settings."""
    if not own_stack or env.get("NOTIFY_WEBHOOK_URL") or env.get("SMTP_HOST"):
        yield None
        return
    from scripts.sinks import SMTPSink, WebhookReceiver

    with WebhookReceiver() as hook, SMTPSink() as smtp:
        env.update({"NOTIFY_WEBHOOK_URL": hook.url, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port),
                    "SMTP_FROM": "movierec-demo@localhost", "SMTP_TO": "release-watchers@localhost"})
        yield {"webhook": hook, "email": smtp}


def received(sinks: dict[str, Any] | None) -> dict[str, list[str]]:
    if not sinks:
        return {}
    return {"webhook": [b.get("subject", "?") for b in sinks["webhook"].bodies],
            "email": [str(m["Subject"]) for m in sinks["email"].messages]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--attach", action="store_true",
                        help="drive the already running `make up` stack (URLs from env) instead of starting one")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="report folder (default var/demo)")
    parser.add_argument("--drill-delay-ms", type=int, default=300, help="the drill model's added latency")
    parser.add_argument("--drill-error-rate", type=float, default=0.0,
                        help="share of the drill model's answers that are 500s (counted as drill faults)")
    parser.add_argument("--load-rate", type=float, default=25.0, help="steady client requests per second")
    parser.add_argument("--no-kill", action="store_true", help="skip killing a recommend replica")
    parser.add_argument("--keep-state", action="store_true", help="keep the temp state dir (logs, store)")
    args = parser.parse_args(argv)
    progress = Progress()
    options = LifecycleOptions(drill_delay_ms=args.drill_delay_ms, drill_error_rate=args.drill_error_rate,
                               load_rate=args.load_rate, kill_replica=not args.no_kill)
    env = attach_env() if args.attach else local_stack_env()
    temp_state = not args.attach and not os.environ.get("STACK_STATE_DIR")
    handle = None
    failed = True
    try:
        with notification_receivers(env, own_stack=not args.attach) as sinks:
            if args.attach:
                handle = handle_for(env, started_by_us=False)
                progress.log(f"attached to the stack at {handle.gateway_url} (state {handle.state_dir})")
                if not handle.functions():
                    raise DemoError(f"no stack answers at {handle.gateway_url}: run `make up` first")
            else:
                with progress.phase("stack up"):
                    handle = bring_up(env, progress)
            result = run_lifecycle(handle, options, progress)
            time.sleep(1.0)  # the last notifications are sent before the release record is saved
            write_report(handle, result, Path(args.out), progress, received(sinks))
            failed = False
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
    finally:
        if handle is not None and handle.started_by_us:
            with progress.phase("stack down"):
                bring_down(handle, progress)
            if temp_state and not args.keep_state and not failed:
                shutil.rmtree(handle.state_dir, ignore_errors=True)
            elif temp_state:
                progress.log(f"state (logs, store) kept in {handle.state_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
