"""On the whole local stack: what the simulator produced arrives in the store exactly once, and
the ingest summaries and the Pushgateway's figures agree with it."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest
import requests

from movierec.batches.loaders import iter_recommendations, load_quarantine, load_ratings, load_watches
from movierec.store import LocalDirectoryStore
from scripts.demo import Progress, bring_down, bring_up, local_stack_env

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # A stack of its own: the caller's service URLs (e.g. CI's shared broker) are not reused.
    own = {k: v for k, v in os.environ.items() if k not in (
        "OPENFAAS_URL", "PUBLIC_URL", "PROMETHEUS_URL", "PUSHGATEWAY_URL", "KAFKA_BOOTSTRAP_SERVERS",
        "STACK_STATE_DIR", "STORE_URL", "SECRETS_DIR")}
    env = local_stack_env(own, state_dir=str(tmp_path_factory.mktemp("agreement") / "var"))
    env["STACK_SIMULATOR"] = "0"  # this test runs the simulator itself, bounded
    handle = bring_up(env, Progress(quiet=True))
    yield handle
    bring_down(handle)


def _pushed(pushgateway_url: str, metric: str) -> dict[str, float]:
    """label set -> value of one metric as the Pushgateway exposes it."""
    text = requests.get(f"{pushgateway_url}/metrics", timeout=5).text
    values = {}
    for line in text.splitlines():
        m = re.match(rf"^{metric}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            values[m.group(1) or ""] = float(m.group(2))
    return values


def test_simulated_events_are_stored_once_and_every_figure_agrees(stack):
    sim = subprocess.run(
        [sys.executable, "-m", "scripts.simulator", "--events", "1500", "--rate", "500",
         "--garbage-share", "0.05", "--recommend-url", stack.public_url, "--timeout-ms", "300"],
        env=stack.env, capture_output=True, text=True, timeout=180, check=True)
    summary_line = [ln for ln in sim.stdout.splitlines() + sim.stderr.splitlines() if ln.startswith("summary ")][-1]
    produced = Counter(json.loads(summary_line[len("summary "):])["produced"])
    assert sum(produced.values()) == 1500 and produced["garbage"] > 0

    events, quarantined, last = Counter(), 0, None
    for _ in range(6):  # bounded: each run stops when the topic is drained or its time is up
        last = stack.invoke("ingest", timeout_s=120)
        events.update(last["events"])
        quarantined += sum(last["quarantined"].values())
        if sum(events.values()) + quarantined >= 1500:
            break
    # The ingest summaries add up to what was produced, kind by kind.
    assert {k: events[k] for k in ("watch", "rate", "recommendation")} == \
        {k: produced[k] for k in ("watch", "rate", "recommendation")}
    assert quarantined == produced["garbage"]

    # The store holds each event exactly once.
    store = LocalDirectoryStore(stack.env["STORE_URL"])
    assert len(load_ratings(store)) == produced["rate"]
    assert len(load_watches(store).user_ids) == produced["watch"]
    assert sum(1 for _ in iter_recommendations(store)) == produced["recommendation"]
    assert len(load_quarantine(store)) == produced["garbage"]

    # The Pushgateway shows the latest run's figures, the same as its summary.
    pushed_records = _pushed(stack.env["PUSHGATEWAY_URL"], "ingest_records")
    assert list(pushed_records.values()) == [float(last["records"])] and last["records"] > 0
    pushed_events = _pushed(stack.env["PUSHGATEWAY_URL"], "ingest_events")
    assert pushed_events
    for labels, value in pushed_events.items():
        kind = re.search(r'kind="([^"]+)"', labels).group(1)
        assert value == last["events"].get(kind, 0)

    # A further run finds nothing new: nothing is stored twice.
    again = stack.invoke("ingest", timeout_s=120)
    assert again["records"] == 0 and again["batches_written"] == 0
