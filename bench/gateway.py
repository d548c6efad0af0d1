"""Benchmark: what the public entry (nginx) and the OpenFaaS gateway add to GET /recommend/<uid>.

Brings up what it needs itself, on free ports and in a temporary folder: a small model
(bench.recommend's generator, saved as the real artifact and served via MODEL_PATH), a stack file
holding only recommend and recommend-canary (taken from the project's stack.yml), the local
OpenFaaS runtime (`python -m localfaas up`) and nginx with the rendered gateway/ config, plus one
function process started straight from the runtime's build context. Then, in this one run, at a
fixed open-loop rate (default 200 req/s for 30 s per path), it measures:
- direct:  the function process itself  GET /<uid>
- gateway: the OpenFaaS gateway          GET /function/recommend/<uid>
- nginx:   the public entry              GET /recommend/<uid> (canary split included)
and prints p50/p99 and the overhead against `direct` (the baseline), with error counts.
Writes bench/results/gateway.json. Run: `make bench-gateway` or `python -m bench.gateway`.

Owns nothing but this measurement; the bring-up is bench/localstack.py's `RecommendStack`.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see bench/recommend.py: replicas run 1 BLAS thread

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.localstack import RecommendStack
from bench.recommend import build_bench_model
from bench.report import write_result
from movierec.artifact import save_model

RESULTS = Path(__file__).resolve().parent / "results" / "gateway.json"


# -- the load ------------------------------------------------------------------------------------
async def fixed_rate(url_for, rate: float, seconds: float, timeout_s: float = 2.0) -> dict:
    """Open loop: request i is sent at start + i/rate whatever earlier answers do (no coordinated
    omission); latency is measured from the send. Bounded: rate*seconds requests in all."""
    import aiohttp

    total = int(rate * seconds)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=64, force_close=False)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        async def one(i: int) -> None:
            t0 = time.perf_counter()
            try:
                async with session.get(url_for(i)) as response:
                    await response.read()
                    if response.status != 200:
                        errors[f"http_{response.status}"] = errors.get(f"http_{response.status}", 0) + 1
                        return
            except (TimeoutError, aiohttp.ClientError) as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                return
            latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        tasks = []
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "requests": total, "ok": len(latencies), "errors": sum(errors.values()), "error_kinds": errors,
        "achieved_rate": total / elapsed,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
    }


def run(rate: float, seconds: float, warmup_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        model = build_bench_model(2000, 2000, n_factors=32, seed=7)
        save_model(model, Path(tmp) / "model")
        with RecommendStack(Path(tmp), model_dir=Path(tmp) / "model", public_entry=True, direct=True) as stack:
            return measure(stack, np.asarray(model.user_ids), rate, seconds, warmup_s)


def measure(stack: RecommendStack, user_ids: np.ndarray, rate: float, seconds: float, warmup_s: float) -> dict:
    """Each path in turn, after a warm-up at the same rate."""
    rng = np.random.default_rng(1)
    # 90% known users, 10% new ones (cold start), the same sequence on every path.
    known = rng.choice(user_ids, size=int(rate * seconds))
    unknown = rng.integers(10**9, 2 * 10**9, size=len(known))
    users = np.where(rng.random(len(known)) < 0.9, known, unknown)
    paths = {
        "direct": lambda i: f"{stack.direct_url}/{users[i % len(users)]}",
        "gateway": lambda i: f"{stack.gateway_url}/function/recommend/{users[i % len(users)]}",
        "nginx": lambda i: f"{stack.public_url}/recommend/{users[i % len(users)]}",
    }
    measured = {}
    for name, url_for in paths.items():
        asyncio.run(fixed_rate(url_for, rate, warmup_s))  # connections and caches warm
        measured[name] = asyncio.run(fixed_rate(url_for, rate, seconds))
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (default 200)")
    parser.add_argument("--seconds", type=float, default=30.0, help="per path (default 30, at most 120)")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    if not (0 < args.rate <= 1000 and 0 < args.seconds <= 120):
        print("error: --rate must be in (0, 1000] and --seconds in (0, 120]", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    measured = run(args.rate, args.seconds, args.warmup)
    load_after = os.getloadavg()
    result = {
        "direct_p50_ms": measured["direct"]["p50_ms"], "gateway_p50_ms": measured["gateway"]["p50_ms"],
        "nginx_p50_ms": measured["nginx"]["p50_ms"], "direct_p99_ms": measured["direct"]["p99_ms"],
        "gateway_p99_ms": measured["gateway"]["p99_ms"], "nginx_p99_ms": measured["nginx"]["p99_ms"],
        "errors": sum(m["errors"] for m in measured.values()), "rate": args.rate, "seconds": args.seconds,
        "paths": measured, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": {"before": list(load_before), "after": list(load_after)},
    }
    base = measured["direct"]
    print(f"GET /recommend/<uid> at {args.rate:g} req/s for {args.seconds:g} s per path "
          f"(baseline: the function process, same run; load average {load_before[0]:.2f} -> {load_after[0]:.2f})")
    print(f"{'path':<8} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'p99 x':>6} {'errors':>7} {'req/s':>7}")
    for name, m in measured.items():
        if m["p50_ms"] is None:
            print(f"{name:<8} {'-':>8} {'-':>8} {'-':>8} {'-':>6} {m['errors']:>7} {m['achieved_rate']:>7.1f}")
            continue
        extra = m["p50_ms"] - base["p50_ms"] if base["p50_ms"] is not None else float("nan")
        ratio = m["p99_ms"] / base["p99_ms"] if base["p99_ms"] else float("nan")
        print(f"{name:<8} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {extra:>8.2f} {ratio:>6.2f} "
              f"{m['errors']:>7} {m['achieved_rate']:>7.1f}")
    targets = {
        "gateway adds <= 1 ms at p50": (result["gateway_p50_ms"] or 1e9) - (result["direct_p50_ms"] or 0) <= 1.0,
        "p99 through nginx <= 30 ms": (result["nginx_p99_ms"] or 1e9) <= 30.0,
        "0 errors": result["errors"] == 0,
    }
    result["targets_met"] = targets
    for text, ok in targets.items():
        print(f"target {text}: {'met' if ok else 'NOT met'}")
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
