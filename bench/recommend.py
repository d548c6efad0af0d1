"""Benchmark: serving cost of the vectorised recommend() against the per-item surprise loop.

Builds one model at serving scale (default 20k movies, 50k users, 100 SVD factors and a ranking
model of 65 columns, 64 factors + the popularity blend: the widest the training job ships; 50-200
seen movies per user drawn with Zipf-like popularity), saves it as the real artifact and loads
it back, then measures on the same model and the same sampled users, in this one run:
- ours: `RecommenderModel.recommend(user)` latency p50/p99 over many calls, ordered by the
  ranking model (the production path), and the same for the SVD-ranked twin of the model (the
  same arrays without the ranking model: what a model the SVD ranks costs);
- baseline: what such services usually ship: for every unseen movie call scikit-surprise's
  `algo.predict(uid, iid)` and sort, on a real fitted surprise SVD whose bu/bi/pu/qi are set to
  the model's arrays (fewer calls: it is slow);
- load_s and rss_mb: load_model() time and resident memory, in a fresh process so nothing
  else this benchmark allocated is counted.
Prints a table and writes bench/results/recommend.json. Run: `python -m bench.recommend`.

BLAS threads: a serving replica should run single-threaded BLAS (OPENBLAS_NUM_THREADS=1):
replicas give the parallelism, and a multi-threaded matrix-vector product waits for its
slowest thread, which on a busy 2-core machine turns into 10-20 ms p99 spikes. The benchmark
therefore defaults to 1; set OPENBLAS_NUM_THREADS in the environment to measure otherwise.

Owns nothing but this measurement; uses movierec's public API only.
"""
from __future__ import annotations

import os

# Must happen before numpy is imported (by this module or by movierec).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import write_result
from movierec.artifact import load_model, save_model
from movierec.model import ARRAY_NAMES, RecommenderModel, cold_start_ranking, from_arrays
from movierec.ratings import RatingsTable
from movierec.synthetic import SyntheticWorld

RESULTS = Path(__file__).resolve().parent / "results" / "recommend.json"


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def probe_load(directory: str) -> None:
    """Child-process mode: load the artifact once, report time and memory as one JSON line."""
    before = rss_mb()
    t0 = time.perf_counter()
    model = load_model(directory)
    load_s = time.perf_counter() - t0
    model.recommend(int(model.user_ids[0]))  # touch the arrays like a first request would
    print(json.dumps({"load_s": load_s, "rss_mb": rss_mb(), "rss_before_load_mb": before}))


def build_bench_model(n_users: int, n_movies: int, n_factors: int, seed: int, rank_factors: int = 64):
    """A serving-scale model with SVD-like factors, ranking factors and realistic seen lists."""
    rng = np.random.default_rng(seed)
    world = SyntheticWorld(n_users=n_users, n_movies=n_movies, n_factors=2, seed=seed)
    order = np.argsort(world.movie_ids)
    movie_ids = world.movie_ids[order]
    popularity = world.movie_popularity[order]

    seen_per_user = rng.integers(50, 201, size=n_users)
    seen_users = np.repeat(world.user_ids, seen_per_user)
    seen_movies = rng.choice(n_movies, size=len(seen_users), p=popularity)
    ratings = rng.integers(1, 6, size=len(seen_users)).astype(np.float32)
    model = from_arrays(
        global_mean=3.6,
        user_ids=world.user_ids,
        user_bias=rng.normal(0, 0.3, n_users),
        user_factors=rng.normal(0, 0.1, (n_users, n_factors)),
        movie_ids=movie_ids,
        item_bias=rng.normal(0, 0.4, n_movies),
        item_factors=rng.normal(0, 0.1, (n_movies, n_factors)),
        seen_user_ids=seen_users,
        seen_movie_idx=seen_movies,
        cold_start=cold_start_ranking(seen_movies, ratings, n_movies),
        params={"n_factors": n_factors, "source": "bench: random SVD-like factors"},
    )
    if not rank_factors:
        return model
    return RecommenderModel(
        **{name: getattr(model, name) for name in ARRAY_NAMES if not name.startswith(("rank_", "user_ranked"))},
        user_ranked=np.ones(n_users, bool),
        rank_user_factors=rng.normal(0, 0.1, (n_users, rank_factors)),
        rank_item_factors=rng.normal(0, 0.1, (n_movies, rank_factors)),
        rank_item_bias=np.zeros(n_movies),
        params=model.params, ranking_params={"factors": rank_factors, "source": "bench: random ranking factors"},
    )


def svd_ranked(model):
    """The same arrays without the ranking model: the SVD orders every list."""
    return RecommenderModel(
        **{name: getattr(model, name) for name in ARRAY_NAMES if not name.startswith(("rank_", "user_ranked"))},
        params=model.params)


def time_calls(model, users: list[int]) -> list[int]:
    for u in users[:50]:  # warm-up: caches, lazy BLAS initialisation
        model.recommend(u)
    samples = []
    for u in users:
        t = time.perf_counter_ns()
        model.recommend(u)
        samples.append(time.perf_counter_ns() - t)
    return samples


def surprise_twin(model):
    """A real fitted surprise SVD whose parameters are set to the model's arrays (same inner ids)."""
    from surprise import SVD

    from movierec.training import build_trainset

    # One rating per user and per movie is enough for surprise to know every id; the fitted
    # parameters are then replaced by the model's, so both score identically.
    users = np.concatenate([model.user_ids, np.resize(model.user_ids, model.n_movies)])
    movies = np.concatenate([np.resize(model.movie_ids, model.n_users), model.movie_ids])
    trainset = build_trainset(RatingsTable(users, movies, np.full(len(users), 3.0, dtype=np.float32)))
    algo = SVD(n_factors=model.n_factors, n_epochs=1, random_state=0).fit(trainset)
    trainset._global_mean = model.global_mean
    algo.bu = model.user_bias.astype(np.float64)
    algo.bi = model.item_bias.astype(np.float64)
    algo.pu = model.user_factors.astype(np.float64)
    algo.qi = model.item_factors.astype(np.float64)
    return algo


def baseline_recommend(
    algo, user_id: int, all_movies: list[str], seen: set[str], k: int = 20, clip: bool = True
) -> list[str]:
    """The per-item loop: predict every unseen movie with surprise, sort, take k."""
    predictions = [(algo.predict(user_id, m, clip=clip).est, m) for m in all_movies if m not in seen]
    predictions.sort(key=lambda p: -p[0])
    return [m for _, m in predictions[:k]]


def percentiles_ms(samples_ns: list[int]) -> tuple[float, float, float]:
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.mean())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--movies", type=int, default=20_000)
    parser.add_argument("--factors", type=int, default=100)
    parser.add_argument("--rank-factors", type=int, default=65,
                        help="ranking model columns (0: none); 65 = the widest the job ships: 64 + the blend")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--baseline-calls", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--probe-load", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_load:
        probe_load(args.probe_load)
        return {}

    t0 = time.perf_counter()
    built = build_bench_model(args.users, args.movies, args.factors, args.seed, args.rank_factors)
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="bench-recommend-") as tmp:
        manifest = save_model(built, tmp)
        del built
        probe = subprocess.run(
            [sys.executable, "-m", "bench.recommend", "--probe-load", tmp],
            capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent,
        )
        load_stats = json.loads(probe.stdout.strip().splitlines()[-1])
        model = load_model(tmp)

    rng = np.random.default_rng(args.seed + 1)
    users = rng.choice(model.user_ids, size=args.calls, replace=True).tolist()
    ours_ns = time_calls(model, users)
    twin = svd_ranked(model)
    svd_ns = time_calls(twin, users)
    cold_ns = []
    for u in range(10**12, 10**12 + 200):  # ids the model has never seen
        t = time.perf_counter_ns()
        model.recommend(u)
        cold_ns.append(time.perf_counter_ns() - t)

    algo = surprise_twin(model)
    all_movies = model.movie_ids.tolist()
    baseline_ns, agree = [], 0
    for i, u in enumerate(users[: args.baseline_calls]):
        row = model.user_rows(np.array([u]))[0]
        seen = {all_movies[j] for j in model.seen_of_row(row).tolist()}
        t = time.perf_counter_ns()
        baseline_recommend(algo, u, all_movies, seen)  # default predict(): clipped, as services ship it
        baseline_ns.append(time.perf_counter_ns() - t)
        if i < 5:  # sanity, untimed: unclipped surprise estimates rank exactly like the SVD-ranked twin
            agree += baseline_recommend(algo, u, all_movies, seen, clip=False) == twin.recommend(u)

    p50, p99, mean = percentiles_ms(ours_ns)
    s50, s99, _ = percentiles_ms(svd_ns)
    b50, b99, bmean = percentiles_ms(baseline_ns)
    c50, c99, _ = percentiles_ms(cold_ns)
    result = {
        "p50_ms": round(p50, 4),
        "p99_ms": round(p99, 4),
        "mean_ms": round(mean, 4),
        "baseline_p50_ms": round(b50, 2),
        "baseline_p99_ms": round(b99, 2),
        "baseline_mean_ms": round(bmean, 2),
        "speedup_p50": round(b50 / p50, 1),
        "speedup_p99": round(b99 / p99, 1),
        "svd_ranked_p50_ms": round(s50, 4),
        "svd_ranked_p99_ms": round(s99, 4),
        "cold_start_p50_ms": round(c50, 4),
        "cold_start_p99_ms": round(c99, 4),
        "same_top20_as_surprise_unclipped": f"{agree}/{min(5, len(baseline_ns))}",
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "load_s": round(load_stats["load_s"], 3),
        "rss_mb": round(load_stats["rss_mb"], 1),
        "rss_before_load_mb": round(load_stats["rss_before_load_mb"], 1),
        "artifact_mb": round(manifest["size_bytes"] / 2**20, 1),
        "n_users": model.n_users,
        "n_movies": model.n_movies,
        "n_factors": model.n_factors,
        "n_ranking_factors": model.rank_item_factors.shape[1],
        "seen_pairs": len(model.seen_indices),
        "calls": len(ours_ns),
        "baseline_calls": len(baseline_ns),
        "build_s": round(build_s, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    rows = [
        ("vectorised recommend()", result["p50_ms"], result["p99_ms"], len(ours_ns)),
        ("  same, SVD-ranked twin", result["svd_ranked_p50_ms"], result["svd_ranked_p99_ms"], len(svd_ns)),
        ("surprise predict() loop", result["baseline_p50_ms"], result["baseline_p99_ms"], len(baseline_ns)),
        ("cold start (unknown user)", result["cold_start_p50_ms"], result["cold_start_p99_ms"], len(cold_ns)),
    ]
    print(f"model: {model.n_users} users, {model.n_movies} movies, {model.n_factors} SVD factors, "
          f"{result['n_ranking_factors']} ranking factors, "
          f"{result['seen_pairs']} seen pairs, artifact {result['artifact_mb']} MiB")
    print(f"{'':28} {'p50 ms':>10} {'p99 ms':>10} {'calls':>7}")
    for name, a, b, n in rows:
        print(f"{name:28} {a:>10.3f} {b:>10.3f} {n:>7}")
    print(f"speedup p50 {result['speedup_p50']}x, p99 {result['speedup_p99']}x; same top-20 as surprise (unclipped) "
          f"{result['same_top20_as_surprise_unclipped']}; load_model {result['load_s']} s; RSS after load {result['rss_mb']} MiB")
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
