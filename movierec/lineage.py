"""A model's lineage and its offline reproduction: what `dvc repro` re-fits and DVC tracks.

Owns `write_lineage` (a registered version's data snapshot and artifact as files, each verified,
plus `lineage.json`), `export_snapshot` (a snapshot's ratings and watch pairs as the one `.npz`
file DVC tracks) and `train_offline` (fit and evaluate from that file into a model folder, with
the same checks, split and parameters as the job, without a store or a release).

The command line that drives them is `python -m scripts.train` (`--lineage`, `--export-snapshot`,
`--offline`; the `train` stage of dvc.yaml runs the last).

Must not touch: services (the store is passed in), the training job's gates and release.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from movierec.artifact import save_model
from movierec.registry import Registry
from movierec.snapshot import export_snapshot_data, load_snapshot_data, read_snapshot_file, take_snapshot_data
from movierec.store import ObjectStore
from movierec.trainjob import TrainConfig, TrainError, check_data, fit_and_evaluate


def train_offline(ratings_file: str, params: Mapping[str, Any], out_dir: str) -> dict[str, Any]:
    """Fit and evaluate from a ratings file into a model directory (no store, no release); the
    configuration is `params` (params.yaml's train: section) over the defaults, no environment."""
    snapshot_data, snap_id = read_snapshot_file(ratings_file)
    table = snapshot_data.ratings
    config = TrainConfig.from_env({}, params)
    deduped = table.dedupe()
    data = check_data(table, config, deduped)
    data["watch_pairs"] = len(snapshot_data.watches)
    model, _, metrics = fit_and_evaluate(deduped, config, watches=snapshot_data.watches)
    save_model(model, out_dir, {"snapshot_id": snap_id, "metrics": metrics, "data": data})
    return {"snapshot_id": snap_id, "metrics": metrics, "data": data, "params": asdict(config.svd),
            "ranking": model.ranking_params}


def export_snapshot(store: ObjectStore, snap_id: str, out: str) -> dict[str, Any]:
    """Write snapshot `snap_id`'s ratings and watch pairs (`latest`: a snapshot taken now) to the
    file `out`."""
    snapshot, data = take_snapshot_data(store) if snap_id == "latest" else load_snapshot_data(store, snap_id)
    return {"snapshot_id": snapshot.id, "sha256": export_snapshot_data(data, out, snapshot.id)}


def write_lineage(store: ObjectStore, version: str, out_dir: str) -> dict[str, Any]:
    """A registered model's lineage as files DVC can track: `<out>/ratings.npz` (its data
    snapshot's ratings and watch pairs, re-read and verified from the stored batches), `<out>/model/` (the artifact,
    verified) and `<out>/lineage.json` (version, snapshot id, sha256s, params, metrics)."""
    registry = Registry(store)
    entry = registry.get(version)
    if not entry.snapshot_id:
        raise TrainError(f"model {version} records no data snapshot: its lineage is unknown")
    out = Path(out_dir)
    snapshot, data = load_snapshot_data(store, entry.snapshot_id)
    ratings_sha = export_snapshot_data(data, out / "ratings.npz", snapshot.id)
    with tempfile.TemporaryDirectory(prefix="movierec-lineage-") as cache:
        fetched = registry.fetch(version, cache)
        (out / "model").mkdir(parents=True, exist_ok=True)
        for name in entry.metadata["files"]:
            shutil.copyfile(fetched / name, out / "model" / name)  # streamed, not held whole
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
