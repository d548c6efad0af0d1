"""The gateway's basic-auth credentials.

Owns: the files `basic-auth-user` and `basic-auth-password` in the gateway's secrets folder (made
on the first start, mode 0600, a random password; reused afterwards) and checking an
`Authorization: Basic` header against them in constant time.
Must not touch: HTTP routing (the gateway decides which paths need auth), other secrets
(`localfaas.secretstore` owns them).
"""
from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from base64 import b64decode
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def matches(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user.encode(), self.user.encode()) & hmac.compare_digest(
            password.encode(), self.password.encode())


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def ensure_credentials(secrets_dir: str | Path) -> Credentials:
    """The gateway's basic-auth credentials: read from `basic-auth-user`/`basic-auth-password`,
    generated (random password, mode 0600) on the first start and reused afterwards."""
    directory = Path(secrets_dir)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    user_file, password_file = directory / "basic-auth-user", directory / "basic-auth-password"
    if not user_file.exists():
        with contextlib.suppress(FileExistsError):
            _write_private(user_file, "admin")
    if not password_file.exists():
        with contextlib.suppress(FileExistsError):
            _write_private(password_file, secrets.token_urlsafe(24))
    user, password = user_file.read_text().strip(), password_file.read_text().strip()
    if not user or not password:
        raise ValueError(f"empty basic-auth credentials in {directory}: delete both files to regenerate them")
    return Credentials(user, password)
