"""Release drills: a model version flagged `"drill": {...}` in its manifest is served deliberately
slow and/or failing (movierec.serving), only the operator's drill copy ever carries the flag
(movierec.drills.register_drill_version; training never sets it), and the release controller's
metrics name what each variant serves (movierec.release.serving_versions)."""
from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from movierec.drills import Drill, DrillError, DrillFault, register_drill_version
from movierec.registry import Registry, load_serving_model
from movierec.release import (
    CANARY,
    STABLE,
    ReleaseConfig,
    ReleaseError,
    serving_versions,
    start_release,
)
from movierec.serving import ModelHolder
from movierec.store import LocalDirectoryStore
from movierec.synthetic import SyntheticWorld
from movierec.training import SVDParams
from movierec.trainjob import TrainConfig, run_training
from scripts.release import DEFAULT_DRILL, drill_settings, parse_args
from tests.fitting import train_model
from tests.gateway_double import GatewayDouble
from tests.test_trainjob import put_batches

T0 = datetime(2026, 11, 28, 3, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def small_model():
    world = SyntheticWorld(n_users=120, n_movies=80, seed=11)
    return train_model(world.sample_ratings(3000), SVDParams(n_factors=4, n_epochs=5, random_state=0))


@pytest.fixture
def store_with_stable(tmp_path, small_model):
    store = LocalDirectoryStore(tmp_path / "store")
    registry = Registry(store)
    version = registry.register_model(small_model, now=T0).version
    registry.set_alias("stable", version)
    return store, version


def holder_for(model_dir, drill=None, chance=0.0):
    """A ModelHolder serving the model in `model_dir`, recording the sleeps a drill asks for."""
    sleeps: list[float] = []
    holder = ModelHolder({"MODEL_PATH": str(model_dir)}, sleep=sleeps.append, chance=lambda: chance)
    return holder, sleeps


def save_with(model, directory, manifest_extra):
    from movierec.artifact import save_model

    save_model(model, directory, manifest_extra)
    return directory


# ----- the flag ---------------------------------------------------------------------------------
def test_a_manifest_without_drill_is_a_normal_model():
    assert Drill.from_manifest({"format": "movierec-svd"}) is None


def test_drill_values_are_read_from_the_manifest_and_missing_ones_are_zero():
    assert Drill.from_manifest({"drill": {"delay_ms": 400}}) == Drill(400.0, 0.0)
    assert Drill.from_manifest({"drill": {"error_rate": "0.3"}}) == Drill(0.0, 0.3)


@pytest.mark.parametrize("raw, message", [
    ({"error_rate": 1.5}, "error_rate must be between 0 and 1"),
    ({"delay_ms": -1}, "delay_ms must be between 0 and 10000"),
    ({"delay_ms": 60_000}, "delay_ms must be between 0 and 10000"),
    ({"delay_ms": "slow"}, "drill values must be numbers"),
    ({"delay_ms": 0, "error_rate": 0}, "needs delay_ms > 0 or error_rate > 0"),
    ({"latency": 5}, "drill must be an object with delay_ms and/or error_rate"),
    ("yes", "drill must be an object"),
])
def test_a_malformed_drill_is_a_one_line_error_naming_the_setting(raw, message):
    with pytest.raises(DrillError, match=message) as caught:
        Drill.from_manifest({"drill": raw})
    assert "\n" not in str(caught.value)


# ----- serving applies it -----------------------------------------------------------------------
def test_serving_a_normal_model_never_sleeps_or_fails(tmp_path, small_model):
    holder, sleeps = holder_for(save_with(small_model, tmp_path / "m", {}), chance=0.0)
    model = holder.get()
    assert holder.drill is None and "DRILL" not in holder.describe()
    assert holder.recommend(model, 3) == model.recommend(3, holder.k)
    assert sleeps == []


def test_serving_a_drill_model_sleeps_its_delay_before_every_answer(tmp_path, small_model):
    holder, sleeps = holder_for(save_with(small_model, tmp_path / "m", {"drill": {"delay_ms": 400}}))
    model = holder.get()
    assert holder.recommend(model, 3) == model.recommend(3, holder.k)  # slow, but the same answer
    assert holder.recommend(model, 4)
    assert sleeps == [0.4, 0.4]
    assert holder.ready() == (True, holder.describe()) and "DRILL delay 400 ms" in holder.describe()


def test_serving_a_drill_model_fails_the_share_of_requests_its_error_rate_names(tmp_path, small_model):
    directory = save_with(small_model, tmp_path / "m", {"drill": {"error_rate": 0.3}})
    unlucky, _ = holder_for(directory, chance=0.29)  # the random draw falls inside the error share
    with pytest.raises(DrillFault, match="release drill: model .* fails 0.3 of requests on purpose"):
        unlucky.recommend(unlucky.get(), 3)
    lucky, _ = holder_for(directory, chance=0.3)
    assert lucky.recommend(lucky.get(), 3)


def test_a_model_with_a_malformed_drill_is_not_served_and_says_why(tmp_path, small_model):
    holder, _ = holder_for(save_with(small_model, tmp_path / "m", {"drill": {"error_rate": 7}}))
    assert holder.get() is None
    ok, text = holder.ready()
    assert not ok and text.startswith("no model: DrillError: drill error_rate must be between 0 and 1")


# ----- only the operator's drill copy carries it ---------------------------------------------------
def test_a_drill_version_is_a_copy_of_stable_with_the_flag_and_a_record_of_its_source(store_with_stable, tmp_path):
    store, stable = store_with_stable
    entry = register_drill_version(store, Drill(400, 0.3), now=T0.replace(minute=5))
    registry = Registry(store)
    assert entry.version != stable and entry.version in registry.versions()
    assert entry.sha256 == registry.get(stable).sha256  # the same artifact: same answers, only worse served
    assert entry.metadata["extra"] == {"drill": {"delay_ms": 400.0, "error_rate": 0.3}, "copied_from": stable}
    drill_model = load_serving_model(entry.version, store, tmp_path / "cache")
    assert Drill.from_manifest(drill_model.manifest) == Drill(400, 0.3)
    assert drill_model.version == entry.version
    assert Drill.from_manifest(load_serving_model(stable, store, tmp_path / "cache").manifest) is None
    assert registry.alias_version("stable") == stable  # registering a drill releases nothing by itself


def test_a_drill_needs_a_stable_model_to_copy(tmp_path):
    with pytest.raises(ReleaseError, match="no stable model yet to copy into a drill model"):
        register_drill_version(LocalDirectoryStore(tmp_path / "empty"), Drill(400, 0))


def test_training_never_writes_a_drill_into_the_models_it_registers(tmp_path):
    store = LocalDirectoryStore(tmp_path / "store")
    world = SyntheticWorld(n_users=200, n_movies=150, n_factors=4, noise=0.5, seed=7)
    put_batches(store, world)
    config = TrainConfig(svd=SVDParams(n_factors=8, n_epochs=5, random_state=0), min_ratings=500,
                         cache_dir=str(tmp_path / "cache"), pushgateway_url=None)
    summary = run_training(config, store, now=T0)
    manifest = json.loads(store.get(f"models/{summary['version']}/manifest.json"))
    assert "drill" not in manifest
    assert "drill" not in (Registry(store).get(summary["version"]).metadata.get("extra") or {})


# ----- what the controller reports as served --------------------------------------------------------
class EnvReader:
    def __init__(self, envs):
        self.envs = envs

    def env_of(self, name):
        if name not in self.envs:
            raise RuntimeError(f"function {name} is not deployed")
        return self.envs[name]


def test_serving_versions_resolve_the_deployments_model_version_aliases(store_with_stable):
    store, stable = store_with_stable
    config = ReleaseConfig()
    found = serving_versions(store, config, EnvReader({"recommend": {"MODEL_VERSION": "stable"},
                                                      "recommend-canary": {"MODEL_VERSION": stable}}))
    assert found == {STABLE: ("recommend", stable), CANARY: ("recommend-canary", stable)}


def test_serving_versions_fall_back_to_the_release_state_when_the_gateway_cannot_say(store_with_stable):
    store, stable = store_with_stable
    drill = register_drill_version(store, Drill(0, 1.0), now=T0.replace(minute=7)).version
    with GatewayDouble("admin", "pw", ["recommend", "recommend-canary"]) as gateway:
        from movierec.adapters.gateway import GatewayClient

        start_release(ReleaseConfig(), store, GatewayClient(gateway.url, "admin", "pw"), drill, now=T0,
                      actor="drill")
    found = serving_versions(store, ReleaseConfig(), EnvReader({}))
    assert found == {STABLE: ("recommend", stable), CANARY: ("recommend-canary", drill)}


def test_the_dashboard_figures_name_what_each_variant_serves_and_whether_a_release_runs(store_with_stable):
    from movierec.adapters.release_metrics import push_release_metrics
    from movierec.metrics import render_text
    from movierec.release import release_families

    store, stable = store_with_stable
    envs = {"recommend": {"MODEL_VERSION": "stable"}, "recommend-canary": {"MODEL_VERSION": stable}}
    text = render_text(release_families(store, ReleaseConfig(), EnvReader(envs), now=1234.5))
    assert (f'release_serving_model_info{{variant="stable",function_name="recommend.openfaas-fn",'
            f'model_version="{stable}"}} 1') in text
    assert "# TYPE release_decision_timestamp_seconds gauge" in text and "release_online_watched" not in text
    assert "release_running 0\n" in text and "release_last_push_timestamp_seconds 1234.5\n" in text
    assert push_release_metrics("", store, ReleaseConfig(), EnvReader(envs)) == "skipped"


# ----- the operator command's arguments ----------------------------------------------------------
def test_drill_defaults_to_slow_and_erroring_and_otherwise_takes_exactly_what_is_given():
    assert drill_settings(None, None) == Drill(**DEFAULT_DRILL)
    assert drill_settings(250, None) == Drill(250, 0)
    assert drill_settings(None, 1.0) == Drill(0, 1.0)


@pytest.mark.parametrize("argv", [["drill-bad-model", "--error-rate", "1.2"], ["drill-bad-model", "--delay-ms", "-5"],
                                  ["drill-bad-model", "--delay-ms", "fast"], ["deploy"], []])
def test_bad_arguments_exit_2_with_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err
