"""Immutable "images": content-addressed snapshots of build contexts, what replicas run from.

A deploy names an image the way `faas-cli deploy` does. Locally there is no registry: an image tag
is built by this runtime when the stack file names it for a function with a handler (its build
context `build/<fn>`, made like `faas-cli build --shrinkwrap`). Deploying a tag snapshots that
build context as it is at that moment (a registry pull of a moving tag); deploying
`<anything>@sha256:<hex>` runs exactly that earlier snapshot. Rebuilding `build/` afterwards never
changes a snapshot, so running replicas never see it until the next deploy.

Layout: `<state>/images/sha256/<hex>/rootfs/` (the files, read-only) and `.../image.json`
(`{"digest", "fprocess", "created", "files", "bytes"}`); the digest is sha256 over every file of the
context in sorted path order, each as `<path>\\0<x|->\\0<size>\\0<bytes>` (x: executable), with
`__pycache__` and `*.pyc` left out: the same files always give the same digest.

Owns: the image folder, digests, resolving an image reference to a snapshot (`ImageStore.resolve`,
`ImageError` with a one-line reason when nothing builds it), the image field a status shows
(`display_ref`: the tag while it still builds what runs, else `<image>@sha256:<hex>`), and garbage
collection (`gc`: keep every image in use plus the `keep` most recently used others).
Must not touch: build contexts (read only; `localfaas.build` makes them), processes, HTTP.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from localfaas.build import BuildContext
from localfaas.functionconfig import DeployError

log = logging.getLogger("localfaas.images")

DIGEST_PREFIX = "sha256:"
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = (".pyc",)
_COPY_ATTEMPTS = 5  # a build context being rewritten (rmtree + copy) while it is snapshotted


class ImageError(DeployError):
    """An image reference that names nothing this runtime can run; the message is one line."""


@dataclass(frozen=True)
class Image:
    digest: str  # "sha256:<hex>"
    root: Path  # the snapshot's files (read-only)
    fprocess: str


def split_ref(ref: str) -> tuple[str, str | None]:
    """(`image` without a digest, `sha256:<hex>` or None)."""
    base, at, digest = ref.partition("@")
    return base, (digest if at else None)


def _files(root: Path) -> Iterator[tuple[str, Path]]:
    """(POSIX path relative to root, path) of every file under root, sorted by relative path."""
    found = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
        for name in names:
            if not name.endswith(_SKIP_SUFFIXES):
                path = Path(folder) / name
                found.append((path.relative_to(root).as_posix(), path))
    yield from sorted(found)


def _record(rel: str, executable: bool, data: bytes) -> bytes:
    return f"{rel}\0{'x' if executable else '-'}\0{len(data)}\0".encode() + data


def digest_of(root: Path) -> str:
    """The digest a snapshot of `root` would get (reads the files, copies nothing)."""
    h = hashlib.sha256()
    for rel, path in _files(root):
        h.update(_record(rel, bool(path.stat().st_mode & 0o111), path.read_bytes()))
    return DIGEST_PREFIX + h.hexdigest()


def _make_writable(root: Path) -> None:
    for folder, dirs, _names in os.walk(root):
        for d in dirs:
            os.chmod(Path(folder) / d, 0o755)
    os.chmod(root, 0o755)


def remove_tree(root: Path) -> None:
    """rmtree for a tree whose folders may be read-only."""
    if root.exists():
        _make_writable(root)
        shutil.rmtree(root, ignore_errors=True)


class ImageStore:
    def __init__(self, folder: str | Path, builds: dict[str, BuildContext], keep: int = 5):
        self.folder = Path(folder)
        self.builds = dict(builds)  # image tag -> the build context that makes it
        self.keep = keep
        self.tag_digests: dict[str, str] = {}  # what each built tag held when last looked at

    def open(self) -> None:
        (self.folder / DIGEST_PREFIX[:-1]).mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".tmp-*"):  # an interrupted snapshot
            remove_tree(stale)

    def _dir(self, digest: str) -> Path:
        return self.folder / DIGEST_PREFIX[:-1] / digest.removeprefix(DIGEST_PREFIX)

    # ----- reading -----------------------------------------------------------------------------
    def get(self, digest: str) -> Image | None:
        folder = self._dir(digest)
        try:
            meta = json.loads((folder / "image.json").read_text())
        except (OSError, ValueError):
            return None
        if not (folder / "rootfs").is_dir() or meta.get("digest") != digest:
            return None
        return Image(digest, folder / "rootfs", str(meta.get("fprocess") or ""))

    def touch(self, digest: str) -> None:
        """Mark an image as just used (garbage collection keeps the most recently used)."""
        try:
            os.utime(self._dir(digest) / "image.json")
        except OSError:
            pass

    def digests(self) -> list[str]:
        folder = self.folder / DIGEST_PREFIX[:-1]
        return [DIGEST_PREFIX + p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []

    def display_ref(self, ref: str, digest: str) -> str:
        """The image field of a function's status: the tag as deployed while that tag still holds
        what runs, else `<image>@sha256:<hex>` (a tag never built here, or built again since)."""
        base, pinned = split_ref(ref)
        if pinned is None and self.tag_digests.get(ref) == digest:
            return ref
        return f"{base}@{digest}"

    def refresh_tags(self) -> None:
        """Learn what each built tag holds now (digests only, no copy)."""
        for ref, context in self.builds.items():
            try:
                self.tag_digests[ref] = digest_of(context.path)
            except OSError as exc:
                log.warning("image %s: cannot read its build context %s: %s", ref, context.path, exc)

    # ----- resolving and snapshotting ------------------------------------------------------------
    def resolve(self, ref: str) -> Image:
        """The image a deploy of `ref` runs: a snapshot by digest, or a fresh snapshot of the build
        context of a tag built here. Blocking (copies files): call it in a thread."""
        _base, pinned = split_ref(ref)
        if not ref:
            raise ImageError("image is required: a tag the stack file names, or <image>@sha256:<digest>")
        if pinned is not None:
            image = self.get(pinned)
            if image is None:
                raise ImageError(f"image {ref}: no snapshot {pinned} here (never made, or garbage-collected); "
                                 f"deploy a tag the stack file names instead")
            self.touch(pinned)
            return image
        context = self.builds.get(ref)
        if context is None:
            built = ", ".join(sorted(self.builds)) or "none"
            raise ImageError(f"image {ref}: never built here: localfaas builds the images the stack file names "
                             f"for functions with a handler ({built}); add it there, or deploy <image>@sha256:<digest>")
        if not context.path.is_dir():
            raise ImageError(f"image {ref}: its build context {context.path} does not exist "
                             f"(run `python -m localfaas build` or `faas-cli build --shrinkwrap`)")
        image = self.snapshot(context.path, context.fprocess)
        self.tag_digests[ref] = image.digest
        return image

    def snapshot(self, source: Path, fprocess: str) -> Image:
        for attempt in range(_COPY_ATTEMPTS):
            try:
                return self._snapshot_once(source, fprocess)
            except FileNotFoundError:  # the context is being rebuilt right now: try again
                if attempt == _COPY_ATTEMPTS - 1:
                    raise ImageError(f"build context {source} kept changing while it was copied; "
                                     f"deploy again once the build has finished") from None
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def _snapshot_once(self, source: Path, fprocess: str) -> Image:
        tmp = self.folder / f".tmp-{secrets.token_hex(6)}"
        rootfs = tmp / "rootfs"
        h = hashlib.sha256()
        files = size = 0
        try:
            rootfs.mkdir(parents=True)
            for rel, path in _files(source):
                data = path.read_bytes()
                executable = bool(path.stat().st_mode & 0o111)
                h.update(_record(rel, executable, data))
                target = rootfs / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                target.chmod(0o555 if executable else 0o444)
                files, size = files + 1, size + len(data)
            digest = DIGEST_PREFIX + h.hexdigest()
            final = self._dir(digest)
            if final.is_dir() and self.get(digest) is not None:
                self.touch(digest)
                return self.get(digest)  # type: ignore[return-value]
            remove_tree(final)  # a broken leftover of an interrupted snapshot
            meta = {"digest": digest, "fprocess": fprocess, "files": files, "bytes": size,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (tmp / "image.json").write_text(json.dumps(meta, indent=1) + "\n")
            for folder, dirs, _names in os.walk(rootfs):
                for d in dirs:  # folders read-only too: a replica writes to its own copy, never here
                    os.chmod(Path(folder) / d, 0o555)
            os.chmod(rootfs, 0o555)
            try:
                os.rename(tmp, final)
            except OSError:  # the same content snapshotted at the same moment by another deploy
                existing = self.get(digest)
                if existing is None:
                    raise
                return existing
            log.info("image %s: snapshot of %s (%d files, %d bytes)", digest[:19], source, files, size)
            return Image(digest, final / "rootfs", fprocess)
        finally:
            remove_tree(tmp)

    # ----- garbage collection -------------------------------------------------------------------
    def gc(self, in_use: set[str]) -> list[str]:
        """Delete images not in use, except the `keep` most recently used; returns what went."""
        def used_at(digest: str) -> float:
            try:
                return (self._dir(digest) / "image.json").stat().st_mtime
            except OSError:
                return 0.0

        idle = sorted((d for d in self.digests() if d not in in_use), key=used_at, reverse=True)
        removed = idle[self.keep:]
        for digest in removed:
            remove_tree(self._dir(digest))
            log.info("image %s: garbage-collected (not in use)", digest[:19])
        return removed


def link_tree(source: Path, target: Path) -> None:
    """A replica's own copy of an image's files, in writable folders so the replica may add files of
    its own without touching the image (like a container's writable layer): hard links to the
    read-only files, or real copies where file modes do not protect them (running as root) or the
    folders are on different file systems."""
    copy = os.geteuid() == 0
    for folder, dirs, names in os.walk(source):
        rel = Path(folder).relative_to(source)
        (target / rel).mkdir(parents=True, exist_ok=True)
        for name in names:
            src, dest = Path(folder) / name, target / rel / name
            if not copy:
                try:
                    os.link(src, dest)
                    continue
                except OSError:
                    pass
            shutil.copyfile(src, dest)
            dest.chmod(stat.S_IMODE(src.stat().st_mode) | 0o200)
        dirs.sort()
