"""Operator actions on the running stack's releases: `python -m scripts.release <action>`.

Owns the command line an operator uses against a running stack (local or remote OpenFaaS):
- `status`                      GET the release function's /status and print ONE SCREEN for a person:
                                state, versions and what each variant was verified serving, request
                                and error counts per variant as whole numbers (`increase()` over the
                                window, rounded: the counts the analysis judged), each check with its
                                value vs bound, time left in the window, recent events (drift seen,
                                re-applied, window restarted), the lease; `status --json` prints the
                                function's JSON as it is, for scripts;
- `promote|rollback|abort`      POST the manual action, with the token from the secret file
                                `release-admin-token` (`--reason` is recorded in the history);
- `step`                        one analysis step of the running release, now (what cron runs),
                                with the token `release-admin-token`;
- `train`, `ingest`             invoke those functions now (a training can take minutes), with the
                                token `cron-token` (what the scheduler sends); an ingest while
                                another run holds the consumer group says at once who holds it and
                                when it is free (the function's 409), never `records 0`;
- `drill-bad-model`             a release drill: copy the stable model into a new registry version
                                whose manifest carries `"drill": {"delay_ms": N, "error_rate": F}`
                                (movierec.serving then answers slowly and/or with 500s) and/or
                                `"ranking": "reverse"|"shuffle"` (a worse list at the same latency,
                                caught by online quality only), and start a
                                canary release of it the way training does (candidate alias + PUT
                                recommend-canary MODEL_VERSION). The controller should roll it back.
                                While a release runs (or a step holds the lease) it fails at once,
                                before anything is registered, saying to abort it or until when to wait.
Calls go through the OpenFaaS gateway (OPENFAAS_URL) with the one gateway API client
(`movierec.adapters.gateway`); the drill also writes to the object store (STORE_URL) and redeploys
with the gateway's basic-auth secrets. Secrets and the store default to the
local stack's state dir (STACK_STATE_DIR, `var/`), as scripts/stack sets them for the functions.

Must not touch: release policy and state transitions (movierec.release, run by the release
function), how models are trained; it never sets a drill on anything but the copy it makes.

Exit codes: 0 done, 1 the action failed (one line on stderr), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from movierec.adapters.gateway import FunctionError, GatewayClient, GatewayError
from movierec.adapters.stores import open_store
from movierec.store import read_secret
from scripts.stack import StackConfig

TOKEN_SECRET = "release-admin-token"
CRON_TOKEN = "cron-token"
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

    def call(self, method: str, function: str, path: str = "", timeout_s: float = 30.0,
             token: str = TOKEN_SECRET, **kwargs: Any) -> Any:
        try:
            return self.gateway.call(method, function, path, timeout_s=timeout_s, **kwargs)
        except FunctionError as e:
            if e.status == 401:
                raise CommandError(f"{function}{path}: refused (401): check the secret {token}") from None
            raise CommandError(str(e)) from None
        except GatewayError as e:
            raise CommandError(f"{e}: is the stack up (make status)?") from None


# -- actions -------------------------------------------------------------------------------------
def release_status(calls: StackCalls, args: argparse.Namespace) -> Any:
    found = calls.call("GET", "release", "/status")
    return found if args.json else render_status(found, datetime.now(UTC))


def release_manual(calls: StackCalls, args: argparse.Namespace) -> Any:
    token = calls.secret(TOKEN_SECRET)
    return calls.call("POST", "release", f"/{args.action}", json={"reason": args.reason or ""},
                      headers={"Authorization": f"Bearer {token}"})


def release_step(calls: StackCalls, args: argparse.Namespace) -> Any:
    token = calls.secret(TOKEN_SECRET)
    return calls.call("POST", "release", "/step", timeout_s=CALL_TIMEOUT_S["step"],
                      headers={"Authorization": f"Bearer {token}"})


def invoke(calls: StackCalls, args: argparse.Namespace) -> Any:
    token = calls.secret(CRON_TOKEN)
    auth = {"Authorization": f"Bearer {token}"}
    if args.action == "ingest":
        return invoke_ingest(calls, auth)
    return calls.call("POST", args.action, "", timeout_s=CALL_TIMEOUT_S[args.action], token=CRON_TOKEN,
                      data=b"", headers=auth)


def invoke_ingest(calls: StackCalls, auth: dict[str, str]) -> Any:
    """Run ingest now, or say at once what holds the consumer group's lease and until when (409:
    another run, e.g. the scheduled one, is ingesting; it is never reported as `records 0`)."""
    try:
        return calls.gateway.call("POST", "ingest", "", timeout_s=CALL_TIMEOUT_S["ingest"], data=b"",
                                  headers=auth)
    except FunctionError as e:
        if e.status == 409:
            detail = e.detail.partition(": ")[2] or e.detail  # drop the error's type name
            raise CommandError(f"ingest not started: {detail}; run it again after that") from None
        if e.status == 401:
            raise CommandError(f"ingest: refused (401): check the secret {CRON_TOKEN}") from None
        raise CommandError(str(e)) from None
    except GatewayError as e:
        raise CommandError(f"{e}: is the stack up (make status)?") from None


def drill_settings(delay_ms: float | None, error_rate: float | None, ranking: str | None = None):
    """The drill asked for: the default (slow AND erroring) when none is given, else exactly
    what was given (the others 0 / the model's own order). Raises DrillError for values out of
    range."""
    from movierec.drills import Drill

    if delay_ms is None and error_rate is None and ranking is None:
        return Drill(**DEFAULT_DRILL)
    return Drill(delay_ms or 0.0, error_rate or 0.0, ranking)


def drill_bad_model(calls: StackCalls, args: argparse.Namespace) -> Any:
    from movierec.drills import register_drill_version
    from movierec.release import ReleaseConfig, ReleaseRunningError, start_release

    drill = drill_settings(args.delay_ms, args.error_rate, args.ranking)
    for name in ("basic-auth-user", "basic-auth-password"):  # the redeploy needs them: say so first
        calls.secret(name)
    store, config = open_store(calls.env), ReleaseConfig.from_env(calls.env)
    refuse_while_busy(store, config, datetime.now(UTC))  # before a drill version is registered
    entry = register_drill_version(store, drill, source=args.source)
    try:
        release = start_release(config, store, calls.gateway, entry.version, actor="drill")
    except ReleaseRunningError as e:  # started meanwhile: the same hint
        raise CommandError(f"{e}: {ABORT_HINT} or wait and try again") from None
    return {"drill_version": entry.version, "copied_from": entry.metadata["extra"]["copied_from"],
            "drill": drill.as_manifest(), "release": release.id,
            "next": "watch `python -m scripts.release status`: the controller should roll it back"}


# -- the status screen ---------------------------------------------------------------------------
def render_status(found: dict[str, Any], now: datetime) -> str:
    """One screen for a person from the release function's /status JSON (`now`: for time left)."""
    current, aliases = found.get("current"), found.get("aliases") or {}
    lines = []
    if current and found.get("running"):
        lines += _running_lines(current, now)
    elif current:
        lines.append(f"no release running; the last one, {current['id']}, was {current['state']} "
                     f"{_when(current.get('decided'), now)} by {current.get('actor') or '?'}: {current.get('reason')}")
    else:
        lines.append("no release yet")
    lines.append(f"aliases   stable {aliases.get('stable') or '-'}, candidate {aliases.get('candidate') or '-'}")
    lines.append(f"lease     {_lease_line(found.get('lease'), now)}")
    history = found.get("history") or []
    if history:
        lines.append("history")
        lines += [f"  {_stamp(h['decided'], now) if h.get('decided') else '-'}  {h['state']:<11} {h['candidate']}  "
                  f"{h.get('reason', '')}"[:160] for h in history]
    return "\n".join(lines)


def _running_lines(r: dict[str, Any], now: datetime) -> list[str]:
    analysis = r.get("analysis") or {}
    window = analysis.get("window") or {}
    lines = [f"release   {r['id']}: {r['state']}, started {_when(r['started'], now)} by {r.get('actor') or '?'}",
             f"versions  candidate {r['candidate']} on the canary, stable {r['stable']}"]
    if r.get("serving_since"):
        lines.append(f"serving   verified since {_when(r['serving_since'], now)}; "
                     f"last checked {_when(r.get('verified_at'), now)}")
    else:
        lines.append("serving   NOT verified: the canary is not seen serving the candidate; no evidence counts")
    if window.get("ends"):
        left = (datetime.fromisoformat(window["ends"]) - now).total_seconds()
        lines.append(f"window    {_when(window['start'], now)} -> {_when(window['ends'], now)}: "
                     f"{_duration(left) + ' left' if left > 0 else 'complete'}; times out {_when(window['timeout_at'], now)}")
    elif window:
        lines.append(f"window    not started; times out {_when(window.get('timeout_at'), now)}")
    metrics = analysis.get("metrics")
    if metrics:
        lines.append(f"analysis  {_when(analysis.get('at'), now)} over {analysis.get('range')} "
                     f"(counts: {analysis.get('counts') or 'increase() over the window, rounded'})")
        lines.append(f"  {'variant':<8}{'requests':>10}{'errors':>8}{'success':>10}{'mean':>9}{'p99':>9}")
        for variant in ("canary", "stable"):
            m = metrics.get(variant) or {}
            requests, errors = round(m.get("requests") or 0), round(m.get("errors") or 0)
            success = f"{100 * (1 - errors / requests):.2f}%" if requests else "-"
            lines.append(f"  {variant:<8}{requests:>10d}{errors:>8d}{success:>10}{_ms(m.get('mean_latency_s')):>9}"
                         f"{_ms(m.get('p99_latency_s')):>9}")
    own = analysis.get("probes_subtracted")
    if metrics and own:
        lines.append(f"  the controller's own health probes, not counted: canary {own.get('canary', 0)}, "
                     f"stable {own.get('stable', 0)}")
    decision = analysis.get("decision") or {}
    if decision:
        lines.append(f"decision  {decision.get('action')}: {decision.get('reason')}")
    discarded = analysis.get("discarded")
    if discarded:
        lines.append(f"  not counted: over {discarded.get('range')} it would have been "
                     f"{(discarded.get('decision') or {}).get('action')}")
    checks = decision.get("checks") or []
    lines.append("checks" + ("" if checks else "    not judged yet (too few canary requests in the window)"))
    verdict = {True: "ok  ", False: "FAIL", None: "wait"}  # None: pending, too little evidence yet
    lines += [f"  {verdict[c['passed']]}  {c['name']:<26}{c['detail']}" for c in checks]
    events = r.get("events") or []
    if events:
        lines.append(f"events    latest {min(len(events), 8)} of {len(events)}")
        lines += [f"  {_stamp(e['at'], now)}  {e['event']:<17}{_event_text(e, now)}" for e in events[-8:]]
    return lines


def _event_text(e: dict[str, Any], now: datetime) -> str:
    kind = e["event"]
    if kind == "drift_seen":
        resolved = f" ({e['resolved']})" if e.get("resolved") and e.get("resolved") != e.get("deployed") else ""
        served = f", answering {'/'.join(e['served'])}" if e.get("served") else ""
        return f"{e['function']} deployed with MODEL_VERSION={e.get('deployed') or '(unset)'}{resolved}{served}, " \
               f"expected {e['expected']}"
    if kind == "reapplied":
        return f"{e['function']} redeployed with MODEL_VERSION={e['version']}"
    if kind == "window_restarted":
        since = _stamp(e["evidence_from"], now) if e.get("evidence_from") else "the start"
        return f"evidence since {since} not counted"
    if kind == "serving_verified":
        return f"canary serves {e.get('canary')}, stable {e.get('stable')}: the window starts"
    if kind == "unverified":
        return "; ".join(f"{v['function']}: {v.get('unknown') or 'answers ' + '/'.join(v.get('served') or [])}"
                         for v in e.get("variants") or [])
    return json.dumps({k: v for k, v in e.items() if k not in ("at", "event")}, sort_keys=True)


def _lease_line(lease: dict[str, Any] | None, now: datetime) -> str:
    if not lease:
        return "free (never taken)"
    expires = datetime.fromisoformat(lease["expires"])
    if lease.get("released") or expires <= now:
        return f"free (last: {lease['holder']}, token {lease['token']})"
    if lease.get("holder_exited"):  # what the next step's acquire decides: free at once, not at its expiry
        return (f"free (its holder, pid {lease.get('pid')}, has exited; last: {lease['holder']}, "
                f"token {lease['token']})")
    return f"held by {lease['holder']} (token {lease['token']}) until {_when(lease['expires'], now)}"


def _stamp(text: str, now: datetime) -> str:
    """`HH:MM:SSZ` on `now`'s day, else with the date."""
    at = datetime.fromisoformat(text).astimezone(UTC)
    return at.strftime("%H:%M:%SZ" if at.date() == now.date() else "%Y-%m-%d %H:%M:%SZ")


def _when(text: str | None, now: datetime) -> str:
    """The stamp, and how long ago (or from now) in brackets."""
    if not text:
        return "-"
    delta = (now - datetime.fromisoformat(text)).total_seconds()
    return f"{_stamp(text, now)} ({_duration(abs(delta))} {'ago' if delta >= 0 else 'from now'})"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


ABORT_HINT = "abort the running release with `python -m scripts.release abort`"


def refuse_while_busy(store, config, now: datetime) -> None:
    """CommandError at once while a release runs or a step holds the lease, with the way out."""
    from movierec.release import ReleaseStore, read_lease, window_of

    running = ReleaseStore(store).running()
    if running is not None:
        window = window_of(running, config)
        until = window["ends"] or window["timeout_at"]
        why = "when its analysis window ends" if window["ends"] else "its timeout: its window has not started"
        raise CommandError(f"release {running.id} of {running.candidate} is running (since {running.started}): "
                           f"{ABORT_HINT} or wait until {until} ({why}; it ends by {window['timeout_at']} "
                           "at the latest)")
    lease = read_lease(store, now)
    if lease and lease["held"]:
        raise CommandError(f"a release step or action holds the release lease ({lease['holder']}): "
                           f"wait until {lease['expires']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.release", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", default=None, help="the local stack's state (default STACK_STATE_DIR or var/)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = sub.add_parser("status", help="the running release on one screen: versions, counts, checks, "
                                           "time left, events")
    status.add_argument("--json", action="store_true", help="the release function's JSON, for scripts")
    for name in MANUAL:
        manual = sub.add_parser(name, help=f"{name} the running release (needs {TOKEN_SECRET})")
        manual.add_argument("--reason", default="", help="recorded in the release history")
    sub.add_parser("step", help="one analysis step of the running release, now")
    sub.add_parser("train", help="invoke the train function now (waits for it, up to 30 min)")
    sub.add_parser("ingest", help="invoke the ingest function now")
    from movierec.drills import RANKINGS

    drill = sub.add_parser("drill-bad-model", help="release a deliberately slow/erroring/worse-ranking copy of "
                                                   "the stable model")
    drill.add_argument("--delay-ms", type=_non_negative, default=None,
                       help=f"added to every answer (default {DEFAULT_DRILL['delay_ms']:g} when neither is given)")
    drill.add_argument("--error-rate", type=_share, default=None,
                       help=f"share of requests answered 500 (default {DEFAULT_DRILL['error_rate']:g} "
                            "when neither is given)")
    drill.add_argument("--ranking", choices=RANKINGS, default=None,
                       help="serve a worse list at the same latency: the model's least preferred first "
                            "(reverse) or a random k of its candidates (shuffle)")
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
        env["SECRETS_DIR"] = str(config.secrets_dir)
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
