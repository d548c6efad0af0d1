"""Immutable deployments: each deploy runs a content-addressed snapshot of its build context (an
"image" with a sha256 digest), so rebuilding `build/` never touches running replicas, and a deploy
after an edit and a rebuild rolls the new code out with no failed request."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from localfaas.images import ImageError, ImageStore, digest_of
from tests.localfaas_harness import REPO, start_stack


def _context(root: Path, text: str = "v1") -> Path:
    (root / "function" / "pkg").mkdir(parents=True)
    (root / "index.py").write_text("print('serve')\n")
    (root / "function" / "handler.py").write_text(f"VERSION = {text!r}\n")
    (root / "function" / "pkg" / "__init__.py").write_text("")
    return root


def test_the_digest_depends_on_the_files_only(tmp_path):
    a = _context(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    os.utime(b / "index.py", (1, 1))  # times and copy order are not content
    (b / "function" / "__pycache__").mkdir()
    (b / "function" / "__pycache__" / "handler.cpython-312.pyc").write_bytes(b"cache")
    assert digest_of(a) == digest_of(b)
    (b / "function" / "handler.py").write_text("VERSION = 'v2'\n")
    assert digest_of(a) != digest_of(b)
    c = tmp_path / "c"
    shutil.copytree(a, c)
    (c / "index.py").chmod(0o755)
    assert digest_of(a) != digest_of(c)  # the executable bit is part of an image


def test_a_snapshot_is_read_only_content_addressed_and_collected_when_unused(tmp_path):
    store = ImageStore(tmp_path / "images", {}, keep=1)
    store.open()
    first = store.snapshot(_context(tmp_path / "one", "v1"), "python index.py")
    assert first.digest == digest_of(tmp_path / "one")
    assert store.snapshot(tmp_path / "one", "python index.py") == first  # same files, same image
    modes = {p.stat().st_mode & 0o777 for p in first.root.rglob("*")}
    assert not any(mode & 0o222 for mode in modes), modes  # nothing in an image is writable
    (tmp_path / "one" / "function" / "handler.py").write_text("VERSION = 'edited'\n")  # a rebuild
    assert (first.root / "function" / "handler.py").read_text() == "VERSION = 'v1'\n"
    second = store.snapshot(tmp_path / "one", "python index.py")
    third = store.snapshot(_context(tmp_path / "three", "v3"), "python index.py")
    assert len({first.digest, second.digest, third.digest}) == 3
    removed = store.gc(in_use={third.digest})
    assert set(store.digests()) == {third.digest, second.digest}  # in use + the 1 most recent other
    assert removed == [first.digest] and not first.root.exists()


def test_an_image_nothing_builds_is_refused_in_one_line(tmp_path):
    store = ImageStore(tmp_path / "images", {})
    store.open()
    for ref in ("nowhere/fn:1", "nowhere/fn@sha256:" + "a" * 64, ""):
        with pytest.raises(ImageError) as refused:
            store.resolve(ref)
        assert "\n" not in str(refused.value)


# ----- over real processes and HTTP ---------------------------------------------------------------
@pytest.fixture(scope="module")
def faas(tmp_path_factory):
    stack = start_stack(tmp_path_factory.mktemp("localfaas-images"), {"LOCALFAAS_DEPLOY_WAIT": "15"})
    yield stack
    stack.stop()


def rebuild(faas) -> None:
    """`localfaas build` in another process, as an operator would run it (or faas-cli build --shrinkwrap)."""
    done = subprocess.run([sys.executable, "-m", "localfaas", "build", "--stack", str(faas.root / "stack.yml")],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def status(faas, name: str) -> dict:
    return requests.get(f"{faas.url}/system/function/{name}", auth=faas.auth, timeout=5).json()


def put(faas, name: str, **changes) -> requests.Response:
    fn = status(faas, name)
    body = {"service": name, "image": fn["image"], "namespace": "openfaas-fn", "envVars": fn["envVars"],
            "labels": fn["labels"], "annotations": fn["annotations"], "secrets": fn["secrets"], **changes}
    return requests.put(faas.url + "/system/functions", json=body, auth=faas.auth, timeout=60)


class Load:
    """A small bounded load loop over real HTTP (two clients), recording what each call saw."""

    def __init__(self, url: str, max_calls: int = 4000):
        self.url, self.max_calls = url, max_calls
        self.tags: list[str] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set() and len(self.tags) + len(self.failures) < self.max_calls:
                try:
                    reply = session.get(self.url, timeout=10)
                    with self.lock:
                        if reply.status_code == 200:
                            self.tags.append(reply.json()["tag"])
                        else:
                            self.failures.append(f"{reply.status_code} {reply.text.strip()}")
                except requests.RequestException as exc:
                    with self.lock:
                        self.failures.append(repr(exc))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def test_status_names_the_image_and_its_digest(faas):
    echo = status(faas, "echo")
    assert echo["image"] == "test/echo:latest"  # the tag still builds what runs
    assert echo["imageDigest"].startswith("sha256:") and len(echo["imageDigest"]) == 71
    assert (faas.state / "images" / "sha256" / echo["imageDigest"][7:] / "rootfs").is_dir()


def test_rebuilding_never_touches_running_replicas_and_a_deploy_rolls_the_new_code_out(faas):
    before = status(faas, "echo")["imageDigest"]
    pids = {faas.call("echo").json()["pid"] for _ in range(4)}
    (faas.root / "shared_lib" / "__init__.py").write_text("def tag():\n    return 'shared-v2'\n")
    shutil.rmtree(faas.root / "build")  # what a rebuild starts with
    rebuild(faas)
    seen = [faas.call("echo").json() for _ in range(6)]
    assert {s["tag"] for s in seen} == {"shared-v1"} and {s["pid"] for s in seen} == pids
    victim = seen[0]["pid"]
    os.kill(victim, signal.SIGKILL)  # a restart also runs the snapshot, not the new build
    faas.wait_until(lambda: len({faas.call("echo").json()["pid"] for _ in range(4)} - pids) == 1, "a replacement")
    assert {faas.call("echo").json()["tag"] for _ in range(4)} == {"shared-v1"}

    with Load(f"{faas.url}/function/echo") as load:
        faas.wait_until(lambda: len(load.tags) > 20, "load before the deploy")
        reply = put(faas, "echo")  # the same tag, as `faas-cli deploy` after `faas-cli build`
        assert reply.status_code == 202, reply.text
        faas.wait_until(lambda: load.tags[-1] == "shared-v2", "the new code to be served")
        after_switch = len(load.tags) + 40
        faas.wait_until(lambda: len(load.tags) >= after_switch, "calls after the switch")
    assert load.failures == [], load.failures[:5]
    assert "shared-v1" in load.tags and "shared-v2" in load.tags
    assert "shared-v1" not in load.tags[load.tags.index("shared-v2") + 2:]  # never back to the old code
    now = status(faas, "echo")
    assert now["imageDigest"] != before and now["image"] == "test/echo:latest"


def test_a_deploy_by_digest_runs_that_snapshot_and_the_status_says_so(faas):
    new_digest = status(faas, "echo")["imageDigest"]
    assert faas.call("spare").json()["tag"] == "shared-v1"  # spare was not redeployed
    reply = put(faas, "spare", image=f"test/spare@{new_digest}")
    assert reply.status_code == 202, reply.text
    faas.wait_until(lambda: faas.call("spare").json()["tag"] == "shared-v2", "spare on echo's new snapshot")
    spare = status(faas, "spare")
    assert spare["image"] == f"test/spare@{new_digest}" and spare["imageDigest"] == new_digest


def test_a_deploy_whose_build_context_is_gone_is_refused_and_nothing_changes(faas):
    digest = status(faas, "echo")["imageDigest"]
    shutil.rmtree(faas.root / "build" / "echo")
    try:
        reply = put(faas, "echo", envVars={"GREETING": "never"})
        assert reply.status_code == 400
        assert "build context" in reply.text and "does not exist" in reply.text and reply.text.count("\n") == 1
        assert status(faas, "echo")["imageDigest"] == digest
        assert faas.call("echo").json()["greeting"] == "hello"
    finally:
        rebuild(faas)


def test_unused_images_are_collected_beyond_the_kept_ones(faas):
    for version in ("v3", "v4", "v5", "v6", "v7", "v8", "v9"):
        (faas.root / "shared_lib" / "__init__.py").write_text(f"def tag():\n    return 'shared-{version}'\n")
        rebuild(faas)
        assert put(faas, "echo").status_code == 202
        faas.wait_until(lambda v=version: faas.call("echo").json()["tag"] == f"shared-{v}", f"echo on {version}")
    time.sleep(1)  # the old replicas drain and exit
    in_use = {status(faas, n)["imageDigest"] for n in ("echo", "spare", "recorder")}
    kept = set((faas.state / "images" / "sha256").iterdir())
    assert len(kept) <= len(in_use) + 5  # LOCALFAAS_KEEP_IMAGES (5) besides those in use
    assert {d[7:] for d in in_use} <= {p.name for p in kept}
