"""The object store: one interface, two backends (a local directory, and S3/MinIO).

Two kinds of writes, on purpose:
- `put_once(key, data)`: write-once objects (data batches, model files). A second write of the
  same bytes is a no-op (so a retried or re-run job cannot duplicate anything); a second write
  of different bytes is refused with `ObjectExistsError`.
- `replace(key, data)`: pointers (aliases, release state) change by atomic replace: a reader
  sees the old object or the new one, never a mix.

Keys are `/`-separated relative paths such as `data/ratings/movielog1/p0/00000000000000000000-...`.
Every failure to reach the backend raises `StoreUnavailableError` naming the backend, so callers
can retry and report it in one line.

`open_store()` picks the backend from the environment:
- `STORE_URL=s3://bucket[/prefix]` with `S3_ENDPOINT_URL` (MinIO), credentials from the secret
  files `s3-access-key`/`s3-secret-key` (or AWS_* env);
- `STORE_URL=file:///path` or a plain path: the local directory backend (the default on one machine).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol


class StoreError(Exception):
    pass


class ObjectNotFoundError(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "object not found"


class ObjectExistsError(StoreError):
    pass


class StoreUnavailableError(StoreError):
    pass


class ObjectStore(Protocol):
    """What every backend offers. `describe()` names it in error messages and logs."""

    def describe(self) -> str: ...

    def put_once(self, key: str, data: bytes) -> bool:
        """Write-once. True if written now, False if the same bytes were already there."""
        ...

    def replace(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]:
        """All keys under `prefix`, sorted."""
        ...


def validate_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key {key!r}")
    return key


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalDirectoryStore:
    """Objects as files under a root directory; durable (fsync) and atomic (rename)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def describe(self) -> str:
        return f"local store {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _write_atomic(self, path: Path, data: bytes) -> Path:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise StoreUnavailableError(f"{self.describe()}: cannot write {path.name}: {e}") from e
        return Path(tmp)

    def _fsync_dir(self, directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def put_once(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        if path.exists():
            return self._same_or_raise(key, path, data)
        tmp = self._write_atomic(path, data)
        try:
            # link() fails if the name exists: two racing writers cannot both win.
            os.link(tmp, path)
        except FileExistsError:
            return self._same_or_raise(key, path, data)
        finally:
            tmp.unlink(missing_ok=True)
        self._fsync_dir(path.parent)
        return True

    def _same_or_raise(self, key: str, path: Path, data: bytes) -> bool:
        if path.read_bytes() == data:
            return False
        raise ObjectExistsError(f"{self.describe()}: {key} exists with different content (write-once)")

    def replace(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._write_atomic(path, data)
        os.replace(tmp, path)
        self._fsync_dir(path.parent)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{self.describe()}: no object {key}") from None
        except OSError as e:
            raise StoreUnavailableError(f"{self.describe()}: cannot read {key}: {e}") from e

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.exists():
            return []
        keys = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)


def read_secret(name: str, env: dict[str, str] | None = None) -> str | None:
    """A secret's value from its file (OpenFaaS mounts them at /var/openfaas/secrets/<name>;
    the local runtime points SECRETS_DIR at its own folder), or None when absent."""
    env = os.environ if env is None else env
    for directory in (env.get("SECRETS_DIR"), "/var/openfaas/secrets"):
        if directory:
            path = Path(directory) / name
            if path.is_file():
                return path.read_text().strip()
    return None


def open_store(env: dict[str, str] | None = None) -> ObjectStore:
    env = os.environ if env is None else env
    url = env.get("STORE_URL", "").strip()
    if url.startswith("s3://"):
        from movierec.s3store import S3Store  # boto3 is only needed for this backend

        return S3Store.from_url(url, env)
    url = url.removeprefix("file://")
    return LocalDirectoryStore(url or env.get("STORE_DIR", "var/store"))
