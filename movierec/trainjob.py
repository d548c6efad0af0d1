"""The training job: snapshot -> data checks -> split -> fit -> evaluate -> gates -> register -> release.

Owns the pipeline and its configuration (`TrainConfig.from_env`: the dataclass defaults, then
params.yaml's `train:` section, then the environment, each variable typed by its row in
`movierec.settings`), the data checks, the holdout split (`holdout_split`, `split_watches`, both
by `holdout_mask`), the quality gates, the decision to start a release after a registration, the
notification of a model that is not released, and the job's metric families (`train_families`,
job "train"). Fitting and evaluation are `movierec.training`'s (the ranking model
`movierec.ranking`'s); versions and aliases
`movierec.registry`'s; snapshots `movierec.snapshot`'s; releases `movierec.release`'s; the offline
reproduction (DVC) `movierec.lineage`'s.

The data is the snapshot's ratings AND watches (`movierec.snapshot.take_snapshot_data`); the split
hashes each (user, movie) pair, so a pair's rating and its watches fall on the same side. The
SVD and the ranking model are fitted on the training side; the holdout is evaluated with the
training-only EVALUATION model, and the SERVED model (what is registered) excludes every movie
a user rated or watched anywhere in the snapshot (`movierec.training.build_models`).

Gates: holdout RMSE < RMSE_MAX (default 1.0), not worse than the current stable model on the
SAME holdout rows by more than RMSE_TOLERANCE (default 0.02), and a top-k ranking whose NDCG@20
is at least RANKING_MIN_LIFT (default 0.95: not more than 5% below) times the popularity
baseline's on the same holdout.
A model that fails a gate is still registered (its metrics are the record of why) but never
released; the summary says why (`not_released_because`) and the notifier is told.

Composed by the train function (functions/train/handler.py) and the command line
(`python -m scripts.train`), which inject the store, the gateway client and the notifier and push
`train_families(summary)` to the Pushgateway.

Must not touch: HTTP request handling, services (no adapter is imported: collaborators are
passed in), model internals, release analysis.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np

from movierec.errors import ConfigError, Rejected
from movierec.metrics import Family
from movierec.ranking import METRICS, RANKERS, RankingParams
from movierec.ratings import GOLDEN_GAMMA, RatingsTable, WatchPairs, splitmix64
from movierec.registry import (
    STABLE,
    Registry,
    RegistryError,
    code_version,
    load_serving_model,
)
from movierec.release import (
    ReleaseConfig,
    ReleaseRunningError,
    ReleaseStore,
    bootstrap_stable,
    start_release,
)
from movierec.settings import BY_NAME, Settings, parse_value, setting_field
from movierec.snapshot import take_snapshot_data
from movierec.store import ObjectStore
from movierec.training import SVDParams, build_models, evaluate, fit_svd

log = logging.getLogger("movierec.trainjob")


class TrainError(Rejected):
    """The job cannot produce a model from this data or configuration; one line. Retrying the
    same will not help: answered 422 (the class's status), as the train function always did."""

    status = 422


class TrainConfigError(TrainError, ConfigError):
    """A training setting (environment or params.yaml) is malformed or out of range."""


@dataclass(frozen=True)
class TrainConfig:
    """Each field but `svd` and `ranking` names its row in movierec.settings (SVDParams' and
    RankingParams' fields name theirs)."""

    svd: SVDParams = field(default_factory=SVDParams)
    ranking: RankingParams = field(default_factory=RankingParams)
    test_fraction: float = setting_field("TEST_FRACTION", 0.2)
    split_seed: int = setting_field("SPLIT_SEED", 0)
    min_ratings: int = setting_field("TRAIN_MIN_RATINGS", 1000)
    min_users: int = setting_field("TRAIN_MIN_USERS", 10)
    min_movies: int = setting_field("TRAIN_MIN_MOVIES", 10)
    rmse_max: float = setting_field("RMSE_MAX", 1.0)
    rmse_tolerance: float = setting_field("RMSE_TOLERANCE", 0.02)
    ranking_min_lift: float = setting_field("RANKING_MIN_LIFT", 0.95)
    cold_start_window_s: float = setting_field("COLD_START_WINDOW", 7 * 86400.0)
    topic: str | None = setting_field("TRAIN_TOPIC", None)  # None: every topic's batches
    cache_dir: str = setting_field("MODEL_CACHE_DIR", "")  # blank: registry.model_cache_dir(store=...)
    auto_release: bool = setting_field("AUTO_RELEASE", True)
    pushgateway_url: str | None = setting_field("PUSHGATEWAY_URL", None)  # None: no push

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None) -> TrainConfig:
        """Defaults <- `params` (params.yaml's `train:` section) <- environment variables."""
        settings, params = Settings(env), dict(params or {})
        try:
            return _layered(cls, settings, params, svd=_layered(SVDParams, settings, params),
                            ranking=_layered(RankingParams, settings, params))
        except ConfigError as e:
            raise TrainConfigError(f"training configuration: {e}") from None
        except (TypeError, ValueError) as e:  # SVDParams' and RankingParams' own range checks
            raise TrainConfigError(f"training configuration: {e}") from None


def _layered(cls: type, settings: Settings, params: Mapping[str, Any], **given: Any) -> Any:
    """An instance of dataclass `cls`: each field with a setting takes the environment variable
    when it is set, else params' value of the same name (typed by the same row), else its default."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        name = f.metadata.get("setting")
        if name is None or f.name in given:
            continue
        if settings.is_set(name):
            values[f.name] = settings.get(name)
        elif f.name in params:
            raw = params[f.name]
            try:
                values[f.name] = None if raw is None else parse_value(BY_NAME[name], str(raw))
            except ConfigError as e:
                raise ConfigError(f"params.yaml train.{f.name} {str(e).removeprefix(name + ' ')}") from None
    return cls(**values, **given)


def read_params(path: str | None) -> dict[str, Any]:
    """params.yaml's `train:` section (or the whole file when it has none); {} without a path."""
    if not path:
        return {}
    import yaml

    with open(path) as f:
        loaded = yaml.safe_load(f) or {}
    return dict(loaded.get("train", loaded))


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


def _string_hash(strings) -> np.ndarray:
    """A 64-bit hash of each string (a numpy unicode or object array, or a list of str),
    vectorised over the characters (one pass per character position instead of a Python call
    per string). Strings are hashed in groups of one length, so the work and memory follow the
    strings' own lengths, never the longest one times their number."""
    if isinstance(strings, np.ndarray) and strings.dtype.kind == "U":
        return _unicode_hash(strings)
    strings = list(strings.tolist() if isinstance(strings, np.ndarray) else strings)
    lengths = np.fromiter(map(len, strings), np.int64, len(strings))
    h = np.empty(len(strings), dtype=np.uint64)
    for length in np.unique(lengths).tolist():
        at = np.flatnonzero(lengths == length)
        h[at] = _unicode_hash(np.array([strings[i] for i in at.tolist()], dtype=f"<U{max(length, 1)}"))
    return h


def _unicode_hash(strings: np.ndarray) -> np.ndarray:
    """FNV-1a over the code points of each string of a numpy unicode array."""
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


def holdout_mask(user_ids: np.ndarray, movies: np.ndarray, movie_codes: np.ndarray, test_fraction: float,
                 seed: int = 0) -> np.ndarray:
    """Which (user, movie) pairs are holdout: a function of the pair and the seed only (movies
    given as distinct ids and per-row codes)."""
    if not 0.0 < test_fraction < 1.0:
        raise TrainError(f"test fraction must be between 0 and 1, got {test_fraction}")
    with np.errstate(over="ignore"):
        # Hash each distinct movie id once and spread by the codes (the same values as hashing
        # every row's string).
        movie_hash = _string_hash(movies)[movie_codes]
        key = splitmix64((np.asarray(user_ids).astype(np.uint64) ^ np.uint64(seed)) + GOLDEN_GAMMA) ^ movie_hash
        bucket = splitmix64(key + GOLDEN_GAMMA) % np.uint64(1_000_000)
    return bucket < np.uint64(round(test_fraction * 1_000_000))


def holdout_split(table: RatingsTable, test_fraction: float, seed: int = 0) -> tuple[RatingsTable, RatingsTable]:
    """(train, holdout) where a (user, movie) pair's side depends only on the pair and the seed.

    Why not a random per-table split: the gate compares the new model with the stable one on
    the new holdout. With a per-table split, most of those rows were in the stable model's
    training data (its snapshot held them too), so the stable RMSE would be optimistic and
    every new model would look worse. Hashing the pair keeps a pair in the holdout of every
    snapshot that contains it: the stable model has never trained on the holdout either.
    """
    is_holdout = holdout_mask(table.user_ids, table.codes.movies, table.codes.movie_codes, test_fraction, seed)
    return table.take(~is_holdout), table.take(is_holdout)


def split_watches(watches: WatchPairs, test_fraction: float, seed: int = 0) -> tuple[WatchPairs, WatchPairs]:
    """(train, holdout) watch pairs, each on the side `holdout_split` puts the same pair."""
    if len(watches) == 0:
        return watches, watches
    codes = watches.codes
    is_holdout = holdout_mask(watches.user_ids, codes.movies, codes.movie_codes, test_fraction, seed)
    return watches.take(~is_holdout), watches.take(is_holdout)


def fit_and_evaluate(deduped: RatingsTable, config: TrainConfig, timings: dict[str, float] | None = None,
                     watches: WatchPairs | None = None):
    """(served model, holdout, metrics) for a deduplicated table and the snapshot's watch pairs:
    split, fit the SVD and the ranking model on the training side, evaluate the training-only
    model on the holdout."""
    timings = {} if timings is None else timings
    watches = WatchPairs.empty() if watches is None else watches
    with _timed(timings, "split_s"):
        train, holdout = holdout_split(deduped, config.test_fraction, config.split_seed)
        train_watches, _ = split_watches(watches, config.test_fraction, config.split_seed)
    if len(holdout) == 0:
        raise TrainError("data check failed: the split left no holdout")
    with _timed(timings, "fit_s"):
        # The table is deduplicated once, by the caller (the checks counted it already).
        algo = fit_svd(train, config.svd)
    with _timed(timings, "rank_fit_s"):
        evaluation, served = build_models(algo, train, train_watches, deduped, watches, config.ranking,
                                          config.cold_start_window_s, config.split_seed, config.svd.as_dict())
    with _timed(timings, "evaluate_s"):
        metrics = evaluate(evaluation, holdout)
    metrics["n_train"] = len(train)
    metrics["n_train_watch_pairs"] = len(train_watches)
    return served, holdout, metrics


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
    if "ranking" in metrics:  # evaluate()'s metrics always say; a measure that is missing fails
        result.append(_ranking_gate(metrics, config.ranking_min_lift))
    return result


def _ranking_gate(metrics: Mapping[str, Any], min_lift: float) -> dict[str, Any]:
    ranking, k = metrics.get("ranking"), metrics.get("k", 20)
    if not ranking:
        return {"gate": "ranking_vs_popularity", "passed": False,
                "detail": "ranking not measured: no holdout user with a relevant movie"}
    ndcg, popular = ranking["model"]["ndcg"], ranking["popularity"]["ndcg"]
    return {"gate": "ranking_vs_popularity", "passed": ndcg >= min_lift * popular,
            "detail": f"ndcg@{k} {ndcg:.4f} >= {min_lift:g} x popularity's {popular:.4f} on the same holdout "
                      f"(random: {ranking['random']['ndcg']:.4f})"}


def run_training(
    config: TrainConfig,
    store: ObjectStore,
    deployer=None,
    notifier=None,
    release_config: ReleaseConfig | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The whole job. Returns its summary: what the function answers (the caller adds the outcome
    of pushing `train_families(summary)` as "pushed")."""
    started = time.monotonic()
    now = now or datetime.now(UTC)
    registry = Registry(store)
    timings: dict[str, float] = {}
    with _timed(timings, "snapshot_s"):
        snapshot, snapshot_data = take_snapshot_data(store, config.topic)
    table = snapshot_data.ratings
    with _timed(timings, "checks_s"):
        deduped = table.dedupe()
        data = check_data(table, config, deduped)
        data["watch_pairs"] = len(snapshot_data.watches)
    model, holdout, metrics = fit_and_evaluate(deduped, config, timings, snapshot_data.watches)

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
            extra={"data": data, "gates": gate_results, "compared_with": stable_version,
                   "ranking": model.ranking_params},
            now=now,
        )
    release = _release(entry.version, passed, stable_version, store, deployer, notifier, release_config, now, config)
    failed = [g["detail"] for g in gate_results if not g["passed"]]
    notifications = None
    if failed and notifier is not None:
        notifications = notifier.send(f"model {entry.version} not released: {'; '.join(failed)}", {
            "event": "model_not_released", "version": entry.version, "snapshot_id": snapshot.id,
            "reasons": failed, "gates": gate_results, "metrics": _headline(metrics)})
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
        **({"not_released_because": failed} if failed else {}),
        **({"notifications": notifications} if notifications is not None else {}),
        "duration_s": round(time.monotonic() - started, 3),
        "timings": timings,
    }
    log.info("trained %s: rmse %.4f gates %s release %s", entry.version, metrics["rmse"], passed, release)
    return summary


def _headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    ranking = metrics.get("ranking") or {}
    return {"rmse": metrics.get("rmse"), "ndcg_at_k": metrics.get("ndcg_at_k"),
            **{f"ndcg_at_k_{name}": ranking[name]["ndcg"] for name in RANKERS[1:] if name in ranking},
            "ndcg_lift_vs_popularity": metrics.get("ndcg_lift_vs_popularity")}


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


# The job's figures, pushed by the caller with movierec.adapters.pushgateway.push(url, "train", ...).
_MODEL_METRICS = (
    ("train_rmse", "rmse", "Holdout RMSE of the trained model"),
    ("train_mae", "mae", "Holdout MAE of the trained model"),
    ("train_precision_at_k", "precision_at_k", "Holdout precision@k (k=20) of the trained model"),
    ("train_ndcg_at_k", "ndcg_at_k", "Holdout NDCG@k (k=20) of the trained model"),
)


def train_families(summary: Mapping[str, Any], now: float | None = None) -> list[Family]:
    """The metric families of a run's summary (job "train"); `now` (epoch seconds) stamps
    train_last_success_timestamp_seconds. `train_ranking` holds every ranking metric of the
    model and of the popularity and random baselines on the same holdout."""
    version, metrics = summary["version"], summary["metrics"]
    families = [
        Family(name, doc, ("model_version",)).set(metrics[key], version)
        for name, key, doc in _MODEL_METRICS
        if metrics.get(key) is not None
    ]
    families += [
        Family("train_gates_passed", "1 when the model passed every quality gate", ("model_version",)).set(
            1 if summary["gates_passed"] else 0, version),
        Family("train_ratings", "Unique ratings in the training snapshot").set(summary["data"]["unique_ratings"]),
        Family("train_duration_seconds", "Duration of the training job").set(summary["duration_s"]),
        Family("train_last_success_timestamp_seconds", "When the job last registered a model").set(
            time.time() if now is None else now),
    ]
    ranking = metrics.get("ranking")
    if ranking:
        family = Family("train_ranking", "Holdout top-k (k=20) ranking metrics of the model and of the "
                        "popularity and random baselines", ("model_version", "ranker", "metric"))
        for ranker in (r for r in RANKERS if r in ranking):
            for metric in METRICS:
                family.set(ranking[ranker][metric], version, ranker, metric)
        families.append(family)
    if metrics.get("ndcg_lift_vs_popularity") is not None:
        families.append(Family("train_ndcg_lift_vs_popularity", "Holdout NDCG@k of the model over the "
                               "popularity baseline's", ("model_version",)).set(
            metrics["ndcg_lift_vs_popularity"], version))
    return families
