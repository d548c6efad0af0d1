"""Running functions as local replica processes, the way OpenFaaS runs them as containers.

Owns: the deployed functions (`FunctionRuntime`: the desired config and image, desired replicas,
the serving generation and a rollout's pending one, round-robin `pick`), deploy (a restore at start
may adopt the replicas a killed runtime left running that deployment), scaling (0
allowed; at most `com.openfaas.scale.max`), scale from zero for a call, rolling updates as a
Deployment does them (the call returns once the new replicas are started; they take traffic only
when all are ready, then the old ones are drained and stopped; until then the old ones keep
serving, however long the new ones wait or crash-loop; a newer deploy replaces a pending rollout),
restart after a crash with backoff, the health loop over every replica, each function's private
secrets folder (`<state>/run/secrets/<name>`, refreshed in place when a secret changes), keeping
the deployment records (`localfaas.records`) and the image garbage collection (`localfaas.images`)
in step with every deploy, update, scale and delete, and `lease` / `report_connection_failure` /
`wait_ready` for the gateway.
Must not touch: a replica process itself (`localfaas.replica` starts, probes and stops it and
writes the replica state file), resolving images, HTTP routing of client requests (the gateway
picks replicas through `pick`/`lease`), stack parsing, building, and any process it did not start.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localfaas.functionconfig import (
    SCALE_MIN_LABEL,
    DeployError,
    FunctionConfig,
    FunctionNotFound,
    MissingSecretError,
)
from localfaas.images import Image, ImageStore
from localfaas.records import DeploymentRecords
from localfaas.replica import Replica, ReplicaProcesses, write_atomic

log = logging.getLogger("localfaas.supervisor")


class FunctionRuntime:
    """One deployed function: what it should run, and the replicas that run it."""

    def __init__(self, config: FunctionConfig, image: Image, desired: int, source: str = "api"):
        self.config, self.image = config, image  # the deployment as last asked for (its status)
        self.live_config, self.live_image = config, image  # what `replicas` run
        self.desired = desired
        self.source = source
        self.generation = 0  # of `replicas`
        self.replicas: list[Replica] = []  # the serving generation (starting, ready or being restarted)
        self.pending: list[Replica] = []  # a rollout's new generation: no traffic until all are ready
        self.pending_generation = 0
        self.created_at = datetime.now(UTC)
        self.invocation_count = 0.0
        self.crash_streak = 0
        self.crashed_generation = 0  # the newest generation a replica of which exited on its own
        self.last_error = ""
        self.lock = asyncio.Lock()  # one deploy/update/scale/delete at a time
        self._rr = itertools.count()

    def ready_replicas(self) -> list[Replica]:
        return [r for r in self.replicas if r.ready and not r.stopping and r.alive]

    def every_replica(self) -> list[Replica]:
        return [*self.replicas, *self.pending]

    def pick(self, exclude: set[int] = frozenset()) -> Replica | None:
        """Round-robin over ready replicas, skipping those (by pid) that just failed this request."""
        ready = [r for r in self.ready_replicas() if r.pid not in exclude]
        if not ready:
            return None
        return ready[next(self._rr) % len(ready)]


async def _settled_at_once(_timeout: float) -> bool:
    return True  # the gateway app routes from `ready_replicas` itself, at every call


class Supervisor:
    def __init__(self, state_dir: str | Path, *, ready_timeout: float = 60.0, health_interval: float = 2.0,
                 drain_timeout: float = 30.0, stop_grace: float = 5.0, max_backoff: float = 10.0,
                 images: ImageStore | None = None):
        self.state_dir = Path(state_dir).resolve()
        self.ready_timeout = ready_timeout
        self.health_interval = health_interval
        self.drain_timeout = drain_timeout
        self.stop_grace = stop_grace
        self.max_backoff = max_backoff
        self.functions: dict[str, FunctionRuntime] = {}
        self.images = images or ImageStore(self.state_dir / "images", {})
        self.records = DeploymentRecords(self.state_dir / "deployments")
        self.processes = ReplicaProcesses(self.state_dir, lambda: self.functions, ready_timeout=ready_timeout,
                                          drain_timeout=drain_timeout, stop_grace=stop_grace)
        self._health_task: asyncio.Task[None] | None = None
        self._closing = False
        # Waits (at most the seconds given) until calls reach what `ready_replicas` says: set by the
        # nginx data plane, whose configuration follows the replicas a moment later.
        self.routing_settled: Callable[[float], Awaitable[object]] = _settled_at_once

    # ----- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        for sub in ("logs", "run", "secrets"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.images.open()
        self.processes.open(self.images.get)
        self._health_task = asyncio.create_task(self._health_loop())

    async def close(self) -> None:
        """Stop every replica this supervisor started (SIGTERM, then SIGKILL), then itself."""
        self._closing = True
        if self._health_task:
            self._health_task.cancel()
        self.processes.cancel_tasks()
        await self.processes.stop_all([r for fn in self.functions.values() for r in fn.every_replica()])

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
    async def deploy(self, config: FunctionConfig, image: Image, *, source: str = "api",
                     replicas: int | None = None, wait: float = 0.0, adopt: bool = False) -> None:
        """Create the function, or roll it to the new config when it exists already. Returns once
        its replicas are started, or (with `wait`) once they serve or `wait` seconds have passed.
        `adopt` (a restore at start): replicas a killed runtime left running this very deployment
        are taken over instead of started (`ReplicaProcesses.adopt`); only the missing ones start."""
        if config.name in self.functions:
            await self.update(config, image, wait=wait)
            return
        self._prepare_secrets(config)
        desired = config.min_replicas() if replicas is None else replicas
        runtime = FunctionRuntime(config, image, desired, source)
        self.functions[config.name] = runtime
        async with runtime.lock:
            adopted = await self.processes.adopt(config, image, desired) if adopt else []
            generation = max((r.generation for r in adopted), default=1)
            runtime.generation = runtime.pending_generation = generation
            for replica in adopted:
                self._spawn_task(self._watch_exit(runtime, replica))
            used = {r.index for r in adopted}
            free = (i for i in itertools.count() if i not in used)
            runtime.replicas = adopted + [await self._start(runtime, config, image, generation, next(free))
                                          for _ in range(desired - len(adopted))]
            self._persist(runtime)
        await self._wait_serving(runtime, generation, wait)

    async def update(self, config: FunctionConfig, image: Image, *, wait: float = 0.0) -> None:
        """Rolling update: the new generation takes traffic once all of it is ready."""
        runtime = self.get(config.name)
        self._prepare_secrets(config)
        async with runtime.lock:
            if runtime.pending and runtime.config == config and runtime.image.digest == image.digest:
                generation = runtime.pending_generation  # the same deploy again (a retry): keep its rollout
                self._persist(runtime)
            else:
                generation = await self._replace(runtime, config, image)
        await self._wait_serving(runtime, generation, wait)

    async def _replace(self, runtime: FunctionRuntime, config: FunctionConfig, image: Image) -> int:
        """Start the new generation; it serves at once when nothing serves now, else after a rollout."""
        if runtime.pending:  # a newer deploy replaces a rollout still waiting
            log.info("function %s: generation %d replaced before it was ready", config.name,
                     runtime.pending_generation)
            for replica in runtime.pending:
                self._spawn_task(self.processes.terminate(replica, drain=False))
            runtime.pending = []
        # A redeploy keeps a scale made through the API, but honours a raised minimum.
        desired = max(runtime.desired, config.min_replicas()) if SCALE_MIN_LABEL in config.labels \
            else runtime.desired
        runtime.config, runtime.image, runtime.source = config, image, "api"
        runtime.desired = min(desired, config.max_replicas()) if desired else 0
        generation = runtime.pending_generation = max(runtime.generation, runtime.pending_generation) + 1
        new = [await self._start(runtime, config, image, generation, i) for i in range(runtime.desired)]
        if runtime.ready_replicas():
            runtime.pending = new
            self._spawn_task(self._roll_out(runtime, generation))
        else:  # nothing serving that could be kept: the new generation takes over at once
            self._switch(runtime, new, generation)
        self._persist(runtime)
        return generation

    def _switch(self, runtime: FunctionRuntime, new: list[Replica], generation: int) -> None:
        """The switch: one assignment, so every request sees either the old set or the new one."""
        old = runtime.replicas
        runtime.replicas, runtime.pending, runtime.generation = new, [], generation
        runtime.live_config, runtime.live_image = runtime.config, runtime.image
        runtime.crash_streak, runtime.last_error = 0, ""
        log.info("function %s: generation %d serving on %s; draining %d old replica(s)",
                 runtime.config.name, generation, [r.port for r in new], len(old))
        self._spawn_task(self._retire(old))

    async def _retire(self, old: list[Replica]) -> None:
        await asyncio.gather(*(self.processes.terminate(r, drain=True) for r in old))
        await asyncio.gather(*(r.process.wait() for r in old))
        await self.collect_images()

    async def _roll_out(self, runtime: FunctionRuntime, generation: int) -> None:
        started, told = time.monotonic(), False
        while not self._closing and self.functions.get(runtime.config.name) is runtime:
            if runtime.pending_generation != generation or runtime.generation >= generation:
                return  # replaced by a newer deploy, or already switched
            pending = runtime.pending
            if len(pending) == runtime.desired and all(r.ready and r.alive for r in pending):
                async with runtime.lock:
                    if runtime.pending_generation == generation and runtime.pending is pending \
                            and all(r.ready and r.alive for r in pending):
                        self._switch(runtime, pending, generation)
                        return
            if not told and time.monotonic() - started > self.ready_timeout:
                told = True  # not an error: like a Deployment whose new pods are not ready yet
                runtime.last_error = self.processes.failure_message(runtime.config.name, pending)
                log.info("%s; the previous version keeps serving until they are ready", runtime.last_error)
            await asyncio.sleep(0.05)

    async def _wait_serving(self, runtime: FunctionRuntime, generation: int, wait: float) -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and self.functions.get(runtime.config.name) is runtime:
            if runtime.pending_generation > generation or runtime.crashed_generation >= generation:
                return  # replaced by a newer deploy, or its replicas crash: waiting would not help
            if runtime.generation == generation and all(r.ready for r in runtime.replicas):
                # and whoever routes calls (the nginx data plane) sends them to these replicas now
                await self.routing_settled(max(0.0, deadline - time.monotonic()))
                return
            await asyncio.sleep(0.05)

    async def scale(self, name: str, replicas: int) -> int:
        """Set the desired replicas (0 allowed; above `com.openfaas.scale.max` means that max);
        returns the count set."""
        if replicas < 0:
            raise DeployError(f"function {name}: replicas must be >= 0, got {replicas}")
        runtime = self.get(name)
        async with runtime.lock:
            count = await self._set_replicas(runtime, replicas)
        await self.routing_settled(2.0)  # a replica taken away gets no call once this answers
        return count

    async def _set_replicas(self, runtime: FunctionRuntime, replicas: int) -> int:
        ceiling = runtime.config.max_replicas()
        if replicas > ceiling:
            log.info("function %s: %d replicas asked, %d at most (com.openfaas.scale.max)", runtime.config.name,
                     replicas, ceiling)
            replicas = ceiling
        runtime.desired = replicas
        await self._resize(runtime, runtime.replicas, runtime.live_config, runtime.live_image,
                           runtime.generation, replicas)
        if runtime.pending:
            await self._resize(runtime, runtime.pending, runtime.config, runtime.image,
                               runtime.pending_generation, replicas)
        self._persist(runtime)
        return replicas

    async def _resize(self, runtime: FunctionRuntime, replicas: list[Replica], config: FunctionConfig,
                      image: Image, generation: int, count: int) -> None:
        current = [r for r in replicas if not r.stopping]
        if len(current) < count:
            used = {r.index for r in current}
            free = (i for i in itertools.count() if i not in used)
            for _ in range(count - len(current)):
                replicas.append(await self._start(runtime, config, image, generation, next(free)))
        elif len(current) > count:
            # Shed replicas that are not serving first, then the newest.
            for replica in sorted(current, key=lambda r: (r.ready, -r.index))[: len(current) - count]:
                replicas.remove(replica)
                self._spawn_task(self.processes.terminate(replica, drain=True))

    async def scale_from_zero(self, name: str, timeout: float) -> bool:
        """A call to a function scaled to zero: start max(min, 1) replicas and wait, bounded, for one
        to be ready (the gateway's scale_from_zero)."""
        runtime = self.functions.get(name)
        if runtime is None:
            return False
        if runtime.desired == 0:
            async with runtime.lock:
                if runtime.desired == 0 and self.functions.get(name) is runtime:
                    target = max(runtime.config.min_replicas(), 1)
                    log.info("function %s: a call at 0 replicas; scaling from zero to %d", name, target)
                    await self._set_replicas(runtime, target)
        return await self.wait_ready(name, timeout)

    async def remove(self, name: str) -> None:
        runtime = self.get(name)
        async with runtime.lock:
            del self.functions[name]
            replicas, runtime.replicas, runtime.pending, runtime.desired = runtime.every_replica(), [], [], 0
            self.records.save(runtime.config, 0, runtime.image.digest, source=runtime.source, deleted=True)
            await asyncio.gather(*(self.processes.terminate(r, drain=True) for r in replicas))
            shutil.rmtree(self._secrets_dir(name), ignore_errors=True)
        await self.collect_images()

    def _persist(self, runtime: FunctionRuntime) -> None:
        self.records.save(runtime.config, runtime.desired, runtime.image.digest, source=runtime.source)

    async def collect_images(self) -> None:
        in_use = self.processes.in_use() | {d for fn in self.functions.values()
                                            for d in (fn.image.digest, fn.live_image.digest)}
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self.images.gc, in_use)

    # ----- secrets ---------------------------------------------------------------------------
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

    # ----- replicas --------------------------------------------------------------------------
    def log_path(self, name: str) -> Path:
        return self.processes.log_path(name)

    async def _start(self, runtime: FunctionRuntime, config: FunctionConfig, image: Image, generation: int,
                     index: int) -> Replica:
        replica = await self.processes.start(config, image, generation, index, self._secrets_dir(config.name))
        self._spawn_task(self._watch_exit(runtime, replica))
        self._spawn_task(self.processes.await_ready(replica))
        return replica

    async def _watch_exit(self, runtime: FunctionRuntime, replica: Replica) -> None:
        code = await replica.process.wait()
        replica.ready = False
        replica.exited.set()
        if replica.stopping or self._closing:
            return
        uptime = time.monotonic() - replica.started_at
        log.warning("function %s: %r exited with code %s after %.1fs; restarting (log: %s)",
                    replica.function, replica, code, uptime, self.log_path(replica.function))
        if replica not in runtime.every_replica() or self.functions.get(runtime.config.name) is not runtime:
            return
        runtime.crashed_generation = max(runtime.crashed_generation, replica.generation)
        runtime.crash_streak = 0 if uptime > 30 else runtime.crash_streak + 1
        delay = min(self.max_backoff, 0.25 * (2 ** max(0, runtime.crash_streak - 1)))
        await asyncio.sleep(delay)
        async with runtime.lock:
            group = next((g for g in (runtime.replicas, runtime.pending) if replica in g), None)
            if group is None or self._closing:
                return  # scaled down, removed or replaced while we waited
            fresh = await self._start(runtime, replica.config, replica.image, replica.generation, replica.index)
            group[group.index(replica)] = fresh

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            replicas = [r for fn in self.functions.values() for r in fn.every_replica()
                        if r.alive and not r.stopping]
            await asyncio.gather(*(self.processes.check(r) for r in replicas), return_exceptions=True)
