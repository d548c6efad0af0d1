"""Opening the configured object store: S3 (MinIO) or a local folder, from the settings.

Owns `open_store(env)`:
- `STORE_URL=s3://bucket[/prefix]`: `movierec.adapters.s3store.S3Store` (endpoint `S3_ENDPOINT_URL`,
  credentials from the secret files `s3-access-key`/`s3-secret-key`, or AWS_* env); boto3 is
  imported only for this backend;
- `STORE_URL=file:///path`, a plain path, or blank (then `STORE_DIR`): the domain's
  `movierec.store.LocalDirectoryStore` (the default on one machine).

Must not touch: what is stored (the domain decides keys and formats).
"""
from __future__ import annotations

from collections.abc import Mapping

from movierec.settings import Settings
from movierec.store import LocalDirectoryStore, ObjectStore


def open_store(env: Mapping[str, str] | None = None) -> ObjectStore:
    settings = Settings(env)
    url = settings.get("STORE_URL")
    if url.startswith("s3://"):
        from movierec.adapters.s3store import S3Store

        return S3Store.from_url(url, settings.env)
    return LocalDirectoryStore(url.removeprefix("file://") or settings.get("STORE_DIR"))
