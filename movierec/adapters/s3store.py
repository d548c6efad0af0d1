"""The S3 backend of the object store (MinIO in production, any S3 endpoint by URL).

Owns `S3Store`: the `ObjectStore` protocol of `movierec.store` over boto3, with an endpoint URL
(`S3_ENDPOINT_URL`), credentials from the secret files `s3-access-key` / `s3-secret-key`
(fallback: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`), retries through the one retry helper on
connection errors and 5xx/throttling answers (`S3_ATTEMPTS`), and write-once semantics for `put_once`:
- a conditional PUT (`If-None-Match: *`) where the server supports it (S3, MinIO, moto);
- else HEAD then PUT (a narrow race window, acceptable for the single writer per key we have);
- on conflict the stored bytes are compared: equal is a no-op, different is ObjectExistsError.
`replace` is a plain PUT, which S3 makes atomic (readers see the old or the new object).

Must not touch: which objects exist or what they mean (callers decide keys); HTTP of the service.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlparse

from movierec.adapters.retry import retry
from movierec.settings import Settings
from movierec.store import (
    ObjectExistsError,
    ObjectNotFoundError,
    StoreRejectedError,
    StoreUnavailableError,
    read_secret,
    validate_key,
)

T = TypeVar("T")
DEFAULT_ATTEMPTS = int(Settings({}).get("S3_ATTEMPTS"))
DEFAULT_BACKOFF_S = 0.2


class S3Store:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_s: float = DEFAULT_BACKOFF_S,
        timeout_s: float = 10.0,
    ):
        import boto3
        from botocore.config import Config

        if not bucket:
            raise StoreRejectedError("S3Store needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or None
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        # Retries are ours (so the final error names the endpoint); botocore's are off.
        config = Config(
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            s3={"addressing_style": "path"},  # MinIO serves buckets under the path
        )
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=config,
        )
        self._conditional_put = True  # cleared if the server rejects If-None-Match

    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str] | None = None) -> S3Store:
        """`s3://bucket[/prefix]`; endpoint, region and attempts from the settings (`S3_*`),
        credentials from the secret files (or the AWS_* variables)."""
        env = os.environ if env is None else env
        settings = Settings(env)
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StoreRejectedError(f"STORE_URL must look like s3://bucket[/prefix], got {url!r}")
        access_key = read_secret("s3-access-key", env) or env.get("AWS_ACCESS_KEY_ID") or None
        secret_key = read_secret("s3-secret-key", env) or env.get("AWS_SECRET_ACCESS_KEY") or None
        region = settings.get("S3_REGION") if settings.is_set("S3_REGION") else (
            (env.get("AWS_DEFAULT_REGION") or "").strip() or settings.get("S3_REGION"))
        return cls(
            parsed.netloc,
            parsed.path,
            endpoint_url=settings.get("S3_ENDPOINT_URL") or None,
            access_key=access_key,
            secret_key=secret_key,
            region=region,
            attempts=settings.get("S3_ATTEMPTS"),
        )

    def describe(self) -> str:
        where = self.endpoint_url or "AWS S3"
        path = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return f"S3 store s3://{path} at {where}"

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- the protocol ---------------------------------------------------------------------------
    def put_once(self, key: str, data: bytes) -> bool:
        full = self._key(key)
        if self._conditional_put:
            try:
                self._call(f"put {key}", lambda: self._client.put_object(
                    Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*"))
                return True
            except _ClientError as e:
                code = _error_code(e)
                if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                    return self._same_or_raise(key, data)
                if code in ("NotImplemented", "501"):
                    self._conditional_put = False
                else:
                    raise self._unavailable(f"put {key}", e) from e
        if self.exists(key):
            return self._same_or_raise(key, data)
        self._call(f"put {key}", lambda: self._client.put_object(Bucket=self.bucket, Key=full, Body=data))
        return True

    def _same_or_raise(self, key: str, data: bytes) -> bool:
        if self.get(key) == data:
            return False
        raise ObjectExistsError(f"{self.describe()}: {key} exists with different content (write-once)")

    def replace(self, key: str, data: bytes) -> None:
        full = self._key(key)
        try:
            self._call(f"put {key}", lambda: self._client.put_object(Bucket=self.bucket, Key=full, Body=data))
        except _ClientError as e:
            raise self._unavailable(f"put {key}", e) from e

    def get(self, key: str) -> bytes:
        full = self._key(key)
        try:
            return self._call(f"get {key}", lambda: self._client.get_object(
                Bucket=self.bucket, Key=full)["Body"].read())
        except _ClientError as e:
            if _error_code(e) in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFoundError(f"{self.describe()}: no object {key}") from None
            raise self._unavailable(f"get {key}", e) from e

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            self._call(f"head {key}", lambda: self._client.head_object(Bucket=self.bucket, Key=full))
            return True
        except _ClientError as e:
            if _error_code(e) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._unavailable(f"head {key}", e) from e

    def list(self, prefix: str = "") -> list[str]:
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0

        def list_all() -> list[str]:
            keys: list[str] = []
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", ()))
            return keys

        try:
            return sorted(self._call(f"list {prefix or '/'}", list_all))
        except _ClientError as e:
            raise self._unavailable(f"list {prefix or '/'}", e) from e

    # -- retries --------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn` through the retry helper while the endpoint is unreachable or answers
        5xx/throttling; client errors (4xx) are returned to the caller at once, to read their code."""
        def attempt() -> T:
            try:
                return fn()
            except _ClientError as e:
                if _is_transient_reply(e):
                    raise StoreUnavailableError(_short(e)) from e
                raise

        try:
            return retry(attempt, what=f"{self.describe()}: {what}", attempts=self.attempts,
                         backoff_s=self.backoff_s, retry_on=_TRANSIENT, error=StoreUnavailableError)
        except _NoCredentialsError as e:
            raise StoreUnavailableError(
                f"{self.describe()}: no credentials (secret files s3-access-key/s3-secret-key "
                "or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
            ) from e

    def _unavailable(self, what: str, e: Exception) -> StoreUnavailableError:
        return StoreUnavailableError(f"{self.describe()}: {what} failed: {_short(e)}")


def _short(e: Exception | None) -> str:
    return " ".join(str(e).split())[:300] if e is not None else "unknown error"


def _error_code(e: Exception) -> str:
    response = getattr(e, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code or str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _is_transient_reply(e: Exception) -> bool:
    status = (getattr(e, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status >= 500 and status != 501 or _error_code(e) in ("SlowDown", "RequestTimeout", "Throttling")


def _load_botocore_errors() -> tuple[type[Exception], type[Exception], tuple[type[Exception], ...]]:
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )
    from urllib3.exceptions import ProtocolError

    return ClientError, NoCredentialsError, (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError,
                         ReadTimeoutError, ProtocolError, ConnectionError)


_ClientError, _NoCredentialsError, _TRANSIENT = _load_botocore_errors()
