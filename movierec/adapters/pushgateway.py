"""Pushing metric families to a Prometheus Pushgateway (`PUT /metrics/job/<job>`).

Owns: one push of a job's families, replacing that job's group, through the one retry helper.
A push never fails its caller: the batch run or decision it reports has already happened, so the
outcome comes back as "pushed", "skipped" (no URL configured) or "failed: <one line>".

Must not touch: which figures a job reports (the domain builds `movierec.metrics.Family` lists).
"""
from __future__ import annotations

import logging
from urllib.parse import quote

import requests

from movierec.adapters.retry import retry
from movierec.errors import Unavailable
from movierec.metrics import Family, render_text

log = logging.getLogger("movierec.pushgateway")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def push(url: str | None, job: str, families: list[Family], timeout_s: float = 5.0, attempts: int = 2) -> str:
    """Replace job `job`'s metrics on the Pushgateway at `url` with `families`."""
    if not url:
        return "skipped"
    target = f"{url.rstrip('/')}/metrics/job/{quote(job, safe='')}"
    body = render_text(families).encode()

    def put() -> None:
        response = requests.put(target, data=body, headers={"Content-Type": CONTENT_TYPE}, timeout=timeout_s)
        if response.status_code >= 300:
            raise Unavailable(f"pushgateway {url} answered HTTP {response.status_code}")

    try:
        retry(put, what=f"pushgateway {url}", attempts=attempts, backoff_s=0.2,
              retry_on=(requests.RequestException, OSError))
    except Unavailable as e:
        log.warning("metrics of job %s not pushed: %s", job, e)
        return f"failed: {e}"
    return "pushed"
