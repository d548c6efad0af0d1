"""`make down` (scripts.stack down) drains our own broker before stopping it: the local Tansu keeps
its log in memory only, so one last ingest run stores what it held (events produced just before
`down` are in the store after it), bounded in time, and `down` prints what it stored. When that run
fails, `down` says so in one line and still stops the broker. Runs the real broker and the real
ingest CLI; the other services are not started (down skips what does not run)."""
from __future__ import annotations

import re

import pytest

from movierec.store import LocalDirectoryStore
from scripts.stack.cli import down
from scripts.stack.processes import running_pid, start_service
from scripts.stack.services import services
from tests.test_ingest_epochs import facts, stored, unique_lines
from tests.test_kafka_ingest import produce
from tests.test_stack_operator import config_on_free_ports


@pytest.fixture
def broker_only(tmp_path, monkeypatch):
    """A stack config on free ports whose only running service is its own broker."""
    for name in ("STORE_URL", "STORE_DIR", "KAFKA_TOPIC", "KAFKA_GROUP_ID"):
        monkeypatch.delenv(name, raising=False)
    config = config_on_free_ports(tmp_path)
    broker = next(s for s in services(config) if s.name == "broker")
    pid, started = start_service(config, broker)
    assert started
    yield config, broker, pid
    if running_pid(config, broker) is not None:  # only when down failed: never leave ours running
        from scripts.stack.processes import stop_pid

        stop_pid(pid, broker.stop_grace_s, broker.stop_signal)


def test_down_stores_what_the_broker_held_before_stopping_it(broker_only, capsys):
    config, broker, _pid = broker_only
    lines = unique_lines(7, 1200)
    produce(config.kafka_bootstrap, config.kafka_topic, lines, partitions=1)  # just before `down`

    assert down(config) == 0

    out = capsys.readouterr().out
    assert running_pid(config, broker) is None
    assert re.search(r"^ingest\s+final run stored 1200 records in \d+ batches \([\d.]+s\), nothing left in the "
                     r"broker$", out, re.MULTILINE), out
    assert out.index("final run stored") < out.index("broker ")  # drained, then stopped
    got = stored(LocalDirectoryStore(config.state_dir / "store"))
    assert got == facts(lines)  # every event once: none lost with the broker's memory, none twice


def test_a_failed_final_ingest_is_one_line_and_the_broker_still_stops(broker_only, capsys, monkeypatch):
    config, broker, _pid = broker_only
    monkeypatch.setenv("STORE_URL", "s3://")  # a store the ingest run cannot open
    produce(config.kafka_bootstrap, config.kafka_topic, unique_lines(8, 10), partitions=1)

    assert down(config) == 0

    out = capsys.readouterr().out
    [failed] = [line for line in out.splitlines() if line.startswith("ingest")]
    assert "final run FAILED (" in failed and "stopping it anyway" in failed
    assert running_pid(config, broker) is None
