"""The model registry: immutable versions, aliases with history, verified cached fetches, and the
serving loader that survives an unreachable store. Run on the local directory store and on S3
(moto's real S3 server over HTTP on 127.0.0.1)."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import boto3
import numpy as np
import pytest

from movierec.model import from_arrays
from movierec.registry import (
    IntegrityError,
    ModelNotFoundError,
    ModelUnavailableError,
    Registry,
    is_version,
    load_serving_model,
    version_name,
)
from movierec.store import LocalDirectoryStore, ObjectExistsError, StoreUnavailableError

ACCESS_KEY, SECRET_KEY = "test-access", "test-secret"
T0 = datetime(2026, 11, 28, 1, 2, 3, tzinfo=UTC)


def tiny_model(seed: int = 0):
    rng = np.random.default_rng(seed)
    movies = np.array(sorted(f"movie+{i}+2001" for i in range(6)))
    return from_arrays(
        global_mean=3.5,
        user_ids=np.array([1, 2, 3]),
        user_bias=rng.normal(size=3),
        user_factors=rng.normal(size=(3, 2)),
        movie_ids=movies,
        item_bias=rng.normal(size=6),
        item_factors=rng.normal(size=(6, 2)),
        seen_user_ids=np.array([1, 2]),
        seen_movie_idx=np.array([0, 1]),
        cold_start=np.arange(6),
    )


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalDirectoryStore(tmp_path / "store")
    from movierec.adapters.s3store import S3Store

    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"r-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    return S3Store(bucket, endpoint_url=endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY)


class UnreachableStore:
    """A store whose backend is down: every call fails the way a real backend's would."""

    def describe(self):
        return "S3 store s3://models at http://127.0.0.1:9"

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise StoreUnavailableError(f"{self.describe()}: connection refused")

        return fail


def test_version_names_sort_in_registration_order_and_carry_the_artifact_sha():
    a = version_name("ab" * 32, T0)
    b = version_name("00" * 32, T0 + timedelta(seconds=1))
    assert a == "v20261128-010203-abababab" and is_version(a) and a < b


def test_registering_stores_an_immutable_version_with_metadata(store):
    registry = Registry(store)
    entry = registry.register_model(
        tiny_model(), params={"n_factors": 2}, metrics={"rmse": 0.9}, snapshot_id="snap-1", code="abc123", now=T0
    )
    assert registry.versions() == [entry.version]
    meta = registry.get(entry.version).metadata
    assert meta["sha256"] == entry.sha256 and set(meta["files"]) == {"model.npz", "manifest.json"}
    assert (meta["params"], meta["metrics"], meta["snapshot_id"], meta["code_version"]) == (
        {"n_factors": 2}, {"rmse": 0.9}, "snap-1", "abc123")
    assert meta["created"] == "2026-11-28T01:02:03Z"
    with pytest.raises(ObjectExistsError):
        store.put_once(f"models/{entry.version}/model.npz", b"tampered")


def test_a_half_written_version_is_invisible(store):
    store.put_once("models/v20261128-010203-deadbeef/model.npz", b"partial")
    registry = Registry(store)
    assert registry.versions() == []
    with pytest.raises(ModelNotFoundError):
        registry.resolve("v20261128-010203-deadbeef")


def test_aliases_move_by_replace_and_keep_their_history(store):
    registry = Registry(store)
    v1 = registry.register_model(tiny_model(1), now=T0).version
    v2 = registry.register_model(tiny_model(2), now=T0 + timedelta(seconds=5)).version
    registry.set_alias("stable", v1, reason="first", now=T0)
    registry.set_alias("stable", v2, reason="promoted", now=T0 + timedelta(minutes=1))
    assert registry.resolve("stable") == v2 and registry.resolve(v1) == v1
    history = registry.alias_history("stable")
    assert [(h["version"], h["previous"], h["reason"]) for h in history] == [
        (v1, None, "first"), (v2, v1, "promoted")]


def test_an_alias_cannot_point_at_a_missing_version(store):
    with pytest.raises(ModelNotFoundError, match="no model version"):
        Registry(store).set_alias("stable", "v20261128-010203-00000000")


def test_resolving_an_unknown_name_says_what_was_expected(store):
    registry = Registry(store)
    with pytest.raises(ModelNotFoundError, match="alias 'stable' is not set"):
        registry.resolve("stable")
    with pytest.raises(ModelNotFoundError, match="neither a model version"):
        registry.resolve("../etc")


def test_serving_model_reports_its_registry_version(store, tmp_path):
    registry = Registry(store)
    entry = registry.register_model(tiny_model(), now=T0)
    registry.set_alias("stable", entry.version)
    model = load_serving_model("stable", store, tmp_path / "cache")
    assert model.version == entry.version and model.sha256 == entry.sha256
    assert model.recommend(1, 3) == tiny_model().recommend(1, 3)


def test_a_restart_with_the_store_unreachable_serves_the_cached_model(store, tmp_path):
    registry = Registry(store)
    entry = registry.register_model(tiny_model(), now=T0)
    registry.set_alias("stable", entry.version)
    cache = tmp_path / "cache"
    load_serving_model("stable", store, cache)
    for spec in ("stable", entry.version):
        assert load_serving_model(spec, UnreachableStore(), cache).version == entry.version


def test_without_a_cached_copy_an_unreachable_store_is_a_clear_error(tmp_path):
    with pytest.raises(ModelUnavailableError, match="store unavailable.*never cached"):
        load_serving_model("stable", UnreachableStore(), tmp_path / "cache")


def test_a_tampered_download_is_refused(tmp_path):
    store = LocalDirectoryStore(tmp_path / "store")
    entry = Registry(store).register_model(tiny_model(), now=T0)
    (tmp_path / "store" / "models" / entry.version / "model.npz").write_bytes(b"evil")
    with pytest.raises(IntegrityError, match="sha256"):
        Registry(store).fetch(entry.version, tmp_path / "cache")


def test_a_damaged_cache_is_fetched_again(tmp_path):
    store = LocalDirectoryStore(tmp_path / "store")
    registry = Registry(store)
    entry = registry.register_model(tiny_model(), now=T0)
    directory = registry.fetch(entry.version, tmp_path / "cache")
    (directory / "model.npz").chmod(0o644)  # the cache keeps its files read-only; bit rot does not ask
    (directory / "model.npz").write_bytes(b"bit rot")
    assert load_serving_model(entry.version, store, tmp_path / "cache").sha256 == entry.sha256


# -- a cache that is only a cache ------------------------------------------------------------------
def _plant(cache, version: str, model) -> None:
    """Put a different, self-consistent model (its own metadata.json and manifest agree with its
    bytes) into the cache under `version`: what someone with write access to the cache could do."""
    import json

    from movierec.artifact import save_model
    from movierec.store import sha256_hex

    target = cache / version
    target.mkdir(parents=True)
    save_model(model, target)
    files = {p.name: sha256_hex(p.read_bytes()) for p in target.iterdir()}
    (target / "metadata.json").write_text(json.dumps({"version": version, "files": files,
                                                      "sha256": files["model.npz"]}))


def test_a_planted_self_consistent_model_in_the_cache_is_refused_and_replaced(tmp_path):
    store = LocalDirectoryStore(tmp_path / "store")
    registry = Registry(store)
    entry = registry.register_model(tiny_model(1), now=T0)
    registry.set_alias("stable", entry.version)
    cache = tmp_path / "cache"
    _plant(cache, entry.version, tiny_model(2))
    for spec in (entry.version, "stable"):
        model = load_serving_model(spec, store, cache)
        assert model.sha256 == entry.sha256, spec  # the registry's model, not the planted one
    assert model.recommend(1, 3) == tiny_model(1).recommend(1, 3)


def test_a_symlink_planted_in_the_cache_is_not_followed(tmp_path):
    store = LocalDirectoryStore(tmp_path / "store")
    entry = Registry(store).register_model(tiny_model(1), now=T0)
    cache, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    _plant(elsewhere, entry.version, tiny_model(2))
    cache.mkdir()
    (cache / entry.version).symlink_to(elsewhere / entry.version)
    assert load_serving_model(entry.version, store, cache).sha256 == entry.sha256
    assert not (cache / entry.version).is_symlink()
    assert (elsewhere / entry.version / "model.npz").is_file()  # removed the link, not its target


def _stable_at_v1_of_two(tmp_path):
    """A store with two registered versions, `stable` at the first, and an empty cache folder."""
    store = LocalDirectoryStore(tmp_path / "store")
    registry = Registry(store)
    v1 = registry.register_model(tiny_model(1), now=T0)
    v2 = registry.register_model(tiny_model(2), now=T0 + timedelta(seconds=5))
    registry.set_alias("stable", v1.version)
    return store, registry, v1, v2, tmp_path / "cache"


def test_during_an_outage_an_alias_is_served_only_with_the_sha_the_registry_recorded_last(tmp_path):
    store, _registry, v1, v2, cache = _stable_at_v1_of_two(tmp_path)
    load_serving_model("stable", store, cache)
    load_serving_model(v2.version, store, cache)  # v2 is cached too, but stable was last seen at v1
    assert load_serving_model("stable", UnreachableStore(), cache).sha256 == v1.sha256
    # Planting v2 in v1's place (self-consistent) does not fool the outage path either.
    import shutil

    shutil.rmtree(cache / v1.version)
    shutil.copytree(cache / v2.version, cache / v1.version)
    with pytest.raises(IntegrityError, match="recorded last"):
        load_serving_model("stable", UnreachableStore(), cache)


def test_an_alias_is_never_served_from_the_cache_while_the_store_answers(tmp_path):
    store, registry, _v1, v2, cache = _stable_at_v1_of_two(tmp_path)
    load_serving_model("stable", store, cache)
    registry.set_alias("stable", v2.version)
    assert load_serving_model("stable", store, cache).sha256 == v2.sha256


def test_the_default_cache_is_the_stacks_own_folder_not_a_shared_tmp(tmp_path):
    from movierec.registry import model_cache_dir

    assert model_cache_dir({"STACK_STATE_DIR": str(tmp_path / "var")}) == str(tmp_path / "var" / "model-cache")
    assert model_cache_dir({}, LocalDirectoryStore(tmp_path / "var" / "store")) == str(
        (tmp_path / "var" / "model-cache").resolve())
    assert model_cache_dir({"STORE_URL": str(tmp_path / "s")}) == str((tmp_path / "model-cache").resolve())
    assert model_cache_dir({"MODEL_CACHE_DIR": "/x"}) == "/x"
    assert model_cache_dir({"STORE_URL": "s3://b/p", "TMPDIR": "/t"}).startswith("/t/movierec-model-cache-")


@pytest.mark.parametrize("name", ["stable\n", "v20261128-010203-abcdef12\n", "stable ", "Stable", "../stable",
                                  "v20261128-010203-abcdef1\u0662", "history", "a/b"])
def test_names_that_only_look_valid_are_refused(name):
    from movierec.registry import RegistryError

    registry = Registry(LocalDirectoryStore("/nonexistent-store"))
    assert not is_version(name)
    with pytest.raises(RegistryError, match="invalid alias"):
        registry.set_alias(name, None)
    with pytest.raises(ModelNotFoundError):
        registry.get(name)


def test_the_same_artifact_registered_twice_in_one_second_gets_two_distinct_versions(tmp_path):
    """A retrain on unchanged data (or a drill copy) within the same second must not collide."""
    from datetime import UTC, datetime

    from movierec.store import LocalDirectoryStore

    registry = Registry(LocalDirectoryStore(tmp_path / "store"))
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.npz").write_bytes(b"same bytes")
    at = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    first = registry.publish(folder, now=at)
    second = registry.publish(folder, now=at)
    assert first.version != second.version and first.version < second.version
    assert second.version.startswith("v20261201-120001-")
    assert registry.versions()[-2:] == [first.version, second.version]


# -- streamed registration -------------------------------------------------------------------------
class ReadRecordingStore(LocalDirectoryStore):
    """The real local store, recording every key read (to show what registration reads back)."""

    def __init__(self, root):
        super().__init__(root)
        self.reads: list[str] = []

    def get(self, key):
        self.reads.append(key)
        return super().get(key)

    def get_file(self, key, path):
        self.reads.append(key)
        return super().get_file(key, path)


def test_registration_streams_each_file_once_and_reads_nothing_back(tmp_path):
    from movierec.store import sha256_file

    store = ReadRecordingStore(tmp_path / "store")
    entry = Registry(store).register_model(tiny_model(), now=T0)
    assert [k for k in store.reads if k.startswith(f"models/{entry.version}/")] == []
    stored = tmp_path / "store" / "models" / entry.version
    assert sha256_file(stored / "model.npz") == entry.sha256 == entry.metadata["files"]["model.npz"]
    assert sha256_file(stored / "manifest.json") == entry.metadata["files"]["manifest.json"]


def test_a_file_that_does_not_match_the_sha256_given_for_it_leaves_no_version(tmp_path):
    from movierec.artifact import save_model
    from movierec.store import ChecksumMismatchError

    store = LocalDirectoryStore(tmp_path / "store")
    save_model(tiny_model(), tmp_path / "model")
    with pytest.raises(ChecksumMismatchError):
        Registry(store).publish(tmp_path / "model", hashes={"model.npz": "0" * 64}, now=T0)
    assert Registry(store).versions() == []


def test_cached_model_files_are_read_only_so_a_mapped_model_is_never_rewritten_in_place(tmp_path):
    store = LocalDirectoryStore(tmp_path / "store")
    registry = Registry(store)
    entry = registry.register_model(tiny_model(), now=T0)
    directory = registry.fetch(entry.version, tmp_path / "cache")
    assert {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()} == {
        "model.npz": 0o444, "manifest.json": 0o444, "metadata.json": 0o444}
