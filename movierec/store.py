"""The object store, as the domain sees it: one interface, its errors, and the local backend.

Two kinds of writes, on purpose:
- `put_once(key, data)`: write-once objects (data batches, model files). A second write of the
  same bytes is a no-op (so a retried or re-run job cannot duplicate anything); a second write
  of different bytes is refused with `ObjectExistsError`.
- `replace(key, data)`: pointers (aliases, release state) change by atomic replace: a reader
  sees the old object or the new one, never a mix.

Keys are `/`-separated relative paths such as `data/ratings/movielog1/p0/00000000000000000000-...`;
a key that could leave the store (`..`, an absolute path, empty parts) is refused with
`StoreRejectedError`. Every failure to reach the backend raises `StoreUnavailableError` naming the
backend, so callers can retry and report it in one line. The errors are in the product's taxonomy
(`movierec.errors`): not found (404, still a KeyError), exists (409), unavailable (503), rejected
(400, still a ValueError).

Owns: the `ObjectStore` protocol, the store errors, `validate_key`, `sha256_hex`,
`LocalDirectoryStore`, `read_secret` (secret files, as OpenFaaS mounts them) and `write_atomic`
(the one atomic file write of the core). Must not touch: services. The S3 backend and `open_store`
(which picks a backend from the environment) are adapters: `movierec.adapters.s3store`,
`movierec.adapters.stores`.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from movierec.errors import Conflict, MovierecError, NotFound, Rejected, Unavailable
from movierec.settings import Settings

OPENFAAS_SECRETS = "/var/openfaas/secrets"


class StoreError(MovierecError):
    """Base of the object store's errors; the message names the backend."""


class ObjectNotFoundError(StoreError, NotFound, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]).splitlines()[0] if self.args else "object not found"


class ObjectExistsError(StoreError, Conflict):
    """A write-once object exists with different content."""


class StoreUnavailableError(StoreError, Unavailable):
    """The backend could not be reached or did not answer."""


class StoreRejectedError(StoreError, Rejected, ValueError):
    """A key (e.g. one that would leave the store) or a store setting the store refuses."""


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
        raise StoreRejectedError(f"invalid object key {key!r}")
    return key


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600, *, exclusive: bool = False) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never a part:
    a temp file in the same folder (created with `mode`), fsync, then rename over `path`, then
    fsync of the folder. With `exclusive`, the new file is linked instead, so the call fails with
    FileExistsError when `path` exists (two racing writers cannot both win). Raises OSError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalDirectoryStore:
    """Objects as files under a root directory; durable (fsync) and atomic (rename)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def describe(self) -> str:
        return f"local store {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _write(self, key: str, path: Path, data: bytes, exclusive: bool) -> None:
        try:
            write_atomic(path, data, exclusive=exclusive)
        except FileExistsError:
            raise
        except OSError as e:
            raise StoreUnavailableError(f"{self.describe()}: cannot write {key}: {e}") from e

    def put_once(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        if path.exists():
            return self._same_or_raise(key, path, data)
        try:
            self._write(key, path, data, exclusive=True)
        except FileExistsError:
            return self._same_or_raise(key, path, data)
        return True

    def _same_or_raise(self, key: str, path: Path, data: bytes) -> bool:
        if path.read_bytes() == data:
            return False
        raise ObjectExistsError(f"{self.describe()}: {key} exists with different content (write-once)")

    def replace(self, key: str, data: bytes) -> None:
        self._write(key, self._path(key), data, exclusive=False)

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


def read_secret(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """A secret's value from its file (OpenFaaS mounts them at /var/openfaas/secrets/<name>;
    the local runtime points SECRETS_DIR at its own folder), or None when absent."""
    for directory in (Settings(env).get("SECRETS_DIR"), OPENFAAS_SECRETS):
        if directory:
            path = Path(directory) / name
            if path.is_file():
                return path.read_text().strip()
    return None
