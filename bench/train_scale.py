"""Benchmark: how the train job scales, against a bare scikit-surprise fit of the same rows.

For each size (default 1M, 4M, 10M ratings; `--sizes 0.25M,1M` for a quick run, `--with-20m`
adds 20M) this stores synthetic ratings as committed ingest batches in a local object store
(vectorised numpy, written through the batch writer `movierec.batches.builder.store_batch` with
the batch encoding's own columns: setup, not measured), then runs, each in its own process:
- the JOB: `movierec.trainjob.run_training` with params.yaml's `train:` section (production:
  100 factors, 20 epochs): snapshot from the store, checks, split, fit (SVD + ranking model),
  evaluation, registration (no deploy, no push);
- the BARE fit: `Dataset.load_from_df` + `build_full_trainset` + `SVD(same params).fit` on the
  job's training rows (written beforehand by a third process; the frame is `ColumnFrame`, what
  load_from_df reads of a DataFrame with a categorical movie column: pandas is not installed).
Wall time is measured inside the child around the measured work (`job_wall_s`: run_training;
`bare_fit_s`: load_from_df + build_full_trainset + fit); CPU time and peak RSS come from the OS
(`os.wait4`'s rusage of the child: ru_utime + ru_stime, ru_maxrss, so imports count for both).
Children run with one BLAS/OpenMP thread (a function gets one core).

Then the log-log slope of each measure against ratings, and where each stops fitting: the
train function's memory limit (stack.yml `functions.train.limits.memory`), the machine
(`--machine-gib`, 24) and the train timeout (stack.yml `exec_timeout`), extrapolated linearly
(a + b x ratings) from the two largest sizes (the intercept is the imports' fixed cost, so a
power law fitted at small sizes would promise too much).

Writes bench/results/train_scale.json (`sizes`, `slope`, `extrapolated`) and prints a table
with the load average. Run: `python -m bench.train_scale` (`make bench-train-scale`).
Owns nothing but this measurement; uses movierec's public API only.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.report import write_result

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "train_scale.json"
TOPIC = "movielog1"
START_US = int(datetime(2026, 1, 1).timestamp() * 1e6)
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return round(float(text.rstrip("KM")) * scale)


def world_shape(n_ratings: int) -> tuple[int, int]:
    """(users, movies) of a MovieLens-like world: ~150 ratings per user, a catalogue that grows
    with the data up to MovieLens 20M's 27k movies."""
    return max(2_000, n_ratings // 150), max(1_000, min(27_000, n_ratings // 700))


def synthetic_ratings(n: int, seed: int = 42):
    """(user ids, movie indices, stars int8, movie ids) of `n` distinct (user, movie) ratings:
    users by log-normal activity, movies by Zipf popularity, stars from 10 latent factors plus
    noise. Vectorised: 10M ratings in seconds."""
    n_users, n_movies = world_shape(n)
    rng = np.random.default_rng(seed)
    user_ids = np.sort(rng.choice(10_000_000, size=n_users, replace=False)).astype(np.int64)
    activity = rng.lognormal(0.0, 1.0, n_users)
    popularity = 1.0 / (rng.permutation(n_movies) + 1.0)
    pu, qi = rng.normal(0, 0.35, (n_users, 10)), rng.normal(0, 0.35, (n_movies, 10))
    bu, bi = rng.normal(0, 0.3, n_users), rng.normal(0, 0.4, n_movies)
    keys = np.empty(0, np.int64)
    while len(keys) < n:  # draw pairs, keep distinct ones, top up
        want = int((n - len(keys)) * 1.1) + 1000
        u = rng.choice(n_users, size=want, p=activity / activity.sum())
        m = rng.choice(n_movies, size=want, p=popularity / popularity.sum())
        keys = np.unique(np.concatenate([keys, u.astype(np.int64) * n_movies + m]))
    keys = rng.permutation(keys)[:n]
    u, m = np.divmod(keys, n_movies)
    taste = np.einsum("ij,ij->i", pu[u], qi[m])
    stars = np.clip(np.rint(3.5 + bu[u] + bi[m] + taste + rng.normal(0, 0.5, n)), 1, 5).astype(np.int8)
    movie_ids = [f"movie-{i:05d}-{'x' * int(i % 17)}+{1990 + i % 30}" for i in range(n_movies)]
    return user_ids[u], m, stars, movie_ids


def store_synthetic(store, n: int, batch_rows: int) -> int:
    """Store `n` synthetic ratings as committed ingest batches of `batch_rows` records each (the
    columns `movierec.batches.encoding.EventColumns` writes, stored by `store_batch`)."""
    from movierec.batches.builder import ParsedBatch, check_quality, store_batch
    from movierec.batches.encoding import encode_columns, encode_vocab

    users, movies, stars, movie_ids = synthetic_ratings(n)
    times = START_US + np.cumsum(np.random.default_rng(7).integers(1, 1_000_000, n))
    for first in range(0, n, batch_rows):
        rows = slice(first, min(n, first + batch_rows))
        batch_movies = movies[rows]
        distinct, first_at, inverse = np.unique(batch_movies, return_index=True, return_inverse=True)
        seen_order = np.argsort(first_at, kind="stable")  # codes in first-seen order, as the builder's
        code_of = np.empty(len(distinct), np.int32)
        code_of[seen_order] = np.arange(len(distinct), dtype=np.int32)
        columns = {"offset": np.arange(rows.start, rows.stop, dtype=np.int64), "time_us": times[rows],
                   "user_id": users[rows], "movie_code": code_of[inverse.reshape(-1)], "rating": stars[rows]}
        columns.update(encode_vocab([movie_ids[i] for i in distinct[seen_order].tolist()]))
        count = rows.stop - rows.start
        batch = ParsedBatch(TOPIC, 0, rows.start, rows.stop - 1, count,
                            Counter({"rate": count, "watch": 0, "recommendation": 0}), Counter(),
                            {"ratings": encode_columns(columns)}, check_quality(count, 0, 0, 0, []))
        store_batch(store, batch)
    return n


# -- the children -------------------------------------------------------------------------------
def _config(store_dir: Path):
    from movierec.trainjob import TrainConfig, read_params

    config = TrainConfig.from_env(env={}, params=read_params(str(ROOT / "params.yaml")))
    return dataclasses.replace(config, pushgateway_url=None, auto_release=False,
                               cache_dir=str(store_dir.parent / "cache"))


def child_job(store_dir: Path, out: Path) -> None:
    from movierec.store import LocalDirectoryStore
    from movierec.trainjob import run_training

    config = _config(store_dir)
    t0 = time.perf_counter()
    summary = run_training(config, LocalDirectoryStore(store_dir), now=datetime.now(UTC))
    wall = time.perf_counter() - t0
    out.write_text(json.dumps({"wall_s": wall, "snapshot_id": summary["snapshot_id"],
                               "rmse": summary["metrics"]["rmse"], "timings": summary["timings"],
                               "params": config.svd.as_dict(), "n_train": summary["metrics"]["n_train"]}))


def child_prepare(store_dir: Path, snap_id: str, rows_file: Path) -> None:
    """The job's training rows, as (user ids, movie ids, stars), for the bare fit."""
    from movierec.snapshot import load_snapshot
    from movierec.store import LocalDirectoryStore
    from movierec.trainjob import holdout_split

    config = _config(store_dir)
    _, table = load_snapshot(LocalDirectoryStore(store_dir), snap_id)
    train, _ = holdout_split(table.dedupe(), config.test_fraction, config.split_seed)
    _, _, movies, movie_codes = train.codes
    np.savez(rows_file, user_ids=train.user_ids, movie_codes=movie_codes.astype(np.int32),
             movies=np.asarray(movies).astype(str), ratings=train.ratings)


class ColumnFrame:
    """What `Dataset.load_from_df` reads of a pandas DataFrame (`itertuples(index=False)`: one
    (user, item, rating) per row), over numpy columns: pandas is not a dependency here. Users come
    out as Python ints and items as one shared str per movie, as from a DataFrame with an int64
    user column and a categorical item column; the frame's own columns (24 B a row with pandas)
    are the only thing the bare fit's peak leaves out."""

    def __init__(self, users: np.ndarray, movie_codes: np.ndarray, movies: list[str], ratings: np.ndarray):
        self.users, self.movie_codes, self.movies, self.ratings = users, movie_codes, movies, ratings

    def itertuples(self, index: bool = False):
        movies = self.movies
        return zip(self.users.tolist(), (movies[c] for c in self.movie_codes.tolist()), self.ratings.tolist())


def child_bare(rows_file: Path, params: dict, out: Path) -> None:
    from surprise import SVD, Dataset, Reader

    with np.load(rows_file) as npz:
        frame = ColumnFrame(npz["user_ids"], npz["movie_codes"], npz["movies"].tolist(),
                            npz["ratings"].astype(np.float64))
    t0 = time.perf_counter()
    data = Dataset.load_from_df(frame, Reader(rating_scale=(1, 5)))
    del frame
    trainset = data.build_full_trainset()
    del data
    t_built = time.perf_counter()
    SVD(n_factors=params["n_factors"], n_epochs=params["n_epochs"], lr_all=params["lr_all"],
        reg_all=params["reg_all"], random_state=params["random_state"]).fit(trainset)
    t1 = time.perf_counter()
    out.write_text(json.dumps({"wall_s": t1 - t0, "fit_only_s": t1 - t_built}))


def run_child(*args: str) -> dict:
    """Run this file with `args` in a child process; its wall time, CPU time and peak RSS from the OS."""
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", *args], env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {args[0]} failed with exit code {proc.returncode}")
    return {"process_wall_s": time.perf_counter() - t0, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024}


def measure(n: int, batch_rows: int) -> dict:
    from movierec.store import LocalDirectoryStore

    with tempfile.TemporaryDirectory(prefix="bench-train-scale-") as tmp:
        tmp_path = Path(tmp)
        store_dir = tmp_path / "store"
        t0 = time.perf_counter()
        store_synthetic(LocalDirectoryStore(store_dir), n, batch_rows)
        print(f"{n:>10} ratings: stored as batches in {time.perf_counter() - t0:.1f}s", flush=True)
        job = run_child("job", str(store_dir), str(tmp_path / "job.json"))
        job_out = json.loads((tmp_path / "job.json").read_text())
        print(f"{'':>10}  job {job_out['wall_s']:.1f}s, peak {job['peak_rss_mb']:.0f} MB "
              f"(rmse {job_out['rmse']:.4f}) {job_out['timings']}", flush=True)
        run_child("prepare", str(store_dir), job_out["snapshot_id"], str(tmp_path / "rows.npz"))
        bare = run_child("bare", str(tmp_path / "rows.npz"), json.dumps(job_out["params"]), str(tmp_path / "bare.json"))
        bare_out = json.loads((tmp_path / "bare.json").read_text())
        print(f"{'':>10}  bare {bare_out['wall_s']:.1f}s, peak {bare['peak_rss_mb']:.0f} MB", flush=True)
    return {
        "ratings": n, "n_train": job_out["n_train"], "users_movies": list(world_shape(n)),
        "job_wall_s": round(job_out["wall_s"], 2), "job_cpu_s": round(job["cpu_s"], 2),
        "job_peak_rss_mb": round(job["peak_rss_mb"], 1), "job_stage_timings_s": job_out["timings"],
        "job_rmse": round(job_out["rmse"], 4),
        "bare_fit_s": round(bare_out["wall_s"], 2), "bare_fit_only_s": round(bare_out["fit_only_s"], 2),
        "bare_cpu_s": round(bare["cpu_s"], 2), "bare_peak_rss_mb": round(bare["peak_rss_mb"], 1),
        "time_ratio": round(job_out["wall_s"] / bare_out["wall_s"], 3),
        "rss_ratio": round(job["peak_rss_mb"] / bare["peak_rss_mb"], 3),
    }


# -- limits -------------------------------------------------------------------------------------
def _quantity_mib(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)\s*([KMG]i?)?", str(text).strip()).groups()
    return float(number) * {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20,
                            "G": 1e9 / 2**20, None: 1 / 2**20}[unit]


def _duration_s(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([smh]?)", str(text).strip()).groups()
    return float(number) * {"s": 1, "m": 60, "h": 3600, "": 1}[unit]


def train_limits() -> dict:
    import yaml

    train = yaml.safe_load((ROOT / "stack.yml").read_text())["functions"]["train"]
    return {"memory_mib": _quantity_mib(train["limits"]["memory"]),
            "timeout_s": _duration_s(train["environment"]["exec_timeout"])}


def slopes(rows: list[dict]) -> dict:
    n = np.log([r["ratings"] for r in rows])
    out = {}
    for key in ("job_wall_s", "job_cpu_s", "job_peak_rss_mb", "bare_fit_s", "bare_peak_rss_mb"):
        out[key] = round(float(np.polyfit(n, np.log([r[key] for r in rows]), 1)[0]), 3) if len(rows) > 1 else None
    return out


def extrapolate(rows: list[dict], machine_gib: float) -> dict:
    """Ratings at which each limit is reached, from a + b x ratings through the two largest sizes."""
    if len(rows) < 2:
        return {}
    limits = train_limits()
    (r0, r1) = sorted(rows, key=lambda r: r["ratings"])[-2:]

    def reach(key: str, limit: float) -> int | None:
        b = (r1[key] - r0[key]) / (r1["ratings"] - r0["ratings"])
        return None if b <= 0 else int(r1["ratings"] + (limit - r1[key]) / b)

    return {
        "method": f"linear through the two largest sizes ({r0['ratings']}, {r1['ratings']})",
        "job_mb_per_million": round((r1["job_peak_rss_mb"] - r0["job_peak_rss_mb"])
                                    / (r1["ratings"] - r0["ratings"]) * 1e6, 1),
        "bare_mb_per_million": round((r1["bare_peak_rss_mb"] - r0["bare_peak_rss_mb"])
                                     / (r1["ratings"] - r0["ratings"]) * 1e6, 1),
        "function_memory_mib": limits["memory_mib"],
        "ratings_at_function_memory": reach("job_peak_rss_mb", limits["memory_mib"]),
        "machine_gib": machine_gib,
        "ratings_at_machine_memory": reach("job_peak_rss_mb", machine_gib * 1024),
        "bare_ratings_at_machine_memory": reach("bare_peak_rss_mb", machine_gib * 1024),
        "timeout_s": limits["timeout_s"],
        "ratings_at_timeout": reach("job_wall_s", limits["timeout_s"]),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        kind, *rest = argv[1:]
        if kind == "job":
            child_job(Path(rest[0]), Path(rest[1]))
        elif kind == "prepare":
            child_prepare(Path(rest[0]), rest[1], Path(rest[2]))
        else:
            child_bare(Path(rest[0]), json.loads(rest[1]), Path(rest[2]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.train_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,4M,10M", help="comma-separated ratings, e.g. 0.25M,1M")
    parser.add_argument("--with-20m", action="store_true", help="add 20M ratings (~10 GB for the bare fit)")
    parser.add_argument("--batch-rows", type=int, default=100_000, help="records per stored ingest batch")
    parser.add_argument("--machine-gib", type=float, default=24.0)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()] + ([20_000_000] if args.with_20m else [])

    rows = []
    for n in sizes:
        rows.append(measure(n, args.batch_rows))
        print(f"{'':>10}  load average {os.getloadavg()}", flush=True)
    result = {
        "sizes": rows, "slope": slopes(rows), "extrapolated": extrapolate(rows, args.machine_gib),
        "targets": {"rss_ratio_max": 1.15, "time_ratio_max": 1.25},
        "load_average": os.getloadavg(), "cpus": os.cpu_count(),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_result(args.out, result)

    print(f"\n{'ratings':>10} {'job wall':>9} {'job cpu':>8} {'job peak':>9} {'bare fit':>9} {'bare peak':>10}"
          f" {'time x':>7} {'rss x':>6}")
    for r in rows:
        print(f"{r['ratings']:>10} {r['job_wall_s']:>8.1f}s {r['job_cpu_s']:>7.1f}s {r['job_peak_rss_mb']:>6.0f} MB"
              f" {r['bare_fit_s']:>8.1f}s {r['bare_peak_rss_mb']:>7.0f} MB {r['time_ratio']:>7.2f} {r['rss_ratio']:>6.2f}")
    print(f"slope {result['slope']}\nextrapolated {json.dumps(result['extrapolated'])}")
    print(f"load average {os.getloadavg()} on {os.cpu_count()} cpus")
    return 0


if __name__ == "__main__":
    sys.exit(main())
