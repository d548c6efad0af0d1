"""The secrets behind the gateway's `/system/secrets` API: one private file per secret.

Owns: the folder `<state>/secrets/` (mode 0700) and its files (mode 0600, written atomically:
a reader sees the old value or the new one, never half of one), secret-name validation
(Kubernetes' DNS-1123 subdomain rule, `localfaas.validate.secret_name`, so a name that works here
also works on faas-netes; no path tricks; a failed write leaves no temp file), and which names belong to the gateway itself (its basic-auth credentials: listed and
mountable by functions, but not changed or deleted through the API).
Must not touch: HTTP (the gateway maps the errors below to status codes), the copies each
function's replicas read (the supervisor refreshes those), any file outside the folder.
"""
from __future__ import annotations

import contextlib
import os
import secrets as _random
from pathlib import Path

from localfaas import validate

GATEWAY_CREDENTIALS = ("basic-auth-user", "basic-auth-password")
MAX_NAME_LENGTH = validate.MAX_SUBDOMAIN
MAX_VALUE_BYTES = 1024 * 1024  # Kubernetes' limit for one Secret


class SecretError(ValueError):
    """A request the store refuses; `kind` says which (invalid, exists, missing, reserved)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise SecretError("invalid", "name is required: the secret's name, e.g. s3-access-key")
    try:
        return validate.secret_name(name)  # the one rule (DNS-1123 subdomain), shared with stack files
    except validate.ValidationError as exc:
        raise SecretError("invalid", str(exc)) from None


class SecretStore:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _ensure_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        # Dot files are this store's temporary files; everything else is a secret, even one put here
        # by hand under a name the API would refuse.
        return sorted(p.name for p in self.folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def exists(self, name: str) -> bool:
        return (self.folder / check_name(name)).is_file()

    def _write_temp(self, name: str, value: bytes) -> Path:
        if len(value) > MAX_VALUE_BYTES:
            raise SecretError("invalid", f"secret {name!r} is {len(value)} bytes: at most {MAX_VALUE_BYTES}")
        self._ensure_folder()
        tmp = self.folder / f".{name}.{_random.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(value)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:  # a failed write (disk full) leaves no temp file behind
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return tmp

    def create(self, name: str, value: bytes) -> None:
        """Create a new secret; SecretError("exists") when one of that name is already there."""
        check_name(name)
        tmp = self._write_temp(name, value)
        try:
            os.link(tmp, self.folder / name)  # fails if the name exists: no check-then-write race
        except FileExistsError:
            raise SecretError("exists", f"secret {name} already exists: update it instead") from None
        finally:
            tmp.unlink()

    def update(self, name: str, value: bytes) -> None:
        """Replace an existing secret's value; SecretError("missing") when there is none."""
        self._refuse_gateway_credential(name, "updated")
        if not self.exists(name):
            raise SecretError("missing", f"secret {name} not found: create it first")
        tmp = self._write_temp(name, value)
        try:
            os.replace(tmp, self.folder / name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def delete(self, name: str) -> None:
        self._refuse_gateway_credential(name, "deleted")
        try:
            (self.folder / check_name(name)).unlink()
        except FileNotFoundError:
            raise SecretError("missing", f"secret {name} not found") from None

    def _refuse_gateway_credential(self, name: str, verb: str) -> None:
        if name in GATEWAY_CREDENTIALS:
            raise SecretError("reserved", f"{name} is the gateway's own credential and cannot be {verb} through "
                                          f"the API: edit {self.folder / name} and restart localfaas")
