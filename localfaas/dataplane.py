"""The data plane: nginx on the gateway's port, calling ready replicas straight (LOCALFAAS_DATA_PLANE=nginx).

The invoke path is most of the gateway's work and the part a Python proxy pays for most (about
0.6 ms of CPU per call through aiohttp's server and client, against nginx's 0.1; `make
bench-capacity`). So, as OpenFaaS splits its gateway from the provider, localfaas can split its own:
nginx answers `/function/<name>[/...]` for every function with a ready replica (round-robin over
them, keep-alive connections, another replica when one refuses the connection, the function's
body cap and timeout, the gateway's `X-Call-Id`, `X-Start-Time` and `X-Duration-Seconds`, and the
control plane's one-line errors), and hands everything else to the control plane (localfaas's own
gateway app on a loopback port): the /system API, /metrics, /async-function, /provider, an unknown
function, scale from zero and a function with no ready replica, which the control plane handles as
it always did. The calls nginx answered reach the gateway metrics through its call log
(`localfaas.calllog`).

The routing table (function -> ready replicas' ports, body cap, timeout) is watched every 50 ms;
when it changes the configuration is rendered from `dataplane.conf.template`, checked (`nginx -t`)
and nginx reloads (its old worker finishes its calls, then exits). Draining stays exact: while a
replica is in a configuration an nginx worker may still use, the data plane holds it in flight
(`Supervisor.lease`), so a replica is stopped only once no worker can send it a call.

nginx outlives a killed runtime, as the replicas do: its pid and start time are recorded in
`<state>/run/dataplane/dataplane.json`, and the next runtime adopts it (new configuration,
reload) when the record names a live nginx, or starts a new one; the calls it answered meanwhile
are counted from the call log's recorded offset.

Owns: nginx's configuration, process and reloads under `<state>/run/dataplane/`, the routing
table, the drain holds.
Must not touch: which replicas run (the supervisor's), the /system API, the metrics' names.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from localfaas.calllog import CallLog
from localfaas.metrics import GatewayMetrics
from localfaas.replica import Replica, free_port
from localfaas.replicastate import (
    DATA_PLANE_FILE,
    AdoptedProcess,
    read_data_plane_record,
    same_process,
    start_ticks,
    write_atomic,
)
from localfaas.supervisor import FunctionRuntime, Supervisor

log = logging.getLogger("localfaas.dataplane")

TEMPLATE = Path(__file__).with_name("dataplane.conf.template")
WATCH_INTERVAL_S = 0.05
READ_INTERVAL_S = 0.25
NGINX_START_S = 10.0
MODES = ("python", "nginx")


class DataPlaneError(RuntimeError):
    """nginx could not be found, configured or started; the message says which and why."""


def find_nginx() -> str:
    found = os.environ.get("LOCALFAAS_NGINX") or shutil.which("nginx") or shutil.which(
        "nginx", path="/usr/sbin:/usr/local/sbin:/sbin")
    if not found:
        raise DataPlaneError("LOCALFAAS_DATA_PLANE=nginx needs nginx (apt-get install nginx, or set "
                             "LOCALFAAS_NGINX to its path)")
    return found


@dataclass(frozen=True)
class Route:
    name: str
    namespace: str
    ports: tuple[int, ...]
    body_limit: int
    timeout: float


class DataPlane:
    def __init__(self, supervisor: Supervisor, metrics: GatewayMetrics, *, host: str, port: int,
                 body_limit: Callable[[FunctionRuntime], int], upstream_timeout: float, control_timeout: float,
                 nginx: str | None = None):
        self.supervisor, self.metrics = supervisor, metrics
        self.host, self.port = host, port
        self.body_limit, self.upstream_timeout, self.control_timeout = body_limit, upstream_timeout, control_timeout
        self.nginx = nginx or find_nginx()
        self.dir = supervisor.state_dir / "run" / "dataplane"
        self.config_path = self.dir / "nginx.conf"
        self.record_path = supervisor.state_dir / DATA_PLANE_FILE
        self.error_log = self.dir / "error.log"
        self.control_port = 0
        self.process: asyncio.subprocess.Process | AdoptedProcess | None = None
        self.calls = CallLog(self.dir / "calls.log", metrics, supervisor, self._reopen_logs)
        self._table: dict[str, Route] = {}
        self._refused: dict[str, Route] | None = None
        self._previous: dict[str, Route] = {}  # the table before the last reload
        self._old_workers: list[tuple[int, int | None]] = []  # of the configuration before the last reload
        self._routed: dict[int, Replica] = {}  # pid -> a replica some nginx worker may call (held)
        self._task: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()

    # ----- lifecycle -------------------------------------------------------------------------
    def choose_control_port(self) -> int:
        """The control plane's loopback port: the recorded one if it is free (an adopted nginx
        already sends there), else a new one."""
        record = (read_data_plane_record(self.supervisor.state_dir) or {})
        port = record.get("control_port")
        if isinstance(port, int) and _free(port):
            self.control_port = port
        else:
            self.control_port = free_port()
        return self.control_port

    async def start(self) -> None:
        for sub in ("", "temp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self._table = self.routes()
        await self._write_config(self._table)
        record = (read_data_plane_record(self.supervisor.state_dir) or {})
        adopted = AdoptedProcess.open(record["pid"], record["start"]) if same_process(
            record.get("pid"), record.get("start")) and record.get("config") == str(self.config_path) else None
        if adopted is not None:
            self.process = adopted
            self._old_workers = self._workers()  # they still send the control plane's calls to the last runtime
            self._signal(signal.SIGHUP)
            log.info("data plane: adopted nginx (pid %d) left by the last runtime; reloaded", adopted.pid)
        else:
            await self._spawn()
        self._hold(self._table)
        self._save_record()
        await self._wait_listening()
        await self.settled(NGINX_START_S)  # after an adoption: once the reload took, not before
        self.calls.resume()
        self._task = asyncio.create_task(self._watch())
        self.supervisor.routing_settled = self.settled

    async def close(self) -> None:
        """Stop nginx gracefully (its calls finish), count its last lines, release every hold."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.process is not None and self.process.returncode is None:
            self._signal(signal.SIGQUIT)
            try:
                await asyncio.wait_for(self.process.wait(), self.control_timeout)
            except TimeoutError:
                self._signal(signal.SIGKILL)
        self.record_path.unlink(missing_ok=True)
        self.calls.close()
        for task in self._releases:
            task.cancel()
        for replica in self._routed.values():
            replica.inflight -= 1
        self._routed.clear()

    async def _spawn(self) -> None:
        self.error_log.unlink(missing_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            *self._argv("-g", "daemon off;"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)  # outlives a killed runtime
        log.info("data plane: nginx (pid %d) on %s:%d", self.process.pid, self.host, self.port)

    async def _wait_listening(self) -> None:
        deadline = time.monotonic() + NGINX_START_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.returncode is not None:
                raise DataPlaneError(f"nginx for the data plane exited: {self._last_error()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
                return
            await asyncio.sleep(0.05)
        raise DataPlaneError(f"nginx for the data plane is not listening on {self.host}:{self.port} "
                             f"after {NGINX_START_S:g}s: {self._last_error()}")

    def _last_error(self) -> str:
        try:
            lines = [line for line in self.error_log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            lines = []
        return lines[-1].split("] ", 1)[-1] if lines else "no error logged"

    # ----- the routing table -----------------------------------------------------------------
    def routes(self) -> dict[str, Route]:
        table = {}
        for name, runtime in self.supervisor.functions.items():
            ready = runtime.ready_replicas()
            limit = self.body_limit(runtime)
            if not ready or limit <= 0:  # a 0-byte cap is nginx's "no cap": the control plane keeps those
                continue
            table[name] = Route(name, runtime.config.namespace, tuple(sorted(r.port for r in ready)), limit,
                                min(runtime.config.exec_timeout(), self.upstream_timeout))
        return table

    async def _watch(self) -> None:
        last_read = 0.0
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                assert self.process is not None
                if self.process.returncode is not None:
                    log.error("data plane: nginx exited (%s); starting it again", self._last_error())
                    await self._spawn()
                    self._save_record()
                table = self.routes()
                if table != self._table:
                    await self._apply(table)
                if time.monotonic() - last_read > READ_INTERVAL_S:
                    self.calls.read()
                    last_read = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:  # the watch must go on; the next change tries again
                log.exception("data plane: update failed")

    def available(self, runtime: FunctionRuntime) -> int:
        """Ready replicas that calls reach (`availableReplicas`): those of the table nginx routes by,
        the one before the last reload while a worker of the old configuration still accepts."""
        done = all(_done_accepting(*w) for w in self._old_workers)
        route = (self._table if done else self._previous).get(runtime.config.name)
        return len([r for r in runtime.ready_replicas() if route and r.port in route.ports])

    async def settled(self, timeout: float) -> bool:
        """Whether, within `timeout` seconds, nginx routes by the current table: applied, and the
        workers of the configuration before it take no new connection (they may finish long
        calls), so a deploy answers once calls reach its replicas."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.routes() == self._table and all(_done_accepting(*w) for w in self._old_workers):
                return True
            await asyncio.sleep(0.02)
        return False

    async def _apply(self, table: dict[str, Route]) -> None:
        if table == self._refused:
            return  # refused once already (logged): tried again when the table changes
        if not await self._write_config(table):
            self._refused = table
            return
        old_workers = self._old_workers = self._workers()
        leaving = self._hold(table)
        self._previous, self._table = self._table, table
        self._signal(signal.SIGHUP)
        if leaving:
            task = asyncio.create_task(self._release_after(old_workers, leaving))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    def _hold(self, table: dict[str, Route]) -> list[Replica]:
        """Hold every replica the new table routes to; returns those it no longer routes to (held
        until the workers that knew them are gone)."""
        routed = {port for route in table.values() for port in route.ports}
        current = {r.pid: r for fn in self.supervisor.functions.values() for r in fn.ready_replicas()
                   if r.port in routed}
        for pid, replica in current.items():
            if pid not in self._routed:
                replica.inflight += 1
                self._routed[pid] = replica
        return [self._routed.pop(pid) for pid in list(self._routed) if pid not in current]

    async def _release_after(self, workers: list[tuple[int, int | None]], replicas: list[Replica]) -> None:
        try:
            while any(start_ticks(pid) == start for pid, start in workers):
                await asyncio.sleep(0.02)
        finally:
            for replica in replicas:
                replica.inflight -= 1

    def _workers(self) -> list[tuple[int, int | None]]:
        """nginx's worker processes now (pid, start time): the children of its master."""
        assert self.process is not None
        master, found = self.process.pid, []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                    if int(fields[1]) == master:
                        found.append((int(entry), int(fields[19])))
        return found

    # ----- configuration ---------------------------------------------------------------------
    def render(self, table: dict[str, Route]) -> str:
        listen = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        values = {
            # The workers run as the runtime does (as root nginx would switch them to nobody, who
            # cannot reach a state folder under a private home, e.g. for request bodies on disk).
            "user": "user root;" if os.geteuid() == 0 else "",
            "pid_path": str(self.dir / "nginx.pid"), "error_log": str(self.error_log),
            "temp_dir": str(self.dir / "temp"), "shutdown_timeout": f"{self.control_timeout:g}",
            "control_port": str(self.control_port), "listen": listen,
            "control_timeout": f"{self.control_timeout:g}",
            "function_labels": "\n".join(f'        "~^/function/{r.name}(\\.{r.namespace})?(/|$)" '
                                         f'"{r.name}.{r.namespace}";' for r in table.values()),
            "upstreams": "".join(_upstream(r) for r in table.values()),
            "function_locations": "".join(_locations(r, self.dir / "calls.log") for r in table.values()),
        }
        text = TEMPLATE.read_text()
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        return text

    async def _write_config(self, table: dict[str, Route]) -> bool:
        candidate = self.dir / "nginx.conf.new"
        candidate.write_text(self.render(table))
        check = await asyncio.to_thread(subprocess.run, self._argv("-t", config=candidate), capture_output=True,
                                        text=True)
        if check.returncode != 0:
            log.error("data plane: the new configuration was refused, the last one stays: %s",
                      check.stderr.strip().splitlines()[-1:] or "nginx -t failed")
            return False
        os.replace(candidate, self.config_path)
        return True

    def _argv(self, *extra: str, config: Path | None = None) -> list[str]:
        return [self.nginx, "-p", str(self.dir), "-c", str(config or self.config_path), "-e", str(self.error_log),
                *extra]

    # ----- the process -----------------------------------------------------------------------
    def _signal(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def _reopen_logs(self) -> None:
        self._signal(signal.SIGUSR1)

    def _save_record(self) -> None:
        assert self.process is not None
        write_atomic(self.record_path, json.dumps({
            "pid": self.process.pid, "start": start_ticks(self.process.pid), "config": str(self.config_path),
            "control_port": self.control_port}).encode())


def _done_accepting(pid: int, start: int | None) -> bool:
    """An old nginx worker takes no new connection: gone, or told to stop (its title then says
    "shutting down"; the master tells it about 100 ms after the new workers start)."""
    if start_ticks(pid) != start:
        return True
    try:
        return b"shutting down" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def _free(port: int) -> bool:
    """Whether the control plane can listen on `port` as its site binds (SO_REUSEADDR: the
    connections the killed runtime left in TIME_WAIT do not keep it from its own port)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _upstream(route: Route) -> str:
    # max_fails=0: never set a replica aside on one failed connection (a closed keep-alive one
    # counts too); a replica that is gone leaves the table within 50 ms instead.
    servers = "".join(f"        server 127.0.0.1:{port} max_fails=0;\n" for port in route.ports)
    return (f"    upstream lf_fn_{route.name} {{\n{servers}        keepalive 64;\n"
            f"        keepalive_requests 100000;\n        keepalive_timeout 4s;\n    }}\n")


def _indent(block: str) -> str:
    return "".join("    " + line for line in block.splitlines(keepends=True))


_CALL_HEADERS = """            add_header X-Call-Id $lf_call_id always;
            add_header X-Start-Time $lf_start_ns always;
            add_header X-Duration-Seconds $lf_duration always;
"""


def _locations(route: Route, calls_log: Path) -> str:
    name, timeout = route.name, f"{route.timeout:g}"
    errors = {413: f"request body too large for function {name}: over {route.body_limit} bytes",
              502: f"function {name}: no replica could be reached",
              504: f"function {name} did not answer within {timeout}s"}
    text = f"""        location ~ ^/function/{name}(\\.{route.namespace})?(/|$) {{
            access_log {calls_log} lf_calls;
            client_max_body_size {route.body_limit};
            proxy_pass http://lf_fn_{name}$lf_rest;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Call-Id $lf_call_id;
            proxy_set_header X-Start-Time $lf_start_ns;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_pass_header Server;
            proxy_hide_header X-Call-Id;
            proxy_hide_header X-Start-Time;
            proxy_hide_header X-Duration-Seconds;
            proxy_buffering off;
            proxy_connect_timeout 2s;
            proxy_read_timeout {timeout}s;
            proxy_send_timeout {timeout}s;
            proxy_next_upstream error;
            proxy_next_upstream_tries 3;
{_CALL_HEADERS}"""
    text += "".join(f"            error_page {code} = @lf_{code}_{name};\n" for code in errors) + "        }\n"
    for code, line in errors.items():
        answer = (f"            access_log {calls_log} lf_calls;\n{_CALL_HEADERS}"
                  f"            return {code} \"{line}\\n\";\n")
        if code == 502:
            # No replica took the call (each refused it, e.g. one that died a moment before the
            # reload): the control plane answers it when that is safe ($lf_resend), as it would
            # have (503 at once, or scale from zero); it counts it then.
            answer = (f"            if ($lf_resend = 0) {{\n{_indent(answer)}            }}\n"
                      "            access_log off;\n            proxy_pass http://lf_control;\n")
        text += f"        location @lf_{code}_{name} {{\n{answer}        }}\n"
    return text
