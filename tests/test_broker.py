"""scripts.broker: the local Tansu broker's CLI starts, reports and stops it by PID."""
from __future__ import annotations

from scripts._proc import free_port, pid_alive
from scripts.broker import ensure_topic, main


def test_broker_cli_starts_creates_the_topic_reports_and_stops_by_pid(tmp_path, capsys):
    port = free_port()
    state = str(tmp_path)
    assert main(["start", "--port", str(port), "--state-dir", state, "--topic", "movielog1"]) == 0
    pid = int((tmp_path / "run" / "broker.pid").read_text())
    try:
        assert main(["status", "--state-dir", state]) == 0
        assert main(["start", "--port", str(port), "--state-dir", state]) == 0  # idempotent
        assert "already running" in capsys.readouterr().out
        ensure_topic(f"127.0.0.1:{port}", "movielog1", 1)  # exists: no error
    finally:
        assert main(["stop", "--state-dir", state]) == 0
    assert not pid_alive(pid)
    assert not (tmp_path / "run" / "broker.pid").exists()
    assert main(["status", "--state-dir", state]) == 3


def test_broker_start_on_a_busy_port_fails_with_one_clear_line(tmp_path, capsys, kafka_bootstrap):
    port = kafka_bootstrap.rsplit(":", 1)[1]
    assert main(["start", "--port", port, "--state-dir", str(tmp_path)]) == 1
    assert f"127.0.0.1:{port} is already in use" in capsys.readouterr().err
