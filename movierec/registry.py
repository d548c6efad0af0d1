"""The model registry on the object store: immutable versions, movable aliases, a local cache.

Layout (all keys under `models/`):
- `models/<version>/model.npz`, `models/<version>/manifest.json`: the artifact as `artifact.save_model`
  writes it, stored with `put_once`;
- `models/<version>/metadata.json`: sha256 of every file, params, metrics, dataset snapshot id,
  code version, created. Written LAST, so its presence is what makes a version exist: a crash
  half-way through a registration leaves files no reader ever lists or resolves;
- `models/aliases/<name>.json` (`stable`, `candidate`): `{"alias", "version", "updated", "reason"}`,
  changed by atomic `replace`; every move is also written once to
  `models/aliases/history/<name>/<time>-<version>.json`, so the story of an alias can be read back.

Version names are time-based, `vYYYYMMDD-HHMMSS-<sha8>` (UTC time of registration, first 8 hex of
the artifact's sha256). Why not `v1, v2, ...`: a counter needs a compare-and-swap the object store
does not offer (two trainings racing on S3 would both pick `v7`); a timestamp needs no
coordination, still sorts in registration order (lexicographic == chronological), and the sha
suffix makes two registrations in the same second distinct and lets a name be checked against
its bytes.

`load_serving_model(spec, store, cache_dir)` is what a recommend deployment calls: it resolves a
version or alias, downloads and verifies the files (sha256) into `cache_dir`, and when the store
is unreachable serves the copy cached by an earlier successful load.

Errors are movierec.errors classes: `ModelNotFoundError` (NotFound, 404; still a LookupError),
`IntegrityError` (Rejected, 422: stored bytes that do not match their recorded sha256),
`ModelUnavailableError` (Unavailable, 503); `RegistryError` itself marks misuse (500).

Must not touch: how a model is fitted or scored (`model`, `training`), HTTP or OpenFaaS.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from movierec.errors import MovierecError, NotFound, Rejected, Unavailable
from movierec.settings import Settings
from movierec.store import (
    ObjectNotFoundError,
    ObjectStore,
    StoreUnavailableError,
    sha256_hex,
    validate_key,
)

MODELS = "models"
ALIASES = f"{MODELS}/aliases"
METADATA = "metadata.json"
ARTIFACT = "model.npz"
MANIFEST = "manifest.json"
STABLE = "stable"
CANDIDATE = "candidate"

VERSION_RE = re.compile(r"^v\d{8}-\d{6}-[0-9a-f]{8}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")


class RegistryError(MovierecError):
    """Base of the registry's errors; every message is one line. Raised as itself only for
    misuse (an invalid alias or version name, a directory that is not a model): a bug, 500."""


class ModelNotFoundError(RegistryError, NotFound, LookupError):
    """No such version, or an alias that is not set (404)."""


class IntegrityError(RegistryError, Rejected):
    """Stored or cached files do not match the sha256 the registry recorded. A data error: the
    same bytes fail again, so it is Rejected, not Unavailable (422, like every refusal of data)."""

    status = 422


class ModelUnavailableError(RegistryError, Unavailable):
    """No model can be served: the store is unreachable and there is no cached copy (503)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def version_name(artifact_sha256: str, now: datetime | None = None) -> str:
    t = (now or utcnow()).astimezone(UTC)
    return f"v{t:%Y%m%d-%H%M%S}-{artifact_sha256[:8]}"


def is_version(text: str) -> bool:
    return bool(VERSION_RE.match(text))


def code_version(env: Mapping[str, str] | None = None) -> str:
    """CODE_VERSION from the environment (set at image build), else `git describe`, else unknown."""
    configured = Settings(env).get("CODE_VERSION")
    if configured:
        return configured
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            check=False,
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def model_cache_dir(env: Mapping[str, str] | None = None) -> str:
    """MODEL_CACHE_DIR, or `$TMPDIR/movierec-model-cache` when it is blank."""
    env = os.environ if env is None else env
    configured = Settings(env).get("MODEL_CACHE_DIR")
    return configured or os.path.join(env.get("TMPDIR") or tempfile.gettempdir(), "movierec-model-cache")


@dataclass(frozen=True)
class ModelVersion:
    version: str
    metadata: dict[str, Any]

    @property
    def sha256(self) -> str:
        return self.metadata["files"][ARTIFACT]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.metadata.get("metrics", {})

    @property
    def snapshot_id(self) -> str | None:
        return self.metadata.get("snapshot_id")


class Registry:
    def __init__(self, store: ObjectStore):
        self.store = store

    # -- versions ----------------------------------------------------------------------------
    def publish(
        self,
        model_dir: str | os.PathLike[str],
        *,
        params: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        snapshot_id: str | None = None,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
        now: datetime | None = None,
        version: str | None = None,
    ) -> ModelVersion:
        """Store every file of a saved model directory as a new immutable version."""
        model_dir = Path(model_dir)
        files = {p.name: p.read_bytes() for p in sorted(model_dir.iterdir()) if p.is_file()}
        if ARTIFACT not in files:
            raise RegistryError(f"cannot register {model_dir}: no {ARTIFACT} in it")
        if METADATA in files:
            raise RegistryError(f"cannot register {model_dir}: {METADATA} is the registry's own file")
        now = now or utcnow()
        version = version or version_name(sha256_hex(files[ARTIFACT]), now)
        if not is_version(version):
            raise RegistryError(f"invalid version name {version!r}: expected vYYYYMMDD-HHMMSS-<sha8>")
        if MANIFEST in files:
            # The model reports the version it serves from its manifest (X-Model-Version); the
            # manifest's own sha256 covers model.npz only, so naming it here keeps it valid.
            manifest = json.loads(files[MANIFEST])
            if isinstance(manifest, dict) and manifest.get("version") != version:
                manifest["version"] = version
                files[MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        hashes = {name: sha256_hex(data) for name, data in files.items()}
        metadata = {
            "version": version,
            "created": iso(now),
            "files": hashes,
            "sha256": hashes[ARTIFACT],
            "params": params or {},
            "metrics": metrics or {},
            "snapshot_id": snapshot_id,
            "code_version": code or code_version(),
            **({"extra": extra} if extra else {}),
        }
        for name, data in files.items():
            self.store.put_once(f"{MODELS}/{version}/{name}", data)
        self.store.put_once(f"{MODELS}/{version}/{METADATA}", _dump(metadata))
        return ModelVersion(version, metadata)

    def register_model(self, model: Any, **kwargs: Any) -> ModelVersion:
        """Serialize a RecommenderModel (model.npz + manifest.json) and publish it."""
        from movierec.artifact import save_model

        with tempfile.TemporaryDirectory(prefix="movierec-register-") as tmp:
            save_model(model, tmp)
            return self.publish(tmp, **kwargs)

    def versions(self) -> list[str]:
        """Every complete version, oldest first."""
        found = []
        for key in self.store.list(f"{MODELS}/"):
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == METADATA and is_version(parts[1]):
                found.append(parts[1])
        return sorted(found)

    def get(self, version: str) -> ModelVersion:
        if not is_version(version):
            raise ModelNotFoundError(f"{version!r} is not a model version name")
        try:
            metadata = json.loads(self.store.get(f"{MODELS}/{version}/{METADATA}"))
        except ObjectNotFoundError:
            raise ModelNotFoundError(f"no model version {version} in {self.store.describe()}") from None
        return ModelVersion(version, metadata)

    # -- aliases -----------------------------------------------------------------------------
    def alias(self, name: str) -> dict[str, Any] | None:
        """The alias record, or None when the alias was never set."""
        _check_alias(name)
        try:
            return json.loads(self.store.get(f"{ALIASES}/{name}.json"))
        except ObjectNotFoundError:
            return None

    def alias_version(self, name: str) -> str | None:
        record = self.alias(name)
        return record.get("version") if record else None

    def set_alias(self, name: str, version: str | None, reason: str = "", now: datetime | None = None) -> dict:
        """Point `name` at `version` (None clears it). The version must exist."""
        _check_alias(name)
        if version is not None:
            self.get(version)  # refuse to point an alias at nothing
        now = now or utcnow()
        previous = self.alias_version(name)
        record = {"alias": name, "version": version, "previous": previous, "updated": iso(now), "reason": reason}
        stamp = f"{now.astimezone(UTC):%Y%m%dT%H%M%S%f}"
        self.store.put_once(f"{ALIASES}/history/{name}/{stamp}-{version or 'cleared'}.json", _dump(record))
        self.store.replace(f"{ALIASES}/{name}.json", _dump(record))
        return record

    def alias_history(self, name: str) -> list[dict[str, Any]]:
        _check_alias(name)
        return [json.loads(self.store.get(k)) for k in self.store.list(f"{ALIASES}/history/{name}/")]

    def resolve(self, spec: str) -> str:
        """A version name for a version name or an alias."""
        spec = spec.strip()
        if is_version(spec):
            self.get(spec)
            return spec
        if not ALIAS_RE.match(spec):
            raise ModelNotFoundError(f"{spec!r} is neither a model version (vYYYYMMDD-HHMMSS-sha8) nor an alias")
        version = self.alias_version(spec)
        if version is None:
            raise ModelNotFoundError(f"alias {spec!r} is not set in {self.store.describe()}")
        return version

    # -- local copies ------------------------------------------------------------------------
    def fetch(self, version: str, cache_dir: str | os.PathLike[str]) -> Path:
        """A local directory holding the verified files of `version` (downloaded once, then cached)."""
        target = Path(cache_dir) / version
        if target.is_dir():
            try:
                verify_dir(target)
                return target
            except IntegrityError:
                shutil.rmtree(target, ignore_errors=True)  # a damaged cache is re-downloaded
        entry = self.get(version)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{version}-"))
        try:
            for name, expected in entry.metadata["files"].items():
                data = self.store.get(f"{MODELS}/{version}/{validate_key(name)}")
                if sha256_hex(data) != expected:
                    raise IntegrityError(
                        f"model {version}: {name} sha256 {sha256_hex(data)[:12]} != registered {expected[:12]}"
                    )
                (staging / name).write_bytes(data)
            (staging / METADATA).write_bytes(_dump(entry.metadata))
            try:
                staging.rename(target)  # atomic: a reader sees no directory or a complete one
            except OSError:
                if not target.is_dir():  # another process won the race with the same bytes
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def verify_dir(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a fetched model directory against its metadata.json; returns the metadata."""
    directory = Path(directory)
    try:
        metadata = json.loads((directory / METADATA).read_text())
    except (OSError, ValueError) as e:
        raise IntegrityError(f"{directory}: unreadable {METADATA}: {e}") from None
    for name, expected in metadata.get("files", {}).items():
        try:
            actual = sha256_hex((directory / name).read_bytes())
        except OSError:
            raise IntegrityError(f"{directory}: {name} is missing") from None
        if actual != expected:
            raise IntegrityError(f"{directory}: {name} sha256 {actual[:12]} != registered {expected[:12]}")
    return metadata


def _cached_alias_path(cache_dir: Path, alias: str) -> Path:
    return cache_dir / "aliases" / f"{alias}.json"


def load_serving_model(spec: str, store: ObjectStore, cache_dir: str | os.PathLike[str]):
    """The RecommenderModel a deployment pinned to `spec` (a version or alias) serves.

    Store reachable: resolve, fetch (verified), remember the alias resolution in the cache.
    Store unreachable: use the cached resolution and the cached, re-verified files.
    Raises ModelNotFoundError for an unknown spec, ModelUnavailableError when neither works.
    """
    from movierec.artifact import load_model  # numpy/model code is needed only here

    cache = Path(cache_dir)
    spec = spec.strip() or STABLE
    registry = Registry(store)
    try:
        version = registry.resolve(spec)
        directory = registry.fetch(version, cache)
        if not is_version(spec):
            path = _cached_alias_path(cache, spec)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"alias": spec, "version": version}))
    except StoreUnavailableError as e:
        directory = _cached_copy(spec, cache, reason=str(e))
    model = load_model(directory)
    if model.version != directory.name:  # a manifest from before registration names no version
        model.manifest["version"] = directory.name
    return model


def _cached_copy(spec: str, cache: Path, reason: str) -> Path:
    version = spec
    if not is_version(spec):
        try:
            version = json.loads(_cached_alias_path(cache, spec).read_text())["version"]
        except (OSError, ValueError, KeyError):
            raise ModelUnavailableError(
                f"model {spec}: store unavailable ({reason}) and alias {spec!r} was never cached in {cache}"
            ) from None
    directory = cache / version
    if not directory.is_dir():
        raise ModelUnavailableError(f"model {spec}: store unavailable ({reason}) and no cached copy in {cache}")
    verify_dir(directory)
    return directory


def _check_alias(name: str) -> None:
    if not ALIAS_RE.match(name) or name == "history":
        raise RegistryError(f"invalid alias name {name!r}")


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()

