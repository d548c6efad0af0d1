"""Release actions against the real local OpenFaaS runtime (`python -m localfaas up`): starting a
release makes `recommend-canary` serve the candidate; promoting it rolls `recommend` over to the
candidate under steady load with no failed request; the models come from the registry."""
from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
import requests

from bench.localstack import RecommendStack
from movierec.adapters.gateway import GatewayClient
from movierec.registry import Registry
from movierec.release import PROMOTED, ReleaseConfig, bootstrap_stable, finish_release, start_release
from movierec.store import LocalDirectoryStore
from movierec.synthetic import SyntheticWorld
from movierec.training import SVDParams
from tests.fitting import train_model

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def world_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("release-localfaas")
    store = LocalDirectoryStore(root / "store")
    registry = Registry(store)
    world = SyntheticWorld(n_users=300, n_movies=200, seed=5)
    versions = []
    for seed in (1, 2):
        model = train_model(world.sample_ratings(8000), SVDParams(n_factors=8, n_epochs=5, random_state=seed))
        versions.append(registry.register_model(model, now=datetime.now(UTC)).version)
    registry.set_alias("stable", versions[0])
    return root, store, versions


@pytest.fixture(scope="module")
def stack(world_store):
    root, _store, (v1, _) = world_store
    with RecommendStack(root / "stack", store_dir=root / "store", stable=v1) as running:
        yield running


def test_start_and_promote_move_the_deployments_with_no_failed_request(stack, world_store):
    _, store, (v1, v2) = world_store
    config = ReleaseConfig()
    deployer = GatewayClient(stack.url, *stack.auth, timeout_s=60)
    bootstrap_stable(config, store, deployer, v1)  # pins both deployments to v1 explicitly
    stack.wait_until(lambda: stack.serving("recommend-canary") == v1, "canary on v1", 90)

    start_release(config, store, deployer, v2)
    stack.wait_until(lambda: stack.serving("recommend-canary") == v2, "canary on the candidate", 90)
    assert stack.serving("recommend") == v1

    codes: list[int] = []
    stop = threading.Event()

    def steady_load():
        for i in range(20_000):  # bounded; ends as soon as the promotion is observed
            if stop.is_set():
                return
            try:
                codes.append(requests.get(f"{stack.url}/function/recommend/{i % 500}", timeout=10).status_code)
            except requests.RequestException:
                codes.append(0)

    load = threading.Thread(target=steady_load)
    load.start()
    try:
        release = finish_release(config, store, deployer, None, _running(store), PROMOTED, "test", "tests")
        stack.wait_until(lambda: stack.serving("recommend") == v2, "recommend on the promoted version", 90)
    finally:
        stop.set()
        load.join(timeout=30)
    assert release.state == PROMOTED and Registry(store).alias_version("stable") == v2
    assert codes and set(codes) == {200}, f"{len([c for c in codes if c != 200])} failed of {len(codes)}"


def _running(store):
    from movierec.release import ReleaseStore

    return ReleaseStore(store).running()
