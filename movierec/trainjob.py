"""The training job: snapshot -> data checks -> split -> fit -> evaluate -> gates -> register -> release.

Owns the pipeline and its configuration (`TrainConfig.from_env`), the quality gates, the
decision to start a release after a registration, and pushing the job's metrics to the
Pushgateway (job="train"). Fitting and evaluation are `movierec.training`'s; versions and
aliases are `movierec.registry`'s; snapshots `movierec.snapshot`'s; releases `movierec.release`'s.

Gates: holdout RMSE < RMSE_MAX (default 1.0), and not worse than the current stable model on
the SAME holdout rows by more than RMSE_TOLERANCE (default 0.02). A model that fails a gate is
still registered (its metrics are the record of why) but never released.

Command line (also the DVC stage, see dvc.yaml):
    python -m movierec.trainjob                        # the full job, configured by env (as the function)
    python -m movierec.trainjob --export-snapshot latest --out data/ratings.npz
    python -m movierec.trainjob --offline --ratings data/ratings.npz --params params.yaml --out build/model
    python -m movierec.trainjob --lineage <version> --out lineage/   # its snapshot + artifact, for DVC

Must not touch: HTTP request handling (functions/train), model internals, release analysis.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from movierec.model import build_model
from movierec.ratings import RatingsTable
from movierec.registry import STABLE, Registry, RegistryError, code_version, load_serving_model
from movierec.release import (
    ReleaseConfig,
    ReleaseRunningError,
    ReleaseStore,
    bootstrap_stable,
    start_release,
)
from movierec.snapshot import take_snapshot
from movierec.store import ObjectStore
from movierec.training import SVDParams, evaluate, fit_svd

log = logging.getLogger("movierec.trainjob")

DEFAULT_PUSHGATEWAY = "http://127.0.0.1:9091"


class TrainError(Exception):
    """The job cannot produce a model (bad data, bad configuration); one line."""


@dataclass(frozen=True)
class TrainConfig:
    svd: SVDParams = field(default_factory=SVDParams)
    test_fraction: float = 0.2
    split_seed: int = 0
    min_ratings: int = 1000
    min_users: int = 10
    min_movies: int = 10
    rmse_max: float = 1.0
    rmse_tolerance: float = 0.02
    topic: str | None = None  # None: every topic's batches
    cache_dir: str = os.path.join(tempfile.gettempdir(), "movierec-model-cache")
    auto_release: bool = True
    pushgateway_url: str | None = DEFAULT_PUSHGATEWAY

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None) -> TrainConfig:
        """Defaults <- `params` (params.yaml's `train:` section) <- environment variables."""
        env = dict(os.environ if env is None else env)
        merged: dict[str, Any] = dict(params or {})
        env_names = {
            "n_factors": "SVD_N_FACTORS", "n_epochs": "SVD_N_EPOCHS", "lr_all": "SVD_LR_ALL",
            "reg_all": "SVD_REG_ALL", "random_state": "SVD_RANDOM_STATE", "test_fraction": "TEST_FRACTION",
            "split_seed": "SPLIT_SEED", "min_ratings": "TRAIN_MIN_RATINGS", "rmse_max": "RMSE_MAX",
            "rmse_tolerance": "RMSE_TOLERANCE",
        }
        for key, name in env_names.items():
            if (env.get(name) or "").strip():
                merged[key] = env[name].strip()
        svd_fields = SVDParams.__dataclass_fields__
        try:
            svd = SVDParams(**{k: _typed(SVDParams, k, v) for k, v in merged.items() if k in svd_fields})
            rest = {k: _typed(cls, k, v) for k, v in merged.items() if k in cls.__dataclass_fields__}
        except ValueError as e:
            raise TrainError(f"training configuration: {e}") from None
        config = cls(svd=svd, **rest)
        return replace(
            config,
            topic=env.get("TRAIN_TOPIC") or config.topic,
            cache_dir=env.get("MODEL_CACHE_DIR") or config.cache_dir,
            auto_release=(env.get("AUTO_RELEASE") or "1").lower() not in ("0", "false", "no"),
            pushgateway_url=(env.get("PUSHGATEWAY_URL") or DEFAULT_PUSHGATEWAY) or None,
        )


def _typed(owner: type, key: str, value: Any) -> Any:
    default = owner.__dataclass_fields__[key].default
    if value is None or value == "None":
        return None
    if isinstance(default, bool):
        return str(value).lower() in ("1", "true", "yes")
    if isinstance(default, int) or (default is None and key == "random_state"):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


def check_data(table: RatingsTable, config: TrainConfig, deduped: RatingsTable | None = None) -> dict[str, Any]:
    """Refuse data a model should not be trained on; returns the figures that were checked."""
    deduped = table.dedupe() if deduped is None else deduped
    figures = {
        "ratings": len(table),
        "unique_ratings": len(deduped),
        "duplicate_share": 0.0 if len(table) == 0 else 1 - len(deduped) / len(table),
        # The table's codes (computed once, reused by the split, the trainset and the model).
        "users": deduped.n_users,
        "movies": deduped.n_movies,
    }
    problems = []
    if figures["unique_ratings"] < config.min_ratings:
        problems.append(f"{figures['unique_ratings']} unique ratings < minimum {config.min_ratings}")
    if figures["users"] < config.min_users:
        problems.append(f"{figures['users']} users < minimum {config.min_users}")
    if figures["movies"] < config.min_movies:
        problems.append(f"{figures['movies']} movies < minimum {config.min_movies}")
    if problems:
        raise TrainError("data check failed: " + "; ".join(problems))
    return figures


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _string_hash(strings: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each string of a numpy unicode array, vectorised over the characters
    (one pass per character position instead of a Python call per string)."""
    strings = np.ascontiguousarray(strings)
    width = strings.dtype.itemsize // 4
    codepoints = strings.view(np.uint32).reshape(len(strings), width) if len(strings) else np.empty((0, width))
    h = np.full(len(strings), 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in range(width):
            # Padding zeros are skipped, so a string's hash does not depend on the longest id in
            # the snapshot (else a new long title would reshuffle every pair's holdout side).
            code = codepoints[:, column].astype(np.uint64)
            h = np.where(code != 0, (h ^ code) * np.uint64(0x100000001B3), h)
    return h


def holdout_split(table: RatingsTable, test_fraction: float, seed: int = 0) -> tuple[RatingsTable, RatingsTable]:
    """(train, holdout) where a (user, movie) pair's side depends only on the pair and the seed.

    Why not a random per-table split: the gate compares the new model with the stable one on
    the new holdout. With a per-table split, most of those rows were in the stable model's
    training data (its snapshot held them too), so the stable RMSE would be optimistic and
    every new model would look worse. Hashing the pair keeps a pair in the holdout of every
    snapshot that contains it: the stable model has never trained on the holdout either.
    """
    if not 0.0 < test_fraction < 1.0:
        raise TrainError(f"test fraction must be between 0 and 1, got {test_fraction}")
    with np.errstate(over="ignore"):
        # Hash each distinct movie id once and spread by the table's codes (the same values as
        # hashing every row's string: the distinct ids keep the column's dtype).
        movies, movie_codes = table.codes.movies, table.codes.movie_codes
        movie_hash = _string_hash(movies.astype(table.movie_ids.dtype, copy=False))[movie_codes]
        key = _splitmix64(table.user_ids.astype(np.uint64) ^ np.uint64(seed)) ^ movie_hash
        bucket = _splitmix64(key) % np.uint64(1_000_000)
    is_holdout = bucket < np.uint64(round(test_fraction * 1_000_000))
    return table.take(~is_holdout), table.take(is_holdout)


def fit_and_evaluate(deduped: RatingsTable, config: TrainConfig, timings: dict[str, float] | None = None):
    """(model, holdout, metrics) for a deduplicated table: split, fit, evaluate."""
    timings = {} if timings is None else timings
    with _timed(timings, "split_s"):
        train, holdout = holdout_split(deduped, config.test_fraction, config.split_seed)
    if len(holdout) == 0:
        raise TrainError("data check failed: the split left no holdout")
    with _timed(timings, "fit_s"):
        # train_model() would deduplicate again; the table is deduplicated once, above.
        model = build_model(fit_svd(train, config.svd), train, params=config.svd.as_dict())
    with _timed(timings, "evaluate_s"):
        metrics = evaluate(model, holdout)
    metrics["n_train"] = len(train)
    return model, holdout, metrics


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - t0, 3)


def gates(metrics: Mapping[str, Any], stable_rmse: float | None, config: TrainConfig) -> list[dict[str, Any]]:
    """The offline quality gates, each with whether it passed and why."""
    rmse = metrics["rmse"]
    result = [
        {"gate": "rmse_max", "passed": rmse < config.rmse_max, "detail": f"rmse {rmse:.4f} < {config.rmse_max}"}
    ]
    if stable_rmse is not None:
        bound = stable_rmse + config.rmse_tolerance
        result.append(
            {
                "gate": "vs_stable",
                "passed": rmse <= bound,
                "detail": f"rmse {rmse:.4f} <= stable {stable_rmse:.4f} + {config.rmse_tolerance} on the same holdout",
            }
        )
    return result


def run_training(
    config: TrainConfig,
    store: ObjectStore,
    deployer=None,
    notifier=None,
    release_config: ReleaseConfig | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The whole job. Returns its summary (also what the function answers and what is pushed)."""
    started = time.monotonic()
    now = now or datetime.now(UTC)
    registry = Registry(store)
    timings: dict[str, float] = {}
    with _timed(timings, "snapshot_s"):
        snapshot, table = take_snapshot(store, config.topic)
    with _timed(timings, "checks_s"):
        deduped = table.dedupe()
        data = check_data(table, config, deduped)
    model, holdout, metrics = fit_and_evaluate(deduped, config, timings)

    stable_version = registry.alias_version(STABLE)
    with _timed(timings, "compare_s"):
        stable_rmse, unavailable = _stable_rmse(stable_version, store, holdout, config)
    if stable_rmse is not None:
        metrics["stable_rmse_same_holdout"] = stable_rmse
    gate_results = gates(metrics, stable_rmse, config) + unavailable
    passed = all(g["passed"] for g in gate_results)

    with _timed(timings, "register_s"):
        entry = registry.register_model(
            model,
            params=config.svd.as_dict(),
            metrics=metrics,
            snapshot_id=snapshot.id,
            code=code_version(),
            extra={"data": data, "gates": gate_results, "compared_with": stable_version},
            now=now,
        )
    release = _release(entry.version, passed, stable_version, store, deployer, notifier, release_config, now, config)
    summary = {
        "version": entry.version,
        "sha256": entry.sha256,
        "snapshot_id": snapshot.id,
        "n_batches": snapshot.n_batches,
        "data": data,
        "metrics": metrics,
        "gates": gate_results,
        "gates_passed": passed,
        "stable_version": stable_version,
        "release": release,
        "duration_s": round(time.monotonic() - started, 3),
        "timings": timings,
    }
    summary["pushed"] = push_metrics(config.pushgateway_url, summary)
    log.info("trained %s: rmse %.4f gates %s release %s", entry.version, metrics["rmse"], passed, release)
    return summary


def _stable_rmse(stable_version, store, holdout, config) -> tuple[float | None, list[dict[str, Any]]]:
    """The serving model's RMSE on this holdout, or a failed gate saying why it is unknown."""
    if stable_version is None:
        return None, []
    try:
        stable_model = load_serving_model(stable_version, store, config.cache_dir)
    except RegistryError as e:  # without the comparison the model cannot be released
        return None, [{"gate": "vs_stable", "passed": False, "detail": f"stable model unavailable: {e}"}]
    return evaluate(stable_model, holdout, max_ranking_users=0)["rmse"], []


def _release(version, passed, stable_version, store, deployer, notifier, release_config, now, config) -> str:
    if not passed:
        return "not released: a gate failed"
    if not config.auto_release or deployer is None:
        return "not released: automatic release is off"
    release_config = release_config or ReleaseConfig.from_env()
    if stable_version is None:
        bootstrap_stable(release_config, store, deployer, version, now)
        return "first model: now stable"
    running = ReleaseStore(store).running()
    if running is not None:
        return f"not released: release {running.id} is still running"
    try:
        release = start_release(release_config, store, deployer, version, now, notifier)
    except ReleaseRunningError as e:
        return f"not released: {e}"
    return f"canary started: {release.id}"


def push_metrics(url: str | None, summary: Mapping[str, Any]) -> str:
    """Push the job's figures to the Pushgateway (job="train"); never fails the job."""
    if not url:
        return "skipped"
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    reg = CollectorRegistry()
    version = summary["version"]
    metrics = summary["metrics"]
    for name, key, doc in (
        ("train_rmse", "rmse", "Holdout RMSE of the trained model"),
        ("train_mae", "mae", "Holdout MAE of the trained model"),
        ("train_precision_at_k", "precision_at_k", "Holdout precision@k (k=20) of the trained model"),
        ("train_ndcg_at_k", "ndcg_at_k", "Holdout NDCG@k (k=20) of the trained model"),
    ):
        if metrics.get(key) is not None:
            Gauge(name, doc, ["model_version"], registry=reg).labels(version).set(metrics[key])
    Gauge("train_gates_passed", "1 when the model passed every quality gate", ["model_version"],
          registry=reg).labels(version).set(1 if summary["gates_passed"] else 0)
    Gauge("train_ratings", "Unique ratings in the training snapshot", registry=reg).set(summary["data"]["unique_ratings"])
    Gauge("train_duration_seconds", "Duration of the training job", registry=reg).set(summary["duration_s"])
    Gauge("train_last_success_timestamp_seconds", "When the job last registered a model",
          registry=reg).set_to_current_time()
    try:
        push_to_gateway(url, job="train", registry=reg, timeout=5)
    except OSError as e:
        log.warning("pushgateway %s unreachable: %s", url, e)
        return f"failed: pushgateway {url} unreachable"
    return "pushed"


# -- offline reproduction (dvc repro) --------------------------------------------------------
def train_offline(ratings_file: str, params: Mapping[str, Any], out_dir: str) -> dict[str, Any]:
    """Fit and evaluate from a ratings file into a model directory (no store, no release)."""
    from movierec.model import save_model
    from movierec.snapshot import read_ratings_file

    table, snap_id = read_ratings_file(ratings_file)
    config = TrainConfig.from_env({}, params)
    deduped = table.dedupe()
    data = check_data(table, config, deduped)
    model, _, metrics = fit_and_evaluate(deduped, config)
    save_model(model, out_dir, {"snapshot_id": snap_id, "metrics": metrics, "data": data})
    return {"snapshot_id": snap_id, "metrics": metrics, "data": data, "params": asdict(config.svd)}


def write_lineage(store: ObjectStore, version: str, out_dir: str) -> dict[str, Any]:
    """A registered model's lineage as files DVC can track: `<out>/ratings.npz` (its data
    snapshot, re-read and verified from the stored batches), `<out>/model/` (the artifact,
    verified) and `<out>/lineage.json` (version, snapshot id, sha256s, params, metrics)."""
    from movierec.snapshot import export_ratings, load_snapshot

    registry = Registry(store)
    entry = registry.get(version)
    if not entry.snapshot_id:
        raise TrainError(f"model {version} records no data snapshot: its lineage is unknown")
    out = Path(out_dir)
    snapshot, table = load_snapshot(store, entry.snapshot_id)
    ratings_sha = export_ratings(table, out / "ratings.npz", snapshot.id)
    with tempfile.TemporaryDirectory(prefix="movierec-lineage-") as cache:
        fetched = registry.fetch(version, cache)
        (out / "model").mkdir(parents=True, exist_ok=True)
        for name in entry.metadata["files"]:
            (out / "model" / name).write_bytes((fetched / name).read_bytes())
    lineage = {
        "version": version,
        "snapshot_id": snapshot.id,
        "ratings_sha256": ratings_sha,
        "model_files": entry.metadata["files"],
        "params": entry.metadata.get("params"),
        "metrics": entry.metadata.get("metrics"),
        "code_version": entry.metadata.get("code_version"),
    }
    (out / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
    return lineage


def _read_params(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    import yaml

    with open(path) as f:
        loaded = yaml.safe_load(f) or {}
    return dict(loaded.get("train", loaded))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m movierec.trainjob", description=__doc__.splitlines()[0])
    parser.add_argument("--offline", action="store_true", help="train from --ratings into --out (no store)")
    parser.add_argument("--ratings", help="ratings .npz file (offline input, or --export-snapshot output)")
    parser.add_argument("--params", help="params.yaml (its train: section)")
    parser.add_argument("--out", help="model directory (offline) or ratings file (export)")
    parser.add_argument("--metrics", help="write the offline metrics JSON here")
    parser.add_argument("--export-snapshot", metavar="ID", help="write a snapshot's ratings ('latest' takes one now)")
    parser.add_argument("--lineage", metavar="VERSION", help="write a model's data snapshot and artifact into --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.offline:
            if not args.ratings or not args.out:
                parser.error("--offline needs --ratings and --out")
            result = train_offline(args.ratings, _read_params(args.params), args.out)
            if args.metrics:
                Path(args.metrics).write_text(json.dumps(result["metrics"], indent=2, sort_keys=True) + "\n")
        elif args.lineage:
            from movierec.store import open_store

            if not args.out:
                parser.error("--lineage needs --out")
            result = write_lineage(open_store(), args.lineage, args.out)
        elif args.export_snapshot:
            from movierec.snapshot import export_ratings, load_snapshot
            from movierec.store import open_store

            if not args.out:
                parser.error("--export-snapshot needs --out")
            store = open_store()
            if args.export_snapshot == "latest":
                snapshot, table = take_snapshot(store)
            else:
                snapshot, table = load_snapshot(store, args.export_snapshot)
            result = {"snapshot_id": snapshot.id, "sha256": export_ratings(table, args.out, snapshot.id)}
        else:
            from movierec.deploy import GatewayDeployer
            from movierec.notify import Notifier
            from movierec.store import open_store

            config = TrainConfig.from_env(params=_read_params(args.params))
            result = run_training(config, open_store(), GatewayDeployer.from_env(), Notifier.from_env())
    except Exception as e:  # noqa: BLE001  (the command line reports one line, not a traceback)
        print(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
