"""The training job: snapshots of stored batches, data checks, gates, registration and the start
of a release through the gateway's deployment API (real HTTP to a gateway double)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from movierec.adapters.gateway import GatewayClient
from movierec.batches.builder import parse_batch, store_batch
from movierec.registry import Registry
from movierec.release import ReleaseConfig, ReleaseStore
from movierec.snapshot import (
    SnapshotError,
    export_ratings,
    load_snapshot,
    read_ratings_file,
    take_snapshot,
)
from movierec.store import LocalDirectoryStore
from movierec.synthetic import SyntheticWorld
from movierec.training import SVDParams
from movierec.trainjob import TrainConfig, TrainError, check_data, gates, run_training, train_families
from scripts.train import main
from tests.gateway_double import GatewayDouble

T0 = datetime(2026, 11, 28, 3, 0, 0, tzinfo=UTC)
FAST = SVDParams(n_factors=8, n_epochs=15, random_state=0)


def put_batches(store, world, n_batches=2, lines_per_batch=6000, start=0):
    """Stream lines stored as committed ingest batches (ingest's own parse_batch/store_batch)."""
    for i in range(start, start + n_batches):
        lines = list(world.stream_lines(lines_per_batch // 4, start=datetime(2026, 1, 1) + timedelta(days=i)))
        first = i * 1_000_000
        records = [(first + j, line.encode()) for j, line in enumerate(lines)]
        store_batch(store, parse_batch("movielog1", 0, records, []))


@pytest.fixture
def world():
    return SyntheticWorld(n_users=200, n_movies=150, n_factors=4, noise=0.5, seed=7)


@pytest.fixture
def store(tmp_path):
    return LocalDirectoryStore(tmp_path / "store")


@pytest.fixture
def gateway():
    with GatewayDouble("admin", "s3cret-pw", ["recommend", "recommend-canary"]) as double:
        yield double


def config_for(tmp_path, **overrides):
    base = {"svd": FAST, "min_ratings": 500, "cache_dir": str(tmp_path / "cache"), "pushgateway_url": None}
    return TrainConfig(**{**base, **overrides})


def deployer_for(gateway):
    return GatewayClient(gateway.url, "admin", "s3cret-pw", backoff_s=0.01)


# -- snapshots -----------------------------------------------------------------------------
def test_a_snapshot_id_depends_only_on_the_batches_it_contains(store, world):
    put_batches(store, world)
    first, table = take_snapshot(store)
    again, _ = take_snapshot(store)
    assert first.id == again.id and first.id.startswith("snap-") and first.n_batches == 2
    assert len(table) > 0 and store.exists(f"data/snapshots/{first.id}.json")
    put_batches(store, world, n_batches=1, start=2)
    assert take_snapshot(store)[0].id != first.id


def test_an_earlier_snapshot_reloads_the_same_ratings(store, world):
    put_batches(store, world)
    snapshot, table = take_snapshot(store)
    put_batches(store, world, n_batches=1, start=2)
    _, reloaded = load_snapshot(store, snapshot.id)
    assert len(reloaded) == len(table) and (reloaded.ratings == table.ratings).all()


def test_a_snapshots_ratings_are_typed_columns_in_event_time_order(store):
    lines = ["2026-01-01T10:00:05,1,GET /rate/b+2000=4", "2026-01-01T10:00:01,2,GET /rate/a+1999=2"]
    store_batch(store, parse_batch("movielog1", 0, [(i, line.encode()) for i, line in enumerate(lines)], []))
    _, table = take_snapshot(store)
    assert table.user_ids.tolist() == [2, 1]
    assert table.movie_ids.tolist() == ["a+1999", "b+2000"]
    assert table.ratings.dtype == np.float32 and table.ratings.tolist() == [2.0, 4.0]
    assert table.user_ids.dtype == np.int64 and table.movie_ids.dtype.kind == "U"


def test_a_snapshot_of_nothing_is_a_clear_error(store):
    with pytest.raises(SnapshotError, match="no committed rating batches"):
        take_snapshot(store)


def test_a_batch_changed_after_the_snapshot_is_refused(tmp_path, world):
    store = LocalDirectoryStore(tmp_path / "store")
    put_batches(store, world, n_batches=1)
    snapshot, _ = take_snapshot(store)
    key = next(k for k, _ in snapshot.objects if k.startswith("data/ratings/"))
    (tmp_path / "store" / key).write_bytes(b"rewritten behind the store's back")
    with pytest.raises(SnapshotError, match="changed since the snapshot"):
        load_snapshot(store, snapshot.id)


def test_exported_ratings_file_round_trips_with_its_snapshot_id(store, world, tmp_path):
    put_batches(store, world, n_batches=1)
    snapshot, table = take_snapshot(store)
    sha = export_ratings(table, tmp_path / "r.npz", snapshot.id)
    assert sha == export_ratings(table, tmp_path / "r2.npz", snapshot.id)  # deterministic bytes
    loaded, snap_id = read_ratings_file(tmp_path / "r.npz")
    assert snap_id == snapshot.id and (loaded.user_ids == table.user_ids).all()


# -- checks and gates ----------------------------------------------------------------------
def test_too_little_data_is_refused_before_fitting(world, tmp_path):
    with pytest.raises(TrainError, match="data check failed: .* unique ratings < minimum 500"):
        check_data(world.sample_ratings(100), config_for(tmp_path))


def test_gates_require_rmse_under_the_threshold_and_no_regression_beyond_tolerance(tmp_path):
    config = config_for(tmp_path, rmse_max=1.0, rmse_tolerance=0.02)
    assert all(g["passed"] for g in gates({"rmse": 0.90}, 0.89, config))
    assert [g["passed"] for g in gates({"rmse": 0.92}, 0.89, config)] == [True, False]
    assert [g["passed"] for g in gates({"rmse": 1.01}, None, config)] == [False]


def test_config_reads_svd_params_from_params_then_env():
    config = TrainConfig.from_env({"SVD_N_EPOCHS": "7", "RMSE_MAX": "0.95"}, {"n_factors": 12, "n_epochs": 3})
    assert (config.svd.n_factors, config.svd.n_epochs, config.rmse_max) == (12, 7, 0.95)


def test_config_defaults_push_nowhere_and_blank_variables_mean_the_default():
    config = TrainConfig.from_env({"PUSHGATEWAY_URL": "", "SVD_N_FACTORS": " ", "TRAIN_TOPIC": ""}, {})
    assert config == TrainConfig()
    assert config.pushgateway_url is None and config.topic is None and config.auto_release
    config = TrainConfig.from_env({"PUSHGATEWAY_URL": "http://127.0.0.1:9091", "TRAIN_TOPIC": "movielog2",
                                   "AUTO_RELEASE": "0", "MODEL_CACHE_DIR": "/somewhere"}, {})
    assert (config.pushgateway_url, config.topic, config.auto_release, config.cache_dir) == (
        "http://127.0.0.1:9091", "movielog2", False, "/somewhere")


@pytest.mark.parametrize("env, params, message", [
    ({"SVD_N_FACTORS": "many"}, {}, "SVD_N_FACTORS must be an integer, got 'many'"),
    ({}, {"rmse_max": "low"}, "params.yaml train.rmse_max must be a number, got 'low'"),
    ({"SVD_N_EPOCHS": "-1"}, {}, "SVD_N_EPOCHS must be at least 0"),
    ({}, {"lr_all": 0}, "lr_all must be > 0"),
])
def test_a_bad_setting_is_a_422_config_error_naming_it(env, params, message):
    from movierec.errors import ConfigError, http_status

    with pytest.raises(TrainError, match="^training configuration: " + message) as caught:
        TrainConfig.from_env(env, params)
    assert isinstance(caught.value, ConfigError) and http_status(caught.value) == 422


# -- the job -------------------------------------------------------------------------------
def test_the_first_model_ever_goes_straight_to_stable_and_recommend_is_redeployed(store, world, gateway, tmp_path):
    put_batches(store, world)
    summary = run_training(config_for(tmp_path), store, deployer_for(gateway), now=T0)
    assert summary["gates_passed"] and summary["release"] == "first model: now stable"
    assert summary["metrics"]["rmse"] < 1.0 and summary["metrics"]["precision_at_k"] is not None
    registry = Registry(store)
    assert registry.alias_version("stable") == summary["version"]
    assert gateway.env("recommend")["MODEL_VERSION"] == summary["version"]
    assert gateway.env("recommend")["RECOMMEND_K"] == "20"  # the rest of the deployment is kept
    meta = registry.get(summary["version"]).metadata
    assert meta["snapshot_id"] == summary["snapshot_id"] and meta["params"]["n_factors"] == 8


def test_a_second_good_model_starts_a_canary_release(store, world, gateway, tmp_path):
    put_batches(store, world)
    first = run_training(config_for(tmp_path), store, deployer_for(gateway), now=T0)
    put_batches(store, world, n_batches=1, start=2)
    second = run_training(config_for(tmp_path), store, deployer_for(gateway), release_config=ReleaseConfig(),
                          now=T0 + timedelta(days=2))
    assert second["gates_passed"], second["gates"]
    assert second["release"].startswith("canary started")
    assert "stable_rmse_same_holdout" in second["metrics"]
    assert gateway.env("recommend-canary")["MODEL_VERSION"] == second["version"]
    assert gateway.env("recommend")["MODEL_VERSION"] == first["version"]
    assert ReleaseStore(store).running().candidate == second["version"]
    third = run_training(config_for(tmp_path), store, deployer_for(gateway), now=T0 + timedelta(days=3))
    assert third["release"].startswith("not released: release r")


def test_a_model_failing_a_gate_is_registered_but_not_released(store, world, gateway, tmp_path):
    put_batches(store, world)
    summary = run_training(config_for(tmp_path, rmse_max=0.1), store, deployer_for(gateway), now=T0)
    assert not summary["gates_passed"] and summary["release"] == "not released: a gate failed"
    assert Registry(store).versions() == [summary["version"]]
    assert Registry(store).alias_version("stable") is None and gateway.puts == []


def test_offline_training_writes_a_loadable_model_and_metrics(store, world, tmp_path):
    put_batches(store, world)
    snapshot, table = take_snapshot(store)
    export_ratings(table, tmp_path / "ratings.npz", snapshot.id)
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  n_factors: 8\n  n_epochs: 10\n  min_ratings: 100\n")
    code = main(["--offline", "--ratings", str(tmp_path / "ratings.npz"), "--params", str(params),
                 "--out", str(tmp_path / "model"), "--metrics", str(tmp_path / "metrics.json")])
    assert code == 0
    from movierec.artifact import load_model

    model = load_model(tmp_path / "model")
    assert model.manifest["snapshot_id"] == snapshot.id and (tmp_path / "metrics.json").exists()


def test_the_job_reports_its_figures_as_train_metric_families(store, world, tmp_path):
    from movierec.metrics import render_text

    put_batches(store, world)
    summary = run_training(config_for(tmp_path), store, now=T0)
    families = {f.name: f for f in train_families(summary, now=1_700_000_000.0)}
    assert list(families) == ["train_rmse", "train_mae", "train_precision_at_k", "train_ndcg_at_k",
                              "train_gates_passed", "train_ratings", "train_duration_seconds",
                              "train_last_success_timestamp_seconds", "train_ranking",
                              "train_ndcg_lift_vs_popularity"]
    ranking = summary["metrics"]["ranking"]
    assert len(families["train_ranking"].samples) == 4 * 5  # model, popularity, random, svd
    assert ((summary["version"], "popularity", "ndcg"), ranking["popularity"]["ndcg"]) in families["train_ranking"].samples
    assert families["train_rmse"].samples == [((summary["version"],), summary["metrics"]["rmse"])]
    assert families["train_gates_passed"].samples == [((summary["version"],), 1.0)]
    assert families["train_ratings"].samples == [((), float(summary["data"]["unique_ratings"]))]
    text = render_text(list(families.values()))
    assert "# HELP train_rmse Holdout RMSE of the trained model" in text
    assert "train_last_success_timestamp_seconds 1700000000" in text
    assert "pushed" not in summary  # the caller pushes (functions/train, scripts/train) and adds it


def test_holdout_side_of_a_pair_does_not_depend_on_the_longest_movie_id_in_the_snapshot():
    from movierec.ratings import RatingsTable
    from movierec.trainjob import holdout_split

    users = np.arange(2000, dtype=np.int64)
    short = RatingsTable(users, np.array(["heat+1995"] * 2000), np.full(2000, 4.0, dtype=np.float32))
    longer = RatingsTable(np.concatenate([users, [1]]),
                          np.array(["heat+1995"] * 2000 + ["a+much+longer+title+than+any+other+2001"]),
                          np.full(2001, 4.0, dtype=np.float32))
    held_short = set(holdout_split(short, 0.2)[1].user_ids.tolist())
    holdout_long = holdout_split(longer, 0.2)[1]
    held_long = {u for u, m in zip(holdout_long.user_ids.tolist(), holdout_long.movie_ids.tolist())
                 if m == "heat+1995"}
    assert held_short and held_short == held_long


# -- the train function's HTTP face ------------------------------------------------------------
@pytest.fixture
def train_handler(tmp_path, monkeypatch):
    """functions/train/handler.py with a local store, no gateway secrets, no release, no push."""
    import importlib.util

    for name, value in {"STORE_URL": str(tmp_path / "store"), "SECRETS_DIR": str(tmp_path / "secrets"),
                        "MODEL_CACHE_DIR": str(tmp_path / "cache"), "AUTO_RELEASE": "0", "PUSHGATEWAY_URL": "",
                        "SVD_N_FACTORS": "8", "SVD_N_EPOCHS": "5", "TRAIN_MIN_RATINGS": "500"}.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "secrets").mkdir(exist_ok=True)
    (tmp_path / "secrets" / "cron-token").write_text("cron-tok\n")
    spec = importlib.util.spec_from_file_location("train_handler", "functions/train/handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, LocalDirectoryStore(tmp_path / "store")


def _event(method, path="/", headers=None):
    from types import SimpleNamespace

    headers = {"Authorization": "Bearer cron-tok"} if headers is None else headers
    return SimpleNamespace(method=method, path=path, headers=headers, query={}, body=b"")


def test_training_needs_the_cron_token(train_handler, tmp_path):
    handler, _ = train_handler
    for headers in ({}, {"X-Topic": "cron-function"}, {"Authorization": "Bearer nope"}):
        reply = handler.handle(_event("POST", headers=headers), None)
        assert reply["statusCode"] == 401 and "cron-token" in reply["body"]["error"]
    (tmp_path / "secrets" / "cron-token").unlink()
    reply = handler.handle(_event("POST"), None)
    assert reply["statusCode"] == 503 and "not configured" in reply["body"]["error"]


def test_a_post_trains_and_answers_the_summary_with_what_was_pushed(train_handler, world):
    handler, store = train_handler
    put_batches(store, world)
    reply = handler.handle(_event("POST"), None)
    assert reply["statusCode"] == 200, reply
    summary = reply["body"]
    assert summary["pushed"] == "skipped" and summary["release"] == "not released: automatic release is off"
    status = handler.handle(_event("GET", "/status"), None)
    assert status["statusCode"] == 200 and status["body"]["versions"] == [summary["version"]]
    assert status["body"]["aliases"] == {"stable": None, "candidate": None}


def test_no_data_and_a_bad_setting_are_422_with_a_one_line_json_error(train_handler, monkeypatch):
    handler, _ = train_handler
    reply = handler.handle(_event("POST"), None)
    assert reply["statusCode"] == 422
    assert reply["body"]["error"].startswith("SnapshotError: no committed rating batches")
    monkeypatch.setenv("SVD_N_FACTORS", "many")
    reply = handler.handle(_event("POST"), None)
    assert reply["statusCode"] == 422
    assert reply["body"] == {"error": "TrainConfigError: training configuration: SVD_N_FACTORS must be an "
                                      "integer, got 'many'"}


def test_an_unreachable_store_is_503_and_other_methods_405(train_handler, monkeypatch):
    from movierec.store import StoreUnavailableError

    handler, _ = train_handler

    def unreachable(env=None):
        raise StoreUnavailableError("S3 store s3://models at http://127.0.0.1:9: connection refused")

    monkeypatch.setattr(handler, "open_store", unreachable)
    for method, path in (("POST", "/"), ("GET", "/status")):
        reply = handler.handle(_event(method, path), None)
        assert reply["statusCode"] == 503 and "connection refused" in reply["body"]["error"], reply
    reply = handler.handle(_event("PUT"), None)
    assert reply["statusCode"] == 405 and reply["headers"]["Allow"] == "GET, POST"
    assert reply["body"]["error"].startswith("use POST to train")
