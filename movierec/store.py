"""The object store, as the domain sees it: one interface, its errors, and the local backend.

Two kinds of writes, on purpose:
- `put_once(key, data)`: write-once objects (data batches, model files). A second write of the
  same bytes is a no-op (so a retried or re-run job cannot duplicate anything); a second write
  of different bytes is refused with `ObjectExistsError`. `put_once_file(key, path, sha256)` is
  the same for a local file, streamed (memory bounded by a chunk, whatever the file's size) and
  hashed while it is written: bytes that do not hash to `sha256` are refused with
  `ChecksumMismatchError` and, on the local store, never stored;
- `replace(key, data)`: pointers (aliases, release state) change by atomic replace: a reader
  sees the old object or the new one, never a mix.
Reads: `get(key)` (the bytes) and `get_file(key, path)`, which streams an object into a local
file and answers the sha256 of what it wrote, hashed on the way (large objects: model files).

Keys are `/`-separated relative paths such as `data/ratings/movielog1/p0/00000000000000000000-...`;
a key that could leave the store (`..`, an absolute path, empty parts) or that a backend would
read differently (control characters such as NUL or newline, backslashes, over 1024 bytes) is
refused with `StoreRejectedError`. Every failure to reach the backend raises `StoreUnavailableError` naming the
backend, so callers can retry and report it in one line. The errors are in the product's taxonomy
(`movierec.errors`): not found (404, still a KeyError), exists (409), unavailable (503), rejected
(400, still a ValueError).

Owns: the `ObjectStore` protocol, the store errors, `validate_key`, `sha256_hex`, `sha256_file`
(a file's sha256, streamed), `copy_hashing` (the one streamed copy that hashes what it copies),
`LocalDirectoryStore`, `read_secret` (secret files, as OpenFaaS mounts them), `write_atomic`
(the one atomic file write of the core: its temp file is removed when the write fails) and
`sweep_temp_files` (temp files of writers killed mid-write, removed by the local store the first
time it writes into a folder). Must not touch: services. The S3 backend and `open_store`
(which picks a backend from the environment) are adapters: `movierec.adapters.s3store`,
`movierec.adapters.stores`.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO, Protocol

from movierec.errors import Conflict, MovierecError, NotFound, Rejected, Unavailable
from movierec.settings import Settings

OPENFAAS_SECRETS = "/var/openfaas/secrets"
TEMP_PREFIX = ".tmp-"  # write_atomic's temp files; never listed as objects
STALE_TEMP_S = 3600.0  # a temp file this old belongs to a writer that died


class StoreError(MovierecError):
    """Base of the object store's errors; the message names the backend. Raised as itself it is
    a failure of the backend (503); each subclass states its own status."""

    status = 503


class ObjectNotFoundError(StoreError, NotFound, KeyError):
    status = 404

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]).splitlines()[0] if self.args else "object not found"


class ObjectExistsError(StoreError, Conflict):
    """A write-once object exists with different content."""

    status = 409


class StoreUnavailableError(StoreError, Unavailable):
    """The backend could not be reached or did not answer."""


class StoreRejectedError(StoreError, Rejected, ValueError):
    """A key (e.g. one that would leave the store) or a store setting the store refuses."""

    status = 400


class ChecksumMismatchError(StoreRejectedError):
    """Bytes handed to a write do not hash to the sha256 the writer said they have."""


class ObjectStore(Protocol):
    """What every backend offers. `describe()` names it in error messages and logs."""

    def describe(self) -> str: ...

    def put_once(self, key: str, data: bytes) -> bool:
        """Write-once. True if written now, False if the same bytes were already there."""
        ...

    def put_once_file(self, key: str, path: str | os.PathLike[str], sha256: str) -> bool:
        """`put_once` of a local file's bytes, streamed; ChecksumMismatchError unless what was
        read from the file hashes to `sha256`."""
        ...

    def replace(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def get_file(self, key: str, path: str | os.PathLike[str]) -> str:
        """Stream the object into the local file `path` (created or truncated); its sha256."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]:
        """All keys under `prefix`, sorted."""
        ...


MAX_KEY_BYTES = 1024  # S3's limit, applied to every backend so a key that works here works there
_KEY_CHARS = re.compile(r"[^\x00-\x1f\x7f\\]+")  # no control characters (NUL, newline), no backslash


def validate_key(key: str) -> str:
    """`key` when it names an object inside the store; StoreRejectedError (400) otherwise: empty,
    absolute, `.`/`..`/empty parts, control characters or backslashes, over 1024 UTF-8 bytes."""
    if not isinstance(key, str) or not key:
        raise StoreRejectedError("invalid object key: empty")
    parts = key.split("/")
    if (key.startswith("/") or any(p in ("", ".", "..") for p in parts) or not _KEY_CHARS.fullmatch(key)
            or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES):
        raise StoreRejectedError(f"invalid object key {key[:200]!r}")
    return key


CHUNK = 1 << 20  # bytes per read of a streamed copy or hash


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, read in chunks (never the whole file in memory). Raises OSError."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def copy_hashing(src: BinaryIO, dst: BinaryIO) -> str:
    """Copy `src` to `dst` chunk by chunk; the sha256 of what was copied."""
    digest = hashlib.sha256()
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        dst.write(chunk)
    return digest.hexdigest()


def write_atomic(path: str | os.PathLike[str], data: bytes | Callable[[BinaryIO], None], mode: int = 0o600, *,
                 exclusive: bool = False) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never a part:
    a temp file in the same folder (created with `mode`), fsync, then rename over `path`, then
    fsync of the folder. `data` is the bytes, or a function that writes them to the file it is
    handed (a large file, streamed); whatever it raises leaves `path` as it was. With `exclusive`,
    the new file is linked instead, so the call fails with FileExistsError when `path` exists
    (two racing writers cannot both win). Raises OSError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # the write's own error is the one to report
            Path(tmp).unlink(missing_ok=True)
    _fsync_dir(path.parent)


def sweep_temp_files(directory: str | os.PathLike[str], older_than_s: float = STALE_TEMP_S) -> int:
    """Remove `write_atomic`'s temp files in `directory` older than `older_than_s`: what a writer
    killed mid-write (kill -9, power loss) left behind; a live writer renames its own within
    seconds. Returns how many were removed; never raises."""
    removed = 0
    cutoff = time.time() - older_than_s
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        if entry.name.startswith(TEMP_PREFIX):
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
    return removed


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
        self._swept: set[Path] = set()  # folders already cleared of dead writers' temp files

    def describe(self) -> str:
        return f"local store {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _write(self, key: str, path: Path, data: bytes | Callable[[BinaryIO], None], exclusive: bool) -> None:
        if path.parent not in self._swept:  # once per folder and store: temp files of killed writers
            self._swept.add(path.parent)
            sweep_temp_files(path.parent)
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

    def put_once_file(self, key: str, path: str | os.PathLike[str], sha256: str) -> bool:
        target = self._path(key)
        if target.exists():
            return self._same_file_or_raise(key, target, sha256)
        with open(path, "rb") as src:  # the caller's file: its own OSError, not the store's

            def stream(dst: BinaryIO) -> None:
                actual = copy_hashing(src, dst)
                if actual != sha256:  # raised inside the write: the temp file goes, nothing is stored
                    raise ChecksumMismatchError(f"{self.describe()}: {key}: {path} hashes to {actual[:12]}, "
                                                f"not the {sha256[:12]} it was stored as")

            try:
                self._write(key, target, stream, exclusive=True)
            except FileExistsError:
                return self._same_file_or_raise(key, target, sha256)
        return True

    def _same_file_or_raise(self, key: str, path: Path, sha256: str) -> bool:
        if sha256_file(path) == sha256:
            return False
        raise ObjectExistsError(f"{self.describe()}: {key} exists with different content (write-once)")

    def get_file(self, key: str, path: str | os.PathLike[str]) -> str:
        try:
            with open(self._path(key), "rb") as src, open(path, "wb") as dst:
                return copy_hashing(src, dst)
        except FileNotFoundError as e:
            if e.filename == str(self._path(key)):
                raise ObjectNotFoundError(f"{self.describe()}: no object {key}") from None
            raise
        except OSError as e:
            raise StoreUnavailableError(f"{self.describe()}: cannot read {key}: {e}") from e

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
            if path.is_file() and not path.name.startswith(TEMP_PREFIX):
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
