"""The object store contract, run against both backends: the local directory and S3 (moto's
real S3 server over HTTP on 127.0.0.1)."""
from __future__ import annotations

import uuid

import boto3
import pytest

from movierec.adapters.s3store import S3Store
from movierec.adapters.stores import open_store
from movierec.errors import Conflict, NotFound, Rejected, Unavailable, http_status
from movierec.store import (
    ChecksumMismatchError,
    LocalDirectoryStore,
    ObjectExistsError,
    ObjectNotFoundError,
    StoreError,
    StoreRejectedError,
    StoreUnavailableError,
    sha256_file,
    sha256_hex,
    write_atomic,
)
from scripts._proc import free_port

ACCESS_KEY, SECRET_KEY = "test-access", "test-secret"


def make_bucket(endpoint: str) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY,
                 aws_secret_access_key=SECRET_KEY, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3", "s3-prefixed"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalDirectoryStore(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    prefix = "movierec/prod" if request.param == "s3-prefixed" else ""
    return S3Store(make_bucket(endpoint), prefix, endpoint_url=endpoint,
                   access_key=ACCESS_KEY, secret_key=SECRET_KEY)


def test_put_once_writes_a_new_object_and_get_returns_its_bytes(store):
    assert store.put_once("data/ratings/t/p0/a.npz", b"\x00\x01bytes") is True
    assert store.get("data/ratings/t/p0/a.npz") == b"\x00\x01bytes"
    assert store.exists("data/ratings/t/p0/a.npz")


def test_put_once_of_the_same_bytes_again_is_a_no_op(store):
    store.put_once("models/v1/model.npz", b"same")
    assert store.put_once("models/v1/model.npz", b"same") is False
    assert store.get("models/v1/model.npz") == b"same"


def test_put_once_of_different_bytes_is_refused_and_keeps_the_original(store):
    store.put_once("models/v1/model.npz", b"first")
    with pytest.raises(ObjectExistsError, match="write-once"):
        store.put_once("models/v1/model.npz", b"second")
    assert store.get("models/v1/model.npz") == b"first"


def test_put_once_file_streams_a_file_and_get_file_streams_it_back_with_its_sha256(store, tmp_path):
    source = tmp_path / "model.npz"
    source.write_bytes(bytes(range(256)) * 20_000)  # 5 MB: several chunks
    sha = sha256_file(source)
    assert store.put_once_file("models/v1/model.npz", source, sha) is True
    assert store.get_file("models/v1/model.npz", tmp_path / "copy") == sha
    assert (tmp_path / "copy").read_bytes() == source.read_bytes()
    assert store.get("models/v1/model.npz") == source.read_bytes()


def test_put_once_file_of_the_same_bytes_again_is_a_no_op_and_of_other_bytes_refused(store, tmp_path):
    first, other = tmp_path / "first", tmp_path / "other"
    first.write_bytes(b"first bytes")
    other.write_bytes(b"other bytes")
    store.put_once_file("models/v1/model.npz", first, sha256_file(first))
    assert store.put_once_file("models/v1/model.npz", first, sha256_file(first)) is False
    with pytest.raises(ObjectExistsError, match="write-once"):
        store.put_once_file("models/v1/model.npz", other, sha256_file(other))
    assert store.get("models/v1/model.npz") == b"first bytes"


def test_put_once_file_refuses_a_file_that_does_not_hash_to_the_sha256_it_is_stored_as(store, tmp_path):
    """Hashed while it is written: bytes that changed after they were hashed are never taken as the
    recorded ones (the local store keeps nothing; S3 and MinIO refuse the PUT by its checksum
    header; moto, which does not check it, is caught by the hash of what was sent)."""
    source = tmp_path / "model.npz"
    source.write_bytes(b"bytes on disk")
    with pytest.raises(ChecksumMismatchError, match="models/v1/model.npz"):
        store.put_once_file("models/v1/model.npz", source, sha256_hex(b"bytes that were hashed"))
    if isinstance(store, LocalDirectoryStore):
        assert not store.exists("models/v1/model.npz") and store.list() == []


def test_get_file_of_a_missing_key_raises_object_not_found(store, tmp_path):
    with pytest.raises(ObjectNotFoundError, match="models/none"):
        store.get_file("models/none", tmp_path / "out")


def test_replace_overwrites_a_pointer(store):
    store.replace("models/aliases/stable", b"v1")
    store.replace("models/aliases/stable", b"v2")
    assert store.get("models/aliases/stable") == b"v2"


def test_get_of_a_missing_key_raises_object_not_found_naming_the_key(store):
    with pytest.raises(ObjectNotFoundError, match="releases/none"):
        store.get("releases/none")
    assert not store.exists("releases/none")


def test_list_returns_all_keys_under_a_prefix_sorted(store):
    for key in ["data/b/2", "data/a/1", "models/x", "data/a/0"]:
        store.put_once(key, b"x")
    assert store.list("data/") == ["data/a/0", "data/a/1", "data/b/2"]
    assert store.list("data/a/") == ["data/a/0", "data/a/1"]
    assert store.list("nothing/") == []
    assert store.list() == ["data/a/0", "data/a/1", "data/b/2", "models/x"]


def test_s3_list_pages_through_more_than_a_thousand_keys(s3_endpoint):
    store = S3Store(make_bucket(s3_endpoint), "pre", endpoint_url=s3_endpoint,
                    access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    keys = [f"data/many/{i:05d}" for i in range(1100)]
    for key in keys:
        store.put_once(key, b"")
    assert store.list("data/many/") == keys


@pytest.mark.parametrize("bad", ["", "/abs", "a//b", "a/../b", "./a"])
def test_invalid_keys_are_refused(store, bad):
    with pytest.raises(ValueError, match="invalid object key") as raised:
        store.put_once(bad, b"x")
    assert isinstance(raised.value, StoreRejectedError) and http_status(raised.value) == 400


def test_store_errors_are_in_the_taxonomy_and_keep_their_builtin_bases():
    for error, kind, status in ((ObjectNotFoundError("k"), NotFound, 404), (ObjectExistsError("k"), Conflict, 409),
                                (StoreUnavailableError("k"), Unavailable, 503), (StoreRejectedError("k"), Rejected, 400)):
        assert isinstance(error, StoreError) and isinstance(error, kind) and http_status(error) == status
    assert isinstance(ObjectNotFoundError("k"), KeyError) and str(ObjectNotFoundError("no object k")) == "no object k"


def test_local_open_store_uses_the_url_or_else_store_dir(tmp_path):
    assert open_store({"STORE_URL": f"file://{tmp_path}/a"}).root == tmp_path / "a"
    assert open_store({"STORE_URL": " ", "STORE_DIR": str(tmp_path / "b")}).root == tmp_path / "b"


def test_write_atomic_replaces_whole_files_with_the_mode_asked_and_exclusive_never_overwrites(tmp_path):
    target = tmp_path / "deep" / "file.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two", mode=0o644)
    assert target.read_bytes() == b"two" and target.stat().st_mode & 0o777 == 0o644
    with pytest.raises(FileExistsError):
        write_atomic(target, b"three", exclusive=True)
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.json"]  # no temp file left behind


def test_s3_put_once_falls_back_to_head_then_put_without_conditional_writes(s3_endpoint):
    store = S3Store(make_bucket(s3_endpoint), endpoint_url=s3_endpoint,
                    access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    store._conditional_put = False  # as after a server answered 501 to If-None-Match
    assert store.put_once("k", b"one") is True
    assert store.put_once("k", b"one") is False
    with pytest.raises(ObjectExistsError):
        store.put_once("k", b"two")


def test_open_store_routes_s3_urls_with_credentials_from_secret_files(s3_endpoint, tmp_path):
    bucket = make_bucket(s3_endpoint)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "s3-access-key").write_text(ACCESS_KEY + "\n")
    (secrets / "s3-secret-key").write_text(SECRET_KEY + "\n")
    env = {"STORE_URL": f"s3://{bucket}/pre", "S3_ENDPOINT_URL": s3_endpoint, "SECRETS_DIR": str(secrets)}
    store = open_store(env)
    assert isinstance(store, S3Store)
    assert store.bucket == bucket and store.prefix == "pre"
    store.put_once("data/x", b"1")
    assert store.list("data/") == ["data/x"]
    assert s3_endpoint in store.describe()


def test_s3_store_that_is_down_raises_store_unavailable_naming_the_endpoint():
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    store = S3Store("bucket", endpoint_url=endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                    attempts=3, backoff_s=0.01, timeout_s=1)
    for action in (lambda: store.put_once("k", b"x"), lambda: store.list()):
        with pytest.raises(StoreUnavailableError, match=f"{endpoint}.*after 3 attempts"):
            action()


def test_s3_store_with_a_missing_bucket_names_the_bucket(s3_endpoint):
    store = S3Store("no-such-bucket", endpoint_url=s3_endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    with pytest.raises(StoreUnavailableError, match="no-such-bucket"):
        store.put_once("k", b"x")


def test_s3_store_from_url_rejects_a_url_without_bucket():
    with pytest.raises(ValueError, match="s3://bucket") as raised:
        S3Store.from_url("s3://", {})
    assert isinstance(raised.value, StoreRejectedError)


def test_s3_settings_come_from_the_settings_table(tmp_path):
    store = S3Store.from_url("s3://b/p", {"S3_ENDPOINT_URL": "http://127.0.0.1:9", "S3_ATTEMPTS": "2",
                                          "AWS_DEFAULT_REGION": "eu-west-1", "SECRETS_DIR": str(tmp_path)})
    assert (store.endpoint_url, store.attempts, store._client.meta.region_name) == ("http://127.0.0.1:9", 2, "eu-west-1")
    assert S3Store.from_url("s3://b", {"S3_REGION": "us-west-2", "AWS_DEFAULT_REGION": "eu-west-1"}) \
        ._client.meta.region_name == "us-west-2"


# -- temp files: never left behind by a failed write, swept when a killed writer left them --------
@pytest.mark.parametrize("failing", ["os.fsync", "os.replace", "os.link", "os.fchmod"])
def test_a_write_that_fails_leaves_no_temp_file(tmp_path, failing, monkeypatch):
    import errno
    import os
    from unittest import mock

    store = LocalDirectoryStore(tmp_path / "store")
    store.put_once("data/a/first", b"1")  # the folder exists and was swept
    with mock.patch(failing, side_effect=OSError(errno.ENOSPC, "No space left on device")), \
            pytest.raises(StoreUnavailableError, match="No space left"):
        if failing == "os.link":
            store.put_once("data/a/x", b"abc")
        else:
            store.replace("data/a/x", b"abc")
    assert sorted(os.listdir(tmp_path / "store" / "data" / "a")) == ["first"]


def test_temp_files_of_a_killed_writer_are_swept_and_a_live_ones_kept(tmp_path):
    import os
    import time

    folder = tmp_path / "store" / "data" / "a"
    folder.mkdir(parents=True)
    stale, fresh = folder / ".tmp-dead", folder / ".tmp-alive"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"in progress")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    store = LocalDirectoryStore(tmp_path / "store")
    assert store.list() == []  # temp files are never objects
    store.put_once("data/a/x", b"1")
    assert not stale.exists() and fresh.exists() and store.list() == ["data/a/x"]


@pytest.mark.parametrize("key", ["a\x00b", "a\nb", "a\\..\\b", "x" * 1025, "../a", "a/../../b"])
def test_keys_the_backends_would_read_differently_are_refused_with_the_stores_own_error(tmp_path, key):
    store = LocalDirectoryStore(tmp_path / "store")
    for call in (lambda: store.get(key), lambda: store.put_once(key, b"x"), lambda: store.exists(key)):
        with pytest.raises(StoreRejectedError) as raised:
            call()
        assert http_status(raised.value) == 400
