"""The model artifact: `model.npz` plus `manifest.json`, written and read safely.

Owns the artifact format: `model.npz` holds plain numeric and unicode arrays only (loaded with
allow_pickle=False, so nothing in it can run code) and `manifest.json` its format, sha256, size,
counts, params (the SVD's), ranking (the ranking model's parameters, when it has one) and
metrics. Format version 1 is a model the SVD ranks; version 2 adds the ranking model's arrays
(`user_ranked`, `rank_user_factors`, `rank_item_factors`, `rank_item_bias`); both load. Loading
verifies the sha256 and every array's name, dtype and shape and raises `ModelIntegrityError`
when anything is off. Files are written atomically with
`movierec.store.write_atomic`, readable by the function's user inside a container (0644: a model
is not a secret).

Must not touch: the object store (callers move the two files: `movierec.registry`), scoring
(`movierec.model`), training.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from movierec.model import ModelIntegrityError, RecommenderModel
from movierec.store import write_atomic

FORMAT = "movierec-svd"
FORMAT_VERSION = 2  # written for a model with a ranking model; an SVD-only model is written as v1
MODEL_FILE = "model.npz"
MANIFEST_FILE = "manifest.json"
ARTIFACT_MODE = 0o644  # read by the function's own user in a container
# What model.npz holds, per format version: name -> (dtype kind, ndim). Nothing else is accepted.
_SVD_ARRAYS = {
    "global_mean": ("f", 0),
    "user_ids": ("i", 1),
    "user_has_factors": ("b", 1),
    "user_bias": ("f", 1),
    "user_factors": ("f", 2),
    "movie_ids": ("U", 1),
    "item_bias": ("f", 1),
    "item_factors": ("f", 2),
    "seen_indptr": ("i", 1),
    "seen_indices": ("i", 1),
    "cold_start": ("i", 1),
}
_ARRAYS_BY_VERSION = {
    1: _SVD_ARRAYS,
    2: {**_SVD_ARRAYS, "user_ranked": ("b", 1), "rank_user_factors": ("f", 2), "rank_item_factors": ("f", 2),
        "rank_item_bias": ("f", 1)},
}
_RESERVED_MANIFEST_KEYS = {"format", "format_version", "sha256", "size_bytes", "counts", "created_at", "ranking"}


# -- the artifact -----------------------------------------------------------------------------
def _format_version(model: RecommenderModel) -> int:
    return 2 if model.has_ranker else 1


def _model_arrays(model: RecommenderModel) -> dict[str, np.ndarray]:
    arrays = {name: getattr(model, name) for name in _ARRAYS_BY_VERSION[_format_version(model)]}
    arrays["global_mean"] = np.array(model.global_mean, dtype=np.float64)
    return arrays


def serialize_model(model: RecommenderModel, extra_manifest: dict | None = None) -> tuple[bytes, dict]:
    """(model.npz bytes, manifest dict): what save_model writes, for callers that store bytes."""
    extra = dict(extra_manifest or {})
    clash = _RESERVED_MANIFEST_KEYS & extra.keys()
    if clash:
        raise ValueError(f"extra_manifest may not set {sorted(clash)}: they describe the artifact itself")
    buf = io.BytesIO()
    np.savez(buf, **_model_arrays(model))
    data = buf.getvalue()
    manifest = {
        "format": FORMAT,
        "format_version": _format_version(model),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "counts": model.counts(),
        "params": model.params,
        **({"ranking": model.ranking_params} if model.has_ranker else {}),
        **extra,
    }
    json.dumps(manifest)  # fail here, not half-way through writing, if extra is not JSON
    return data, manifest


def save_model(model: RecommenderModel, directory: str | os.PathLike, extra_manifest: dict | None = None) -> dict:
    """Write `model.npz` then `manifest.json` into directory (created if needed); return the manifest."""
    data, manifest = serialize_model(model, extra_manifest)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / MODEL_FILE, data, mode=ARTIFACT_MODE)
    write_atomic(directory / MANIFEST_FILE, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
                 mode=ARTIFACT_MODE)
    return manifest


def load_model(directory: str | os.PathLike) -> RecommenderModel:
    """Load and verify a saved model (sha256, array names, dtypes, shapes). Never unpickles."""
    directory = Path(directory)
    try:
        manifest_text = (directory / MANIFEST_FILE).read_text(encoding="utf-8")
        data = (directory / MODEL_FILE).read_bytes()
    except FileNotFoundError as e:
        raise ModelIntegrityError(f"model artifact incomplete in {directory}: missing {Path(e.filename).name}") from None
    except OSError as e:
        raise ModelIntegrityError(f"cannot read model artifact in {directory}: {e.strerror}") from None
    try:
        manifest = json.loads(manifest_text)
    except json.JSONDecodeError as e:
        raise ModelIntegrityError(f"{directory / MANIFEST_FILE} is not valid JSON: {e.msg}") from None
    return load_model_bytes(data, manifest, source=str(directory))


def load_model_bytes(npz_bytes: bytes, manifest: dict, source: str = "model artifact") -> RecommenderModel:
    """Load a model from model.npz bytes and its manifest, verifying both."""
    if not isinstance(manifest, dict):
        raise ModelIntegrityError(f"{source}: manifest is not a JSON object")
    version = manifest.get("format_version")
    if manifest.get("format") != FORMAT or version not in _ARRAYS_BY_VERSION or isinstance(version, bool):
        raise ModelIntegrityError(
            f"{source}: unsupported format {manifest.get('format')!r} v{manifest.get('format_version')!r}, "
            f"expected {FORMAT!r} v1..v{FORMAT_VERSION}"
        )
    expected_arrays = _ARRAYS_BY_VERSION[version]
    expected = manifest.get("sha256")
    actual = hashlib.sha256(npz_bytes).hexdigest()
    if actual != expected:
        raise ModelIntegrityError(
            f"{source}: sha256 mismatch for {MODEL_FILE}: manifest says {str(expected)[:16]}..., "
            f"file is {actual[:16]}..."
        )
    try:
        with np.load(io.BytesIO(npz_bytes), allow_pickle=False) as npz:
            names = set(npz.files)
            if names != set(expected_arrays):
                missing, unexpected = sorted(set(expected_arrays) - names), sorted(names - set(expected_arrays))
                raise ModelIntegrityError(f"{source}: arrays missing {missing}, unexpected {unexpected}")
            arrays = {name: npz[name] for name in expected_arrays}
    except ModelIntegrityError:
        raise
    except (ValueError, OSError, EOFError) as e:  # includes "Object arrays cannot be loaded..."
        raise ModelIntegrityError(f"{source}: {MODEL_FILE} is not a loadable array file: {e}") from None
    for name, (kind, ndim) in expected_arrays.items():
        a = arrays[name]
        if a.dtype.kind != kind or a.ndim != ndim:
            raise ModelIntegrityError(f"{source}: array {name!r} has dtype {a.dtype} ndim {a.ndim}, expected {kind}/{ndim}")
    arrays["global_mean"] = float(arrays["global_mean"])
    return RecommenderModel(
        **arrays, params=manifest.get("params"), ranking_params=manifest.get("ranking"), manifest=manifest,
        sha256=actual,
    )
