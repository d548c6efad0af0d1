"""`up`'s last step on the whole local stack: the first curl gets movie ids, not an empty line.

A stack of its own with the ingest schedule an hour away, so nothing but `first_answer` can start
the ingest run that turns the streamed lines into the popularity recommend answers from.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests

from movierec.store import LocalDirectoryStore
from scripts.demo import Progress, bring_down, bring_up, local_stack_env
from scripts.stack.first_answer import first_answer

pytestmark = pytest.mark.stack

USER = 42


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    own = {k: v for k, v in os.environ.items() if k not in (
        "OPENFAAS_URL", "PUBLIC_URL", "PROMETHEUS_URL", "PUSHGATEWAY_URL", "KAFKA_BOOTSTRAP_SERVERS",
        "STACK_STATE_DIR", "STORE_URL", "SECRETS_DIR")}
    own.update({"STACK_SIMULATOR": "0", "INGEST_SCHEDULE": "@every 1h", "TRAIN_SCHEDULE": "@every 1h"})
    env = local_stack_env(own, state_dir=str(tmp_path_factory.mktemp("first-answer") / "var"))
    handle = bring_up(env, Progress(quiet=True))
    yield handle
    bring_down(handle)


def _answer(stack) -> tuple[int, str, str]:
    """(status, X-Model-Version, body) once recommend has a ready replica (a 503 before, bounded)."""
    deadline = time.monotonic() + 60
    while True:
        reply = requests.get(f"{stack.public_url}/recommend/{USER}", timeout=5)
        if reply.status_code != 503 or time.monotonic() > deadline:
            return reply.status_code, reply.headers.get("X-Model-Version", ""), reply.text.strip()
        time.sleep(0.2)


def test_with_nothing_streamed_it_says_so_within_its_bound_instead_of_hanging(stack):
    assert _answer(stack) == (200, "popularity", "")  # nothing ingested: an empty line
    line = first_answer(stack.config, USER, wait_s=3)
    assert line.startswith("no recommendations with ids yet after 3 s") and "function-ingest.log" in line


def test_once_lines_are_streamed_it_has_them_ingested_and_returns_when_the_answer_has_ids(stack):
    subprocess.run([sys.executable, "-m", "scripts.simulator", "--events", "300", "--rate", "500", "--backfill", "300",
                    "--recommend-url", stack.public_url, "--timeout-ms", "300"],
                   env=stack.env, capture_output=True, text=True, timeout=120, check=True)
    assert _answer(stack)[2] == ""  # streamed, not ingested (the schedule is an hour away)

    line = first_answer(stack.config, USER, wait_s=60)

    assert line.startswith("first recommendations ") and "popularity of what is ingested" in line, line
    status, version, body = _answer(stack)
    assert status == 200 and version == "popularity" and len(body.split(",")) >= 5
    assert LocalDirectoryStore(stack.env["STORE_URL"]).list("data/ratings/"), "the run it asked for stored nothing"
