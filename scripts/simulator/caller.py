"""The simulator's HTTP caller: what a real client of the public entry does, and what it sees.

Owns: `call_recommend` (`GET <url>/recommend/<uid>` with an 800 ms timeout by default, the body
capped at 64 KiB; never raises: a timeout or refused connection is status 0 with the error text,
any non-200 keeps its status), `CallResult`, `server_name` (what the recommendation line names as
the server), `DEFAULT_RECOMMEND_URL` and `CALLER_TIMEOUT_MS`.

Must not touch: the services it calls (it only calls them, like a client would), the stream
(scripts/simulator/runner.py logs each call as a recommendation line), the population.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from movierec.events import is_movie_id

DEFAULT_RECOMMEND_URL = "http://127.0.0.1:8082"
CALLER_TIMEOUT_MS = 800  # what the real caller waits; slower answers are failures (status 0)
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class CallResult:
    status: int  # HTTP status, or 0 when there was no answer in time
    movie_ids: tuple[str, ...]
    error: str | None
    latency_ms: int


def server_name(base_url: str) -> str:
    parts = urlsplit(base_url)
    return parts.netloc or base_url


def call_recommend(session, base_url: str, user_id: int, timeout_ms: int = CALLER_TIMEOUT_MS) -> CallResult:
    """`GET <base_url>/recommend/<user_id>` like the real caller: never raises; a timeout or a
    refused connection is status 0 with the error text, any non-200 keeps its status."""
    import requests

    server = server_name(base_url)
    start = time.perf_counter()
    try:
        response = session.get(f"{base_url.rstrip('/')}/recommend/{user_id}", timeout=timeout_ms / 1000,
                               stream=True)
        try:
            body = response.raw.read(MAX_BODY_BYTES, decode_content=True)
        finally:
            response.close()
    except requests.Timeout:
        return CallResult(0, (), f"TimeoutException: Request timeout to {server} after {timeout_ms} ms",
                          _elapsed_ms(start))
    except requests.RequestException as e:
        kind = "ConnectException" if isinstance(e, requests.ConnectionError) else type(e).__name__
        return CallResult(0, (), f"{kind}: {_one_line(str(e))[:160] or 'connection failed'}", _elapsed_ms(start))
    latency = _elapsed_ms(start)
    if latency > timeout_ms:  # headers came in time but the whole answer did not
        return CallResult(0, (), f"TimeoutException: Request timeout to {server} after {timeout_ms} ms", latency)
    text = body.decode("utf-8", "replace").strip()
    if response.status_code != 200:
        return CallResult(response.status_code, (), _one_line(text)[:160] or f"HTTP {response.status_code}",
                          latency)
    ids = tuple(x for x in (s.strip() for s in text.split(",")) if is_movie_id(x))
    return CallResult(200, ids, None, latency)


def _elapsed_ms(start: float) -> int:
    return round((time.perf_counter() - start) * 1000)


def _one_line(text: str) -> str:
    # The result field ends at ", <n> ms": newlines would break the line.
    return " ".join(text.split())
