"""Benchmark: what a model of N ratings costs the recommend function in memory, and per request.

Builds a model artifact at the size an N-rating world gives (default 20M) WITHOUT training:
random factors of the shapes a trained model has, through the real artifact writer and the real
registry (`Registry.register_model` into a local store). The world rule (one user per
`--ratings-per-user` 38 ratings, 12,000 movies, 100 SVD factors, 65 ranking columns: the widest
the job ships, a fifth more watched-only pairs than ratings) reproduces issue 15's model.npz sizes
(33 MB at 1M, 101 MB at 4M, 238 MB at 10M, 466 MB at 20M: 22.8 bytes per rating).

Then, each in its own fresh process, so the OS's peak figures are the phase's own:
- `register`: the model's arrays in memory, then `register_model` (serialise, hash, store); peak
  RSS growth over the arrays themselves (VmHWM is reset through /proc/self/clear_refs first);
- `serve-cold`: what a new recommend replica does (`serving.ModelHolder` with MODEL_VERSION and
  an empty MODEL_CACHE_DIR: resolve, download, verify the sha256, load), then `--calls` requests
  through `ModelHolder.recommend`;
- `serve-warm`: the same with the cache already holding the version (a restarted replica).
For the serve phases: peak RSS (VmHWM from /proc/self/status and ru_maxrss), RssAnon and RssFile
after load (file pages of a memory-mapped artifact are page cache: clean, shared, reclaimable
under the function's memory limit; anonymous pages are not), load time, request p50/p99.
The baselines: the function's memory limit in stack.yml (recommend's `limits.memory`) for memory;
for latency, the same arrays copied into memory (how a model was served before it was mapped),
timed in the same process in alternating blocks after the memory figures are taken.

Prints a table and writes bench/results/serve_memory.json. Run: `python -m bench.serve_memory`
(`make bench-serve-memory`; `ARGS="--ratings 4000000"` for another size).
Owns nothing but this measurement; uses movierec's public API only.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # a serving replica's setting (bench/recommend.py)

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bench.report import write_result

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "serve_memory.json"
MIB = 2**20


def status_kib() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process in KiB (Linux /proc)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0])
    return out


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_limit_mib(function: str = "recommend") -> float:
    """The function's `limits.memory` in stack.yml, in MiB."""
    spec = yaml.safe_load((ROOT / "stack.yml").read_text())["functions"][function]["limits"]["memory"]
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / MIB, "M": 1e6 / MIB, "G": 1e9 / MIB}
    for suffix in sorted(units, key=len, reverse=True):
        if spec.endswith(suffix):
            return float(spec[: -len(suffix)]) * units[suffix]
    return float(spec) / MIB


def build_model(ratings: int, ratings_per_user: float, movies: int, factors: int, rank_factors: int,
                watch_only_fraction: float, seed: int):
    """A model with a trained model's shapes and random values (no training)."""
    from movierec.model import RecommenderModel

    rng = np.random.default_rng(seed)
    n_users = max(1, round(ratings / ratings_per_user))
    seen_pairs = round(ratings * (1 + watch_only_fraction))
    f32 = np.float32
    counts = rng.multinomial(seen_pairs, np.full(n_users, 1 / n_users))
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    movie_ids = np.array(sorted(f"movie+{i:06d}+of+the+{('north', 'south', 'east')[i % 3]}+{1925 + i % 99}"
                                for i in range(movies)))
    user_ids = np.sort(rng.choice(10_000_000, size=n_users, replace=False)).astype(np.int64)
    return RecommenderModel(
        global_mean=3.5, user_ids=user_ids, user_has_factors=np.ones(n_users, bool),
        user_bias=rng.normal(0, 0.3, n_users).astype(f32),
        user_factors=rng.standard_normal((n_users, factors), dtype=f32) * f32(0.1),
        movie_ids=movie_ids, item_bias=rng.normal(0, 0.4, movies).astype(f32),
        item_factors=rng.standard_normal((movies, factors), dtype=f32) * f32(0.1),
        seen_indptr=indptr, seen_indices=rng.integers(0, movies, seen_pairs, dtype=np.int32),
        cold_start=np.arange(min(200, movies), dtype=np.int32),
        user_ranked=np.ones(n_users, bool),
        rank_user_factors=rng.standard_normal((n_users, rank_factors), dtype=f32) * f32(0.1),
        rank_item_factors=rng.standard_normal((movies, rank_factors), dtype=f32) * f32(0.1),
        rank_item_bias=np.zeros(movies, f32),
        params={"n_factors": factors, "source": "bench.serve_memory: random factors, no training"},
        ranking_params={"factors": rank_factors - 1, "source": "bench.serve_memory"},
    )


def phase_register(args) -> dict:
    from movierec.registry import Registry
    from movierec.store import LocalDirectoryStore

    model = build_model(args.ratings, args.ratings_per_user, args.movies, args.factors, args.rank_factors,
                        args.watch_only_fraction, args.seed)
    arrays_mib = sum(getattr(model, n).nbytes for n in vars(model) if isinstance(getattr(model, n), np.ndarray)) / MIB
    before = status_kib()
    peak_reset = reset_peak()
    t0 = time.perf_counter()
    entry = Registry(LocalDirectoryStore(args.store)).register_model(model, params={"bench": "serve_memory"})
    register_s = time.perf_counter() - t0
    after = status_kib()
    return {"version": entry.version, "register_s": round(register_s, 2), "model_arrays_mib": round(arrays_mib, 1),
            "rss_before_register_mib": round(before["VmRSS"] / 1024, 1),
            "register_peak_growth_mib": round((after["VmHWM"] - before["VmRSS"]) / 1024, 1) if peak_reset else None,
            "peak_reset": peak_reset, "n_users": model.n_users, "n_movies": model.n_movies,
            "seen_pairs": len(model.seen_indices)}


def phase_serve(args) -> dict:
    from movierec.adapters.stores import open_store
    from movierec.serving import ModelHolder

    env = {"MODEL_VERSION": args.version, "STORE_DIR": args.store, "MODEL_CACHE_DIR": args.cache,
           "STORE_URL": "", "PATH": os.environ.get("PATH", "")}
    import movierec.model  # noqa: F401 (numpy and the model code: what a replica has imported before it loads)

    before = status_kib()
    t0 = time.perf_counter()
    holder = ModelHolder(env, open_store=open_store, background=False)
    load_s = time.perf_counter() - t0
    model = holder.get()
    if model is None:
        raise SystemExit(f"no model loaded: {holder.describe()}")
    loaded = status_kib()
    rng = np.random.default_rng(args.seed + 1)
    users = rng.choice(model.user_ids, size=args.calls + 50).tolist()
    for u in users[:50]:
        holder.recommend(model, u)
    samples = []
    for u in users[50:]:
        t = time.perf_counter_ns()
        holder.recommend(model, u)
        samples.append(time.perf_counter_ns() - t)
    served = status_kib()
    ms = np.asarray(samples, np.float64) / 1e6
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    # Latency baseline, same run, after the memory figures are taken: the same arrays copied into
    # anonymous memory (how a model was served before it was mapped), timed in alternating blocks.
    from movierec.model import ARRAY_NAMES, RecommenderModel

    copied = RecommenderModel(**{n: getattr(model, n) if n == "global_mean" else np.array(getattr(model, n))
                                 for n in ARRAY_NAMES}, params=model.params, ranking_params=model.ranking_params)
    ab: dict[str, list[int]] = {"mapped": [], "copied": []}
    for block in range(0, args.calls, 250):
        for name, m in (("mapped", model), ("copied", copied)):
            for u in users[50 + block: 50 + block + 250]:
                t = time.perf_counter_ns()
                m.recommend(u, holder.k)
                ab[name].append(time.perf_counter_ns() - t)
    ab_ms = {name: np.asarray(v, np.float64) / 1e6 for name, v in ab.items()}
    return {
        "load_s": round(load_s, 2),
        "rss_before_load_mib": round(before["VmRSS"] / 1024, 1),
        "peak_rss_mib": round(served["VmHWM"] / 1024, 1),
        "ru_maxrss_mib": round(maxrss_kib / 1024, 1),
        "rss_anon_after_load_mib": round(loaded["RssAnon"] / 1024, 1),
        "rss_file_after_load_mib": round(loaded["RssFile"] / 1024, 1),
        "rss_anon_after_calls_mib": round(served["RssAnon"] / 1024, 1),
        "rss_file_after_calls_mib": round(served["RssFile"] / 1024, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "calls": len(samples),
        "same_run_mapped_p50_ms": round(float(np.percentile(ab_ms["mapped"], 50)), 4),
        "same_run_mapped_p99_ms": round(float(np.percentile(ab_ms["mapped"], 99)), 4),
        "same_run_copied_p50_ms": round(float(np.percentile(ab_ms["copied"], 50)), 4),
        "same_run_copied_p99_ms": round(float(np.percentile(ab_ms["copied"], 99)), 4),
        "served": holder.describe(),
    }


def child(phase: str, args, **extra) -> dict:
    argv = [sys.executable, "-m", "bench.serve_memory", "--phase", phase]
    for name in ("ratings", "ratings_per_user", "movies", "factors", "rank_factors", "watch_only_fraction",
                 "seed", "calls"):
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for name, value in extra.items():
        argv += [f"--{name}", str(value)]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=20_000_000)
    parser.add_argument("--ratings-per-user", type=float, default=38.0)
    parser.add_argument("--movies", type=int, default=12_000)
    parser.add_argument("--factors", type=int, default=100)
    parser.add_argument("--rank-factors", type=int, default=65)
    parser.add_argument("--watch-only-fraction", type=float, default=0.2)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--phase", choices=["register", "serve"], help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--version", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        result = phase_register(args) if args.phase == "register" else phase_serve(args)
        print(json.dumps(result))
        return result

    limit = memory_limit_mib()
    with tempfile.TemporaryDirectory(prefix="bench-serve-memory-") as tmp:
        store, cache = str(Path(tmp) / "store"), str(Path(tmp) / "cache")
        reg = child("register", args, store=store)
        artifact = Path(store) / "models" / reg["version"] / "model.npz"
        artifact_mib = artifact.stat().st_size / MIB
        cold = child("serve", args, store=store, cache=cache, version=reg["version"])
        warm = child("serve", args, store=store, cache=cache, version=reg["version"])
    load_avg = os.getloadavg()
    worst = max(cold["peak_rss_mib"], warm["peak_rss_mib"])
    base = max(cold["rss_before_load_mib"], warm["rss_before_load_mib"])
    # Conservative: every page resident (the artifact's file pages counted like anonymous memory) and
    # the whole growth over the process before loading taken as proportional to the ratings.
    peak_per_rating_mib = (worst - base) / args.ratings
    fits_ratings = int((limit - base) / peak_per_rating_mib) if peak_per_rating_mib > 0 else None
    result = {
        "ratings": args.ratings,
        "n_users": reg["n_users"],
        "n_movies": reg["n_movies"],
        "seen_pairs": reg["seen_pairs"],
        "factors": args.factors,
        "rank_factors": args.rank_factors,
        "artifact_mib": round(artifact_mib, 1),
        "artifact_bytes_per_rating": round(artifact_mib * MIB / args.ratings, 2),
        "memory_limit_mib": limit,
        "register": reg,
        "serve_cold_cache": cold,
        "serve_warm_cache": warm,
        "peak_rss_over_artifact": round((worst - base) / artifact_mib, 2),
        "fits_limit": worst < limit,
        "ratings_the_limit_holds": fits_ratings,
        "users_the_limit_holds": int(fits_ratings / args.ratings_per_user) if fits_ratings else None,
        "load_average": [round(x, 2) for x in load_avg],
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    print(f"model of {args.ratings:,} ratings: {reg['n_users']:,} users, {reg['n_movies']:,} movies, "
          f"{args.factors}+{args.rank_factors} factors, {reg['seen_pairs']:,} seen pairs; "
          f"model.npz {artifact_mib:.1f} MiB; recommend limit {limit:.0f} MiB; load average {load_avg[0]:.2f}")
    print(f"register: {reg['register_s']} s, peak RSS growth {reg['register_peak_growth_mib']} MiB over "
          f"{reg['model_arrays_mib']} MiB of arrays")
    print(f"{'':12} {'load s':>7} {'peak RSS':>9} {'ru_maxrss':>9} {'anon':>7} {'file':>7} {'p50 ms':>7} {'p99 ms':>7}")
    for name, r in (("cold cache", cold), ("warm cache", warm)):
        print(f"{name:12} {r['load_s']:>7} {r['peak_rss_mib']:>9} {r['ru_maxrss_mib']:>9} "
              f"{r['rss_anon_after_load_mib']:>7} {r['rss_file_after_load_mib']:>7} {r['p50_ms']:>7} {r['p99_ms']:>7}")
    print(f"same run, alternating blocks (warm cache replica): mapped p50/p99 {warm['same_run_mapped_p50_ms']}/"
          f"{warm['same_run_mapped_p99_ms']} ms, the arrays copied into memory {warm['same_run_copied_p50_ms']}/"
          f"{warm['same_run_copied_p99_ms']} ms")
    print(f"peak RSS over the process before loading: {result['peak_rss_over_artifact']}x the artifact; "
          f"fits {limit:.0f} MiB: {result['fits_limit']}; the limit holds ~{fits_ratings:,} ratings "
          f"(~{result['users_the_limit_holds']:,} users) with every page resident")
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
