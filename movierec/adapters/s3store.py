"""The S3 backend of the object store (MinIO in production, any S3 endpoint by URL).

Owns `S3Store`: the `ObjectStore` protocol of `movierec.store` over boto3, with an endpoint URL
(`S3_ENDPOINT_URL`), credentials from the secret files `s3-access-key` / `s3-secret-key`
(fallback: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`), retries through the one retry helper on
connection errors and 5xx/throttling answers (`S3_ATTEMPTS`), and write-once semantics for `put_once`:
- a conditional PUT (`If-None-Match: *`) where the server supports it (S3, MinIO, moto);
- else HEAD then PUT (a narrow race window, acceptable for the single writer per key we have);
- on conflict the stored bytes are compared: equal is a no-op, different is ObjectExistsError.
`put_once_file` streams a local file as the body of that same PUT (the file is opened again on each
attempt, so a retry sends it whole), hashing what botocore reads: the request carries the sha256
(`x-amz-checksum-sha256`), so S3 and MinIO refuse bytes that do not match it; a server that does
not check it (moto) still gets a `ChecksumMismatchError` afterwards from the hash of what was
sent. `get_file` streams an object to a local file in chunks, hashing it on the way.
`replace` is a plain PUT, which S3 makes atomic (readers see the old or the new object).

Must not touch: which objects exist or what they mean (callers decide keys); HTTP of the service.
"""
from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlparse

from movierec.adapters.retry import retry
from movierec.settings import Settings
from movierec.store import (
    CHUNK,
    ChecksumMismatchError,
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
        if self._write_once(key, lambda **cond: self._client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, **cond)):
            return True
        if self.get(key) == data:
            return False
        raise ObjectExistsError(f"{self.describe()}: {key} exists with different content (write-once)")

    def put_once_file(self, key: str, path: str | os.PathLike[str], sha256: str) -> bool:
        size = os.path.getsize(path)  # the caller's file: its own OSError, not the store's
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        sent: list[_HashingReader] = []

        def put(**cond):
            with open(path, "rb") as f:
                body = _HashingReader(f)
                sent.append(body)
                return self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body,
                                               ContentLength=size, ChecksumSHA256=checksum, **cond)

        try:
            written = self._write_once(key, put)
        except StoreUnavailableError as e:
            if _error_code(e.__cause__) in ("BadDigest", "XAmzContentChecksumMismatch", "InvalidDigest"):
                raise ChecksumMismatchError(f"{self.describe()}: {key}: {path} does not hash to {sha256[:12]}: "
                                            f"refused by the server") from None
            raise
        if not written:
            if self._stored_sha256(key) == sha256:
                return False
            raise ObjectExistsError(f"{self.describe()}: {key} exists with different content (write-once)")
        actual = sent[-1].hexdigest()
        if actual != sha256:
            raise ChecksumMismatchError(f"{self.describe()}: {key}: {path} hashed to {actual[:12]} while it was "
                                        f"sent, not {sha256[:12]} (the object holds what was sent)")
        return True

    def _write_once(self, key: str, put: Callable[..., object]) -> bool:
        """PUT unless the key exists: True if written now, False if an object was already there."""
        if self._conditional_put:
            try:
                self._call(f"put {key}", lambda: put(IfNoneMatch="*"))
                return True
            except _ClientError as e:
                code = _error_code(e)
                if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                    return False
                if code in ("NotImplemented", "501"):
                    self._conditional_put = False
                else:
                    raise self._unavailable(f"put {key}", e) from e
        if self.exists(key):
            return False
        try:
            self._call(f"put {key}", put)
        except _ClientError as e:
            raise self._unavailable(f"put {key}", e) from e
        return True

    def _stored_sha256(self, key: str) -> str:
        """The sha256 of a stored object, hashed as it streams (never held whole)."""
        digest = hashlib.sha256()
        self._stream(key, digest.update)
        return digest.hexdigest()

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

    def get_file(self, key: str, path: str | os.PathLike[str]) -> str:
        with open(path, "wb") as f:
            def write(chunk: bytes) -> None:
                digest.update(chunk)
                f.write(chunk)

            def restart() -> None:  # a retried download starts the file and the hash again
                nonlocal digest
                f.seek(0)
                f.truncate()
                digest = hashlib.sha256()

            digest = hashlib.sha256()
            self._stream(key, write, restart)
            return digest.hexdigest()

    def _stream(self, key: str, sink: Callable[[bytes], object], restart: Callable[[], None] | None = None) -> None:
        full = self._key(key)

        def download() -> None:
            if restart is not None:
                restart()
            body = self._client.get_object(Bucket=self.bucket, Key=full)["Body"]
            for chunk in body.iter_chunks(CHUNK):
                sink(chunk)

        try:
            self._call(f"get {key}", download)
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


class _HashingReader:
    """A file as a request body, hashing every byte botocore reads (a rewind starts over)."""

    def __init__(self, f):
        self._f, self._digest = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        chunk = self._f.read(n)
        self._digest.update(chunk)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        if (offset, whence) != (0, 0) and (offset, whence) != (self._f.tell(), 0):
            raise OSError("a hashed request body only rewinds to its start")
        if offset == 0:
            self._digest = hashlib.sha256()
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


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
