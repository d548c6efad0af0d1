"""The data plane's call log (localfaas.calllog), on real files: every complete line is counted
once, a line nginx has not finished waits for its rest, a malformed line is counted as such and
skipped, a restarted reader goes on from the recorded offset, and rotation loses no line."""
from __future__ import annotations

from types import SimpleNamespace

from localfaas.calllog import CallLog


class Counts:
    """What the reader reports, as GatewayMetrics would receive it."""

    def __init__(self):
        self.started, self.finished = [], []

    def call_started(self, label):
        self.started.append(label)

    def call_finished(self, label, code, seconds):
        self.finished.append((label, code, seconds))


def reader(tmp_path, counts, reopened=None, rotate_bytes=1 << 20):
    runtime = SimpleNamespace(invocation_count=0)
    supervisor = SimpleNamespace(functions={"echo": runtime})
    log = CallLog(tmp_path / "calls.log", counts, supervisor, reopened or (lambda: None), rotate_bytes=rotate_bytes)
    return log, runtime


def append(tmp_path, text):
    with open(tmp_path / "calls.log", "a") as out:
        out.write(text)


def test_each_complete_line_is_one_started_and_finished_call_and_one_invocation(tmp_path):
    counts = Counts()
    log, runtime = reader(tmp_path, counts)
    log.resume()
    append(tmp_path, "echo.openfaas-fn 200 0.002\necho.openfaas-fn 502 0.010\nech")
    assert log.read() == 2
    assert counts.finished == [("echo.openfaas-fn", 200, 0.002), ("echo.openfaas-fn", 502, 0.010)]
    assert counts.started == ["echo.openfaas-fn"] * 2 and runtime.invocation_count == 2
    append(tmp_path, "o.openfaas-fn 200 0.5\n")  # the rest of the unfinished line
    assert log.read() == 1 and counts.finished[-1] == ("echo.openfaas-fn", 200, 0.5)


def test_nothing_is_counted_before_resume_and_a_malformed_line_is_skipped_and_counted(tmp_path):
    counts = Counts()
    append(tmp_path, "echo.openfaas-fn 200 0.001\n")
    log, _ = reader(tmp_path, counts)
    assert log.read() == 0 and counts.finished == []
    log.resume()  # no recorded offset: the lines before this reader belong to no one's counters
    append(tmp_path, "not a call line at all\necho.openfaas-fn 200 0.003\n")
    log.read()
    assert log.malformed == 1 and counts.finished == [("echo.openfaas-fn", 200, 0.003)]


def test_a_restarted_reader_goes_on_from_the_recorded_offset(tmp_path):
    first = Counts()
    log, _ = reader(tmp_path, first)
    log.resume()
    append(tmp_path, "echo.openfaas-fn 200 0.001\n")
    log.read()
    append(tmp_path, "echo.openfaas-fn 200 0.002\necho.openfaas-fn 200 0.003\n")  # while no reader runs
    again = Counts()
    log2, _ = reader(tmp_path, again)
    log2.resume()
    log2.read()
    assert [seconds for _, _, seconds in again.finished] == [0.002, 0.003]


def test_rotation_reads_the_old_file_to_its_end_and_goes_on_in_the_new_one(tmp_path, monkeypatch):
    monkeypatch.setattr("localfaas.calllog.OLD_FILE_GRACE_S", 0.0)
    counts, reopened = Counts(), []
    log, _ = reader(tmp_path, counts, reopened=lambda: reopened.append(True), rotate_bytes=50)
    log.resume()
    append(tmp_path, "echo.openfaas-fn 200 0.001\necho.openfaas-fn 200 0.002\n")
    log.read()  # past 50 bytes: rotated, nginx asked to reopen
    assert reopened == [True] and (tmp_path / "calls.log.old").exists()
    with open(tmp_path / "calls.log.old", "a") as late:  # a worker still writing to the old file
        late.write("echo.openfaas-fn 200 0.003\n")
    append(tmp_path, "echo.openfaas-fn 200 0.004\n")  # the reopened file
    log.read()
    log.read()
    assert sorted(seconds for _, _, seconds in counts.finished) == [0.001, 0.002, 0.003, 0.004]
    assert not (tmp_path / "calls.log.old").exists()
