"""The replica killer: `kill -9` one replica of a function under load, and time its restoration.

Owns: `replica_pids` (live replicas of a function from the runtime's state file
`<state>/run/localfaas-replicas.json`, written by the runtime process this driver started, each
only while it is still the recorded process (its start time, `localfaas.replicastate.same_process`:
adopted replicas are not the runtime's children), so a pid reused by anything else is never chosen) and `kill_one_replica` (refused on a stack the
driver did not start).

Must not touch: processes of a stack it did not start; the runtime's internals (it reads the state
file the runtime publishes and the gateway's /system API).
"""
from __future__ import annotations

import os
import signal
import time
from typing import Any

from localfaas.replicastate import read_replica_state, same_process
from scripts.demo.handle import StackHandle
from scripts.demo.progress import DemoError, Progress, wait_for


def replica_pids(handle: StackHandle, function: str) -> list[int]:
    """Live replica processes of `function`, from the replica state file
    (`<state>/run/localfaas-replicas.json`) of the runtime process this driver started, each still
    the process recorded there (so a pid reused by anything else is never chosen)."""
    runtime = handle.runtime_pid()
    state = read_replica_state(handle.state_dir)
    if runtime is None or state.get("runtime_pid") != runtime:
        return []
    found = []
    for replica in state["functions"].get(function, []):
        pid = replica.get("pid")
        if same_process(pid, replica.get("start"), state.get("boot_id")) and pid not in found:
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
