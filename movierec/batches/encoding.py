"""The batch encoding: columns in an `.npz` archive whose bytes depend only on the columns.

Written deterministically (sorted members, fixed zip timestamps, no pickle), loadable with
`numpy.load(allow_pickle=False)`: numeric columns plus a per-batch movie vocabulary and int32
codes, so 1M ratings load in well under a second.

The vocabulary is stored as one UTF-8 byte blob (`movie_vocab_utf8`, uint8) and the end offset of
each id in it (`movie_vocab_end`, int64), so a batch's size grows with the total length of its
distinct ids, never with the longest one (a fixed-width '<U' column of 10,000 ids that holds one
10 KB id would be 400 MB). `decode_columns` gives readers `movie_vocab` as before (a '<U' array
of the distinct ids only: width x vocabulary size, not x rows) and also reads batches written
before this format (a stored '<U' `movie_vocab`).

Owns: `encode_columns`, `decode_columns`, `time_us`, the vocabulary columns (`encode_vocab`,
`decode_vocab`, `decode_vocab_list`)
and `EventColumns` (one kind's columns of one batch, built part by part as records are parsed).

Must not touch: keys (`layout`), which events go where (`builder`), the store.
"""
from __future__ import annotations

import io
import zipfile
from datetime import datetime, timedelta

import numpy as np

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so identical records give identical bytes
_EPOCH_DATETIME = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
VOCAB_BLOB, VOCAB_END = "movie_vocab_utf8", "movie_vocab_end"


def encode_columns(columns: dict[str, np.ndarray]) -> bytes:
    """An .npz archive whose bytes depend only on the columns (no timestamps, stable order)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(columns):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(columns[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def encode_vocab(ids: list[str]) -> dict[str, np.ndarray]:
    """The vocabulary columns: every id's UTF-8 bytes in one blob, and where each one ends."""
    encoded = [m.encode("utf-8") for m in ids]
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    ends = np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), dtype=np.int64)
    return {VOCAB_BLOB: blob, VOCAB_END: ends}


def decode_vocab_list(blob: np.ndarray, ends: np.ndarray) -> list[str]:
    """The ids of `encode_vocab`'s columns, as a list of str (memory: their own lengths)."""
    data = blob.tobytes()
    bounds = ends.tolist()
    if bounds and (bounds[-1] != len(data) or any(b > a for a, b in zip(bounds[1:], bounds))):
        raise ValueError("batch vocabulary offsets do not match its bytes")
    starts = [0, *bounds[:-1]]
    return [data[a:b].decode("utf-8") for a, b in zip(starts, bounds)]


def decode_vocab(blob: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The ids of `encode_vocab`'s columns, as a '<U' array (RatingsTable's movie id type)."""
    ids = decode_vocab_list(blob, ends)
    return np.array(ids, dtype=str) if ids else np.empty(0, dtype="<U1")


def decode_columns(data: bytes, vocab_as_list: bool = False) -> dict[str, np.ndarray]:
    """The batch's columns; `movie_vocab` as a '<U' array, or a list of str with `vocab_as_list`
    (what the coded loaders read: no width that grows with the longest id)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        columns = {name: npz[name] for name in npz.files}
    if VOCAB_BLOB in columns:
        blob, ends = columns.pop(VOCAB_BLOB), columns.pop(VOCAB_END)
        columns["movie_vocab"] = decode_vocab_list(blob, ends) if vocab_as_list else decode_vocab(blob, ends)
    elif vocab_as_list and "movie_vocab" in columns:  # a batch written before the blob format
        columns["movie_vocab"] = columns["movie_vocab"].tolist()
    return columns


def time_us(t: datetime) -> int:
    """A naive (UTC) stream time as the batches store it: microseconds since the epoch."""
    return (t - _EPOCH_DATETIME) // _MICROSECOND


def _times_us(times: list[datetime]) -> np.ndarray:
    # 5x faster than numpy's own conversion of datetime objects (which goes element by element).
    return np.array([(t - _EPOCH_DATETIME) // _MICROSECOND for t in times], dtype=np.int64)


class EventColumns:
    """One kind's columns in one batch: offset, time_us (int64 microseconds since the epoch),
    user_id, movie_code (int32, into movie_vocab, first-seen order over the whole batch) and the
    value column (rating int8 or minute int32). Each added part is converted to numpy at once, so
    building the batch at the end only concatenates."""

    def __init__(self, value_name: str, value_dtype):
        self.value_name, self.value_dtype = value_name, value_dtype
        self.vocab: dict[str, int] = {}
        self.parts: list[dict[str, np.ndarray]] = []
        self.rows = 0

    def extend(self, offsets: list[int], times: list[datetime], users: list[int], movies: list[str],
               values: list[int]) -> None:
        if not offsets:
            return
        vocab = self.vocab
        self.parts.append({
            "offset": np.array(offsets, dtype=np.int64),
            "time_us": _times_us(times),
            "user_id": np.array(users, dtype=np.int64),
            "movie_code": np.fromiter((vocab.setdefault(m, len(vocab)) for m in movies), dtype=np.int32,
                                      count=len(movies)),
            self.value_name: np.array(values, dtype=self.value_dtype),
        })
        self.rows += len(offsets)

    def time_range(self) -> tuple[int, int]:
        """(first, last) event time in microseconds since the epoch of the rows added so far."""
        return (min(int(part["time_us"].min()) for part in self.parts),
                max(int(part["time_us"].max()) for part in self.parts))

    def encode(self) -> bytes:
        columns = {name: np.concatenate([part[name] for part in self.parts]) for name in self.parts[0]}
        columns.update(encode_vocab(list(self.vocab)))
        return encode_columns(columns)
