"""The replica state file, and knowing a recorded replica process again after localfaas restarts.

Replicas outlive the runtime (as containers outlive a restarted faasd provider or kubelet): nothing
ties them to its process (no PR_SET_PDEATHSIG, no pipe: their output goes to a file), so a killed
runtime leaves them serving, and the next one adopts them from this file.

`<state>/run/localfaas-replicas.json` (`REPLICAS_FILE`), rewritten atomically whenever a replica
starts, is adopted or exits:

    {"runtime_pid": N, "runtime_start": T, "boot_id": "<kernel boot id>",
     "functions": {name: [{"pid", "port", "generation", "index", "instance", "start": T,
                           "startedAt": unix seconds, "digest": "sha256:...", "config": "<sha256 of
                           the FunctionDeployment it runs>", "rootfs": dir name, "output": file name},
                          ...]}}

`start` is the process's start time in clock ticks since boot (/proc/<pid>/stat field 22): a pid
is the recorded process only when it is alive, not a zombie, the boot is the same and its start
time is the recorded one (`same_process`), so a pid reused by another process is never signalled.

Owns: the file format above (`read_replica_state`, `write_atomic`), process identity
(`start_ticks`, `boot_id`, `same_process`, `config_hash`), `AdoptedProcess` (a replica process
this runtime did not start itself, held by a pidfd: wait, signal, kill, as an asyncio Process),
and `stop_recorded` (operator tools: stop the replicas a killed runtime left, by verified pid).
Must not touch: which replicas a function should have, and any process that is not the recorded one.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import select
import signal
import time
from pathlib import Path
from typing import Any

REPLICAS_FILE = Path("run") / "localfaas-replicas.json"
DATA_PLANE_FILE = Path("run") / "dataplane" / "dataplane.json"  # written by localfaas.dataplane
UNKNOWN_EXIT = -1  # the exit code of a process that is not our child cannot be read


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


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_ticks(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks since boot); None when there is none or it is a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def same_process(pid: Any, start: Any, boot: Any = None) -> bool:
    """Whether `pid` is still the process that started at `start` (in boot `boot`, when given)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 or not isinstance(start, int):
        return False
    if boot is not None and boot != boot_id():
        return False
    return start_ticks(pid) == start


def config_hash(deployment: dict[str, Any]) -> str:
    """What a replica runs, as one value: the sha256 of its FunctionDeployment (canonical JSON)."""
    return hashlib.sha256(json.dumps(deployment, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _open_pidfd(pid: int, start: int) -> int | None:
    """A pidfd of `pid` if it is the process that started at `start`: opened first, then checked,
    so the fd cannot refer to a process that reused the pid in between."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if start_ticks(pid) != start:
        os.close(fd)
        return None
    return fd


class AdoptedProcess:
    """A replica process started by an earlier runtime: the part of asyncio's Process we use
    (pid, returncode, wait, send_signal, kill), through a pidfd, so every signal reaches that very
    process or nothing. Its exit code cannot be read (it is not our child): `UNKNOWN_EXIT`."""

    def __init__(self, pid: int, pidfd: int):
        self.pid = pid
        self._fd: int | None = pidfd
        self.returncode: int | None = None
        self._exited = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_reader(pidfd, self._on_exit)  # readable once the process exits

    @classmethod
    def open(cls, pid: int, start: int) -> AdoptedProcess | None:
        fd = _open_pidfd(pid, start)
        return None if fd is None else cls(pid, fd)

    def _on_exit(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        self.returncode = UNKNOWN_EXIT
        if not self._exited.done():
            self._exited.set_result(UNKNOWN_EXIT)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self._fd is None:
            raise ProcessLookupError(self.pid)
        signal.pidfd_send_signal(self._fd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def recorded_replicas(state: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(function, entry) of every well-formed replica entry of a state file."""
    found = []
    for name, entries in state.get("functions", {}).items():
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("pid"), int):
                found.append((str(name), entry))
    return found


def runtime_alive(state: dict[str, Any]) -> bool:
    """Whether the runtime that wrote `state` still runs (it then owns every replica listed)."""
    return same_process(state.get("runtime_pid"), state.get("runtime_start"), state.get("boot_id"))


def read_data_plane_record(state_dir: str | Path) -> dict[str, Any] | None:
    """The data plane's record (`DATA_PLANE_FILE`: pid, start, config, control_port), if readable."""
    try:
        record = json.loads((Path(state_dir) / DATA_PLANE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def data_plane_left_running(state_dir: str | Path) -> int | None:
    """The pid of the data plane's nginx that a runtime of `state_dir` left running (it holds the
    gateway's port until the next runtime adopts it), if it still runs; else None."""
    record = read_data_plane_record(state_dir)
    return record["pid"] if record and same_process(record["pid"], record.get("start")) else None


def stop_recorded(state_dir: str | Path, grace_s: float = 10.0) -> list[int]:
    """Stop the replicas (and the data plane's nginx) a runtime that is gone (killed) left running: each recorded pid that is
    still the recorded process gets SIGTERM, then SIGKILL after `grace_s`. Nothing when the runtime
    that wrote the file still runs. Returns the pids stopped."""
    state = read_replica_state(state_dir)
    if runtime_alive(state):
        return []
    held: dict[int, int] = {}
    plane = read_data_plane_record(state_dir)  # the nginx of LOCALFAAS_DATA_PLANE=nginx outlives it too
    for _name, entry in [*recorded_replicas(state), *([("", plane)] if plane else [])]:
        if state.get("boot_id") not in (None, boot_id()) or not isinstance(entry.get("start"), int):
            continue
        fd = _open_pidfd(entry["pid"], entry["start"])
        if fd is not None:
            held[entry["pid"]] = fd
    try:
        for fd in held.values():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        waiting = dict(held)
        while waiting and time.monotonic() < deadline:
            done, _, _ = select.select(list(waiting.values()), [], [], max(0.0, deadline - time.monotonic()))
            waiting = {pid: fd for pid, fd in waiting.items() if fd not in done}
        for fd in waiting.values():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        if waiting:
            select.select(list(waiting.values()), [], [], 5.0)
    finally:
        for fd in held.values():
            os.close(fd)
    if held:
        state["functions"] = {name: [e for e in entries if not (isinstance(e, dict) and e.get("pid") in held)]
                              for name, entries in state["functions"].items() if isinstance(entries, list)}
        with contextlib.suppress(OSError):
            write_atomic(Path(state_dir) / REPLICAS_FILE, (json.dumps(state, indent=1) + "\n").encode(), 0o644)
    return sorted(held)
