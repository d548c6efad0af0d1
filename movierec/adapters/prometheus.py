"""Reading values from the Prometheus HTTP API (`GET /api/v1/query`, `/api/v1/query_range`).

Owns: one PromQL instant query -> one float (or None when the result is empty or NaN), one range
query -> the points of its first series, through the one retry helper, with one-line
`PrometheusError`s (Unavailable) naming the Prometheus URL. A query Prometheus rejects (HTTP 400)
is not retried. Configuration: PROMETHEUS_URL (movierec.settings).

Must not touch: which queries to run or what the numbers mean (the release policy owns that).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from movierec.adapters.retry import retry
from movierec.errors import Unavailable
from movierec.settings import Settings

DEFAULT_PROMETHEUS = Settings({}).get("PROMETHEUS_URL")


class PrometheusError(Unavailable):
    """Prometheus could not answer (or rejected a query); one line naming it and the query."""


@dataclass
class PrometheusClient:
    base_url: str = DEFAULT_PROMETHEUS
    timeout_s: float = 10.0
    attempts: int = 3
    backoff_s: float = 0.5

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **options: Any) -> PrometheusClient:
        return cls(base_url=Settings(env).get("PROMETHEUS_URL"), **options)

    def query_value(self, promql: str, at: float | None = None) -> float | None:
        """The single value of an instant query: the sum over all series returned (queries here
        aggregate to one series), None for an empty result or NaN (e.g. 0/0 without traffic)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params, promql)
        result_type, result = data.get("resultType"), data.get("result")
        if result_type == "scalar":
            values = [result[1]]
        elif result_type == "vector":
            values = [series["value"][1] for series in result]
        else:
            raise PrometheusError(f"prometheus {self.base_url}: unexpected result type {result_type!r}: {promql}")
        numbers = [v for v in (float(v) for v in values) if not math.isnan(v)]
        if not numbers:
            return None
        return sum(numbers)

    def query_range(self, promql: str, start: float, end: float, step_s: float) -> list[tuple[float, float]]:
        """The finite points (time, value) of the first series of a range query ([] if none)."""
        params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"}
        series = self._get("/api/v1/query_range", params, promql).get("result") or []
        if not series:
            return []
        points = [(float(t), float(v)) for t, v in series[0]["values"]]
        return [(t, v) for t, v in points if math.isfinite(v)]  # NaN: 0/0 with no traffic in the window

    def _get(self, path: str, params: dict[str, str], promql: str) -> dict:
        """The `data` of a successful answer; a rejected query (400) at once, the rest retried."""
        url = self.base_url + path

        def get() -> requests.Response:
            response = requests.get(url, params=params, timeout=self.timeout_s)
            if response.status_code == 400:
                return response
            if response.status_code != 200:
                raise PrometheusError(f"HTTP {response.status_code}")
            try:
                payload = response.json()
            except ValueError:
                raise PrometheusError("answered no JSON") from None
            if payload.get("status") != "success":
                raise PrometheusError(_error_text(response))
            return response

        response = retry(get, what=f"prometheus {self.base_url} (query {promql[:120]!r})", attempts=self.attempts,
                         backoff_s=self.backoff_s, retry_on=(requests.RequestException,), error=PrometheusError)
        if response.status_code == 400:  # a bad query never gets better by retrying
            raise PrometheusError(f"prometheus {self.base_url} rejected query {promql!r}: {_error_text(response)}")
        return response.json().get("data") or {}


def _error_text(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", "")).splitlines()[0][:200]
    except (ValueError, IndexError, AttributeError):
        return response.text.strip()[:200]
