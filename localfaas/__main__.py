"""The localfaas command line.

  python -m localfaas up --stack stack.yml [--port 8080] [--state-dir var] [--host 127.0.0.1]
                          [--redeploy-stack]
      builds every function, runs gateway + replicas + cron in the foreground until SIGTERM/SIGINT,
      then stops every replica it started and exits 0. What was deployed before (the records in
      `<state>/deployments/`: env, labels, image snapshot, replicas, deletes) is restored instead of
      stack.yml's entries; stack.yml is deployed only for functions with no record, or for every
      function with `--redeploy-stack` (or LOCALFAAS_REDEPLOY_STACK=1). Replicas outlive the
      runtime: after a kill (SIGKILL, a crash), the next `up` adopts the replicas still running a
      restored deployment before its gateway listens (so they serve from its first request), and
      stops the left-over ones no deployment runs any more (`localfaas.replica`).
  python -m localfaas build --stack stack.yml [--out build]
      writes the build contexts only (`faas-cli build --shrinkwrap`).

Owns: argument parsing, wiring the parts together, what `up` deploys (restored records or
stack.yml's entries), the pid file and the runtime's own log, the event loop (uvloop).
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

import uvloop
from aiohttp import web

from localfaas.build import BuildContext, BuildError, shrinkwrap
from localfaas.credentials import ensure_credentials
from localfaas.cron import CRON_TOKEN, CronConnector, ensure_cron_token
from localfaas.dataplane import MODES, DataPlane, DataPlaneError
from localfaas.functionconfig import DeployError, FunctionConfig
from localfaas.gateway import Gateway
from localfaas.images import Image, ImageStore
from localfaas.proxy import DEFAULT_MAX_BODY
from localfaas.records import DeploymentRecord
from localfaas.server import GatewayRunner
from localfaas.stackfile import Stack, StackError, load_stack
from localfaas.supervisor import Supervisor
from localfaas.validate import finite_number

log = logging.getLogger("localfaas")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return finite_number(raw) if raw else default
    except ValueError:
        raise SystemExit(f"localfaas: {name}={raw!r} is not a number") from None


def _setup_logging(state: Path) -> None:
    (state / "logs").mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    # The log file, plus stderr only when it is a terminal: a supervisor that redirects stderr
    # into the same file (scripts/stack/) would otherwise get every line twice.
    handlers: list[logging.Handler] = [logging.FileHandler(state / "logs" / "localfaas.log")]
    if sys.stderr.isatty():
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _builds(stack: Stack, contexts: dict[str, BuildContext]) -> dict[str, BuildContext]:
    """The image tags this runtime builds (stack.yml's `image` of each function it built)."""
    builds: dict[str, BuildContext] = {}
    for name, context in contexts.items():
        ref = stack.functions[name].image
        if not ref:
            log.warning("function %s has no image in the stack file: it cannot be deployed", name)
        elif ref not in builds:
            builds[ref] = context
    return builds


def _differences(old: FunctionConfig, new: FunctionConfig) -> list[str]:
    fields = (("image", old.image, new.image), ("envProcess", old.env_process, new.env_process),
              ("secrets", old.secrets, new.secrets))
    diffs = [name for name, a, b in fields if a != b]
    for name, a, b in (("envVars", old.env_vars, new.env_vars), ("labels", old.labels, new.labels),
                       ("annotations", old.annotations, new.annotations)):
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if keys:
            diffs.append(f"{name} {', '.join(keys)}")
    return diffs


async def _restore_image(images: ImageStore, record: DeploymentRecord) -> Image | None:
    image = images.get(record.digest)
    if image is not None:
        return image
    log.warning("function %s: its image %s is gone; deploying %s as built now", record.config.name,
                record.digest[:19], record.config.image)
    try:
        return await asyncio.to_thread(images.resolve, record.config.image)
    except DeployError as exc:
        log.error("function %s: cannot restore it: %s", record.config.name, exc)
        return None


async def _adopt_all(supervisor: Supervisor, images: ImageStore, stack_configs: dict[str, FunctionConfig],
                     redeploy_stack: bool) -> None:
    """Before the gateway listens: restore the recorded deployments whose replicas a killed runtime
    left running, adopting those (no process started unless replicas are missing)."""
    for name, record in supervisor.records.load().items():
        if record.deleted or (redeploy_stack and name in stack_configs) or not supervisor.processes.has_orphans(name):
            continue
        image = images.get(record.digest)
        if image is None:
            continue  # restored later from its tag, with new replicas
        log.info("function %s: restored its last deployment (%s, %s, %d replica(s)), adopting the replicas "
                 "left running", name, record.updated_at, image.digest[:19], record.replicas)
        try:
            await supervisor.deploy(record.config, image, source=record.source, replicas=record.replicas, adopt=True)
        except DeployError as exc:
            log.error("%s", exc)


async def _deploy_all(supervisor: Supervisor, images: ImageStore, stack_configs: dict[str, FunctionConfig],
                      redeploy_stack: bool) -> None:
    """What `up` deploys: each recorded deployment as it was, stack.yml for the rest; then the
    left-over replicas no deployment adopted are stopped."""
    try:
        await _deploy_records(supervisor, images, stack_configs, redeploy_stack)
    finally:
        await supervisor.processes.stop_orphans()
    await supervisor.collect_images()


async def _deploy_records(supervisor: Supervisor, images: ImageStore, stack_configs: dict[str, FunctionConfig],
                          redeploy_stack: bool) -> None:
    records = supervisor.records.load()
    for name, record in records.items():
        if (redeploy_stack and name in stack_configs) or name in supervisor.functions:
            continue  # from the stack file below, or already restored with its adopted replicas
        if record.deleted:
            if name in stack_configs:
                log.info("function %s: deleted through the API (%s): not deployed from the stack file "
                         "(localfaas up --redeploy-stack deploys it)", name, record.updated_at)
            continue
        image = await _restore_image(images, record)
        if image is None:
            continue
        differs = _differences(record.config, stack_configs[name]) if name in stack_configs else []
        log.info("function %s: restored its last deployment (%s, %s, %d replica(s))%s", name, record.updated_at,
                 image.digest[:19], record.replicas,
                 f"; stack.yml differs in {'; '.join(differs)} (localfaas up --redeploy-stack deploys it)"
                 if differs else "")
        try:
            await supervisor.deploy(record.config, image, source=record.source, replicas=record.replicas)
        except DeployError as exc:
            log.error("%s", exc)
    for name, config in stack_configs.items():
        if name in supervisor.functions or (name in records and not redeploy_stack):
            continue
        try:
            image = await asyncio.to_thread(images.resolve, config.image)
            await supervisor.deploy(config, image, source="stack")
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
    images = ImageStore(state / "images", _builds(stack, contexts),
                        keep=int(_env_float("LOCALFAAS_KEEP_IMAGES", 5)))
    ready_timeout = _env_float("LOCALFAAS_READY_TIMEOUT", 60.0)
    ensure_cron_token(state / "secrets")  # the scheduler's credential (localfaas.cron)
    supervisor = Supervisor(
        state, ready_timeout=ready_timeout, images=images,
        health_interval=_env_float("LOCALFAAS_HEALTH_INTERVAL", 2.0),
        drain_timeout=_env_float("LOCALFAAS_DRAIN_TIMEOUT", 30.0),
    )
    upstream_timeout = _env_float("LOCALFAAS_UPSTREAM_TIMEOUT", 65.0)
    gateway = Gateway(supervisor, images, credentials, upstream_timeout=upstream_timeout,
                      deploy_wait=_env_float("LOCALFAAS_DEPLOY_WAIT", 30.0), scale_from_zero_wait=ready_timeout,
                      no_replica_wait=_env_float("LOCALFAAS_NO_REPLICA_WAIT", 0.0),
                      max_body=int(_env_float("LOCALFAAS_MAX_BODY", DEFAULT_MAX_BODY)))
    redeploy = args.redeploy_stack or _env_bool("LOCALFAAS_REDEPLOY_STACK")
    stack_configs = {name: FunctionConfig.from_spec(stack.functions[name]) for name in contexts}
    recorded = supervisor.records.load()
    # Checked before any replica starts, so a missing secret is one clear line and exit code 2.
    for config in stack_configs.values():
        if config.name in recorded and not redeploy:
            continue  # restored as recorded, not from the stack file
        missing = [s for s in config.secrets if not (state / "secrets" / s).is_file()]
        if missing:
            path = state / "secrets" / missing[0]
            raise StackError(f"function {config.name}: secret {missing[0]!r} not found: create {path} "
                             f"(e.g. printf '%s' VALUE > {path} && chmod 600 {path})")

    await supervisor.start()
    await _adopt_all(supervisor, images, stack_configs, redeploy)
    await asyncio.to_thread(images.refresh_tags)
    runner = GatewayRunner(gateway.make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    plane = _data_plane(args, gateway, upstream_timeout)
    # With the nginx data plane, nginx takes the gateway's port and the app listens on loopback only.
    site = web.TCPSite(runner, *(("127.0.0.1", plane.choose_control_port()) if plane else (args.host, args.port)),
                       reuse_address=True)
    try:
        await site.start()
        if plane:
            await plane.start()
    except (OSError, DataPlaneError) as exc:
        await supervisor.close()
        await runner.cleanup()
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            raise StackError(f"port {args.port} on {args.host} is already in use (pick another with --port)") from None
        raise StackError(str(exc)) from None
    pid_file = state / "run" / "localfaas.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    url = f"http://{args.host}:{args.port}"
    log.info("gateway listening on %s (state %s)", url, state)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    deploys = asyncio.create_task(_deploy_all(supervisor, images, stack_configs, redeploy))
    cron = CronConnector(url, credentials.user, credentials.password,
                         rebuild_interval=_env_float("LOCALFAAS_CRON_INTERVAL", 10.0),
                         token_file=state / "secrets" / CRON_TOKEN)
    cron_task = asyncio.create_task(cron.run())
    try:
        await stop.wait()
    finally:
        log.info("stopping: cron, gateway, then every replica")
        cron_task.cancel()
        deploys.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cron_task
        if plane:
            await plane.close()
        await runner.cleanup()
        await supervisor.close()
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
    return 0


def _data_plane(args: argparse.Namespace, gateway: Gateway, upstream_timeout: float) -> DataPlane | None:
    """The nginx data plane when asked for (LOCALFAAS_DATA_PLANE=nginx), else None: the gateway app
    answers every call itself."""
    mode = os.environ.get("LOCALFAAS_DATA_PLANE", "python") or "python"
    if mode not in MODES:
        raise StackError(f"LOCALFAAS_DATA_PLANE={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "python":
        return None
    try:
        plane = DataPlane(gateway.supervisor, gateway.metrics, host=args.host, port=args.port,
                          body_limit=gateway.proxy.body_limit, upstream_timeout=upstream_timeout,
                          control_timeout=upstream_timeout + gateway.proxy.scale_from_zero_wait + 5)
    except DataPlaneError as exc:
        raise StackError(str(exc)) from None
    gateway.metrics.sources.append(plane.calls.read)
    gateway.system.available = plane.available
    return plane


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfaas", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("up", help="run the stack's functions behind a local OpenFaaS-compatible gateway")
    run.add_argument("--stack", "-f", default="stack.yml")
    run.add_argument("--port", type=int, default=int(os.environ.get("LOCALFAAS_PORT", "8080")))
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--state-dir", default=os.environ.get("STACK_STATE_DIR", "var"))
    run.add_argument("--build-dir", default=None, help="where build contexts go (default: build/ beside the stack)")
    run.add_argument("--redeploy-stack", action="store_true",
                     help="deploy every function from the stack file, not what was deployed before")
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
        # uvloop (libuv) under the gateway: the invoke path's socket reads and writes cost less
        # CPU than on asyncio's own loop (measured with `make bench-capacity`).
        return uvloop.run(up(args))
    except (StackError, BuildError) as exc:
        print(f"localfaas: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
