"""The batch format without a broker: the same records give the same bytes, quality flags,
loaders that keep each offset once, and batch builders in a child process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import movierec
from movierec.batches.builder import BatchBuilder, parse_batch, store_batch
from movierec.batches.builders import ProcessBuilders
from movierec.batches.encoding import decode_columns
from movierec.batches.loaders import load_ratings
from movierec.events import RateEvent, parse_line
from movierec.ingest import IngestError
from movierec.store import LocalDirectoryStore

RATE = "2020-01-0{d}T10:00:{s:02d},{u},GET /rate/movie+{m}+1999={r}"
WATCH = "2020-01-0{d}T10:00:{s:02d},{u},GET /data/m/movie+{m}+1999/{minute}.mpg"
RECO = "2020-01-01T10:00:00.5,{u},recommendation request host:8082, status 200, result: a+1, b+2, 12 ms"


def stream_lines(n: int, garbage_every: int = 50) -> list[str]:
    lines = []
    for i in range(n):
        if i % garbage_every == 7:
            lines.append(["garbage", "2020-01-01T10:00:00,x,GET /rate/a=3",
                          "2020-01-01T10:00:00,5,GET /rate/a=9"][i % 3])
        elif i % 3 == 0:
            lines.append(RATE.format(d=1 + i % 9, s=i % 60, u=i % 97, m=i % 31, r=1 + i % 5))
        elif i % 11 == 1:
            lines.append(RECO.format(u=i % 97))
        else:
            lines.append(WATCH.format(d=1 + i % 9, s=i % 60, u=i % 97, m=i % 31, minute=i % 120))
    return lines


def rating_multiset(lines) -> Counter:
    events = (parse_line(x) for x in lines)
    return Counter((e.user_id, e.movie_id, float(e.rating)) for e in events if isinstance(e, RateEvent))


def table_multiset(table) -> Counter:
    return Counter(zip(table.user_ids.tolist(), table.movie_ids.tolist(), table.ratings.tolist()))


@pytest.fixture
def store(tmp_path):
    return LocalDirectoryStore(tmp_path / "store")


def test_the_same_records_give_byte_identical_batches():
    records = [(100 + i, line.encode()) for i, line in enumerate(stream_lines(500))]
    a, b = parse_batch("t", 0, records, []), parse_batch("t", 0, list(records), [])
    assert a.objects == b.objects and set(a.objects) == {"ratings", "watches", "recommendations", "quarantine"}
    ratings = decode_columns(a.objects["ratings"])
    assert ratings["offset"][0] == 100 and ratings["rating"].dtype == np.int8
    assert ratings["movie_vocab"][ratings["movie_code"]][0] == "movie+0+1999"


def test_quality_record_flags_duplicates_and_volume_anomalies():
    line = RATE.format(d=1, s=0, u=1, m=1, r=5).encode()
    records = [(0, line), (1, line), (2, RATE.format(d=1, s=1, u=1, m=1, r=5).encode())]
    quality = parse_batch("t", 0, records, recent_volumes=[1000, 1200, 900]).quality
    assert quality["duplicate_lines"] == 1
    assert quality["duplicate_ratings"] == 2
    assert {"duplicate_lines", "duplicate_ratings", "volume_low"} <= set(quality["flags"])
    assert not quality["ok"]
    high = parse_batch("t", 0, [(i, line) for i in range(100)], recent_volumes=[5, 5]).quality
    assert "volume_high" in high["flags"]


def test_loaders_keep_each_offset_once_when_stored_ranges_overlap(store):
    records = [(i, RATE.format(d=1, s=i % 60, u=i, m=i, r=3).encode()) for i in range(10)]
    store_batch(store, parse_batch("t", 0, records[:6], []))
    store_batch(store, parse_batch("t", 0, records[3:], []))  # overlaps offsets 3..5
    table = load_ratings(store, "t")
    assert sorted(table.user_ids.tolist()) == list(range(10))


def test_ratings_load_in_event_time_order(store):
    late = (0, b"2020-01-02T00:00:00,1,GET /rate/a=5")
    early = (0, b"2020-01-01T00:00:00,2,GET /rate/b=4")
    store_batch(store, parse_batch("t", 0, [late], []))
    store_batch(store, parse_batch("t", 1, [early], []))
    assert load_ratings(store).user_ids.tolist() == [2, 1]


def test_records_added_to_a_batch_in_parts_give_the_same_bytes_as_added_at_once():
    records = [(100 + i, line.encode()) for i, line in enumerate(stream_lines(5000))]
    whole = parse_batch("t", 0, records, [10])
    builder = BatchBuilder("t", 0)
    for start in range(0, len(records), 777):
        part = records[start:start + 777]
        builder.add([o for o, _ in part], [v for _, v in part])
    parts = builder.build([10])
    assert parts.objects == whole.objects and parts.quality == whole.quality
    assert (parts.first, parts.last, parts.records) == (100, 5099, 5000)



def test_a_builder_process_that_dies_stops_the_run_with_an_error_naming_it():
    builders = ProcessBuilders("t")
    try:
        builders.add(0, [0], [RATE.format(d=1, s=0, u=1, m=1, r=5).encode()])
        builders.process.kill()
        builders.process.wait(10)
        with pytest.raises(IngestError, match=r"batch builder process \(pid \d+\) ended unexpectedly"):
            builders.build(0, [])
    finally:
        builders.close()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2][:1]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited (it only waits for its new parent to reap it)


def test_the_builder_process_exits_when_the_ingest_process_is_killed():
    script = ("import sys, time; from movierec.batches.builders import ProcessBuilders; "
              "b = ProcessBuilders('t'); print(b.process.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(movierec.__file__).parents[1])
    try:
        child_pid = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        for _ in range(100):  # the child reads end-of-input and exits; bounded wait, no timing assert
            if not _running(child_pid):
                break
            time.sleep(0.1)
        else:
            os.kill(child_pid, signal.SIGKILL)
            pytest.fail("the builder process outlived the ingest process")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
