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

Registration streams: `register_model` writes the artifact once (hashed while written, see
movierec.artifact) and `publish` streams each file to the store, which hashes what it writes
against the recorded sha256; `fetch` streams each file from the store into the cache, hashing it
on the way; nothing the size of a model is held in memory or read back to be hashed again.

`load_serving_model(spec, store, cache_dir)` is what a recommend deployment calls: it resolves a
version or alias, and uses the files in `cache_dir` only once each matches the sha256 the registry
records for that version (a copy that does not, damaged or planted, is downloaded again and
checked); only when the store is unreachable does it serve the cached copy alone, and then only
with the sha256 the registry recorded when last read (`model_cache_dir`: the cache is the stack's
own folder by default, never one shared by every stack on the machine).

Errors are movierec.errors classes: `ModelNotFoundError` (NotFound, 404; still a LookupError),
`UnresolvableModelError` (a ModelNotFoundError for a spec that can never resolve),
`IntegrityError` (Rejected, 422: stored bytes that do not match their recorded sha256),
`ModelUnavailableError` (Unavailable, 503); `RegistryError` itself marks misuse (500).

Must not touch: how a model is fitted or scored (`model`, `training`), HTTP or OpenFaaS.

Size: over 450 lines because the registry and its local cache are one trust boundary: every read
of a cached model goes through the registry's sha256 here, next to what records it.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from movierec.errors import MovierecError, NotFound, Rejected, Unavailable
from movierec.settings import Settings
from movierec.store import (
    ObjectNotFoundError,
    ObjectStore,
    StoreUnavailableError,
    sha256_file,
    sha256_hex,
    validate_key,
    write_atomic,
)

MODELS = "models"
ALIASES = f"{MODELS}/aliases"
METADATA = "metadata.json"
ARTIFACT = "model.npz"
MANIFEST = "manifest.json"
STABLE = "stable"
CANDIDATE = "candidate"
KNOWN_ALIASES = (STABLE, CANDIDATE)  # the aliases the product moves (training and the release)

# Matched with fullmatch (never `$`, which also matches before a trailing newline), ASCII digits only.
VERSION_RE = re.compile(r"v[0-9]{8}-[0-9]{6}-[0-9a-f]{8}")
ALIAS_RE = re.compile(r"[a-z][a-z0-9-]{0,39}")
CACHE_FOLDER = "model-cache"
# Cached model files are never rewritten in place (a new copy replaces the folder by rename): a
# replica maps model.npz (movierec.artifact), so the pages it serves are the bytes it hashed.
CACHED_FILE_MODE = 0o444


class RegistryError(MovierecError):
    """Base of the registry's errors; every message is one line. Raised as itself only for
    misuse (an invalid alias or version name, a directory that is not a model): a bug, 500."""


class ModelNotFoundError(RegistryError, NotFound, LookupError):
    """No such version, or an alias that is not set (404)."""


class UnresolvableModelError(ModelNotFoundError):
    """A model spec that can never resolve: not a version or alias name, a version the registry
    does not hold (versions are immutable: it will not appear later), or an alias the product never
    sets (only `stable` and `candidate` move). A deployment pinned to it cannot become ready."""


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
    return isinstance(text, str) and VERSION_RE.fullmatch(text) is not None


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


def model_cache_dir(env: Mapping[str, str] | None = None, store: ObjectStore | None = None) -> str:
    """Where the local model cache lives: MODEL_CACHE_DIR; else the stack's own state folder
    (`$STACK_STATE_DIR/model-cache`); else beside a local store folder (`<store>/../model-cache`,
    `var/model-cache` for the local stack's `var/store`); else (an S3 store in a container, whose
    /tmp is its own) `$TMPDIR/movierec-model-cache-<uid>`. Never a folder shared by every stack on
    the machine by default; and whatever it holds is only used after checking it against the
    registry's sha256 (`Registry.fetch`)."""
    env = os.environ if env is None else env
    settings = Settings(env)
    configured = settings.get("MODEL_CACHE_DIR")
    if configured:
        return configured
    state = env.get("STACK_STATE_DIR") or ""
    if state:
        return os.path.join(state, CACHE_FOLDER)
    root = getattr(store, "root", None)  # the local backend's folder
    if root is None and store is None:
        url = settings.get("STORE_URL")
        root = (url or settings.get("STORE_DIR")) if not url.startswith("s3://") else None
    if root:
        return str(Path(root).resolve().parent / CACHE_FOLDER)
    return os.path.join(env.get("TMPDIR") or tempfile.gettempdir(), f"movierec-model-cache-{os.getuid()}")


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
        hashes: Mapping[str, str] | None = None,
    ) -> ModelVersion:
        """Store every file of a saved model directory as a new immutable version.

        Each file is streamed to the store (`put_once_file`), which hashes what it writes and
        refuses bytes that differ from the sha256 recorded here; nothing is read back. `hashes`
        (name -> sha256) are those the caller computed while writing the files (`register_model`:
        save_model's manifest); any file without one is hashed here, streamed, before upload."""
        model_dir = Path(model_dir)
        paths = {p.name: p for p in sorted(model_dir.iterdir()) if p.is_file()}
        if ARTIFACT not in paths:
            raise RegistryError(f"cannot register {model_dir}: no {ARTIFACT} in it")
        if METADATA in paths:
            raise RegistryError(f"cannot register {model_dir}: {METADATA} is the registry's own file")
        known = dict(hashes or {})
        hashes = {name: known.get(name) or sha256_file(path) for name, path in paths.items()}
        artifact_sha = hashes[ARTIFACT]
        now = now or utcnow()
        if version is None:
            # Two registrations of the same artifact within one second (a retrain on unchanged data, a
            # drill copy) would get one name: the later one takes the next free second, so names stay
            # unique and in registration order. A true race still ends in the store's write-once refusal.
            version = version_name(artifact_sha, now)
            while self.store.exists(f"{MODELS}/{version}/{ARTIFACT}"):
                now += timedelta(seconds=1)
                version = version_name(artifact_sha, now)
        if not is_version(version):
            raise RegistryError(f"invalid version name {version!r}: expected vYYYYMMDD-HHMMSS-<sha8>")
        small: dict[str, bytes] = {}  # files rewritten here, small enough to hold
        if MANIFEST in paths:
            # The model reports the version it serves from its manifest (X-Model-Version); the
            # manifest's own sha256 covers model.npz only, so naming it here keeps it valid.
            manifest = json.loads(paths[MANIFEST].read_bytes())
            if isinstance(manifest, dict) and manifest.get("version") != version:
                manifest["version"] = version
                small[MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
                hashes[MANIFEST] = sha256_hex(small[MANIFEST])
        metadata = {
            "version": version,
            "created": iso(now),
            "files": hashes,
            "sha256": artifact_sha,
            "params": params or {},
            "metrics": metrics or {},
            "snapshot_id": snapshot_id,
            "code_version": code or code_version(),
            **({"extra": extra} if extra else {}),
        }
        for name, path in paths.items():
            key = f"{MODELS}/{version}/{name}"
            if name in small:
                self.store.put_once(key, small[name])
            else:
                self.store.put_once_file(key, path, hashes[name])
        self.store.put_once(f"{MODELS}/{version}/{METADATA}", _dump(metadata))
        return ModelVersion(version, metadata)

    def register_model(self, model: Any, **kwargs: Any) -> ModelVersion:
        """Serialize a RecommenderModel (model.npz + manifest.json, hashed while written) and publish it."""
        from movierec.artifact import save_model

        with tempfile.TemporaryDirectory(prefix="movierec-register-") as tmp:
            manifest = save_model(model, tmp)
            return self.publish(tmp, hashes={ARTIFACT: manifest["sha256"]}, **kwargs)

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
        """A version name for a version name or an alias. UnresolvableModelError when `spec` can
        never resolve; ModelNotFoundError for `stable`/`candidate` not set yet."""
        spec = spec.strip()
        if is_version(spec):
            try:
                self.get(spec)
            except ModelNotFoundError as e:
                raise UnresolvableModelError(str(e)) from None
            return spec
        if not ALIAS_RE.fullmatch(spec) or spec == "history":
            raise UnresolvableModelError(
                f"{spec[:80]!r} is neither a model version (vYYYYMMDD-HHMMSS-sha8) nor an alias")
        version = self.alias_version(spec)
        if version is None:
            if spec not in KNOWN_ALIASES:
                raise UnresolvableModelError(f"alias {spec!r} is not set in {self.store.describe()}, and only "
                                             f"{' and '.join(KNOWN_ALIASES)} are ever set")
            raise ModelNotFoundError(f"alias {spec!r} is not set in {self.store.describe()}")
        return version

    # -- local copies ------------------------------------------------------------------------
    def fetch(self, version: str, cache_dir: str | os.PathLike[str]) -> Path:
        """A local directory holding the files of `version`, each checked against the sha256 the
        registry records for it NOW: a cached copy is used only when every file matches (a copy
        that does not, damaged or planted, is replaced by a fresh download, itself checked)."""
        entry = self.get(version)  # the registry's record first: the cache is never the authority
        files = entry.metadata["files"]
        target = Path(cache_dir) / version
        if _cached_matches(target, files):
            return target
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{version}-"))
        try:
            for name, expected in files.items():
                # Streamed into the staging folder and hashed on the way: never whole in memory.
                actual = self.store.get_file(f"{MODELS}/{version}/{validate_key(name)}", staging / name)
                if actual != expected:
                    raise IntegrityError(f"model {version}: {name} sha256 {actual[:12]} != registered {expected[:12]}")
                os.chmod(staging / name, CACHED_FILE_MODE)
            (staging / METADATA).write_bytes(_dump(entry.metadata))
            os.chmod(staging / METADATA, CACHED_FILE_MODE)
            try:
                staging.rename(target)  # atomic: a reader sees no directory or a complete one
            except OSError:
                # Another process won the race: its copy must match the registry like any other.
                if not _cached_matches(target, files):
                    raise IntegrityError(f"model {version}: the cached copy in {target} does not match "
                                         f"the registry and cannot be replaced") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def verify_dir(directory: str | os.PathLike[str], files: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Check a fetched model directory file by file against `files` (name -> sha256: the
    registry's record) or, when not given, against the directory's own metadata.json (only for a
    copy `fetch` wrote, during a store outage); returns the metadata."""
    directory = Path(directory)
    try:
        metadata = json.loads((directory / METADATA).read_text())
    except (OSError, ValueError) as e:
        raise IntegrityError(f"{directory}: unreadable {METADATA}: {e}") from None
    expected_files = metadata.get("files", {}) if files is None else files
    if files is not None and metadata.get("files") != dict(files):
        raise IntegrityError(f"{directory}: {METADATA} differs from the registry's record")
    if not isinstance(expected_files, Mapping) or ARTIFACT not in expected_files:
        raise IntegrityError(f"{directory}: no sha256 recorded for {ARTIFACT}")
    for name, expected in expected_files.items():
        try:
            actual = sha256_file(directory / validate_key(name))
        except (OSError, ValueError):
            raise IntegrityError(f"{directory}: {name} is missing") from None
        if actual != expected:
            raise IntegrityError(f"{directory}: {name} sha256 {actual[:12]} != registered {expected[:12]}")
    return metadata


def _cached_matches(target: Path, files: Mapping[str, str]) -> bool:
    """True when `target` is a real directory whose files match `files`; anything else found
    there (a symlink, a file, a damaged or foreign copy) is removed so a download can replace it."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        with contextlib.suppress(OSError):
            target.unlink()
        return False
    if not target.is_dir():
        return False
    try:
        verify_dir(target, files)
        return True
    except IntegrityError:
        shutil.rmtree(target, ignore_errors=True)
        return False


def _cached_alias_path(cache_dir: Path, alias: str) -> Path:
    return cache_dir / "aliases" / f"{alias}.json"


def load_serving_model(spec: str, store: ObjectStore, cache_dir: str | os.PathLike[str] | None = None):
    """The RecommenderModel a deployment pinned to `spec` (a version or alias) serves.

    Store reachable: resolve, fetch (every file checked against the registry's sha256, cached or
    not), and remember the alias resolution with that sha256 in the cache.
    Store unreachable (only then): the cached resolution and the cached copy, served only when the
    model's sha256 is the one the registry recorded when it was last read.
    Either way the loaded bytes' sha256 must equal that recorded sha256, or IntegrityError.
    Raises ModelNotFoundError for an unknown spec, ModelUnavailableError when neither works.
    `cache_dir` blank: `model_cache_dir(store=store)`.
    """
    from movierec.artifact import load_model  # numpy/model code is needed only here

    cache = Path(cache_dir) if cache_dir else Path(model_cache_dir(store=store))
    spec = spec.strip() or STABLE
    registry = Registry(store)
    try:
        version = registry.resolve(spec)
        directory = registry.fetch(version, cache)
        expected = json.loads((directory / METADATA).read_text())["sha256"]
        if not is_version(spec):
            path = _cached_alias_path(cache, spec)
            record = {"alias": spec, "version": version, "sha256": expected}
            write_atomic(path, json.dumps(record).encode(), mode=0o600)
    except StoreUnavailableError as e:
        directory, expected = _cached_copy(spec, cache, reason=str(e))
    model = load_model(directory)
    if model.sha256 != expected:  # the bytes loaded, not only the bytes checked a moment ago
        raise IntegrityError(f"model {directory.name}: loaded sha256 {model.sha256[:12]} != registered {expected[:12]}")
    if model.version != directory.name:  # a manifest from before registration names no version
        model.manifest["version"] = directory.name
    return model


def _cached_copy(spec: str, cache: Path, reason: str) -> tuple[Path, str]:
    """During a store outage: the cached directory for `spec` and the sha256 the registry recorded
    for it when last read (an alias: the one its cached resolution carries)."""
    version, recorded = spec, None
    if not is_version(spec):
        if not ALIAS_RE.fullmatch(spec):
            raise UnresolvableModelError(f"{spec[:80]!r} is neither a model version (vYYYYMMDD-HHMMSS-sha8) nor an alias")
        try:
            record = json.loads(_cached_alias_path(cache, spec).read_text())
            version, recorded = record["version"], record.get("sha256")
        except (OSError, ValueError, KeyError, TypeError):
            raise ModelUnavailableError(
                f"model {spec}: store unavailable ({reason}) and alias {spec!r} was never cached in {cache}"
            ) from None
        if not isinstance(version, str) or not is_version(version):
            raise ModelUnavailableError(f"model {spec}: store unavailable ({reason}) and the cached alias is invalid")
    directory = cache / version
    if directory.is_symlink() or not directory.is_dir():
        raise ModelUnavailableError(f"model {spec}: store unavailable ({reason}) and no cached copy in {cache}")
    metadata = verify_dir(directory)  # against the registry's record fetch() wrote beside the files
    if recorded is not None and metadata.get("sha256") != recorded:
        raise IntegrityError(f"model {spec}: cached copy sha256 {str(metadata.get('sha256'))[:12]} != "
                             f"{recorded[:12]} the registry recorded last for alias {spec!r}")
    return directory, metadata["sha256"]


def _check_alias(name: str) -> None:
    if not isinstance(name, str) or not ALIAS_RE.fullmatch(name) or name == "history":
        raise RegistryError(f"invalid alias name {name!r}")


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()

