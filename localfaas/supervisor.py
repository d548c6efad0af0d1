"""Running functions as local replica processes, the way OpenFaaS runs them as containers.

Owns: the deployed functions (`FunctionRuntime`: config, build context, desired and current
replicas, round-robin `pick`), deploy, scaling, rolling updates (new replicas ready before old
ones stop getting traffic; old ones drained, then stopped), restart after a crash with backoff,
the health loop over every function's replicas, each function's private secrets folder
(`<state>/run/secrets/<name>`, refreshed in place when a secret changes), and `lease` /
`report_connection_failure` / `wait_ready` for the gateway.
Must not touch: a replica process itself (`localfaas.replica` starts, probes and stops it and
writes the replica state file), HTTP routing of client requests (the gateway picks replicas
through `pick`/`lease`), stack parsing, building, and any process it did not start.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localfaas.build import BuildContext
from localfaas.functionconfig import (
    SCALE_MIN_LABEL,
    DeployError,
    FunctionConfig,
    FunctionNotFound,
    MissingSecretError,
)
from localfaas.replica import Replica, ReplicaProcesses, write_atomic

log = logging.getLogger("localfaas.supervisor")


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
        self.processes = ReplicaProcesses(self.state_dir, lambda: self.functions, ready_timeout=ready_timeout,
                                          drain_timeout=drain_timeout, stop_grace=stop_grace)
        self._health_task: asyncio.Task[None] | None = None
        self._closing = False

    # ----- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        for sub in ("logs", "run", "secrets"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.processes.open()
        self._health_task = asyncio.create_task(self._health_loop())

    async def close(self) -> None:
        """Stop every replica this supervisor started (SIGTERM, then SIGKILL), then itself."""
        self._closing = True
        if self._health_task:
            self._health_task.cancel()
        self.processes.cancel_tasks()
        await self.processes.stop_all([r for fn in self.functions.values() for r in fn.replicas])

    def _spawn_task(self, coro: Any) -> asyncio.Task[Any]:
        return self.processes.spawn(coro)

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
            self._spawn_task(self.processes.reprobe(replica))

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
        ready = not starting or await self.processes.all_ready(starting)
        if runtime.generation != 1 or self.functions.get(config.name) is not runtime:
            return  # superseded by an update or removed while starting: that call reports
        if not ready:
            runtime.last_error = self.processes.not_ready_message(config.name, starting)
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
            if new and not await self.processes.all_ready(new):
                message = self.processes.not_ready_message(config.name, new)
                await asyncio.gather(*(self.processes.terminate(r, drain=False) for r in new))
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
                self._spawn_task(self.processes.terminate(replica, drain=True))

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
                    self._spawn_task(self.processes.await_ready(replica))
            elif len(current) > replicas:
                # Shed replicas that are not serving first, then the newest.
                victims = sorted(current, key=lambda r: (r.ready, r.index), reverse=False)[: len(current) - replicas]
                for replica in victims:
                    runtime.replicas.remove(replica)
                    self._spawn_task(self.processes.terminate(replica, drain=True))

    async def remove(self, name: str) -> None:
        runtime = self.get(name)
        async with runtime.lock:
            del self.functions[name]
            replicas, runtime.replicas, runtime.desired = runtime.replicas, [], 0
            await asyncio.gather(*(self.processes.terminate(r, drain=True) for r in replicas))
            shutil.rmtree(self._secrets_dir(name), ignore_errors=True)


    # ----- secrets and replicas -------------------------------------------------------------------------
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
        return self.processes.log_path(name)

    async def _start_replica(self, runtime: FunctionRuntime, index: int) -> Replica:
        return await self.processes.start(runtime.config, runtime.context, runtime.generation, index,
                                          self._secrets_dir(runtime.config.name))

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
        await self.processes.await_ready(fresh)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            replicas = [r for fn in self.functions.values() for r in fn.replicas if r.alive and not r.stopping]
            await asyncio.gather(*(self.processes.check(r) for r in replicas), return_exceptions=True)
