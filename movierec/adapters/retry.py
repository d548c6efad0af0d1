"""The one retry helper: attempts with exponential backoff, then one line naming the endpoint.

Owns: `retry(call, what=..., attempts=..., backoff_s=..., retry_on=...)`. Every adapter's calls to
a service go through it, so "how often, how long, what the error says" is decided once.

Must not touch: what is called or what its answer means.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from movierec.errors import MovierecError, Unavailable, one_line

T = TypeVar("T")
log = logging.getLogger("movierec.retry")


def retry(
    call: Callable[[], T],
    *,
    what: str,
    attempts: int = 3,
    backoff_s: float = 0.5,
    retry_on: tuple[type[BaseException], ...] = (OSError,),
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`call()`, retried on `retry_on` up to `attempts` times with backoff doubling from
    `backoff_s`. Deliberate errors (MovierecError) that are not `Unavailable` pass through at once;
    the last failure becomes `Unavailable("<what>: <error> (after N attempts)")`."""
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
    detail = str(last) if isinstance(last, Unavailable) else one_line(last)
    raise Unavailable(f"{what}: {detail} (after {attempts} attempts)") from last
