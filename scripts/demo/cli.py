"""The compressed lifecycle on a local stack: `make demo`, and the driver the end-to-end tests use.

Owns: `main` (the options; bringing its own stack up, or attaching to a running one; the lifecycle;
the report; the stack down again and the temp state removed when all went well),
`notification_receivers` (the release notifications received by the demo itself when the caller
configured none) and `received`.

It brings its own stack up (scripts/stack on free ports, a temp state dir, env/demo.yml's fast local
schedules) and stops it by PID with `scripts.stack down`, or, with `--attach`, drives an already
running `make up` stack and leaves it running (and then kills no replica: it did not start them).

Must not touch: release policy, training, serving or the runtime's internals (it only calls them
like an operator or a client would); processes it did not start.

CLI:
    python -m scripts.demo [--attach] [--out var/demo] [--drill-delay-ms 150] [--drill-error-rate 0]
                           [--load-rate 25] [--no-kill] [--ranking-drill reverse|shuffle|none] [--keep-state]
Env: OPENFAAS_URL, PUBLIC_URL, PROMETHEUS_URL, PUSHGATEWAY_URL, KAFKA_BOOTSTRAP_SERVERS,
STACK_STATE_DIR (used as given; free ports and a temp dir otherwise), NOTIFY_WEBHOOK_URL / SMTP_*
(where the release notifications go; without them the demo receives them itself).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scripts.demo.handle import ROOT, attach_env, bring_down, bring_up, handle_for, local_stack_env
from scripts.demo.phases import LifecycleOptions, run_lifecycle
from scripts.demo.progress import DemoError, Progress
from scripts.demo.report import write_report

DEFAULT_OUT = ROOT / "var" / "demo"


@contextlib.contextmanager
def notification_receivers(env: dict[str, str], own_stack: bool) -> Iterator[dict[str, Any] | None]:
    """Receive the release notifications ourselves when the caller configured none (the webhook
    and SMTP receivers of scripts/sinks.py), so the demo shows what was delivered. Only for a stack
    we start: an attached stack's functions already have their own settings."""
    if not own_stack or env.get("NOTIFY_WEBHOOK_URL") or env.get("SMTP_HOST"):
        yield None
        return
    from scripts.sinks import SMTPSink, WebhookReceiver

    with WebhookReceiver() as hook, SMTPSink() as smtp:
        env.update({"NOTIFY_WEBHOOK_URL": hook.url, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port),
                    "SMTP_FROM": "movierec-demo@localhost", "SMTP_TO": "release-watchers@localhost"})
        yield {"webhook": hook, "email": smtp}


def received(sinks: dict[str, Any] | None) -> dict[str, list[str]]:
    if not sinks:
        return {}
    return {"webhook": [b.get("subject", "?") for b in sinks["webhook"].bodies],
            "email": [str(m["Subject"]) for m in sinks["email"].messages]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--attach", action="store_true",
                        help="drive the already running `make up` stack (URLs from env) instead of starting one")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="report folder (default var/demo)")
    parser.add_argument("--drill-delay-ms", type=int, default=150, help="the drill model's added latency")
    parser.add_argument("--drill-error-rate", type=float, default=0.0,
                        help="share of the drill model's answers that are 500s (counted as drill faults)")
    parser.add_argument("--load-rate", type=float, default=25.0, help="steady client requests per second")
    parser.add_argument("--no-kill", action="store_true", help="skip killing a recommend replica")
    parser.add_argument("--ranking-drill", choices=("reverse", "shuffle", "none"), default="none",
                        help="also release a worse ranking at the same latency, to be judged on online quality "
                             "(opt-in: in the demo's small world and 30 s window the watch-through gap is "
                             "within noise; tests/test_release_online_quality.py proves the loop)")
    parser.add_argument("--keep-state", action="store_true", help="keep the temp state dir (logs, store)")
    args = parser.parse_args(argv)
    progress = Progress()
    options = LifecycleOptions(drill_delay_ms=args.drill_delay_ms, drill_error_rate=args.drill_error_rate,
                               load_rate=args.load_rate, kill_replica=not args.no_kill,
                               ranking_drill=None if args.ranking_drill == "none" else args.ranking_drill)
    env = attach_env() if args.attach else local_stack_env()
    temp_state = not args.attach and not os.environ.get("STACK_STATE_DIR")
    handle = None
    failed = True
    try:
        with notification_receivers(env, own_stack=not args.attach) as sinks:
            if args.attach:
                handle = handle_for(env, started_by_us=False)
                progress.log(f"attached to the stack at {handle.gateway_url} (state {handle.state_dir})")
                if not handle.functions():
                    raise DemoError(f"no stack answers at {handle.gateway_url}: run `make up` first")
            else:
                with progress.phase("stack up"):
                    handle = bring_up(env, progress)
            result = run_lifecycle(handle, options, progress)
            time.sleep(1.0)  # the last notifications are sent before the release record is saved
            write_report(handle, result, Path(args.out), progress, received(sinks))
            failed = False
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
    finally:
        if handle is not None and handle.started_by_us:
            with progress.phase("stack down"):
                bring_down(handle, progress)
            if temp_state and not args.keep_state and not failed:
                shutil.rmtree(handle.state_dir, ignore_errors=True)
            elif temp_state:
                progress.log(f"state (logs, store) kept in {handle.state_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
