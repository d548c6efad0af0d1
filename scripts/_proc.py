"""Processes and ports, one way for the operator scripts (and the tests and benchmarks that use them).

Owns `free_port()` (a port free right now on 127.0.0.1), `port_open(port)` (whether something
accepts connections there) and `pid_alive(pid)` (whether a process still runs: a zombie counts as
gone and is reaped when it is ours; a process of another user that we may not signal counts as
alive).

Must not touch: processes themselves (callers decide what to signal, by PID).
"""
from __future__ import annotations

import contextlib
import os
import socket


def free_port() -> int:
    """A port that is free right now on 127.0.0.1 (bind port 0 and ask the kernel)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap our own exited child
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
    if zombie:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # ours: reap it now
    return not zombie
