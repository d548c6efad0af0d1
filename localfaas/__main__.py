"""The localfaas command line.

  python -m localfaas up --stack stack.yml [--port 8080] [--state-dir var] [--host 127.0.0.1]
      builds every function, runs gateway + replicas + cron in the foreground until SIGTERM/SIGINT,
      then stops every replica it started and exits 0.
  python -m localfaas build --stack stack.yml [--out build]
      writes the build contexts only (`faas-cli build --shrinkwrap`).

Owns: argument parsing, wiring the parts together, the pid file and the runtime's own log.
Must not touch: anything outside the state dir and the build dir.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from localfaas.build import BuildError, shrinkwrap
from localfaas.cron import CRON_TOKEN, CronConnector, ensure_cron_token
from localfaas.gateway import Gateway, ensure_credentials
from localfaas.stackfile import StackError, load_stack
from localfaas.supervisor import DeployError, FunctionConfig, Supervisor

log = logging.getLogger("localfaas")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"localfaas: {name}={raw!r} is not a number") from None


def _setup_logging(state: Path) -> None:
    (state / "logs").mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    # The log file, plus stderr only when it is a terminal: a supervisor that redirects stderr
    # into the same file (scripts/stack.py) would otherwise get every line twice.
    handlers: list[logging.Handler] = [logging.FileHandler(state / "logs" / "localfaas.log")]
    if sys.stderr.isatty():
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def _deploy(supervisor: Supervisor, config: FunctionConfig, context: object) -> None:
    try:
        await supervisor.deploy(config, context)  # type: ignore[arg-type]
    except DeployError as exc:
        log.error("%s", exc)


async def up(args: argparse.Namespace) -> int:
    state = Path(args.state_dir).resolve()
    stack = load_stack(args.stack)
    contexts = shrinkwrap(stack, args.build_dir)
    for name, fn in stack.functions.items():
        if name not in contexts:
            log.warning("function %s has no lang/handler to build (image %s): not run locally", name, fn.image)
    _setup_logging(state)
    credentials = ensure_credentials(state / "secrets")
    ensure_cron_token(state / "secrets")  # the scheduler's credential (localfaas.cron)
    supervisor = Supervisor(
        state, ready_timeout=_env_float("LOCALFAAS_READY_TIMEOUT", 60.0),
        health_interval=_env_float("LOCALFAAS_HEALTH_INTERVAL", 2.0),
        drain_timeout=_env_float("LOCALFAAS_DRAIN_TIMEOUT", 30.0),
    )
    gateway = Gateway(supervisor, contexts, credentials,
                      upstream_timeout=_env_float("LOCALFAAS_UPSTREAM_TIMEOUT", 65.0))
    # Checked before any replica starts, so a missing secret is one clear line and exit code 2.
    configs = [FunctionConfig.from_spec(stack.functions[name]) for name in contexts]
    for config in configs:
        missing = [s for s in config.secrets if not (state / "secrets" / s).is_file()]
        if missing:
            path = state / "secrets" / missing[0]
            raise StackError(f"function {config.name}: secret {missing[0]!r} not found: create {path} "
                             f"(e.g. printf '%s' VALUE > {path} && chmod 600 {path})")

    await supervisor.start()
    runner = web.AppRunner(gateway.make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await supervisor.close()
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise StackError(f"port {args.port} on {args.host} is already in use (pick another with --port)")
        raise
    pid_file = state / "run" / "localfaas.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    url = f"http://{args.host}:{args.port}"
    log.info("gateway listening on %s (state %s)", url, state)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    deploys = [asyncio.create_task(_deploy(supervisor, c, contexts[c.name])) for c in configs]
    cron = CronConnector(url, credentials.user, credentials.password,
                         rebuild_interval=_env_float("LOCALFAAS_CRON_INTERVAL", 10.0),
                         token_file=state / "secrets" / CRON_TOKEN)
    cron_task = asyncio.create_task(cron.run())
    try:
        await stop.wait()
    finally:
        log.info("stopping: cron, gateway, then every replica")
        cron_task.cancel()
        for task in deploys:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cron_task
        await runner.cleanup()
        await supervisor.close()
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfaas", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("up", help="run the stack's functions behind a local OpenFaaS-compatible gateway")
    run.add_argument("--stack", "-f", default="stack.yml")
    run.add_argument("--port", type=int, default=int(os.environ.get("LOCALFAAS_PORT", "8080")))
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--state-dir", default=os.environ.get("STACK_STATE_DIR", "var"))
    run.add_argument("--build-dir", default=None, help="where build contexts go (default: build/ beside the stack)")
    build = sub.add_parser("build", help="write build contexts like faas-cli build --shrinkwrap")
    build.add_argument("--stack", "-f", default="stack.yml")
    build.add_argument("--out", default=None, help="default: build/ beside the stack file")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            contexts = shrinkwrap(load_stack(args.stack), args.out)
            for name, ctx in contexts.items():
                print(f"{name}: {ctx.path}")
            return 0
        return asyncio.run(up(args))
    except (StackError, BuildError) as exc:
        print(f"localfaas: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
