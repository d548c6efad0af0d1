"""The one retry helper: attempts with exponential backoff, then one line naming the endpoint.

Owns: `retry(call, what=..., attempts=..., backoff_s=..., retry_on=..., error=...)`. Every adapter's
calls to a service go through it, so "how often, how long, what the error says" is decided once;
`error` is the adapter's own `Unavailable` subclass (e.g. `GatewayError`), so callers can tell which
dependency failed by its class as well as by its message.

Must not touch: what is called or what its answer means.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TypeVar

from movierec.errors import MovierecError, Unavailable, one_line

T = TypeVar("T")
log = logging.getLogger("movierec.retry")
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\"()\[\]]+")
MAX_DETAIL = 300


def retry(
    call: Callable[[], T],
    *,
    what: str,
    attempts: int = 3,
    backoff_s: float = 0.5,
    retry_on: tuple[type[BaseException], ...] = (OSError,),
    error: type[Unavailable] = Unavailable,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`call()`, retried on `retry_on` (and on `Unavailable` raised by `call`) up to `attempts` times
    with backoff doubling from `backoff_s`. Deliberate errors (MovierecError) that are not
    `Unavailable` pass through at once, as does anything not in `retry_on`; the last failure becomes
    `error("<what>: <error> (after N attempts)")`."""
    attempts = max(1, attempts)
    last: BaseException | None = None
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except MovierecError as e:
            if not isinstance(e, Unavailable):
                raise
            last = e
        except retry_on as e:
            last = e
        if attempt < attempts:
            sleep(backoff_s * 2 ** (attempt - 1))
    assert last is not None
    raise error(f"{what}: {_detail(last)} (after {attempts} attempts)") from last


def _detail(error: BaseException) -> str:
    """The error in one short line: an Unavailable's own message; for a client library's long
    wrapper (urllib3's "Max retries exceeded ... [Errno 111] Connection refused") the errno part."""
    if isinstance(error, Unavailable):
        return str(error)
    text = one_line(error)
    found = _ERRNO.search(text) if len(text) > 160 else None
    if found:
        return f"{type(error).__name__}: {found.group(0).strip()}"
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."
