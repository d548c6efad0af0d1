"""Operator actions on the running stack's releases: `python -m scripts.release <action>`.

Owns the command line an operator uses against a running stack (local or remote OpenFaaS):
- `status`                      GET the release function's /status (running release, aliases, history);
- `promote|rollback|abort`      POST the manual action, with the token from the secret file
                                `release-admin-token` (`--reason` is recorded in the history);
- `step`                        one analysis step of the running release, now (what cron runs);
- `train`, `ingest`             invoke those functions now (a training can take minutes); an ingest
                                while another run holds the consumer group says at once who holds
                                it and when it is free (the function's 409), never `records 0`;
- `drill-bad-model`             a release drill: copy the stable model into a new registry version
                                whose manifest carries `"drill": {"delay_ms": N, "error_rate": F}`
                                (movierec.serving then answers slowly and/or with 500s), and start a
                                canary release of it the way training does (candidate alias + PUT
                                recommend-canary MODEL_VERSION). The controller should roll it back.
Calls go through the OpenFaaS gateway (OPENFAAS_URL) with the one gateway API client
(`movierec.adapters.gateway`); the drill also writes to the object store (STORE_URL) and redeploys
with the gateway's basic-auth secrets. Secrets and the store default to the
local stack's state dir (STACK_STATE_DIR, `var/`), as scripts/stack.py sets them for the functions.

Must not touch: release policy and state transitions (movierec.release, run by the release
function), how models are trained; it never sets a drill on anything but the copy it makes.

Exit codes: 0 done, 1 the action failed (one line on stderr), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from movierec.adapters.gateway import FunctionError, GatewayClient, GatewayError
from movierec.adapters.stores import open_store
from movierec.store import read_secret
from scripts.stack import StackConfig

TOKEN_SECRET = "release-admin-token"
MANUAL = ("promote", "rollback", "abort")
DEFAULT_DRILL = {"delay_ms": 400.0, "error_rate": 0.3}
CALL_TIMEOUT_S = {"train": 1800.0, "ingest": 180.0, "step": 150.0}


class CommandError(RuntimeError):
    """One line for the operator: what failed and what to do."""


class StackCalls:
    """Calls to the stack's functions through the one gateway API client, retried while the
    gateway is unreachable; every failure becomes one CommandError line."""

    def __init__(self, config: StackConfig, env: dict[str, str], attempts: int = 3, backoff_s: float = 1.0):
        self.env = {**env, "OPENFAAS_URL": env.get("OPENFAAS_URL") or config.url(config.gateway_port)}
        # timeout_s bounds the drill's PUT, which returns once the new canary replica is ready.
        self.gateway = GatewayClient.from_env(self.env, timeout_s=120.0, attempts=attempts, backoff_s=backoff_s)

    def secret(self, name: str) -> str:
        value = read_secret(name, self.env)
        if not value:
            raise CommandError(f"secret {name} not found in {self.env.get('SECRETS_DIR')}: "
                               f"is the stack up (make up) or SECRETS_DIR set?")
        return value

    def call(self, method: str, function: str, path: str = "", timeout_s: float = 30.0, **kwargs: Any) -> Any:
        try:
            return self.gateway.call(method, function, path, timeout_s=timeout_s, **kwargs)
        except FunctionError as e:
            if e.status == 401:
                raise CommandError(f"{function}{path}: refused (401): check the secret {TOKEN_SECRET}") from None
            raise CommandError(str(e)) from None
        except GatewayError as e:
            raise CommandError(f"{e}: is the stack up (make status)?") from None


# -- actions -------------------------------------------------------------------------------------
def release_status(calls: StackCalls, args: argparse.Namespace) -> Any:
    return calls.call("GET", "release", "/status")


def release_manual(calls: StackCalls, args: argparse.Namespace) -> Any:
    token = calls.secret(TOKEN_SECRET)
    return calls.call("POST", "release", f"/{args.action}", json={"reason": args.reason or ""},
                      headers={"Authorization": f"Bearer {token}"})


def release_step(calls: StackCalls, args: argparse.Namespace) -> Any:
    return calls.call("POST", "release", "/step", timeout_s=CALL_TIMEOUT_S["step"])


def invoke(calls: StackCalls, args: argparse.Namespace) -> Any:
    if args.action == "ingest":
        return invoke_ingest(calls)
    return calls.call("POST", args.action, "", timeout_s=CALL_TIMEOUT_S[args.action], data=b"")


def invoke_ingest(calls: StackCalls) -> Any:
    """Run ingest now, or say at once what holds the consumer group's lease and until when (409:
    another run, e.g. the scheduled one, is ingesting; it is never reported as `records 0`)."""
    try:
        return calls.gateway.call("POST", "ingest", "", timeout_s=CALL_TIMEOUT_S["ingest"], data=b"")
    except FunctionError as e:
        if e.status == 409:
            detail = e.detail.partition(": ")[2] or e.detail  # drop the error's type name
            raise CommandError(f"ingest not started: {detail}; run it again after that") from None
        raise CommandError(str(e)) from None
    except GatewayError as e:
        raise CommandError(f"{e}: is the stack up (make status)?") from None


def drill_settings(delay_ms: float | None, error_rate: float | None):
    """The drill asked for: the default (slow AND erroring) when neither is given, else exactly
    what was given (the other one 0). Raises DrillError for values out of range."""
    from movierec.drills import Drill

    if delay_ms is None and error_rate is None:
        return Drill(**DEFAULT_DRILL)
    return Drill(delay_ms or 0.0, error_rate or 0.0)


def drill_bad_model(calls: StackCalls, args: argparse.Namespace) -> Any:
    from movierec.drills import register_drill_version
    from movierec.release import ReleaseConfig, start_release

    drill = drill_settings(args.delay_ms, args.error_rate)
    for name in ("basic-auth-user", "basic-auth-password"):  # the redeploy needs them: say so first
        calls.secret(name)
    store = open_store(calls.env)
    entry = register_drill_version(store, drill, source=args.source)
    release = start_release(ReleaseConfig.from_env(calls.env), store, calls.gateway, entry.version, actor="drill")
    return {"drill_version": entry.version, "copied_from": entry.metadata["extra"]["copied_from"],
            "drill": drill.as_manifest(), "release": release.id,
            "next": "watch `python -m scripts.release status`: the controller should roll it back"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.release", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", default=None, help="the local stack's state (default STACK_STATE_DIR or var/)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("status", help="the running release, aliases and recent history")
    for name in MANUAL:
        manual = sub.add_parser(name, help=f"{name} the running release (needs {TOKEN_SECRET})")
        manual.add_argument("--reason", default="", help="recorded in the release history")
    sub.add_parser("step", help="one analysis step of the running release, now")
    sub.add_parser("train", help="invoke the train function now (waits for it, up to 30 min)")
    sub.add_parser("ingest", help="invoke the ingest function now")
    drill = sub.add_parser("drill-bad-model", help="release a deliberately slow/erroring copy of the stable model")
    drill.add_argument("--delay-ms", type=_non_negative, default=None,
                       help=f"added to every answer (default {DEFAULT_DRILL['delay_ms']:g} when neither is given)")
    drill.add_argument("--error-rate", type=_share, default=None,
                       help=f"share of requests answered 500 (default {DEFAULT_DRILL['error_rate']:g} "
                            "when neither is given)")
    drill.add_argument("--source", default=None, help="model version to copy (default: the stable one)")
    return parser.parse_args(argv)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of milliseconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


ACTIONS = {"status": release_status, "promote": release_manual, "rollback": release_manual,
           "abort": release_manual, "step": release_step, "train": invoke, "ingest": invoke,
           "drill-bad-model": drill_bad_model}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = StackConfig.from_env(args.state_dir)
    env = config.service_env()
    if args.state_dir:  # an explicit state dir names where the secrets and the store are
        env["SECRETS_DIR"] = str(config.state_dir / "secrets")
        if not os.environ.get("STORE_URL"):
            env["STORE_URL"] = str(config.state_dir / "store")
    try:
        result = ACTIONS[args.action](StackCalls(config, env), args)
    except CommandError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 (store, registry, deploy and drill errors: one line, not a traceback)
        print(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True, default=str) if not isinstance(result, str) else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
