"""One release step acts at a time: the release controller holds THE lease (movierec.lease, named
`release`; its own properties, 8 racing takers of which one wins on both backends included, are
tests/test_lease.py). On both real store backends (a local folder, and S3 through moto's server):
a second taker is refused at once (409, naming the holder and the expiry); two steps started
together never both act; a step whose lease expired and was taken over cannot write release
state; a step that died on this machine frees it at once."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from movierec.errors import Conflict, http_status
from movierec.registry import Registry
from movierec.release import (
    PROMOTE,
    PROMOTED,
    LeaseHeld,
    LeaseLost,
    ReleaseConfig,
    ReleaseRunningError,
    ReleaseStore,
    acquire_lease,
    bootstrap_stable,
    manual_action,
    read_lease,
    run_release_step,
    start_release,
)
from movierec.release.state import RELEASE_LEASE
from movierec.store import LocalDirectoryStore
from tests.release_fakes import GOOD, FakeDeployer, FakePrometheus

ROOT = Path(__file__).resolve().parents[1]

T0 = datetime(2026, 11, 28, 1, 0, 0, tzinfo=UTC)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalDirectoryStore(tmp_path / "store")
    import boto3

    from movierec.adapters.s3store import S3Store

    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"lease-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="a", aws_secret_access_key="b",
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    return S3Store(bucket, endpoint_url=endpoint, access_key="a", secret_key="b", attempts=2, backoff_s=0.05)


# -- the release's use of the lease ------------------------------------------------------------------
def test_a_second_taker_is_refused_at_once_naming_the_holder_and_the_expiry(store):
    first = acquire_lease(store, "step", 180, T0, holder="step on host-a pid 1")
    started = time.monotonic()
    with pytest.raises(LeaseHeld) as refused:
        acquire_lease(store, "step", 180, T0 + timedelta(seconds=5), holder="step on host-b pid 2")
    assert time.monotonic() - started < 2  # at once: no waiting for the holder
    assert http_status(refused.value) == 409 and isinstance(refused.value, Conflict)
    assert str(refused.value) == ("release lease held by step on host-a pid 1 (lease 1) since 2026-11-28T01:00:00Z; "
                                  "free when it ends, at the latest 2026-11-28T01:03:00Z (in 175 s): one release "
                                  "step acts at a time; try again after that")
    assert (refused.value.holder, refused.value.token, refused.value.expires) == \
        ("step on host-a pid 1", 1, "2026-11-28T01:03:00Z")
    assert store.exists(f"leases/{RELEASE_LEASE}/000000000001.json")  # THE lease (movierec.lease)
    first.release()
    second = acquire_lease(store, "step", 180, T0 + timedelta(seconds=6), holder="step on host-b pid 2")
    assert second.token == 2 and read_lease(store, T0 + timedelta(seconds=7))["released"] is False
    second.release()
    assert read_lease(store, T0 + timedelta(seconds=7)) == {
        "token": 2, "holder": "step on host-b pid 2", "acquired": "2026-11-28T01:00:06Z",
        "expires": "2026-11-28T01:03:06Z", "released": True, "held": False,
        "holder_exited": False, "pid": os.getpid()}  # this process took it, and is running


def test_an_expired_lease_is_taken_over_and_its_holder_can_no_longer_write(store):
    stale = acquire_lease(store, "step", 0.3, holder="slow step")
    time.sleep(0.4)
    fresh = acquire_lease(store, "step", 180, holder="next step")
    assert fresh.token == stale.token + 1
    with pytest.raises(LeaseLost, match="expired"):
        stale.check()
    with pytest.raises(LeaseLost):
        ReleaseStore(store, fence=stale.check).save(_a_release())
    assert not store.exists("releases/current.json")
    stale.release()  # a lost lease frees nothing: the new holder still holds it
    assert read_lease(store)["holder"] == "next step" and read_lease(store)["held"] is True


def test_of_eight_steps_started_together_exactly_one_gets_the_release_lease(store):
    takers, barrier = 8, threading.Barrier(8)
    won, refused, failed = [], [], []

    def take(i):
        barrier.wait()
        try:
            won.append(acquire_lease(store, "step", 180, holder=f"taker {i}"))
        except LeaseHeld as e:
            refused.append(e)
        except Exception as e:  # noqa: BLE001 (reported by the assertion below)
            failed.append(e)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(takers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failed == [] and len(won) == 1 and len(refused) == takers - 1
    assert all(e.holder == won[0].record["holder"] and str(e).startswith("release lease held by ") for e in refused)
    assert read_lease(store)["holder"] == won[0].record["holder"]


def test_a_lease_taken_at_a_fixed_time_still_expires_on_its_own_clock(store):
    """Tests and replays pass a fixed `now`; the lease's clock starts there and keeps running."""
    lease = acquire_lease(store, "step", 0.3, T0, holder="replayed step")
    lease.check()
    time.sleep(0.4)
    with pytest.raises(LeaseLost, match="expired"):
        lease.check()


def test_a_step_that_died_on_this_machine_frees_the_release_lease_at_once(tmp_path):
    """A killed release replica (SIGKILL mid-step) does not block the next steps for RELEASE_LEASE_TTL."""
    store = LocalDirectoryStore(tmp_path / "store")
    code = ("import os, sys; from movierec.release import acquire_lease; from movierec.store import "
            "LocalDirectoryStore; acquire_lease(LocalDirectoryStore(sys.argv[1]), 'step', 3600); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(store.root)], check=True, cwd=ROOT)
    gone = read_lease(store)
    assert gone["released"] is False and gone["held"] is False  # its process is gone, its expiry is not
    assert acquire_lease(store, "step", 180, holder="next step").token == 2


# -- two steps at once --------------------------------------------------------------------------------
class SlowProbeDeployer(FakeDeployer):
    """Deploys and answers like FakeDeployer; its probes wait on `gate` once `armed`, so a step can
    be held mid-way while another one is started."""

    def __init__(self):
        super().__init__()
        self.armed, self.inside, self.gate = False, threading.Event(), threading.Event()

    def served_version(self, name):
        if self.armed:
            self.inside.set()
            assert self.gate.wait(timeout=60)
        return super().served_version(name)


def published(store, tmp_path):
    registry = Registry(store)
    model_dir = tmp_path / "m"
    model_dir.mkdir(exist_ok=True)
    versions = []
    for i in range(2):
        (model_dir / "model.npz").write_bytes(f"artifact {i}".encode())
        versions.append(registry.publish(model_dir, now=T0 + timedelta(seconds=i)).version)
    return registry, versions


def running_release(store, tmp_path, config, now=None):
    registry, (v1, v2) = published(store, tmp_path)
    deployer = SlowProbeDeployer()
    bootstrap_stable(config, store, deployer, v1, now=now or T0)
    start_release(config, store, deployer, v2, now=now)
    return registry, deployer, v1, v2


def test_two_steps_at_once_only_one_acts(store, tmp_path):
    config = ReleaseConfig(window_s=600, min_requests=100)
    registry, deployer, _v1, v2 = running_release(store, tmp_path, config, now=T0)
    prometheus = FakePrometheus({"recommend": GOOD, "recommend-canary": GOOD})
    at = T0 + timedelta(minutes=11)  # past the window with healthy figures: a step promotes
    outcomes: dict[str, object] = {}

    def first():
        outcomes["first"] = run_release_step(config, store, prometheus, deployer, None, now=at)

    deployer.armed = True
    holder = threading.Thread(target=first)
    holder.start()
    assert deployer.inside.wait(timeout=30)  # the first step holds the lease, mid-way through
    started = time.monotonic()
    with pytest.raises(LeaseHeld) as refused:
        run_release_step(config, store, prometheus, deployer, None, now=at)
    assert time.monotonic() - started < 5  # answered at once, not after the first step
    assert refused.value.holder.startswith("step on ") and refused.value.expires == "2026-11-28T01:14:00Z"
    deployer.armed = False
    deployer.gate.set()
    holder.join(timeout=60)
    assert outcomes["first"].action == PROMOTE
    assert [c for c in deployer.calls if c[0] == "recommend"][-1] == ("recommend", {"MODEL_VERSION": v2})
    assert len([c for c in deployer.calls if c[0] == "recommend"]) == 2  # bootstrap + ONE promotion
    [entry] = ReleaseStore(store).history()
    assert entry.state == PROMOTED and registry.alias_version("stable") == v2


def test_a_step_whose_lease_was_taken_over_writes_nothing(store, tmp_path):
    config = ReleaseConfig(window_s=600, min_requests=100)
    short = ReleaseConfig(window_s=600, min_requests=100, lease_ttl_s=0.5)  # the slow step's lease
    _registry, deployer, v1, _v2 = running_release(store, tmp_path, config)
    prometheus = FakePrometheus({"recommend": GOOD, "recommend-canary": GOOD})
    outcome: dict[str, object] = {}

    def slow_step():
        try:
            outcome["result"] = run_release_step(short, store, prometheus, deployer, None)
        except Exception as e:  # noqa: BLE001 (what the slow step ends with is the point)
            outcome["error"] = e

    deployer.armed = True
    slow = threading.Thread(target=slow_step)
    slow.start()
    assert deployer.inside.wait(timeout=30)
    time.sleep(0.7)  # the slow step's lease expires while it waits
    deployer.armed = False
    aborted = manual_action("abort", config, store, deployer, None, actor="admin")  # takes the lease over
    deployer.gate.set()
    slow.join(timeout=60)
    assert isinstance(outcome.get("error"), LeaseLost), outcome
    current = ReleaseStore(store).current()
    assert current.state == "aborted" and current.actor == "admin" and current.id == aborted.id
    assert current.analysis is None  # the slow step's analysis was never written
    assert deployer.env["recommend-canary"]["MODEL_VERSION"] == v1


def test_a_release_cannot_start_while_a_step_or_action_holds_the_lease(store, tmp_path):
    config = ReleaseConfig()
    _registry, (v1, v2) = published(store, tmp_path)
    deployer = FakeDeployer()
    bootstrap_stable(config, store, deployer, v1, now=T0)
    held = acquire_lease(store, "step", 180, holder="a step")
    with pytest.raises(ReleaseRunningError, match="release lease held by a step"):
        start_release(config, store, deployer, v2)
    assert deployer.env["recommend-canary"]["MODEL_VERSION"] == v1
    held.release()
    assert start_release(config, store, deployer, v2).candidate == v2


def _a_release():
    from movierec.release import Release

    return Release(id="r1", candidate="v2", stable="v1", state="canary", started="2026-11-28T01:00:00Z",
                   updated="2026-11-28T01:00:00Z")
