"""The release step's online quality reads the time it analyses, not the whole store.

A store of hourly batches (a real `LocalDirectoryStore`, wrapped only to count what is read): the
quality source for one hour reads the recommendations of that hour's batch and the watches of the
batches from `history_s` before it to `within_s` after it, and gives the same counts as a store
whose manifests predate `time_us` (read whole, as before). A memory probe runs a real release
step (the controller, its lease and state on the store; Prometheus and the gateway stood in for)
one hour into a release over a large store, with online quality on: it stays under a bound set by
that hour's batches, where the same step over manifests without times exceeds it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

from movierec.batches.builder import BatchBuilder, store_batch
from movierec.batches.layout import list_batches
from movierec.release.quality import stored_quality_source
from movierec.store import LocalDirectoryStore

REPO = Path(__file__).resolve().parent.parent
HOURS = 10


class CountingStore(LocalDirectoryStore):
    """The local store, noting every key read."""

    def __init__(self, root):
        super().__init__(root)
        self.reads: list[str] = []

    def get(self, key: str) -> bytes:
        self.reads.append(key)
        return super().get(key)


def _line(hour: int, i: int) -> bytes:
    """Line `i` of the `hour`-th hour from 2020-01-01T00:00 (at minutes 01 to 58 of that hour)."""
    t = (datetime(2020, 1, 1) + timedelta(hours=hour, minutes=1 + i % 58, seconds=i % 60)).isoformat()
    user, movie = i % 37, f"movie+{hour * 25 + i % 25}+1999"  # each hour its own 25 movies
    if i % 5 == 0:
        ids = ", ".join(f"movie+{hour * 25 + (i + k) % 25}+1999" for k in range(3))
        return f"{t},{user},recommendation request h:1, status 200, result: {ids}, 9 ms".encode()
    return f"{t},{user},GET /data/m/{movie}/{i % 90}.mpg".encode()


def _hourly_store(root: Path, per_hour: int = 400) -> None:
    store = LocalDirectoryStore(root)
    for hour in range(HOURS):  # one batch per hour, events from hh:01 to hh:58
        builder = BatchBuilder("movielog1", 0)
        offsets = list(range(hour * per_hour, (hour + 1) * per_hour))
        builder.add(offsets, [_line(hour, i) for i in offsets])
        store_batch(store, builder.build([]))


def _strip_times(root: Path) -> None:
    """Make every manifest one written before manifests carried their event times."""
    for path in (root / "data" / "manifests").rglob("*.json"):
        manifest = json.loads(path.read_bytes())
        del manifest["time_us"]
        path.write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _hour(h: int) -> datetime:
    return datetime(2020, 1, 1, h, tzinfo=UTC)


def test_only_the_batches_overlapping_the_analysed_span_are_read(tmp_path):
    _hourly_store(tmp_path / "store")
    store = CountingStore(tmp_path / "store")
    batches = list_batches(store)
    counts = stored_quality_source(store, 20, within_s=3600, history_s=3600)(_hour(5), _hour(6))
    data_read = sorted(k for k in store.reads if not k.startswith("data/manifests/"))
    # recommendations of [05:00, 06:00]: hour 5's batch; watches of [04:00, 07:00]: hours 4, 5, 6
    assert data_read == sorted([batches[5].key("recommendations")]
                               + [batches[h].key("watches") for h in (4, 5, 6)])
    assert counts["stable"].recommended + counts["canary"].recommended == 3 * 400 // 5
    assert counts["stable"].watched > 0


def test_batches_without_times_in_their_manifests_are_still_read_and_give_the_same_counts(tmp_path):
    _hourly_store(tmp_path / "store")
    shutil.copytree(tmp_path / "store", tmp_path / "legacy")
    _strip_times(tmp_path / "legacy")
    legacy = CountingStore(tmp_path / "legacy")
    for start, end in ((_hour(5), _hour(6)), (_hour(0), _hour(1)), (_hour(3), _hour(8))):
        windowed = stored_quality_source(LocalDirectoryStore(tmp_path / "store"), 20, 3600, 3600)(start, end)
        assert stored_quality_source(legacy, 20, 3600, 3600)(start, end) == windowed
    assert {k for k in legacy.reads if k.startswith("data/watches/")} == {
        b.key("watches") for b in list_batches(legacy)}


def test_a_span_with_no_stored_events_reads_no_data_object(tmp_path):
    _hourly_store(tmp_path / "store")
    store = CountingStore(tmp_path / "store")
    counts = stored_quality_source(store, 20)(_hour(20), _hour(21))
    assert counts["stable"].recommended == counts["canary"].recommended == 0
    assert all(k.startswith("data/manifests/") for k in store.reads)


MEMORY_PROBE = textwrap.dedent('''
    import json, sys, tracemalloc
    from datetime import UTC, datetime, timedelta
    from pathlib import Path
    from movierec.batches.builder import BatchBuilder, store_batch
    from movierec.release import ReleaseConfig, ReleaseStore, run_release_step
    from movierec.release.quality import stored_quality_source
    from tests.release_fakes import GOOD, FakePrometheus, started_release
    from tests.test_release_quality_window import _line, _strip_times

    root, hours, per_hour = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    start = datetime(2020, 1, 1, 5, tzinfo=UTC)  # the release starts at hour 5 of the stream
    config = ReleaseConfig(window_s=4 * 3600, min_requests=100, timeout_s=86400, online_quality=True)
    store, _registry, deployer, _v1, _v2 = started_release(root, config, start)
    for hour in range(hours):
        builder = BatchBuilder("movielog1", 0)
        offsets = list(range(hour * per_hour, (hour + 1) * per_hour))
        builder.add(offsets, [_line(hour, i) for i in offsets])
        store_batch(store, builder.build([]))
    peaks, actions = {}, []
    for name in ("windowed", "legacy"):
        if name == "legacy":
            _strip_times(root / "store")
        tracemalloc.start()
        result = run_release_step(config, store, FakePrometheus({"recommend": GOOD, "recommend-canary": GOOD}),
                                  deployer, None, now=start + timedelta(hours=1),
                                  quality_source=stored_quality_source(store, config.canary_percent, 3600, 3600))
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        actions.append(result.action)
    recommended = ReleaseStore(store).current().analysis["quality"]
    print(json.dumps({"peaks": peaks, "actions": actions, "quality": recommended}))
''')


def test_a_release_step_an_hour_into_a_release_stays_within_that_hours_bound_in_a_large_store(tmp_path):
    """The bound: 256 bytes for each row of the batches a one-hour span touches (the recommendations
    of 1 batch, the watches of 3: the hour, the history hour before it, the within-hour after it),
    plus 4 MB, whatever the store holds. The store holds 96 hourly batches; read whole (manifests
    without times), the same step needs several times that bound. Both steps wait (the window is
    4 hours) after analysing the same hour."""
    hours, per_hour = 96, 4000
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path), str(hours), str(per_hour)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    peaks = report["peaks"]
    assert report["actions"] == ["wait", "wait"] and report["quality"]["canary"]["recommended"] > 0
    bound = 4 * per_hour * 256 + 4 * 2**20
    print(f"release quality read, one hour of {hours} hourly batches of {per_hour}: peak (MB) "
          f"windowed {peaks['windowed'] / 2**20:.1f}, whole store {peaks['legacy'] / 2**20:.1f}; "
          f"bound {bound / 2**20:.0f} MB")
    assert peaks["windowed"] < bound
    assert peaks["legacy"] > bound  # the bound tells the two apart: it is not one any read meets
