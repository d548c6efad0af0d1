"""Hostile stream lines: the adversarial corpus through the one parser, the batch builder and the
quarantine, and a memory bound for what one line can make the train and release steps hold.

Every line of CORPUS is what an attacker or a broken producer could put on the topic; each has the
one outcome it must get (an event, or a quarantine reason). `test_the_corpus_holds` prints the
count tried / held."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from movierec.batches.builder import parse_batch
from movierec.batches.encoding import decode_columns
from movierec.events import (
    LINE_MAX_BYTES,
    MOVIE_ID_MAX_CHARS,
    QUARANTINE_RAW_BYTES,
    REJECTION_REASONS,
    RateEvent,
    RecommendationEvent,
    Rejection,
    WatchEvent,
    is_movie_id,
    parse_line,
)

REPO = Path(__file__).resolve().parent.parent
T = "2020-01-01T10:00:00"
OK_ID = "the+matrix+1999"
LONGEST_ID = "m" * MOVIE_ID_MAX_CHARS
RECO = f"{T},5,recommendation request host:8082, status {{status}}, result: {{result}}, {{ms}} ms"

# (what it tries, the raw line, the outcome: an event class or a rejection reason)
CORPUS: list[tuple[str, bytes, type | str]] = [
    ("plain watch", f"{T},1,GET /data/m/{OK_ID}/3.mpg".encode(), WatchEvent),
    ("plain rate", f"{T},1,GET /rate/{OK_ID}=4".encode(), RateEvent),
    ("id at the maximum length", f"{T},1,GET /data/m/{LONGEST_ID}/3.mpg".encode(), WatchEvent),
    ("id one over the maximum", f"{T},1,GET /data/m/{LONGEST_ID}m/3.mpg".encode(), "bad_movie_id"),
    ("rate id over the maximum", f"{T},1,GET /rate/{LONGEST_ID}m=4".encode(), "bad_movie_id"),
    ("10 KB movie id", f"{T},1,GET /data/m/{'x' * 10_000}/3.mpg".encode(), "line_too_long"),
    ("1 MB line", b"x" * 1_000_000, "line_too_long"),
    ("line at the byte limit", f"{T},1,GET /data/m/{OK_ID}/3.mpg".ljust(LINE_MAX_BYTES, " ").encode(),
     "bad_minute"),
    ("line one byte over", b"y" * (LINE_MAX_BYTES + 1), "line_too_long"),
    ("trailing NUL in the id", f"{T},1,GET /data/m/{OK_ID}\x00/3.mpg".encode(), "bad_movie_id"),
    ("NUL inside the id", f"{T},1,GET /rate/the\x00matrix=4".encode(), "bad_movie_id"),
    ("tab in the id", f"{T},1,GET /rate/the\tmatrix=4".encode(), "bad_movie_id"),
    ("newline in the id", f"{T},1,GET /rate/the\nmatrix=4".encode(), "bad_movie_id"),
    ("carriage return in the id", f"{T},1,GET /rate/the\rmatrix=4".encode(), "bad_movie_id"),
    ("escape sequence in the id", f"{T},1,GET /rate/\x1b[31mred=4".encode(), "bad_movie_id"),
    ("HTML in the id", f"{T},1,GET /rate/<script>=4".encode(), "bad_movie_id"),
    ("quote in the id", f'{T},1,GET /rate/a"b=4'.encode(), "bad_movie_id"),
    ("backslash in the id", f"{T},1,GET /rate/a\\b=4".encode(), "bad_movie_id"),
    ("backtick in the id", f"{T},1,GET /rate/a`id`=4".encode(), "bad_movie_id"),
    ("non-ASCII letters in the id", f"{T},1,GET /rate/amélie+2001=4".encode(), "bad_movie_id"),
    ("right-to-left override in the id", f"{T},1,GET /rate/abc\u202edcba=4".encode(), "bad_movie_id"),
    ("zero-width space in the id", f"{T},1,GET /rate/ab\u200bc=4".encode(), "bad_movie_id"),
    ("percent-encoded UTF-8 id", f"{T},1,GET /rate/l%c3%a9on+1994=4".encode(), RateEvent),
    ("Arabic-Indic digit rating", f"{T},1,GET /rate/{OK_ID}=\u0663".encode(), "bad_rating"),
    ("full-width digit rating", f"{T},1,GET /rate/{OK_ID}=\uff13".encode(), "bad_rating"),
    ("Arabic-Indic digit minute", f"{T},1,GET /data/m/{OK_ID}/\u0663.mpg".encode(), "bad_minute"),
    ("full-width digit minute", f"{T},1,GET /data/m/{OK_ID}/\uff11\uff12.mpg".encode(), "bad_minute"),
    ("full-width digit user id", f"{T},\uff11\uff12,GET /rate/{OK_ID}=4".encode(), "bad_user_id"),
    ("Devanagari digit user id", f"{T},\u0967,GET /rate/{OK_ID}=4".encode(), "bad_user_id"),
    ("superscript digit user id", f"{T},\u00b2,GET /rate/{OK_ID}=4".encode(), "bad_user_id"),
    ("non-ASCII digit in the time", f"2020-01-0\u0661T10:00:00,1,GET /rate/{OK_ID}=4".encode(), "bad_time"),
    ("non-ASCII digit status",
     RECO.format(status="\u0662\u0660\u0660", result=OK_ID, ms=12).encode(), "bad_recommendation"),
    ("non-ASCII digit latency", RECO.format(status=200, result=OK_ID, ms="\u0661\u0662").encode(),
     "bad_recommendation"),
    ("reco with an over-long id",
     RECO.format(status=200, result=f"{OK_ID}, {LONGEST_ID}m", ms=12).encode(), "bad_recommendation"),
    ("reco with a NUL id", RECO.format(status=200, result="a\x00", ms=12).encode(), "bad_recommendation"),
    ("reco, 20 ids of the longest length",
     RECO.format(status=200, result=", ".join([LONGEST_ID] * 20), ms=12).encode(), RecommendationEvent),
    ("invalid UTF-8", f"{T},1,GET /rate/caf".encode() + b"\xe9=4", "not_utf8"),
    ("lone continuation byte", b"\x80", "not_utf8"),
    ("overlong UTF-8 slash", f"{T},1,GET /rate/a".encode() + b"\xc0\xaf" + b"b=4", "not_utf8"),
    ("UTF-8 encoded surrogate", b"\xed\xa0\x80", "not_utf8"),
    ("user id over int64", f"{T},9223372036854775808,GET /rate/{OK_ID}=4".encode(), "bad_user_id"),
    ("negative user id", f"{T},-1,GET /rate/{OK_ID}=4".encode(), "bad_user_id"),
    ("huge minute", f"{T},1,GET /data/m/{OK_ID}/9999999999.mpg".encode(), "bad_minute"),
    ("rating with 5000 digits", f"{T},1,GET /rate/{OK_ID}={'9' * 5000}".encode(), "bad_rating"),
    ("rating with 10 digits", f"{T},1,GET /rate/{OK_ID}=1234567890".encode(), "bad_rating"),
    ("rating with 9 digits", f"{T},1,GET /rate/{OK_ID}=123456789".encode(), "rating_out_of_range"),
    ("minute with 5000 digits", f"{T},1,GET /data/m/{OK_ID}/{'9' * 5000}.mpg".encode(), "bad_minute"),
    ("latency with 5000 digits", RECO.format(status=200, result=OK_ID, ms="9" * 5000).encode(),
     "bad_recommendation"),
    ("empty", b"", "empty"),
    ("only newlines", b"\r\n\r\n", "empty"),
    ("only spaces", b"     ", "empty"),
    ("path traversal id", f"{T},1,GET /data/m/../../etc/passwd/3.mpg".encode(), "truncated"),
    # A movie id is a string in arrays and lines, never a path: dots are ordinary characters.
    ("dot-dot id", f"{T},1,GET /rate/..=4".encode(), RateEvent),
    ("trailing newline after a good line", f"{T},1,GET /rate/{OK_ID}=4\n".encode(), RateEvent),
    ("a second line after a newline", f"{T},1,GET /rate/{OK_ID}=4\n{T},2,GET /rate/x=5".encode(), "bad_rating"),
]


def _outcome(result) -> type | str:
    return result.reason if isinstance(result, Rejection) else type(result)


def test_the_corpus_holds():
    held = [name for name, raw, expected in CORPUS if _outcome(parse_line(raw)) == expected]
    failed = [(name, _outcome(parse_line(raw)), expected) for name, raw, expected in CORPUS
              if name not in held]
    print(f"adversarial stream corpus: {len(CORPUS)} tried, {len(held)} held")
    assert not failed


@pytest.mark.parametrize("name, raw, expected", CORPUS, ids=[c[0] for c in CORPUS])
def test_every_corpus_line_gets_its_outcome(name, raw, expected):
    result = parse_line(raw)
    assert _outcome(result) == expected
    if isinstance(result, Rejection):
        assert result.reason in REJECTION_REASONS
        assert result.detail and "\n" not in result.detail and len(result.detail) < 200
    elif isinstance(result, (WatchEvent, RateEvent)):
        assert is_movie_id(result.movie_id)


def test_an_accepted_event_never_holds_an_id_it_would_refuse():
    for _, raw, _ in CORPUS:
        event = parse_line(raw)
        ids = getattr(event, "movie_ids", None) or ([event.movie_id] if hasattr(event, "movie_id") else [])
        assert all(is_movie_id(m) and len(m) <= MOVIE_ID_MAX_CHARS for m in ids)


def test_the_quarantine_keeps_the_exact_bytes_of_lines_that_are_not_utf8_and_the_length_of_long_ones():
    bad_utf8 = f"{T},1,GET /rate/caf".encode() + b"\xe9\xff=4"
    long_line = b"z" * 50_000
    records = [(0, bad_utf8), (1, long_line), (2, f"{T},1,GET /rate/a\x00=4".encode()),
               (3, f"{T},1,GET /rate/{OK_ID}=4".encode())]
    batch = parse_batch("t", 0, records, [])
    rows = [json.loads(line) for line in batch.objects["quarantine"].decode().splitlines()]
    by_offset = {r["offset"]: r for r in rows}
    assert base64.b64decode(by_offset[0]["line_b64"]) == bad_utf8
    assert "\\xe9\\xff" in by_offset[0]["line"] and by_offset[0]["reason"] == "not_utf8"
    assert by_offset[1]["reason"] == "line_too_long" and by_offset[1]["line_bytes"] == 50_000
    assert by_offset[1]["truncated"] is True and len(by_offset[1]["line"]) == QUARANTINE_RAW_BYTES
    assert base64.b64decode(by_offset[1]["line_b64"]) == long_line[:QUARANTINE_RAW_BYTES]
    assert by_offset[2]["reason"] == "bad_movie_id" and by_offset[2]["line"].endswith("\x00=4")
    assert "line_b64" not in by_offset[2]  # a UTF-8 line is kept as it is, once
    assert batch.quarantined == {"not_utf8": 1, "line_too_long": 1, "bad_movie_id": 1}
    assert batch.events["rate"] == 1


def test_the_batch_vocabulary_grows_with_the_ids_total_length_not_the_longest():
    lines = [f"{T},{i},GET /rate/m{i}=4".encode() for i in range(2000)]
    small = parse_batch("t", 0, list(enumerate(lines)), []).objects["ratings"]
    wide = parse_batch("t", 0, list(enumerate([*lines[:-1], f"{T},1,GET /rate/{LONGEST_ID}=4".encode()])),
                       []).objects["ratings"]
    assert len(wide) - len(small) < 2 * MOVIE_ID_MAX_CHARS  # '<U' storage would add 2000 x 800 bytes
    columns = decode_columns(wide)
    assert columns["movie_vocab"][columns["movie_code"]][-1] == LONGEST_ID
    assert "movie_vocab_utf8" not in columns


# -- memory: what one hostile line can make the train and release steps hold ---------------------
MEMORY_PROBE = textwrap.dedent('''
    import json, sys, tracemalloc
    from datetime import UTC, datetime
    from movierec.batches.builder import BatchBuilder, store_batch
    from movierec.batches.loaders import load_ratings, load_watches
    from movierec.events import LINE_MAX_BYTES, MOVIE_ID_MAX_CHARS
    from movierec.release.quality import stored_quality_source
    from movierec.snapshot import take_snapshot
    from movierec.store import LocalDirectoryStore

    store = LocalDirectoryStore(sys.argv[1])
    total, batch_size = int(sys.argv[2]), 5000
    T = "2020-01-01T10:{m:02d}:{s:02d}"
    def line(i):
        t = T.format(m=(i // 60) % 60, s=i % 60)
        if i == 17:  # the hostile ones: a 10 KB id, one at the maximum length, a 1 MB line, garbage
            return f"{t},{i},GET /data/m/{'x' * 10_000}/1.mpg".encode()
        if i == 18:
            return f"{t},{i},GET /rate/{'y' * MOVIE_ID_MAX_CHARS}=4".encode()
        if i == 19:
            return b"z" * 1_000_000
        if i == 20:
            return b"\\xff" * LINE_MAX_BYTES
        if i == 21:
            return f"{t},{i},GET /data/m/{'w' * MOVIE_ID_MAX_CHARS}/2.mpg".encode()
        if i % 10 == 1:
            return f"{t},{i % 997},recommendation request h:1, status 200, result: movie+{i % 300}+1999, 9 ms".encode()
        if i % 4 == 0:
            return f"{t},{i % 997},GET /rate/movie+{i % 300}+1999={1 + i % 5}".encode()
        return f"{t},{i % 997},GET /data/m/movie+{i % 300}+1999/{i % 90}.mpg".encode()

    tracemalloc.start()
    for first in range(0, total, batch_size):
        builder = BatchBuilder("movielog1", 0)
        offsets = list(range(first, min(first + batch_size, total)))
        builder.add(offsets, [line(i) for i in offsets])
        store_batch(store, builder.build([]))
    peaks = {"build": tracemalloc.get_traced_memory()[1]}
    for name, step in (("load_watches", lambda: load_watches(store)),
                       ("load_ratings", lambda: load_ratings(store)),
                       ("snapshot", lambda: take_snapshot(store)),
                       ("release_quality", lambda: stored_quality_source(store, 20)(
                           datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 2, tzinfo=UTC)))):
        tracemalloc.reset_peak()
        result = step()
        peaks[name] = tracemalloc.get_traced_memory()[1]
        del result
    w, r = load_watches(store), load_ratings(store)
    print(json.dumps({"peaks": peaks, "watches": len(w), "ratings": len(r.user_ids),
                      "widths": [w.movie_ids.dtype.itemsize // 4, r.movie_ids.dtype.itemsize // 4]}))
''')


def test_one_hostile_line_cannot_make_the_train_or_release_steps_exceed_a_stated_bound(tmp_path):
    """The bound: each loaded row costs at most its numeric columns (~40 bytes) plus 4 bytes per
    character of the longest ACCEPTED id (MOVIE_ID_MAX_CHARS = 200; numpy '<U' columns are as wide
    as their longest string), twice (the loader's sort copies the column once), plus 32 MB of fixed
    overhead. The stream here holds ids of the maximum length in both kinds, a 10 KB id, a 1 MB line
    and a line of invalid UTF-8. Before the bounds, the 10 KB id alone made load_watches need
    4 x 10,000 bytes per watch: 6 GB for 77k watches."""
    records = 80_000
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "store"), str(records)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    rows = report["watches"] + report["ratings"]
    bound = rows * (40 + 2 * 4 * MOVIE_ID_MAX_CHARS) + 32 * 2**20
    print(f"memory probe: {records} records, {report['watches']} watches, {report['ratings']} ratings; peaks (MB) "
          + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in report["peaks"].items()) + f"; bound {bound / 2**20:.0f} MB")
    assert report["widths"] == [MOVIE_ID_MAX_CHARS, MOVIE_ID_MAX_CHARS]  # the longest accepted; not 10,000
    assert report["watches"] > 0.5 * records and report["ratings"] > 0.15 * records
    for step, peak in report["peaks"].items():
        assert peak < bound, f"{step}: peak {peak / 2**20:.0f} MB over the bound {bound / 2**20:.0f} MB"


def test_a_batch_of_huge_lines_keeps_only_their_digests_and_still_counts_duplicates():
    huge = b"h" * 1_000_000
    from movierec.batches.builder import BatchBuilder

    batch_builder = BatchBuilder("t", 0)
    batch_builder.add([0, 1, 2], [huge, huge, huge + b"!"])
    assert batch_builder.duplicate_lines == 1
    assert max(len(k) for k in batch_builder.seen_lines) < 100
    assert batch_builder.build([]).quarantined == {"line_too_long": 3}
