"""Warm-up as a user sees it: `make up`'s stack on free ports and a temporary state folder, then
`GET /recommend/<uid>` through nginx every 0.2 s from the moment `up` returns, until the first
answer from a trained model (`X-Model-Version: v...`) and 10 s beyond; then `down`.

Prints when `up` returned (it waits, bounded, for the first answer with ids when the simulator
streams: scripts/stack/first_answer.py), when the first non-empty popularity answer and the first
model answer came (seconds after `up` returned, and after `up` started), the calls by status and kind, and their latency; writes
`bench/results/warmup.json`. The baseline is the callers' budget (800 ms) and the target (first
model answer within 60 s of the stack being up): there is no older code path to compare with.

Owns: this measurement. Must not touch: the stack itself (scripts.stack starts and stops it).

    python -m bench.warmup [--timeout 240]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import requests

from scripts._proc import free_port

REPO = Path(__file__).resolve().parent.parent
BUDGET_MS, TARGET_S = 800.0, 60.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.warmup", description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for a model answer")
    args = parser.parse_args(argv)
    state = Path(tempfile.mkdtemp(prefix="movierec-warmup-"))
    ports = {name: free_port() for name in ("gateway", "public", "prometheus", "pushgateway", "broker")}
    env = {**os.environ, "STACK_STATE_DIR": str(state),
           "OPENFAAS_URL": f"http://127.0.0.1:{ports['gateway']}", "PUBLIC_URL": f"http://127.0.0.1:{ports['public']}",
           "PROMETHEUS_URL": f"http://127.0.0.1:{ports['prometheus']}",
           "PUSHGATEWAY_URL": f"http://127.0.0.1:{ports['pushgateway']}",
           "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ports['broker']}"}
    stack = [sys.executable, "-m", "scripts.stack"]
    t0 = time.monotonic()
    up = subprocess.run([*stack, "up"], cwd=REPO, env=env, capture_output=True, text=True, check=False)
    up_s = time.monotonic() - t0
    if up.returncode != 0:
        print(up.stdout + up.stderr, file=sys.stderr)
        return 1
    calls: list[dict] = []
    first_model = first_popular = None
    started = time.monotonic()
    try:
        uid = 1
        while time.monotonic() - started < args.timeout:
            uid = (uid * 7 + 13) % 1000
            t = time.monotonic()
            try:
                reply = requests.get(f"{env['PUBLIC_URL']}/recommend/{uid}", timeout=2)
                status, version = reply.status_code, reply.headers.get("X-Model-Version")
                ids = [x for x in reply.text.strip().split(",") if x]
            except requests.RequestException as e:
                status, version, ids = type(e).__name__, None, []
            at = round(t - started, 2)
            calls.append({"at_s": at, "status": status, "version": version, "ids": len(ids),
                          "ms": round((time.monotonic() - t) * 1000, 1)})
            if first_popular is None and version == "popularity" and ids:
                first_popular = at
            if first_model is None and version and version.startswith("v"):
                first_model = at
            if first_model is not None and at > first_model + 10:
                break
            time.sleep(0.2)
    finally:
        down = subprocess.run([*stack, "down"], cwd=REPO, env=env, capture_output=True, text=True, check=False)
    latencies = sorted(c["ms"] for c in calls)
    kinds = Counter(f"{c['status']} {'model' if (c['version'] or '').startswith('v') else c['version']}" for c in calls)
    result = {
        "up_s": round(up_s, 1), "first_popularity_answer_s": first_popular, "first_model_answer_s": first_model,
        "first_ids_since_up_started_s": None if first_popular is None and first_model is None else
        round(up_s + min(x for x in (first_popular, first_model) if x is not None), 1),
        "first_model_since_up_started_s": None if first_model is None else round(up_s + first_model, 1),
        "calls": len(calls), "by_kind": dict(kinds),
        "p50_ms": latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": latencies[int(len(latencies) * 0.99)] if latencies else None,
        "max_ms": latencies[-1] if latencies else None,
        "over_budget": sum(1 for ms in latencies if ms > BUDGET_MS),
        "target_met": first_model is not None and first_model <= TARGET_S,
    }
    print(f"`up` returned after {result['up_s']} s; then, seconds after it:")
    print(f"  first non-empty popularity answer  {first_popular}")
    print(f"  first model answer                 {first_model}   (target <= {TARGET_S:g})")
    print(f"  since `up` started: first ids {result['first_ids_since_up_started_s']}, "
          f"first model {result['first_model_since_up_started_s']}")
    print(f"  calls {len(calls)}: {dict(kinds)}")
    print(f"  latency ms p50 {result['p50_ms']} p99 {result['p99_ms']} max {result['max_ms']}; "
          f"over the {BUDGET_MS:g} ms budget: {result['over_budget']}")
    print(f"  down: {'ok' if down.returncode == 0 else down.stderr.strip()[-200:]}")
    out = REPO / "bench" / "results" / "warmup.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["target_met"] and not result["over_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
