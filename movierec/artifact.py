"""The model artifact: `model.npz` plus `manifest.json`, written and read safely.

Owns the artifact format: `model.npz` holds plain numeric and unicode arrays only (no object
dtype is ever read, so nothing in it can run code) and `manifest.json` its format, sha256, size,
counts, params (the SVD's), ranking (the ranking model's parameters, when it has one) and
metrics. Format version 1 is a model the SVD ranks; version 2 adds the ranking model's arrays
(`user_ranked`, `rank_user_factors`, `rank_item_factors`, `rank_item_bias`); both load. Loading
verifies the sha256 and every array's name, dtype and shape and raises `ModelIntegrityError`
when anything is off. Files are written atomically with
`movierec.store.write_atomic`, readable by the function's user inside a container (0644: a model
is not a secret).

Memory: `model.npz` is an uncompressed zip of `.npy` members (what `np.load` reads), written
straight to the file member by member (the sha256 hashed while it is written, never the whole
artifact in memory) with every member's array data at a 64-byte-aligned offset of the file (a
padding extra field in its zip header). `load_model` hashes the file in chunks, then maps it
(`mmap`, read-only) and hands the model arrays that are views of the mapping: nothing is copied,
pages are read on first touch and stay page cache (clean, shared, reclaimable under a memory
limit). The hash and the mapping come from one open file, so a file swapped at the path in between
is never what is served; the registry's cache keeps its files read-only (0444). A member that
cannot be mapped (compressed, or unaligned as in artifacts written by `np.savez` before this
layout) is read into memory, that member alone: older artifacts load as before, at one copy.

Must not touch: the object store (callers move the two files: `movierec.registry`), scoring
(`movierec.model`), training.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import mmap
import os
import struct
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

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
ALIGN = 64  # array data offset in model.npz: numpy's own .npy alignment, kept in the zip
_PAD_EXTRA_ID = 0xD935  # zip extra field id for alignment padding (as zipalign uses); readers skip it
_ZIP64_EXTRA = 20  # bytes zipfile adds to a local header written with force_zip64
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header: 30 bytes
_MAX_NPY_HEADER = 10_000  # numpy's own limit on a .npy header's length


def _format_version(model: RecommenderModel) -> int:
    return 2 if model.has_ranker else 1


def _model_arrays(model: RecommenderModel) -> dict[str, np.ndarray]:
    arrays = {name: getattr(model, name) for name in _ARRAYS_BY_VERSION[_format_version(model)]}
    arrays["global_mean"] = np.array(model.global_mean, dtype=np.float64)
    return arrays


class _HashingWriter:
    """What zipfile writes to: the file, hashed on the way. No seek, so zipfile writes each
    member once (sizes in a data descriptor after it) instead of going back to patch headers."""

    def __init__(self, f: BinaryIO):
        self._f, self._digest, self._pos = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        n = self._f.write(b)
        self._digest.update(b)
        self._pos += len(memoryview(b).cast("B"))
        return n

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        self._f.flush()


def _write_npz(f: BinaryIO, arrays: dict[str, np.ndarray]) -> tuple[str, int]:
    """Write `arrays` as an uncompressed npz with aligned array data; (sha256, size) of the bytes."""
    out = _HashingWriter(f)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy")  # a fixed date: the same model gives the same bytes
            info.external_attr = 0o644 << 16
            data_at = out.tell() + _LOCAL_HEADER.size + len(info.filename.encode("ascii")) + _ZIP64_EXTRA
            pad = -data_at % ALIGN
            if 0 < pad < 4:  # an extra field is at least its 4-byte id and length
                pad += ALIGN
            if pad:
                info.extra = struct.pack("<HH", _PAD_EXTRA_ID, pad - 4) + bytes(pad - 4)
            with zf.open(info, "w", force_zip64=True) as member:
                # numpy pads the .npy header to a multiple of 64, so the data lands aligned too.
                np.lib.format.write_array(member, np.asarray(array, order="C"), allow_pickle=False)
    return out._digest.hexdigest(), out.tell()


def _manifest(model: RecommenderModel, sha256: str, size: int, extra: dict) -> dict:
    return {
        "format": FORMAT,
        "format_version": _format_version(model),
        "sha256": sha256,
        "size_bytes": size,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "counts": model.counts(),
        "params": model.params,
        **({"ranking": model.ranking_params} if model.has_ranker else {}),
        **extra,
    }


def _checked_extra(extra_manifest: dict | None) -> dict:
    extra = dict(extra_manifest or {})
    clash = _RESERVED_MANIFEST_KEYS & extra.keys()
    if clash:
        raise ValueError(f"extra_manifest may not set {sorted(clash)}: they describe the artifact itself")
    json.dumps(extra)  # fail here, not half-way through writing, if extra is not JSON
    return extra


def serialize_model(model: RecommenderModel, extra_manifest: dict | None = None) -> tuple[bytes, dict]:
    """(model.npz bytes, manifest dict): what save_model writes, in memory (small models, tests)."""
    extra = _checked_extra(extra_manifest)
    buf = io.BytesIO()
    sha256, size = _write_npz(buf, _model_arrays(model))
    return buf.getvalue(), _manifest(model, sha256, size, extra)


def save_model(model: RecommenderModel, directory: str | os.PathLike, extra_manifest: dict | None = None) -> dict:
    """Write `model.npz` (streamed, hashed while written) then `manifest.json` into directory
    (created if needed); return the manifest, whose sha256 is that of the file written."""
    extra = _checked_extra(extra_manifest)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, int]] = []
    write_atomic(directory / MODEL_FILE, lambda f: written.append(_write_npz(f, _model_arrays(model))),
                 mode=ARTIFACT_MODE)
    manifest = _manifest(model, *written[0], extra)
    write_atomic(directory / MANIFEST_FILE, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
                 mode=ARTIFACT_MODE)
    return manifest


def load_model(directory: str | os.PathLike) -> RecommenderModel:
    """Load and verify a saved model (sha256, array names, dtypes, shapes), memory-mapped: the
    arrays are read-only views of model.npz's pages (see the module docstring). Never unpickles."""
    directory = Path(directory)
    try:
        manifest_text = (directory / MANIFEST_FILE).read_text(encoding="utf-8")
        f = open(directory / MODEL_FILE, "rb")  # noqa: SIM115 (closed below, once mapped)
    except FileNotFoundError as e:
        raise ModelIntegrityError(f"model artifact incomplete in {directory}: missing {Path(e.filename).name}") from None
    except OSError as e:
        raise ModelIntegrityError(f"cannot read model artifact in {directory}: {e.strerror}") from None
    with f:
        try:
            manifest = json.loads(manifest_text)
        except json.JSONDecodeError as e:
            raise ModelIntegrityError(f"{directory / MANIFEST_FILE} is not valid JSON: {e.msg}") from None
        source = str(directory)
        expected_arrays = _expected_arrays(manifest, source)
        try:
            actual = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as e:
            raise ModelIntegrityError(f"cannot read {directory / MODEL_FILE}: {e.strerror}") from None
        _check_sha256(manifest, actual, source)
        try:  # the bytes just hashed, from the same open file
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError) as e:  # an empty file cannot be mapped
            raise ModelIntegrityError(f"{source}: {MODEL_FILE} is not a loadable array file: {e}") from None
        f.seek(0)
        arrays = _read_arrays(mapped, f, expected_arrays, source)
    return _model(arrays, manifest, actual)


def load_model_bytes(npz_bytes: bytes, manifest: dict, source: str = "model artifact") -> RecommenderModel:
    """Load a model from model.npz bytes and its manifest, verifying both (the arrays are views
    of `npz_bytes`)."""
    expected_arrays = _expected_arrays(manifest, source)
    actual = hashlib.sha256(npz_bytes).hexdigest()
    _check_sha256(manifest, actual, source)
    return _model(_read_arrays(npz_bytes, io.BytesIO(npz_bytes), expected_arrays, source), manifest, actual)


def _expected_arrays(manifest: object, source: str) -> dict[str, tuple[str, int]]:
    if not isinstance(manifest, dict):
        raise ModelIntegrityError(f"{source}: manifest is not a JSON object")
    version = manifest.get("format_version")
    if manifest.get("format") != FORMAT or version not in _ARRAYS_BY_VERSION or isinstance(version, bool):
        raise ModelIntegrityError(
            f"{source}: unsupported format {manifest.get('format')!r} v{manifest.get('format_version')!r}, "
            f"expected {FORMAT!r} v1..v{FORMAT_VERSION}"
        )
    return _ARRAYS_BY_VERSION[version]


def _check_sha256(manifest: dict, actual: str, source: str) -> None:
    expected = manifest.get("sha256")
    if actual != expected:
        raise ModelIntegrityError(
            f"{source}: sha256 mismatch for {MODEL_FILE}: manifest says {str(expected)[:16]}..., "
            f"file is {actual[:16]}..."
        )


def _read_arrays(buffer, fileobj: BinaryIO, expected_arrays: dict[str, tuple[str, int]], source: str
                 ) -> dict[str, np.ndarray]:
    """The arrays of the npz held in `buffer` (an mmap or bytes; `fileobj` reads the same bytes,
    for zipfile), as views of it where a member is stored uncompressed at an aligned offset, else
    read from the member (that one copied)."""
    try:
        with zipfile.ZipFile(fileobj) as zf:
            infos = zf.infolist()
            names = [i.filename.removesuffix(".npy") for i in infos]
            if sorted(names) != sorted(expected_arrays):  # also refuses a name stored twice
                missing = sorted(set(expected_arrays) - set(names))
                unexpected = sorted(set(names) - set(expected_arrays))
                raise ModelIntegrityError(f"{source}: arrays missing {missing}, unexpected {unexpected}"
                                          + ("" if missing or unexpected else " (an array stored twice)"))
            arrays = {name: _member_array(zf, info, buffer, source) for name, info in zip(names, infos)}
    except ModelIntegrityError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, struct.error) as e:
        raise ModelIntegrityError(f"{source}: {MODEL_FILE} is not a loadable array file: {e}") from None
    for name, (kind, ndim) in expected_arrays.items():
        a = arrays[name]
        if a.dtype.kind != kind or a.ndim != ndim:
            raise ModelIntegrityError(f"{source}: array {name!r} has dtype {a.dtype} ndim {a.ndim}, expected {kind}/{ndim}")
    return arrays


def _member_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, buffer, source: str) -> np.ndarray:
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        with zf.open(info) as member:  # not mappable: read this member (allow_pickle=False)
            return np.lib.format.read_array(member, allow_pickle=False)
    if not 0 <= info.header_offset <= len(buffer) - _LOCAL_HEADER.size:
        raise ModelIntegrityError(f"{source}: {info.filename}: its zip header lies outside {MODEL_FILE}")
    magic, _, _, _, _, _, _, _, _, name_len, extra_len = _LOCAL_HEADER.unpack_from(buffer, info.header_offset)
    if magic != b"PK\x03\x04":
        raise ModelIntegrityError(f"{source}: {info.filename}: bad zip local header")
    start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    end = start + info.file_size
    if end > len(buffer):
        raise ModelIntegrityError(f"{source}: {info.filename} runs past the end of {MODEL_FILE}")
    head = io.BytesIO(bytes(memoryview(buffer)[start: min(end, start + _MAX_NPY_HEADER + 16)]))
    version = np.lib.format.read_magic(head)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(head)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(head)
    else:
        raise ModelIntegrityError(f"{source}: {info.filename}: unsupported .npy version {version}")
    if dtype.hasobject:
        raise ModelIntegrityError(f"{source}: {info.filename}: object arrays are never loaded")
    offset = start + head.tell()
    count = math.prod(shape)
    if offset + count * dtype.itemsize != end:
        raise ModelIntegrityError(f"{source}: {info.filename}: its size does not match its shape {shape}")
    array = np.ndarray(shape, dtype, buffer=buffer, offset=offset, order="F" if fortran_order else "C")
    if not array.flags.aligned:  # an artifact from before the aligned layout: this member is copied
        array = array.copy()
    return array


def _model(arrays: dict[str, np.ndarray], manifest: dict, sha256: str) -> RecommenderModel:
    arrays["global_mean"] = float(arrays["global_mean"])
    return RecommenderModel(
        **arrays, params=manifest.get("params"), ranking_params=manifest.get("ranking"), manifest=manifest,
        sha256=sha256,
    )
