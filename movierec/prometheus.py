"""Reading instant values from the Prometheus HTTP API (`GET /api/v1/query`).

Owns: one PromQL instant query -> one float (or None when the result is empty or NaN),
with retries and a one-line error naming the Prometheus URL.

Must not touch: which queries to run or what the numbers mean (the release policy owns that).
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import requests

DEFAULT_PROMETHEUS = "http://127.0.0.1:9090"


class PrometheusError(Exception):
    """Prometheus could not answer; the message is one line naming it and the query."""


@dataclass
class PrometheusClient:
    base_url: str = DEFAULT_PROMETHEUS
    timeout_s: float = 10.0
    attempts: int = 3
    backoff_s: float = 0.5

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PrometheusClient:
        env = os.environ if env is None else env
        return cls(base_url=(env.get("PROMETHEUS_URL") or DEFAULT_PROMETHEUS).rstrip("/"))

    def query_value(self, promql: str, at: float | None = None) -> float | None:
        """The single value of an instant query: the sum over all series returned (queries here
        aggregate to one series), None for an empty result or NaN (e.g. 0/0 without traffic)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        payload = self._get("/api/v1/query", params, promql)
        data = payload.get("data") or {}
        result_type, result = data.get("resultType"), data.get("result")
        if result_type == "scalar":
            values = [result[1]]
        elif result_type == "vector":
            values = [series["value"][1] for series in result]
        else:
            raise PrometheusError(f"prometheus {self.base_url}: unexpected result type {result_type!r}: {promql}")
        numbers = [float(v) for v in values]
        numbers = [v for v in numbers if not math.isnan(v)]
        if not numbers:
            return None
        return sum(numbers)

    def _get(self, path: str, params: dict[str, str], promql: str) -> dict:
        url = self.base_url + path
        last = ""
        for attempt in range(1, self.attempts + 1):
            try:
                response = requests.get(url, params=params, timeout=self.timeout_s)
            except requests.RequestException as e:
                last = f"{type(e).__name__}"
            else:
                if response.status_code == 400:  # a bad query never gets better by retrying
                    raise PrometheusError(
                        f"prometheus {self.base_url} rejected query {promql!r}: {_error_text(response)}"
                    )
                if response.status_code == 200:
                    payload = response.json()
                    if payload.get("status") == "success":
                        return payload
                    last = _error_text(response)
                else:
                    last = f"HTTP {response.status_code}"
            if attempt < self.attempts:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        raise PrometheusError(
            f"prometheus {self.base_url} unavailable after {self.attempts} attempts ({last}) for {promql!r}"
        )


def _error_text(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", "")).splitlines()[0][:200]
    except (ValueError, IndexError):
        return response.text.strip()[:200]
