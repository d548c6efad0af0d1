"""Serving memory: model.npz is loaded memory-mapped, never copied; it is written once, streamed and
hashed on the way; artifacts written before this layout (np.savez) still load and serve the same."""
from __future__ import annotations

import hashlib
import io
import json
import mmap
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from movierec.artifact import ALIGN, MANIFEST_FILE, MODEL_FILE, load_model, load_model_bytes, save_model
from movierec.model import RecommenderModel
from movierec.store import sha256_file

ROOT = Path(__file__).resolve().parent.parent
BIG = ("user_factors", "rank_user_factors", "item_factors", "rank_item_factors", "seen_indices", "seen_indptr",
       "user_ids", "movie_ids", "user_bias", "user_ranked")


def random_model(n_users: int = 300, n_movies: int = 120, factors: int = 6, rank_factors: int = 4,
                 seen_per_user: int = 10, seed: int = 0) -> RecommenderModel:
    """A model with a trained model's shapes (SVD and ranking factors, seen lists), random values."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return RecommenderModel(
        global_mean=3.5, user_ids=np.sort(rng.choice(10**7, n_users, replace=False)),
        user_has_factors=np.ones(n_users, bool), user_bias=rng.normal(0, 0.3, n_users).astype(f32),
        user_factors=rng.standard_normal((n_users, factors), dtype=f32),
        movie_ids=np.array(sorted(f"movie+{i:05d}" for i in range(n_movies))),
        item_bias=rng.normal(0, 0.3, n_movies).astype(f32),
        item_factors=rng.standard_normal((n_movies, factors), dtype=f32),
        seen_indptr=np.arange(0, (n_users + 1) * seen_per_user, seen_per_user, dtype=np.int64),
        seen_indices=rng.integers(0, n_movies, n_users * seen_per_user, dtype=np.int32),
        cold_start=np.arange(min(50, n_movies), dtype=np.int32), user_ranked=np.ones(n_users, bool),
        rank_user_factors=rng.standard_normal((n_users, rank_factors), dtype=f32),
        rank_item_factors=rng.standard_normal((n_movies, rank_factors), dtype=f32),
        rank_item_bias=np.zeros(n_movies, f32), params={"n_factors": factors}, ranking_params={"factors": 3},
    )


def backed_by_mmap(array: np.ndarray) -> bool:
    """True when the array's memory is a view of an mmap (its base chain ends in one)."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, mmap.mmap)


def same_answers(a: RecommenderModel, b: RecommenderModel) -> bool:
    users = a.user_ids[::37].tolist() + [10**12]
    return all(a.recommend(u) == b.recommend(u) for u in users)


def test_a_loaded_model_s_arrays_are_read_only_views_of_the_mapped_file(tmp_path):
    model = random_model()
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    for name in BIG:
        array = getattr(loaded, name)
        assert backed_by_mmap(array), f"{name} was copied"
        assert not array.flags.writeable and array.flags.aligned, name
        assert np.array_equal(array, getattr(model, name)), name
    assert same_answers(loaded, model)


def test_every_array_s_data_starts_at_a_64_byte_aligned_offset_of_model_npz(tmp_path):
    save_model(random_model(), tmp_path)
    data = (tmp_path / MODEL_FILE).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
    assert infos and all(i.compress_type == zipfile.ZIP_STORED for i in infos)
    for info in infos:
        name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
        member = info.header_offset + 30 + name_len + extra_len
        header_len = data[member:member + 128].index(b"\n") + 1  # the .npy header ends with a newline
        assert (member + header_len) % ALIGN == 0, info.filename


def test_model_npz_is_still_what_np_load_reads(tmp_path):
    model = random_model()
    save_model(model, tmp_path)
    with np.load(tmp_path / MODEL_FILE, allow_pickle=False) as npz:
        assert np.array_equal(npz["rank_user_factors"], model.rank_user_factors)
        assert npz["movie_ids"].tolist() == model.movie_ids.tolist()


def test_the_manifest_s_sha256_is_that_of_the_file_written_and_the_same_model_gives_the_same_bytes(tmp_path):
    model = random_model()
    first, second = save_model(model, tmp_path / "a"), save_model(model, tmp_path / "b")
    assert first["sha256"] == sha256_file(tmp_path / "a" / MODEL_FILE) == second["sha256"]
    assert first["size_bytes"] == (tmp_path / "a" / MODEL_FILE).stat().st_size


@pytest.mark.parametrize("writer", [np.savez, np.savez_compressed], ids=["np.savez", "np.savez_compressed"])
def test_an_artifact_written_before_the_aligned_layout_still_loads_and_serves_the_same(tmp_path, writer):
    """The registry may hold models written with np.savez (unaligned members): they load, a member
    that cannot be mapped being read into memory, and answer exactly as before."""
    model = random_model()
    manifest = save_model(model, tmp_path)
    buf = io.BytesIO()
    arrays = {name: getattr(model, name) for name in np.load(tmp_path / MODEL_FILE).files}
    arrays["global_mean"] = np.array(model.global_mean)
    writer(buf, **arrays)
    (tmp_path / MODEL_FILE).write_bytes(buf.getvalue())
    manifest["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    loaded = load_model(tmp_path)
    assert loaded.sha256 == manifest["sha256"] and same_answers(loaded, model)
    assert load_model_bytes(buf.getvalue(), manifest).counts() == model.counts()


def test_a_member_whose_size_does_not_match_its_shape_is_refused(tmp_path):
    from movierec.model import ModelIntegrityError

    manifest = save_model(random_model(), tmp_path)
    data = bytearray((tmp_path / MODEL_FILE).read_bytes())
    at = data.index(b"'shape': (300, 6)")
    data[at: at + 17] = b"'shape': (900, 6)"  # same length: only the header lies
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    with pytest.raises(ModelIntegrityError, match="size does not match its shape|not a loadable"):
        load_model_bytes(bytes(data), manifest)


PROBE = """
import json, sys
from movierec.artifact import load_model

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

before = kib("RssAnon")
model = load_model(sys.argv[1])
model.recommend(int(model.user_ids[0]))
print(json.dumps({"anon_growth_kib": kib("RssAnon") - before}))
"""


def test_loading_a_model_adds_far_less_anonymous_memory_than_the_artifact_s_size(tmp_path):
    """In a fresh process, loading a ~70 MB artifact (and one request) grows the process's
    anonymous memory (what a memory limit cannot reclaim) by well under a quarter of the file:
    the arrays are the file's pages, not a copy of them."""
    manifest = save_model(random_model(n_users=100_000, n_movies=2_000, factors=100, rank_factors=65,
                                       seen_per_user=20), tmp_path)
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, check=True, env={"OPENBLAS_NUM_THREADS": "1", "PATH": ""})
    growth = json.loads(out.stdout.strip().splitlines()[-1])["anon_growth_kib"] * 1024
    assert manifest["size_bytes"] > 60 * 2**20
    assert growth < manifest["size_bytes"] / 4, f"anonymous memory grew {growth / 2**20:.1f} MiB"
