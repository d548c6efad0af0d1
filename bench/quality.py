"""Benchmark: the quality of what the service recommends, model vs popularity vs random, on the
production path.

Stream lines (default: the synthetic world's, `movierec.synthetic.SyntheticWorld`, whose users
watch by popularity AND preference; or `--stream FILE`, any file of stream lines in the topic's
format, e.g. a public rating dataset turned into lines) are stored as committed ingest batches
(ingest's own parser and writer) in a throwaway local store, then `movierec.trainjob.run_training`
runs as the train function runs it: snapshot (ratings and watches) -> data checks -> the job's
holdout split -> SVD + ranking model fitted on the training side -> evaluation of the training-only
model on the holdout (the model's ranking AND the popularity and random baselines, same users,
same holdout) -> gates -> registration. Then, on the REGISTERED artifact (fetched from the
registry, sha256 verified):
- `seen_violations`: recommendations, over EVERY user of the snapshot, that the user already
  rated or watched anywhere in the snapshot (recomputed from the stored batches, not from the
  model's own seen arrays); must be 0;
- `recommend_p99_ms`: p50/p99 of `recommend()` over sampled users of the snapshot.
`noise_floor_rmse` is the RMSE a perfect model gets on the same holdout rows (synthetic world
only; null for a stream file).

Prints the table and writes bench/results/quality.json (`--out`). Run: `python -m bench.quality`
(`make bench-quality`), or `python -m bench.quality --stream lines.txt` for your own data.
Owns nothing but this measurement; uses movierec's public API only.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as a serving replica runs (see bench/recommend.py)

import argparse
import itertools
import platform
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.recommend import time_calls
from bench.report import write_result
from movierec.batches.builder import parse_batch, store_batch
from movierec.ranking import METRICS, RANKERS
from movierec.registry import load_serving_model
from movierec.snapshot import load_snapshot_data
from movierec.store import LocalDirectoryStore
from movierec.synthetic import SyntheticWorld
from movierec.training import SVDParams
from movierec.trainjob import TrainConfig, holdout_split, run_training

RESULTS = Path(__file__).resolve().parent / "results" / "quality.json"
TARGETS = {"seen_violations": 0, "ndcg20_over_popularity_min": 1.5, "rmse_over_noise_floor_max": 1.1,
           "recommend_p99_ms_max": 2.0}


def store_lines(store, lines: Iterable[str], batch_size: int, topic: str = "movielog1") -> int:
    """Store stream lines as committed ingest batches of one partition; returns the line count."""
    offset, it = 0, iter(lines)
    while batch := list(itertools.islice(it, batch_size)):
        records = [(offset + i, line.encode()) for i, line in enumerate(batch)]
        store_batch(store, parse_batch(topic, 0, records, []))
        offset += len(records)
    return offset


def file_lines(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line:
                yield line


def seen_violations(model, data) -> dict[str, int]:
    """Recommendations that the user rated or watched anywhere in the snapshot, over every user."""
    users = np.concatenate([data.ratings.user_ids, data.watches.user_ids])
    movies = np.concatenate([data.ratings.movie_ids.astype(str), data.watches.movie_ids.astype(str)])
    order = np.argsort(users, kind="stable")
    users, movies = users[order], movies[order]
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    violations = users_hit = 0
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        seen = set(movies[lo:hi].tolist())
        bad = sum(1 for m in model.recommend(int(users[lo])) if m in seen)
        violations += bad
        users_hit += bad > 0
    return {"seen_violations": violations, "users_with_a_seen_recommendation": users_hit,
            "users_checked": len(bounds) - 1}


def latency_ms(model, user_ids: np.ndarray, calls: int, seed: int) -> tuple[float, float]:
    users = np.random.default_rng(seed).choice(user_ids, size=calls).tolist()
    a = np.asarray(time_calls(model, users)) / 1e6
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--stream", help="a file of stream lines (watch / rate lines) instead of the synthetic world")
    parser.add_argument("--users", type=int, default=4_000)
    parser.add_argument("--movies", type=int, default=4_500)
    parser.add_argument("--ratings", type=int, default=1_000_000)
    parser.add_argument("--watches-per-rating", type=int, default=1, help="watch lines before each rating")
    parser.add_argument("--watch-only", type=float, default=0.2, help="watched, never rated: share of --ratings")
    parser.add_argument("--seed", type=int, default=42)
    # The SVD settings a team would set (SVD_*) for data like this: surprise's defaults (100
    # factors, 20 epochs) stop well short of the noise floor on a world whose taste has 10 factors.
    parser.add_argument("--factors", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.015)
    parser.add_argument("--reg", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=200_000)
    parser.add_argument("--calls", type=int, default=2000, help="recommend() calls timed")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    world = None
    if args.stream:
        lines: Iterable[str] = file_lines(args.stream)
        source = {"stream_file": Path(args.stream).name}
    else:
        world = SyntheticWorld(n_users=args.users, n_movies=args.movies, n_factors=10, noise=0.5, seed=args.seed)
        lines = world.stream_lines(args.ratings, watches_per_rating=args.watches_per_rating,
                                   watch_only_fraction=args.watch_only, start=datetime(2026, 1, 1))
        source = {"synthetic": {"users": args.users, "movies": args.movies, "ratings": args.ratings,
                                "watches_per_rating": args.watches_per_rating, "watch_only": args.watch_only,
                                "seed": args.seed, "popularity_exponent": 1.0,
                                "preference_strength": world.preference_strength}}
    params = SVDParams(n_factors=args.factors, n_epochs=args.epochs, lr_all=args.lr, reg_all=args.reg,
                       random_state=0)
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        store = LocalDirectoryStore(Path(tmp) / "store")
        t0 = time.perf_counter()
        n_lines = store_lines(store, lines, args.batch_size)
        print(f"setup: {n_lines} stream lines stored as ingest batches in {time.perf_counter() - t0:.1f}s",
              flush=True)
        config = TrainConfig(svd=params, pushgateway_url=None, cache_dir=str(Path(tmp) / "cache"), min_ratings=100)
        t0 = time.perf_counter()
        summary = run_training(config, store, now=datetime.now(UTC))
        train_s = time.perf_counter() - t0
        print(f"run_training: {train_s:.1f}s, version {summary['version']}, gates passed {summary['gates_passed']}",
              flush=True)
        served = load_serving_model(summary["version"], store, str(Path(tmp) / "cache"))  # sha256 verified
        _, data = load_snapshot_data(store, summary["snapshot_id"])
        seen = seen_violations(served, data)
        p50, p99 = latency_ms(served, np.unique(data.ratings.user_ids), args.calls, args.seed)
        noise_floor = None
        if world is not None:
            _, holdout = holdout_split(data.ratings.dedupe(), config.test_fraction, config.split_seed)
            noise_floor = world.noise_floor_rmse(holdout)

    m = summary["metrics"]
    ranking = m["ranking"] or {}

    def figure(ranker: str, metric: str) -> float | None:
        return ranking.get(ranker, {}).get(metric)

    result = {
        "rmse": round(m["rmse"], 4),
        "noise_floor_rmse": None if noise_floor is None else round(noise_floor, 4),
        "rmse_over_noise_floor": None if noise_floor is None else round(m["rmse"] / noise_floor, 3),
        "ndcg20": figure("model", "ndcg"),
        "ndcg20_popularity": figure("popularity", "ndcg"),
        "ndcg20_random": figure("random", "ndcg"),
        "ndcg20_over_popularity": m["ndcg_lift_vs_popularity"],
        "precision20": figure("model", "precision"),
        "coverage": figure("model", "coverage"),
        **seen,
        "recommend_p50_ms": round(p50, 4),
        "recommend_p99_ms": round(p99, 4),
        "ranking_at_20": ranking,
        "ranking_users": m["n_ranking_users"],
        "ranking_model": served.ranking_params,
        "gates": summary["gates"],
        "gates_passed": summary["gates_passed"],
        "data": summary["data"],
        "source": source,
        "stream_lines": n_lines,
        "svd_params": params.as_dict(),
        "train_s": round(train_s, 2),
        "stage_timings_s": summary["timings"],
        "targets": TARGETS,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS")},
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_result(args.out, result)

    print()
    print(f"holdout top-20 on {m['n_ranking_users']} users (relevant: a holdout rating >= 4)")
    print(f"{'ranker':<12}" + "".join(f"{name:>11}" for name in METRICS))
    for ranker in RANKERS:
        print(f"{ranker:<12}" + "".join(f"{figure(ranker, name) or 0:>11.4f}" for name in METRICS))
    print()
    lift = result["ndcg20_over_popularity"]
    rows = [
        ("rmse", f"{m['rmse']:.4f}", ""),
        ("noise_floor_rmse", "n/a" if noise_floor is None else f"{noise_floor:.4f}", ""),
        ("rmse / noise floor", "n/a" if noise_floor is None else f"{m['rmse'] / noise_floor:.3f}", "<= 1.1"),
        ("ndcg20 / popularity's", "n/a" if lift is None else f"{lift:.3f}", ">= 1.5 (synthetic)"),
        ("seen_violations", str(seen["seen_violations"]), "0"),
        ("recommend_p99_ms", f"{p99:.3f}", "<= 2 (bench-recommend: 20k x 50k)"),
    ]
    print(f"{'measure':<24}{'value':>12}   target")
    for name, value, target in rows:
        print(f"{name:<24}{value:>12}   {target}")
    print()
    return result


if __name__ == "__main__":
    main()
