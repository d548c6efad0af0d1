"""Starting and stopping the stack's services by PID, and telling which of them still run.

Owns: the pid files `<state>/run/<name>.pid` and logs `<state>/logs/<name>.log`; `running_pid`
(a pid file is only trusted when /proc/<pid>/cmdline still names the service, so a recycled pid is
never signalled); `start_service` (in its own session, so process group = its pid; waits until
healthy, stops it again when it is not); `stop_pid` (SIGTERM or the service's signal, SIGKILL after
the grace period, then whatever the service itself left in its process group: localfaas's function
replicas, nginx's workers). Pids are checked with `scripts._proc.pid_alive`.

Must not touch: processes it did not start; what the services are (scripts/stack/services.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from localfaas.replicastate import data_plane_left_running
from scripts._proc import pid_alive, port_open
from scripts.stack.config import ROOT, StackConfig, StackError
from scripts.stack.services import Service


def pid_file(config: StackConfig, name: str) -> Path:
    return config.state_dir / "run" / f"{name}.pid"


def log_file(config: StackConfig, name: str) -> Path:
    return config.state_dir / "logs" / f"{name}.log"


def running_pid(config: StackConfig, service: Service) -> int | None:
    """The service's pid if its pid file names a live process that is still this service."""
    try:
        pid = int(pid_file(config, service.name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) and service.cmdline_marker in _cmdline(pid) else None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is still in process group `pgid`. Zombies are skipped:
    they are already dead, and whoever reaps them (possibly a slow init) is not our business."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _wait_gone(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def stop_pid(pid: int, grace_s: float, first_signal: int = signal.SIGTERM) -> str:
    """Stop a process we started in its own session: signal it, give it `grace_s`, then SIGKILL;
    then make sure nothing of its process group (its children) survives it."""
    owns_group = _safe_getpgid(pid) == pid
    try:
        os.kill(pid, first_signal)
    except ProcessLookupError:
        pass
    how = "stopped"
    if not _wait_gone(lambda: pid_alive(pid), grace_s):
        how = f"killed (no exit {grace_s:g}s after {signal.Signals(first_signal).name})"
        try:
            os.killpg(pid, signal.SIGKILL) if owns_group else os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_gone(lambda: pid_alive(pid), 5.0)
    if owns_group and _group_alive(pid):  # children the service left behind
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not _wait_gone(lambda: _group_alive(pid), 5.0):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return how


def _safe_getpgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def port_taken(config: StackConfig, service: Service) -> bool:
    """Whether `service`'s port is held by something else than what its own start will take over:
    the nginx data plane a killed localfaas of this state dir left is adopted by the next localfaas."""
    if service.port is None or not port_open(service.port):
        return False
    return not (service.name == "localfaas" and data_plane_left_running(config.state_dir))


def start_service(config: StackConfig, service: Service) -> tuple[int, bool]:
    """Start `service` unless it already runs; wait until healthy. Returns (pid, started_now)."""
    pid = running_pid(config, service)
    if pid is not None:
        return pid, False
    log = log_file(config, service.name)
    if port_taken(config, service):
        raise StackError(f"{service.name}: 127.0.0.1:{service.port} is already in use by a process this stack "
                         f"did not start (stop it, or pick another port by env)")
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_file(config, service.name).parent.mkdir(parents=True, exist_ok=True)
    try:
        if service.start is not None:
            pid = service.start()
            process = None
        else:
            with open(log, "ab") as out:
                process = subprocess.Popen(service.argv(), stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, cwd=ROOT, env=config.service_env(),
                                           start_new_session=True)
            pid = process.pid
    except Exception as e:  # a starter's own error (broker, renderers): one line naming the service
        raise StackError(f"{service.name} failed to start: {e} (log: {log})") from e
    pid_file(config, service.name).write_text(f"{pid}\n")
    deadline = time.monotonic() + service.start_timeout_s
    while not service.health():
        if not pid_alive(pid):
            pid_file(config, service.name).unlink(missing_ok=True)
            raise StackError(f"{service.name} exited while starting{_last_line(log)}: see {log}")
        if time.monotonic() > deadline:
            stop_pid(pid, service.stop_grace_s, service.stop_signal)
            pid_file(config, service.name).unlink(missing_ok=True)
            raise StackError(f"{service.name} not healthy after {service.start_timeout_s:g}s, stopped it"
                             f"{_last_line(log)}: see {log}")
        time.sleep(0.2)
    if service.min_uptime_s:
        time.sleep(service.min_uptime_s)
        if not pid_alive(pid):
            pid_file(config, service.name).unlink(missing_ok=True)
            raise StackError(f"{service.name} exited right after starting{_last_line(log)}: see {log}")
    return pid, True


def _last_line(log: Path) -> str:
    """` ("<last line of the log>")`, so the error says why without opening the file."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f' ("{lines[-1][:200]}")' if lines else ""
