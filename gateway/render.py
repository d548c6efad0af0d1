"""Renders the nginx config of the public entry (`GET /recommend/<uid>`) from one place.

Owns: turning `nginx.conf.template` + `proxy_settings.conf` into a complete nginx.conf for a
profile (`local`: everything under the stack's state dir, 127.0.0.1; `container`: faasd or
Kubernetes, logs to stdout), and the nginx command line that runs it unprivileged.
The canary membership comes from `movierec.canary` (never re-implemented here), so the proxy and
the release analysis cannot disagree.

Must not touch: starting or stopping nginx (scripts/stack does that), anything about models.

CLI:
    python -m gateway.render [--profile local|container] [--canary-percent N]
                             [--listen HOST:PORT] [--upstream HOST:PORT] [--state-dir var] [-o FILE]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from movierec.canary import CANARY, canary_percent_from_env, canary_suffixes

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "nginx.conf.template"
PROXY_SETTINGS = HERE / "proxy_settings.conf"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")

DEFAULT_LISTEN = "127.0.0.1:8082"
DEFAULT_UPSTREAM = "127.0.0.1:8080"
CONTAINER_LISTEN = "8080"
CONTAINER_UPSTREAM = "gateway:8080"  # the OpenFaaS gateway's name on faasd


class RenderError(ValueError):
    pass


@dataclass(frozen=True)
class NginxSettings:
    listen: str
    upstream: str
    canary_percent: int
    pid_path: str
    temp_dir: str
    access_log: str
    error_log: str
    daemon: bool = False  # off: the supervisor (scripts/stack, a container runtime) owns the process
    read_timeout: str = "5s"
    connect_timeout: str = "1s"
    # The callers give up after 600-800 ms: a canary silent for 300 ms is treated as down and its
    # user gets stable's answer (a few ms more) while the caller still waits.
    canary_read_timeout: str = "300ms"
    canary_connect_timeout: str = "100ms"
    worker_processes: str = "1"

    @classmethod
    def local(cls, state_dir: str | os.PathLike[str], listen: str = DEFAULT_LISTEN,
              upstream: str = DEFAULT_UPSTREAM, canary_percent: int | None = None) -> NginxSettings:
        state = Path(state_dir).resolve()
        return cls(
            listen=listen, upstream=upstream,
            canary_percent=canary_percent_from_env() if canary_percent is None else canary_percent,
            pid_path=str(state / "nginx" / "nginx.pid"),
            temp_dir=str(state / "nginx" / "tmp"),
            access_log=str(state / "logs" / "nginx-access.log"),
            error_log=str(state / "logs" / "nginx-error.log"),
        )

    @classmethod
    def container(cls, listen: str = CONTAINER_LISTEN, upstream: str = CONTAINER_UPSTREAM,
                  canary_percent: int | None = None) -> NginxSettings:
        return cls(
            listen=listen, upstream=upstream,
            canary_percent=canary_percent_from_env() if canary_percent is None else canary_percent,
            pid_path="/tmp/nginx.pid", temp_dir="/tmp",  # an emptyDir / tmpfs in the container
            access_log="/dev/stdout", error_log="/dev/stderr", worker_processes="auto",
        )

    def directories(self) -> list[Path]:
        """Directories nginx needs to exist before it starts (it creates only the leaf temp dirs)."""
        paths = {Path(self.temp_dir), Path(self.pid_path).parent}
        paths |= {Path(p).parent for p in (self.access_log, self.error_log) if not p.startswith("/dev/")}
        return sorted(paths)


def canary_map_entries(canary_percent: int) -> list[str]:
    """nginx `map` lines sending each canary residue of `user_id mod 100` to the canary.

    The key is the id's last two digits as written: a 1-digit id is "7", a longer id ending in
    07 is "07", so residues below 10 need both spellings.
    """
    lines = []
    for residue in canary_suffixes(canary_percent):
        keys = [f"{residue:02d}"] if residue >= 10 else [str(residue), f"{residue:02d}"]
        lines.extend(f'"{key}" {CANARY};' for key in keys)
    return lines


def render(settings: NginxSettings) -> str:
    if not 0 <= settings.canary_percent <= 100:
        raise RenderError(f"canary percent must be between 0 and 100, got {settings.canary_percent}")
    for name, value in (("listen", settings.listen), ("upstream", settings.upstream)):
        if not re.fullmatch(r"[\w.\-\[\]:]+", value):
            raise RenderError(f"{name} must be HOST:PORT or PORT, got {value!r}")
    for name, value in (("read_timeout", settings.read_timeout),
                        ("connect_timeout", settings.connect_timeout),
                        ("canary_read_timeout", settings.canary_read_timeout),
                        ("canary_connect_timeout", settings.canary_connect_timeout)):
        if not re.fullmatch(r"\d+(ms|s)", value):
            raise RenderError(f"{name} must be like 800ms or 5s, got {value!r}")
    proxy_lines = [line for line in PROXY_SETTINGS.read_text().splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
    values = {
        "daemon": "daemon on;" if settings.daemon else "daemon off;",
        "worker_processes": settings.worker_processes,
        "pid_path": settings.pid_path,
        "error_log": settings.error_log,
        "temp_dir": settings.temp_dir,
        "access_log": settings.access_log,
        # A file: lines buffered and written at most once a second, not a write per request
        # (a /dev/ stream of a container is written as it comes, for its log collector).
        "access_log_buffer": "" if settings.access_log.startswith("/dev/") else " buffer=64k flush=1s",
        "upstream": settings.upstream,
        "listen": settings.listen,
        "read_timeout": settings.read_timeout,
        "canary_read_timeout": settings.canary_read_timeout,
        "connect_timeout": settings.connect_timeout,
        "canary_connect_timeout": settings.canary_connect_timeout,
        "canary_percent": str(settings.canary_percent),
        "canary_map_entries": canary_map_entries(settings.canary_percent),
        "proxy_settings": proxy_lines,
    }
    out = []
    for line in TEMPLATE.read_text().splitlines():
        whole = _PLACEHOLDER.fullmatch(line.strip())
        if whole and isinstance(values.get(whole.group(1)), list):
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + item for item in values[whole.group(1)])
            continue
        out.append(_PLACEHOLDER.sub(lambda m: _value(values, m.group(1)), line))
    return "\n".join(out) + "\n"


def _value(values: dict, name: str) -> str:
    if name not in values or isinstance(values[name], list):
        raise RenderError(f"nginx.conf.template: unknown or misplaced placeholder {{{{{name}}}}}")
    return values[name]


def write_config(settings: NginxSettings, path: str | os.PathLike[str]) -> Path:
    """Render to `path` and create the directories the config refers to."""
    path = Path(path)
    text = render(settings)
    for directory in [path.parent, *settings.directories()]:
        directory.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not found:
        raise RenderError("nginx is not installed: run `apt-get install -y nginx` (Debian package)")
    return found


def nginx_argv(config_path: str | os.PathLike[str], settings: NginxSettings, *extra: str) -> list[str]:
    """The command running `config_path` without root: its own prefix and an early error log
    (`-e`), so nginx never opens /var/log/nginx or /var/lib/nginx."""
    config_path = Path(config_path).resolve()
    return [nginx_binary(), "-p", str(config_path.parent), "-c", str(config_path),
            "-e", settings.error_log, *extra]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.render", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=["local", "container"], default="local")
    parser.add_argument("--canary-percent", type=int, default=None,
                        help="default: CANARY_PERCENT from the environment, else 20")
    parser.add_argument("--listen", help=f"default {DEFAULT_LISTEN} (local) / {CONTAINER_LISTEN} (container)")
    parser.add_argument("--upstream", help=f"the OpenFaaS gateway, default {DEFAULT_UPSTREAM} (local) / "
                                           f"{CONTAINER_UPSTREAM} (container)")
    parser.add_argument("--state-dir", default=os.environ.get("STACK_STATE_DIR", "var"))
    parser.add_argument("-o", "--output", default="-", help="file to write, - for stdout (default)")
    args = parser.parse_args(argv)
    try:
        if args.profile == "local":
            settings = NginxSettings.local(args.state_dir, args.listen or DEFAULT_LISTEN,
                                           args.upstream or DEFAULT_UPSTREAM, args.canary_percent)
        else:
            settings = NginxSettings.container(args.listen or CONTAINER_LISTEN,
                                               args.upstream or CONTAINER_UPSTREAM, args.canary_percent)
        if args.output == "-":
            sys.stdout.write(render(settings))
        else:
            print(write_config(settings, args.output))
    except (RenderError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
