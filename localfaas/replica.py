"""Replica processes: starting one, adopting one an earlier runtime started, readiness, health, stopping.

Owns: the `Replica` (one process of a function, on its own free 127.0.0.1 port, with the function's
environment, the path of its private secrets folder, and its own folder `<state>/run/rootfs/<instance>.<id>`:
hard links to its image's read-only files, removed when it exits, like a container's writable
layer), `ReplicaProcesses`: starting a replica (its own session; nothing ties it to the runtime:
its output goes to a file, `<state>/run/output/<instance>.<id>.out`, that `LogBook.pump` copies into
the function log, so it serves on when the runtime is killed, as a container outlives its provider),
adopting at start what a killed runtime left (`open` + `adopt`: recorded in the replica state file,
still the same process, running the restored deployment's image and FunctionDeployment, answering
`/_/ready`; `stop_orphans` stops every other one, by pidfd), readiness (`/_/ready` must return 200
before a replica gets traffic; another answer is "waiting for" what it says, logged once, never an
error), liveness (`/_/health`; three failures kill it), draining then SIGTERM then SIGKILL, stopping
every process it started or adopted, and the replica state file (`localfaas.replicastate`),
rewritten whenever a replica starts, is adopted or exits.
Must not touch: which replicas a function should have (the supervisor decides: deploy, rolling
update, scale, restart after a crash), HTTP routing of client requests, stack parsing, building,
and any process it did not start or adopt (a recorded pid now another process is never signalled).
Size: just over 450 lines because starting, adopting, probing, draining and stopping a replica
share one table of live processes and ports (`ReplicaProcesses`); split, each part would reach into it.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp

from localfaas.build import process_command
from localfaas.functionconfig import FunctionConfig
from localfaas.images import Image, link_tree, remove_tree
from localfaas.logs import LogBook
from localfaas.replicastate import (
    REPLICAS_FILE,
    AdoptedProcess,
    boot_id,
    config_hash,
    read_replica_state,
    recorded_replicas,
    runtime_alive,
    same_process,
    start_ticks,
    write_atomic,
)

log = logging.getLogger("localfaas.replica")

# What a replica inherits from the runtime's own environment: enough to run a process, nothing
# else, so a function only sees what its stack entry gives it (as in a container).
PASSTHROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "VIRTUAL_ENV")
ADOPT_PROBE_S = 3.0  # how long a left-over replica has to answer /_/ready (any status) to be adopted
__all__ = ["REPLICAS_FILE", "Replica", "ReplicaProcesses", "read_replica_state", "write_atomic"]


def free_port(taken: set[int] = frozenset()) -> int:
    """A port free now and not in `taken` (the ports of replicas this runtime started: the kernel may
    hand a port just released by a probe to the next probe, and a server that binds with
    SO_REUSEPORT, as granian does, would then share it with another function silently)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port
    raise OSError("no free port on 127.0.0.1 outside the ones this runtime's replicas hold")


class Replica:
    def __init__(self, config: FunctionConfig, image: Image, generation: int, index: int, port: int,
                 process: asyncio.subprocess.Process | AdoptedProcess, rootfs: Path, output: Path,
                 started_wall: float | None = None):
        self.config = config  # what it was started with (a rollout may already want another)
        self.image = image
        self.function = config.name
        self.instance = f"{config.name}-{generation}-{index}"
        self.rootfs = rootfs
        self.output = output  # its stdout and stderr, copied into the function log
        self.start = start_ticks(process.pid)  # with the pid, which process this is (replicastate)
        self.adopted = isinstance(process, AdoptedProcess)
        self.generation = generation
        self.index = index
        self.port = port
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.started_wall = time.time() if started_wall is None else started_wall
        self.started_at = time.monotonic() - max(0.0, time.time() - self.started_wall)
        self.ready = False
        self.stopping = False  # set before drain: no new traffic, never restarted
        self.inflight = 0
        self.health_failures = 0
        self.awaiting_ready = False  # a readiness wait owns this replica
        self.waiting_for = ""  # what its readiness answer said while not ready (logged once)
        self.exited = asyncio.Event()  # set once the process is gone (its output then read to the end)
        self.config_hash = ""  # of the FunctionDeployment it runs (replicastate.config_hash)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def __repr__(self) -> str:
        return f"<replica {self.function} g{self.generation}#{self.index} pid={self.pid} :{self.port}>"


class ReplicaProcesses:
    """Every replica process this runtime started, and the background tasks that watch them."""

    def __init__(self, state_dir: Path, function_names: Callable[[], Iterable[str]], *,
                 ready_timeout: float, drain_timeout: float, stop_grace: float):
        self.state_dir = state_dir
        self.function_names = function_names  # listed in the state file even with no replica
        self.ready_timeout = ready_timeout
        self.drain_timeout = drain_timeout
        self.stop_grace = stop_grace
        self.logbook = LogBook(state_dir / "logs")
        self.rootfs_dir = state_dir / "run" / "rootfs"
        self._boot = boot_id()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pumps: set[asyncio.Task[Any]] = set()  # never cancelled: they end when the output does
        self._draining: list[Replica] = []  # out of rotation, waiting for in-flight requests
        self._live: dict[int, Replica] = {}  # pid -> every replica process that has not exited yet
        self._ports_starting: set[int] = set()  # given to a replica whose process is not in _live yet
        self._orphans: list[Replica] = []  # left by a killed runtime, not (yet) adopted
        self.output_dir = state_dir / "run" / "output"

    # ----- lifecycle -------------------------------------------------------------------------
    def open(self, image_of: Callable[[str], Image | None]) -> None:
        """Start: take over the replicas a killed runtime left running (`orphans`, until `adopt`
        claims them or `stop_orphans` stops them), remove what belonged to the others."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        for folder in (self.rootfs_dir, self.output_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._take_orphans(image_of)
        keep = {r.rootfs.name for r in self._live.values()} | {r.output.name for r in self._live.values()} | {
            r.output.with_suffix(".offset").name for r in self._live.values()}
        for folder in (self.rootfs_dir, self.output_dir):  # those of replicas that are gone
            for stale in folder.iterdir():
                if stale.name not in keep:
                    remove_tree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
        self.write_state()  # replaces the file an earlier runtime left behind

    def _take_orphans(self, image_of: Callable[[str], Image | None]) -> None:
        state = read_replica_state(self.state_dir)
        if runtime_alive(state) and state.get("runtime_pid") != os.getpid():
            log.warning("the runtime that wrote %s (pid %s) still runs: its replicas are left alone",
                        self.state_dir / REPLICAS_FILE, state.get("runtime_pid"))
            return
        for name, entry in recorded_replicas(state):
            try:
                start, port = entry["start"], int(entry["port"])
                rootfs, output = self.rootfs_dir / str(entry["rootfs"]), self.output_dir / str(entry["output"])
                generation, index = int(entry["generation"]), int(entry["index"])
            except (KeyError, TypeError, ValueError):
                continue  # a file of an older runtime: nothing to tell the process by
            if not same_process(entry["pid"], start, state.get("boot_id")) or "/" in rootfs.name + output.name:
                continue  # gone, or the pid is another process now: never signalled
            process = AdoptedProcess.open(entry["pid"], start)
            if process is None:
                continue
            digest = str(entry.get("digest") or "")
            image = image_of(digest) or Image(digest, rootfs, "")
            replica = Replica(FunctionConfig(name=name), image, generation, index, port, process, rootfs, output,
                              float(entry.get("startedAt") or time.time()))
            replica.config_hash = str(entry.get("config") or "")
            self._orphans.append(replica)
            self._watch(replica)
            log.info("function %s: %r left running by the previous runtime", name, replica)

    def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def stop_all(self, current: list[Replica]) -> None:
        """Stop `current` and every other replica started here (SIGTERM, then SIGKILL), then the
        probe session."""
        replicas = {r.pid: r for r in [*current, *self._draining, *self._orphans, *self._live.values()]}  # each once
        await asyncio.gather(*(self.terminate(r, drain=False) for r in replicas.values()), return_exceptions=True)
        self._live = {pid: r for pid, r in self._live.items() if r.alive}
        for replica in replicas.values():
            if not replica.alive:
                replica.exited.set()  # its pump reads the rest of its output, then stops
        if self._pumps:  # the last lines the replicas wrote
            await asyncio.wait(list(self._pumps), timeout=self.stop_grace)
        for replica in replicas.values():
            remove_tree(replica.rootfs)
            if not replica.alive:
                for path in (replica.output, replica.output.with_suffix(".offset")):
                    path.unlink(missing_ok=True)
        self.write_state()
        if self._session:
            await self._session.close()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def in_use(self) -> set[str]:
        """Digests of the images of every replica process still alive (draining ones too)."""
        return {r.image.digest for r in self._live.values() if r.alive}

    # ----- starting --------------------------------------------------------------------------
    def log_path(self, name: str) -> Path:
        return self.logbook.path(name)

    async def start(self, config: FunctionConfig, image: Image, generation: int, index: int,
                    secrets_dir: Path) -> Replica:
        fprocess = config.env_process or image.fprocess
        argv = process_command(fprocess)
        port = free_port({r.port for r in [*self._live.values(), *self._orphans]} | self._ports_starting)
        self._ports_starting.add(port)
        try:
            return await self._start_on(port, config, image, generation, index, secrets_dir, argv, fprocess)
        finally:
            self._ports_starting.discard(port)

    async def _start_on(self, port: int, config: FunctionConfig, image: Image, generation: int, index: int,
                        secrets_dir: Path, argv: list[str], fprocess: str) -> Replica:
        instance = f"{config.name}-{generation}-{index}"
        rootfs = self.rootfs_dir / f"{instance}.{secrets.token_hex(4)}"
        output = self.output_dir / f"{rootfs.name}.out"
        await asyncio.to_thread(link_tree, image.root, rootfs)
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
        env.update({"PYTHONUNBUFFERED": "1", "mode": "http", "fprocess": fprocess})
        env.update(config.env_vars)
        env.update({
            "PORT": str(port),
            "SECRETS_DIR": str(secrets_dir),
            "HOSTNAME": instance,
        })
        try:
            out = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:  # its output goes to a file, not a pipe: it must not die (EPIPE) with the runtime
                process = await asyncio.create_subprocess_exec(
                    *argv, cwd=rootfs, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C on the runtime must not hit replicas before their drain
                )
            finally:
                os.close(out)
        except OSError:
            remove_tree(rootfs)
            output.unlink(missing_ok=True)
            raise
        replica = Replica(config, image, generation, index, port, process, rootfs, output)
        replica.config_hash = config_hash(config.to_deployment())
        log.info("function %s: started %r from image %s (%s)", config.name, replica, image.digest[:19],
                 " ".join(argv))
        self._watch(replica)
        return replica

    def _watch(self, replica: Replica) -> None:
        """Count the replica as live, copy its output into the function log, forget it when it exits."""
        self._live[replica.pid] = replica
        self.write_state()
        pump = asyncio.create_task(self.logbook.pump(replica.function, replica.instance, replica.output,
                                                     replica.exited))
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)
        self.spawn(self._forget_on_exit(replica, pump))

    async def _forget_on_exit(self, replica: Replica, pump: asyncio.Task[Any]) -> None:
        await replica.process.wait()
        replica.ready = False
        replica.exited.set()  # the pump reads the output file to its end, then stops
        self._live.pop(replica.pid, None)
        if replica in self._orphans:
            self._orphans.remove(replica)
        await asyncio.wait([pump], timeout=self.stop_grace)
        await asyncio.to_thread(remove_tree, replica.rootfs)
        for path in (replica.output, replica.output.with_suffix(".offset")):
            path.unlink(missing_ok=True)
        self.write_state()

    # ----- adopting --------------------------------------------------------------------------
    def has_orphans(self, name: str) -> bool:
        return any(r.function == name for r in self._orphans)

    async def adopt(self, config: FunctionConfig, image: Image, count: int) -> list[Replica]:
        """Up to `count` left-over replicas that run exactly this deployment (image digest and
        FunctionDeployment) and answer `/_/ready` (200: ready now; another status: up, waiting for
        what it says); they become this runtime's replicas, with their pids, ports and instances."""
        wanted = config_hash(config.to_deployment())
        matching = sorted((r for r in self._orphans if r.function == config.name and r.alive
                           and r.image.digest == image.digest and r.config_hash == wanted),
                          key=lambda r: (-r.generation, r.index))[:count]
        answers = await asyncio.gather(*(self._probe_until_answer(r) for r in matching))
        adopted = []
        for replica, status in zip(matching, answers, strict=True):
            if status is None:
                continue  # not answering: stopped with the other orphans, replaced by a new replica
            self._orphans.remove(replica)
            replica.config, replica.image = config, image
            adopted.append(replica)
            log.info("function %s: adopted %r (running since %s, /_/ready %s)", config.name, replica,
                     time.strftime("%H:%M:%S", time.localtime(replica.started_wall)), status)
            if status == 200:
                self._mark_ready(replica)
            else:
                self.spawn(self.await_ready(replica))
        if adopted:
            self.write_state()
        return adopted

    async def _probe_until_answer(self, replica: Replica) -> int | None:
        deadline = time.monotonic() + ADOPT_PROBE_S
        while replica.alive and time.monotonic() < deadline:
            status, _ = await self._probe(replica, "/_/ready")
            if status is not None:
                return status
            await asyncio.sleep(0.1)
        return None

    async def stop_orphans(self) -> None:
        """Stop every left-over replica no restored deployment adopted (changed, deleted, scaled
        down, not answering), by its pidfd."""
        orphans, self._orphans = list(self._orphans), []
        for replica in orphans:
            log.info("function %s: stopping %r left by the previous runtime: no current deployment runs it",
                     replica.function, replica)
        await asyncio.gather(*(self.terminate(r, drain=False) for r in orphans), return_exceptions=True)

    def write_state(self) -> None:
        functions: dict[str, list[dict[str, Any]]] = {name: [] for name in self.function_names()}
        for r in sorted(self._live.values(), key=lambda r: (r.function, r.generation, r.index, r.pid)):
            functions.setdefault(r.function, []).append(
                {"pid": r.pid, "port": r.port, "generation": r.generation, "index": r.index, "instance": r.instance,
                 "start": r.start, "startedAt": round(r.started_wall, 3), "digest": r.image.digest,
                 "config": r.config_hash, "rootfs": r.rootfs.name, "output": r.output.name})
        state = {"runtime_pid": os.getpid(), "runtime_start": start_ticks(os.getpid()), "boot_id": self._boot,
                 "functions": functions}
        try:
            write_atomic(self.state_dir / REPLICAS_FILE, (json.dumps(state, indent=1) + "\n").encode(), 0o644)
        except OSError as exc:  # the file informs operators; replicas run without it
            log.warning("cannot write %s: %s", self.state_dir / REPLICAS_FILE, exc)

    # ----- readiness and health --------------------------------------------------------------
    async def _probe(self, replica: Replica, path: str) -> tuple[int | None, str]:
        """(status, first line of the body) of a probe; (None, why) when the replica did not answer."""
        assert self._session is not None
        try:
            async with self._session.get(replica.url + path) as resp:
                body = (await resp.read())[:300].decode("utf-8", errors="replace")
                return resp.status, (body.strip().splitlines() or [""])[0]
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return None, type(exc).__name__

    def _note_waiting(self, replica: Replica, status: int, body: str) -> None:
        if not replica.waiting_for:  # once per replica: it is up, just not able to serve yet
            replica.waiting_for = body or f"HTTP {status}"
            log.info("function %s: %r is up, waiting for: %s", replica.function, replica, replica.waiting_for)

    async def await_ready(self, replica: Replica, timeout: float | None = None) -> bool:
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        delay = 0.05
        replica.awaiting_ready = True
        try:
            while time.monotonic() < deadline and replica.alive and not replica.stopping:
                status, body = await self._probe(replica, "/_/ready")
                if status == 200:
                    self._mark_ready(replica)
                    return True
                if status is not None:
                    self._note_waiting(replica, status, body)
                await asyncio.sleep(delay)
                delay = min(0.5, delay * 1.5)
            if replica.alive and not replica.stopping and timeout is None and not replica.waiting_for:
                # It never answered at all (a replica that answers "not yet" was logged as waiting).
                log.warning("function %s: %r not answering its readiness probe after %gs; probing it every "
                            "health interval until it is", replica.function, replica, self.ready_timeout)
            return False
        finally:
            replica.awaiting_ready = False

    def _mark_ready(self, replica: Replica) -> None:
        replica.ready = True
        waited = f" (after waiting for: {replica.waiting_for})" if replica.waiting_for else ""
        replica.waiting_for = ""
        log.info("function %s: %r ready%s", replica.function, replica, waited)

    def failure_message(self, name: str, replicas: list[Replica]) -> str:
        """Why replicas of a new generation are not serving: the exited ones, or what they wait for."""
        bad = [r for r in replicas if not r.ready]
        exited = [r for r in bad if not r.alive]
        if exited:
            why = f"{len(exited)} exited (code {exited[0].process.returncode})"
        else:
            waiting = next((r.waiting_for for r in bad if r.waiting_for), "")
            why = f"waiting for: {waiting}" if waiting else f"not ready after {self.ready_timeout:g}s"
        return f"function {name}: {len(bad)} of {len(replicas)} new replica(s) not serving: {why}; " \
               f"see {self.log_path(name)}"

    async def reprobe(self, replica: Replica) -> None:
        await asyncio.sleep(0.2)
        await self.await_ready(replica, timeout=self.ready_timeout)

    async def check(self, replica: Replica) -> None:
        """One liveness/readiness round for a replica that is alive and not stopping."""
        if not replica.ready:
            if replica.awaiting_ready:
                return  # still starting (or re-probing): its own readiness wait owns it
            # Its readiness wait ran out (e.g. still warming up): keep probing at the health
            # interval so it joins the rotation once it can serve.
            status, body = await self._probe(replica, "/_/ready")
            if status == 200 and not replica.stopping:
                self._mark_ready(replica)
            elif status is not None:
                self._note_waiting(replica, status, body)
            return
        health, _ = await self._probe(replica, "/_/health")
        replica.health_failures = 0 if health == 200 else replica.health_failures + 1
        if replica.health_failures >= 3:
            log.error("function %s: %r failed 3 liveness checks; killing it", replica.function, replica)
            replica.ready = False
            with contextlib.suppress(ProcessLookupError):
                replica.process.kill()  # its exit watcher restarts it
            return
        if health == 200:
            status, body = await self._probe(replica, "/_/ready")
            if status not in (200, None):
                log.warning("function %s: %r not ready any more (%s); out of rotation", replica.function,
                            replica, body or f"HTTP {status}")
                replica.ready = False
                replica.waiting_for = body or f"HTTP {status}"
                self.spawn(self.reprobe(replica))

    # ----- stopping --------------------------------------------------------------------------
    async def terminate(self, replica: Replica, drain: bool) -> None:
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
