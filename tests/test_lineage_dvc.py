"""A model's lineage round-trips through DVC and an S3 remote (moto's real S3 server over HTTP):
the data snapshot and the artifact of a registered version are pushed, and a fresh DVC project
pulls back the same bytes (checked by sha256). Then `dvc repro` re-fits from that snapshot."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import boto3
import pytest
import yaml

from movierec.artifact import load_model
from movierec.batches.builder import parse_batch, store_batch
from movierec.lineage import write_lineage
from movierec.registry import Registry
from movierec.store import LocalDirectoryStore
from movierec.synthetic import SyntheticWorld
from movierec.training import SVDParams
from movierec.trainjob import TrainConfig, run_training

REPO = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).with_name("dvc"))
ACCESS_KEY, SECRET_KEY = "lineage-access", "lineage-secret"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dvc(cwd: Path, *args: str, env: dict) -> str:
    result = subprocess.run([DVC, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def registered(tmp_path):
    """A store with ingested batches and one registered (trained) model version."""
    store = LocalDirectoryStore(tmp_path / "store")
    world = SyntheticWorld(n_users=150, n_movies=100, n_factors=4, seed=3)
    for i in range(2):
        lines = list(world.stream_lines(1200, start=datetime(2026, 1, 1) + timedelta(days=i)))
        store_batch(store, parse_batch("movielog1", 0, [(i * 10**6 + j, x.encode()) for j, x in enumerate(lines)], []))
    config = TrainConfig(svd=SVDParams(n_factors=8, n_epochs=10), min_ratings=500, pushgateway_url=None,
                         cache_dir=str(tmp_path / "cache"))
    summary = run_training(config, store)
    return store, summary


def test_a_models_lineage_is_pushed_with_dvc_and_pulled_back_byte_identical(registered, s3_endpoint, tmp_path):
    store, summary = registered
    bucket = f"dvc-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site")}

    project = tmp_path / "project"
    lineage = write_lineage(store, summary["version"], str(project / "lineage"))
    assert lineage["snapshot_id"] == summary["snapshot_id"]
    dvc(project, "init", "--no-scm", env=env)
    dvc(project, "remote", "add", "-d", "minio", f"s3://{bucket}/dvc", env=env)
    dvc(project, "remote", "modify", "minio", "endpointurl", s3_endpoint, env=env)
    dvc(project, "add", "lineage/ratings.npz", "lineage/model", env=env)
    dvc(project, "push", env=env)

    fresh = tmp_path / "fresh"
    (fresh / "lineage").mkdir(parents=True)
    shutil.copytree(project / ".dvc", fresh / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    for name in ("ratings.npz.dvc", "model.dvc"):
        shutil.copy(project / "lineage" / name, fresh / "lineage" / name)
    dvc(fresh, "pull", env=env)

    assert sha256_file(fresh / "lineage" / "ratings.npz") == lineage["ratings_sha256"]
    for name, expected in lineage["model_files"].items():
        assert sha256_file(fresh / "lineage" / "model" / name) == expected
    metadata = Registry(store).get(summary["version"]).metadata
    assert metadata["files"] == lineage["model_files"]
    assert load_model(fresh / "lineage" / "model").version == summary["version"]


def test_dvc_repro_refits_from_the_snapshot_with_params_yaml(registered, tmp_path):
    store, summary = registered
    project = tmp_path / "repro"
    write_lineage(store, summary["version"], str(project / "lineage"))
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    (project / "params.yaml").write_text("train:\n  n_factors: 8\n  n_epochs: 10\n  min_ratings: 500\n")
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["deps"]
    for dep in deps:  # the stage's declared code deps (the ratings file comes from the lineage)
        if not dep.startswith("lineage/"):
            (project / dep).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / dep, project / dep)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site"),
           "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    dvc(project, "init", "--no-scm", env=env)
    dvc(project, "add", "lineage/ratings.npz", env=env)  # as after a `dvc pull` of the lineage
    dvc(project, "repro", "train", env=env)
    model = load_model(project / "lineage" / "retrained")
    assert model.manifest["snapshot_id"] == summary["snapshot_id"]
    assert (project / "lineage" / "metrics.json").exists()
