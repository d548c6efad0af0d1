"""Running functions as local replica processes, the way OpenFaaS runs them as containers.

Owns: each function's replicas (one process per replica, on its own free 127.0.0.1 port, with the
function's environment and a private secrets folder), readiness (`/_/ready` must return 200 before a
replica gets traffic), liveness checks, restart after a crash with backoff, scaling, rolling updates
(new replicas ready before old ones stop getting traffic; old ones drained, then SIGTERM, then
SIGKILL), stopping every process it started, by PID, and the replica state file
`<state>/run/localfaas-replicas.json` (`REPLICAS_FILE`): `{"runtime_pid": N, "functions": {name:
[{"pid", "port", "generation", "index"}, ...]}}`, every replica process that has not exited yet
(draining ones too), rewritten atomically whenever a replica starts or exits, so operator tools
find replica pids without reading logs (`read_replica_state`). Written by a live runtime only:
after a SIGKILL of the runtime it is stale, so readers check `runtime_pid` and each pid's parent.
Must not touch: HTTP routing of client requests (the gateway picks replicas through `pick`/`lease`),
stack parsing, building, and any process it did not start.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from localfaas.build import BuildContext, process_command
from localfaas.stackfile import DEFAULT_NAMESPACE, FunctionSpec

log = logging.getLogger("localfaas.supervisor")

SCALE_MIN_LABEL = "com.openfaas.scale.min"
REPLICAS_FILE = Path("run") / "localfaas-replicas.json"
DEFAULT_EXEC_TIMEOUT = 30.0  # of-watchdog's default when a function sets no timeout
# What a replica inherits from the runtime's own environment: enough to run a process, nothing
# else, so a function only sees what its stack entry gives it (as in a container).
PASSTHROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "VIRTUAL_ENV")

_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: replicas then outlive a SIGKILLed runtime
    _prctl = None


def _die_with_parent() -> None:
    # If the runtime itself is SIGKILLed, its replicas get SIGTERM instead of living on orphaned.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class DeployError(RuntimeError):
    """A deploy, update or scale that could not be carried out; the message says why."""


class MissingSecretError(DeployError):
    pass


class FunctionNotFound(KeyError):
    def __str__(self) -> str:
        return f"function {self.args[0]} not found"


def parse_duration(text: str) -> float:
    """Go-style durations as of-watchdog reads them: "10s", "1m30s", "500ms"; a bare number is seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r} (use e.g. 30s, 2m, 500ms)")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


@dataclass(frozen=True)
class FunctionConfig:
    """What a deployment says about a function (the FunctionDeployment of the gateway API)."""

    name: str
    image: str = ""
    namespace: str = DEFAULT_NAMESPACE
    env_process: str = ""
    env_vars: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    limits: dict[str, str] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=dict)
    constraints: tuple[str, ...] = ()
    read_only_root_filesystem: bool = False

    @classmethod
    def from_spec(cls, spec: FunctionSpec) -> FunctionConfig:
        return cls(
            name=spec.name, image=spec.image, namespace=spec.namespace, env_process=spec.fprocess,
            env_vars=dict(spec.environment), labels=dict(spec.labels), annotations=dict(spec.annotations),
            secrets=tuple(spec.secrets), limits=dict(spec.limits), requests=dict(spec.requests),
            constraints=tuple(spec.constraints), read_only_root_filesystem=spec.readonly_root_filesystem,
        )

    def min_replicas(self) -> int:
        raw = self.labels.get(SCALE_MIN_LABEL, "1")
        try:
            return max(0, int(raw))
        except ValueError:
            raise DeployError(f"function {self.name}: label {SCALE_MIN_LABEL}={raw!r} is not a number") from None

    def exec_timeout(self) -> float:
        for key in ("exec_timeout", "write_timeout"):
            if self.env_vars.get(key):
                try:
                    return parse_duration(self.env_vars[key])
                except ValueError as exc:
                    raise DeployError(f"function {self.name}: {key}: {exc}") from None
        return DEFAULT_EXEC_TIMEOUT


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` so that a reader sees the old content or the new one, never a part."""
    tmp = path.parent / f".{path.name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def read_replica_state(state_dir: str | Path) -> dict[str, Any]:
    """The replica state file of the runtime using `state_dir` (see the module docstring);
    no runtime and no functions when there is none (yet) or it cannot be read."""
    try:
        state = json.loads((Path(state_dir) / REPLICAS_FILE).read_text())
    except (OSError, ValueError):
        return {"runtime_pid": None, "functions": {}}
    return state if isinstance(state, dict) and isinstance(state.get("functions"), dict) else {
        "runtime_pid": None, "functions": {}}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Replica:
    def __init__(self, function: str, generation: int, index: int, port: int,
                 process: asyncio.subprocess.Process):
        self.function = function
        self.generation = generation
        self.index = index
        self.port = port
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.started_at = time.monotonic()
        self.ready = False
        self.stopping = False  # set before drain: no new traffic, never restarted
        self.inflight = 0
        self.health_failures = 0
        self.awaiting_ready = False  # a readiness wait owns this replica
        self.exited = asyncio.Event()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def __repr__(self) -> str:
        return f"<replica {self.function} g{self.generation}#{self.index} pid={self.pid} :{self.port}>"


class FunctionRuntime:
    """One deployed function: its config, build context and current replicas."""

    def __init__(self, config: FunctionConfig, context: BuildContext, desired: int):
        self.config = config
        self.context = context
        self.desired = desired
        self.generation = 0
        self.replicas: list[Replica] = []  # the current generation (starting, ready or crashed-and-replacing)
        self.created_at = datetime.now(UTC)
        self.invocation_count = 0.0
        self.crash_streak = 0
        self.last_error = ""
        self.lock = asyncio.Lock()  # one deploy/update/scale/delete at a time
        self._rr = itertools.count()

    def ready_replicas(self) -> list[Replica]:
        return [r for r in self.replicas if r.ready and not r.stopping and r.alive]

    def pick(self, exclude: set[int] = frozenset()) -> Replica | None:
        """Round-robin over ready replicas, skipping those (by pid) that just failed this request."""
        ready = [r for r in self.ready_replicas() if r.pid not in exclude]
        if not ready:
            return None
        return ready[next(self._rr) % len(ready)]


class Supervisor:
    def __init__(self, state_dir: str | Path, *, ready_timeout: float = 60.0, health_interval: float = 2.0,
                 drain_timeout: float = 30.0, stop_grace: float = 5.0, max_backoff: float = 10.0):
        self.state_dir = Path(state_dir).resolve()
        self.ready_timeout = ready_timeout
        self.health_interval = health_interval
        self.drain_timeout = drain_timeout
        self.stop_grace = stop_grace
        self.max_backoff = max_backoff
        self.functions: dict[str, FunctionRuntime] = {}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._health_task: asyncio.Task[None] | None = None
        self._draining: list[Replica] = []  # out of rotation, waiting for in-flight requests
        self._live: dict[int, Replica] = {}  # pid -> every replica process that has not exited yet
        self._closing = False

    # ----- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        for sub in ("logs", "run", "secrets"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        self._health_task = asyncio.create_task(self._health_loop())
        self._write_replica_state()  # replaces a stale file a killed runtime left behind

    async def close(self) -> None:
        """Stop every replica this supervisor started (SIGTERM, then SIGKILL), then itself."""
        self._closing = True
        if self._health_task:
            self._health_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        current = [r for fn in self.functions.values() for r in fn.replicas]
        replicas = {r.pid: r for r in [*current, *self._draining, *self._live.values()]}  # each once
        await asyncio.gather(*(self._terminate(r, drain=False) for r in replicas.values()), return_exceptions=True)
        self._live = {pid: r for pid, r in self._live.items() if r.alive}
        self._write_replica_state()
        if self._session:
            await self._session.close()

    def _spawn_task(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ----- queries ---------------------------------------------------------------------------
    def get(self, name: str) -> FunctionRuntime:
        try:
            return self.functions[name]
        except KeyError:
            raise FunctionNotFound(name) from None

    @contextlib.contextmanager
    def lease(self, replica: Replica) -> Iterator[Replica]:
        """Count a request in flight on a replica, so draining waits for it."""
        replica.inflight += 1
        try:
            yield replica
        finally:
            replica.inflight -= 1

    def report_connection_failure(self, replica: Replica) -> None:
        """The gateway could not reach a replica: take it out of rotation until a probe says ready."""
        if replica.ready:
            replica.ready = False
            self._spawn_task(self._reprobe(replica))

    async def wait_ready(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fn = self.functions.get(name)
            if fn is None or fn.desired == 0:
                return False
            if fn.ready_replicas():
                return True
            await asyncio.sleep(0.05)
        return False

    # ----- deploy / update / scale / remove --------------------------------------------------
    async def deploy(self, config: FunctionConfig, context: BuildContext) -> None:
        """Create the function, or roll it to the new config when it exists already.
        Returns once the new replicas are ready; raises DeployError when they never are."""
        existing = self.functions.get(config.name)
        if existing is not None:
            await self.update(config, context)
            return
        desired = config.min_replicas()
        runtime = FunctionRuntime(config, context, desired)
        self._prepare_secrets(config)
        self.functions[config.name] = runtime
        async with runtime.lock:
            runtime.generation = 1
            starting = [await self._start_replica(runtime, i) for i in range(desired)]
            runtime.replicas = starting
            for replica in starting:
                self._watch(runtime, replica)
        # The readiness wait runs outside the lock: with nothing old to keep serving, an update
        # that arrives meanwhile (e.g. the config that makes it ready) must not queue behind it.
        ready = not starting or await self._all_ready(starting)
        if runtime.generation != 1 or self.functions.get(config.name) is not runtime:
            return  # superseded by an update or removed while starting: that call reports
        if not ready:
            runtime.last_error = self._not_ready_message(runtime, starting)
            # Like a Deployment in CrashLoopBackOff: it stays, and crashed replicas keep restarting.
            raise DeployError(runtime.last_error)
        runtime.last_error = ""

    async def update(self, config: FunctionConfig, context: BuildContext | None = None) -> None:
        """Rolling update: the new generation must be ready before the old one loses traffic."""
        runtime = self.get(config.name)
        self._prepare_secrets(config)
        async with runtime.lock:
            context = context or runtime.context
            # A redeploy keeps a scale-up made through the API, but honours a raised minimum.
            desired = max(runtime.desired, config.min_replicas()) if SCALE_MIN_LABEL in config.labels \
                else runtime.desired
            generation = runtime.generation + 1
            candidate = FunctionRuntime(config, context, desired)
            candidate.generation = generation
            new = [await self._start_replica(candidate, i) for i in range(desired)]
            if new and not await self._all_ready(new):
                message = self._not_ready_message(candidate, new)
                await asyncio.gather(*(self._terminate(r, drain=False) for r in new))
                runtime.last_error = f"{message}; still serving the previous version"
                log.error("%s", runtime.last_error)
                raise DeployError(runtime.last_error)
            old = runtime.replicas
            # The switch: one assignment, so every request sees either the old set or the new one.
            runtime.config, runtime.context, runtime.desired = config, context, desired
            runtime.generation, runtime.replicas = generation, new
            runtime.crash_streak, runtime.last_error = 0, ""
            for replica in new:
                self._watch(runtime, replica)
            log.info("function %s: generation %d ready on %s; draining %d old replica(s)",
                     config.name, generation, [r.port for r in new], len(old))
            for replica in old:
                self._spawn_task(self._terminate(replica, drain=True))

    async def scale(self, name: str, replicas: int) -> None:
        if replicas < 0:
            raise DeployError(f"function {name}: replicas must be >= 0, got {replicas}")
        runtime = self.get(name)
        async with runtime.lock:
            runtime.desired = replicas
            current = [r for r in runtime.replicas if not r.stopping]
            if len(current) < replicas:
                used = {r.index for r in current}
                free = (i for i in itertools.count() if i not in used)
                for _ in range(replicas - len(current)):
                    replica = await self._start_replica(runtime, next(free))
                    runtime.replicas.append(replica)
                    self._watch(runtime, replica)
                    self._spawn_task(self._await_ready(replica))
            elif len(current) > replicas:
                # Shed replicas that are not serving first, then the newest.
                victims = sorted(current, key=lambda r: (r.ready, r.index), reverse=False)[: len(current) - replicas]
                for replica in victims:
                    runtime.replicas.remove(replica)
                    self._spawn_task(self._terminate(replica, drain=True))

    async def remove(self, name: str) -> None:
        runtime = self.get(name)
        async with runtime.lock:
            del self.functions[name]
            replicas, runtime.replicas, runtime.desired = runtime.replicas, [], 0
            await asyncio.gather(*(self._terminate(r, drain=True) for r in replicas))
            shutil.rmtree(self._secrets_dir(name), ignore_errors=True)

    # ----- processes -------------------------------------------------------------------------
    def _secrets_dir(self, name: str) -> Path:
        return self.state_dir / "run" / "secrets" / name

    def _prepare_secrets(self, config: FunctionConfig) -> None:
        source = self.state_dir / "secrets"
        missing = [s for s in config.secrets if not (source / s).is_file()]
        if missing:
            path = source / missing[0]
            raise MissingSecretError(
                f"function {config.name}: secret {missing[0]!r} not found: create {path} "
                f"(e.g. printf '%s' VALUE > {path} && chmod 600 {path})"
            )
        target = self._secrets_dir(config.name)
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o700)
        for stale in target.iterdir():
            if stale.name not in config.secrets:
                stale.unlink()
        for secret in config.secrets:
            self._copy_secret(source / secret, target)

    @staticmethod
    def _copy_secret(source: Path, target: Path) -> None:
        write_atomic(target / source.name, source.read_bytes())  # a replica sees the old or the new value

    def refresh_secret(self, name: str) -> list[str]:
        """A secret's value changed: update it for every function that mounts it, without a restart
        (as a mounted Kubernetes secret is updated in place). Returns those functions' names."""
        source = self.state_dir / "secrets" / name
        refreshed = []
        for fn in self.functions.values():
            target = self._secrets_dir(fn.config.name)
            if name in fn.config.secrets and source.is_file() and target.is_dir():
                self._copy_secret(source, target)
                refreshed.append(fn.config.name)
        return refreshed

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"function-{name}.log"

    async def _start_replica(self, runtime: FunctionRuntime, index: int) -> Replica:
        config = runtime.config
        fprocess = config.env_process or runtime.context.fprocess
        argv = process_command(fprocess)
        port = free_port()
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
        env.update({"PYTHONUNBUFFERED": "1", "mode": "http", "fprocess": fprocess})
        env.update(config.env_vars)
        env.update({
            "PORT": str(port),
            "SECRETS_DIR": str(self._secrets_dir(config.name)),
            "HOSTNAME": f"{config.name}-{runtime.generation}-{index}",
        })
        with open(self.log_path(config.name), "ab") as logfile:  # noqa: ASYNC230 - a local append, instant
            process = await asyncio.create_subprocess_exec(
                *argv, cwd=runtime.context.path, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C on the runtime must not hit replicas before their drain
                preexec_fn=_die_with_parent,
            )
        replica = Replica(config.name, runtime.generation, index, port, process)
        log.info("function %s: started %r (%s)", config.name, replica, " ".join(argv))
        self._live[replica.pid] = replica
        self._write_replica_state()
        self._spawn_task(self._forget_on_exit(replica))
        return replica

    async def _forget_on_exit(self, replica: Replica) -> None:
        await replica.process.wait()
        self._live.pop(replica.pid, None)
        self._write_replica_state()

    def _write_replica_state(self) -> None:
        functions: dict[str, list[dict[str, int]]] = {name: [] for name in self.functions}
        for r in sorted(self._live.values(), key=lambda r: (r.function, r.generation, r.index, r.pid)):
            functions.setdefault(r.function, []).append(
                {"pid": r.pid, "port": r.port, "generation": r.generation, "index": r.index})
        state = {"runtime_pid": os.getpid(), "functions": functions}
        try:
            write_atomic(self.state_dir / REPLICAS_FILE, (json.dumps(state, indent=1) + "\n").encode(), 0o644)
        except OSError as exc:  # the file informs operators; replicas run without it
            log.warning("cannot write %s: %s", self.state_dir / REPLICAS_FILE, exc)

    def _watch(self, runtime: FunctionRuntime, replica: Replica) -> None:
        self._spawn_task(self._watch_exit(runtime, replica))

    async def _watch_exit(self, runtime: FunctionRuntime, replica: Replica) -> None:
        code = await replica.process.wait()
        replica.ready = False
        replica.exited.set()
        if replica.stopping or self._closing:
            return
        uptime = time.monotonic() - replica.started_at
        log.warning("function %s: %r exited with code %s after %.1fs; restarting (log: %s)",
                    replica.function, replica, code, uptime, self.log_path(replica.function))
        if replica not in runtime.replicas or self.functions.get(runtime.config.name) is not runtime:
            return
        runtime.crash_streak = 0 if uptime > 30 else runtime.crash_streak + 1
        delay = min(self.max_backoff, 0.25 * (2 ** max(0, runtime.crash_streak - 1)))
        await asyncio.sleep(delay)
        async with runtime.lock:
            if replica not in runtime.replicas or self._closing:
                return  # scaled down, removed or replaced while we waited
            fresh = await self._start_replica(runtime, replica.index)
            runtime.replicas[runtime.replicas.index(replica)] = fresh
            self._watch(runtime, fresh)
        await self._await_ready(fresh)

    async def _probe(self, replica: Replica, path: str) -> int | None:
        assert self._session is not None
        try:
            async with self._session.get(replica.url + path) as resp:
                await resp.read()
                return resp.status
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None

    async def _await_ready(self, replica: Replica, timeout: float | None = None) -> bool:
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        delay = 0.05
        replica.awaiting_ready = True
        try:
            while time.monotonic() < deadline and replica.alive and not replica.stopping:
                if await self._probe(replica, "/_/ready") == 200:
                    replica.ready = True
                    log.info("function %s: %r ready", replica.function, replica)
                    return True
                await asyncio.sleep(delay)
                delay = min(0.5, delay * 1.5)
            return False
        finally:
            replica.awaiting_ready = False

    async def _all_ready(self, replicas: list[Replica]) -> bool:
        results = await asyncio.gather(*(self._await_ready(r) for r in replicas))
        return all(results)

    def _not_ready_message(self, runtime: FunctionRuntime, replicas: list[Replica]) -> str:
        bad = [r for r in replicas if not r.ready]
        exited = [r for r in bad if not r.alive]
        why = (f"{len(exited)} exited (code {exited[0].process.returncode})" if exited
               else f"not ready after {self.ready_timeout:g}s")
        return (f"function {runtime.config.name}: {len(bad)} of {len(replicas)} new replica(s) failed: "
                f"{why}; see {self.log_path(runtime.config.name)}")

    async def _reprobe(self, replica: Replica) -> None:
        await asyncio.sleep(0.2)
        await self._await_ready(replica, timeout=self.ready_timeout)

    async def _terminate(self, replica: Replica, drain: bool) -> None:
        replica.stopping = True
        replica.ready = False
        if drain:
            self._draining.append(replica)
            deadline = time.monotonic() + self.drain_timeout
            while replica.inflight > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        try:
            if replica.alive:
                replica.process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(replica.process.wait(), self.stop_grace)
                except TimeoutError:
                    log.warning("function %s: %r ignored SIGTERM; SIGKILL", replica.function, replica)
                    replica.process.kill()
                    await replica.process.wait()
        except ProcessLookupError:
            pass
        finally:
            if replica in self._draining:
                self._draining.remove(replica)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            replicas = [r for fn in self.functions.values() for r in fn.replicas if r.alive and not r.stopping]
            await asyncio.gather(*(self._check(r) for r in replicas), return_exceptions=True)

    async def _check(self, replica: Replica) -> None:
        if not replica.ready:
            if replica.awaiting_ready:
                return  # still starting (or re-probing): its own readiness wait owns it
            # Its readiness wait ran out (e.g. no model yet, loaded later by a retry): keep
            # probing at the health interval so it joins the rotation once it can serve.
            if await self._probe(replica, "/_/ready") == 200 and not replica.stopping:
                replica.ready = True
                log.info("function %s: %r ready (late)", replica.function, replica)
            return
        health = await self._probe(replica, "/_/health")
        replica.health_failures = 0 if health == 200 else replica.health_failures + 1
        if replica.health_failures >= 3:
            log.error("function %s: %r failed 3 liveness checks; killing it", replica.function, replica)
            replica.ready = False
            with contextlib.suppress(ProcessLookupError):
                replica.process.kill()  # its exit watcher restarts it
            return
        if health == 200 and await self._probe(replica, "/_/ready") not in (200, None):
            log.warning("function %s: %r not ready any more; out of rotation", replica.function, replica)
            replica.ready = False
            self._spawn_task(self._reprobe(replica))

