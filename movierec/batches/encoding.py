"""The batch encoding: columns in an `.npz` archive whose bytes depend only on the columns.

Written deterministically (sorted members, fixed zip timestamps, no pickle), loadable with
`numpy.load(allow_pickle=False)`: numeric columns plus a per-batch movie vocabulary and int32
codes, so 1M ratings load in well under a second.

Owns: `encode_columns`, `decode_columns` and `EventColumns` (one kind's columns of one batch,
built part by part as records are parsed).

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


def decode_columns(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


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

    def encode(self) -> bytes:
        columns = {name: np.concatenate([part[name] for part in self.parts]) for name in self.parts[0]}
        columns["movie_vocab"] = np.array(list(self.vocab), dtype=str)
        return encode_columns(columns)
