"""Selection over score and id arrays: the top-k of a score vector and positions in a sorted array.

Owns `top_k_indices` (the k largest scores, score desc then index asc, exact at ties) and
`lookup_sorted` (positions of needles in a sorted, unique haystack). Pure numpy: the serving hot
path (`movierec.model`) and training (`movierec.training`, `movierec.ranking`) share them.
Must not touch: models, files, HTTP or any service.
"""
from __future__ import annotations

import numpy as np


def lookup_sorted(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """Position of each needle in a sorted, unique haystack, or -1 where it is absent."""
    if len(needles) == 0 or len(haystack) == 0:
        return np.full(len(needles), -1, dtype=np.int64)
    pos = np.searchsorted(haystack, needles)
    found = haystack[np.minimum(pos, len(haystack) - 1)] == needles
    return np.where(found & (pos < len(haystack)), pos, -1)


def top_k_indices(scores: np.ndarray, k: int, n_available: int | None = None) -> np.ndarray:
    """Indices of the k largest scores, ordered by score desc then index asc.

    `n_available` says how many scores are real (the rest are -inf placeholders for excluded
    items). Ties at the k-th place are all considered, so the tie-break is exact. On a catalogue
    of 512+ a threshold comes first from a strided sample of ~256 (the value about 3k scores of
    the whole reach): one comparison keeps the candidates, only those are partitioned and sorted;
    when fewer than k reach it, everything is partitioned instead, so the answer never changes.
    """
    n = len(scores)
    k = min(k, n if n_available is None else n_available)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    candidates = None
    if n >= 512 and k * 16 <= n:
        sample = scores[:: max(1, n // 256)]
        rank = min(len(sample), -(-3 * k * len(sample) // n) + 1)
        above = np.flatnonzero(scores >= np.partition(sample, len(sample) - rank)[len(sample) - rank])
        candidates = above if len(above) >= k else None
    if candidates is None:
        candidates = np.arange(n)
    if k < len(candidates):
        values = scores[candidates]
        candidates = candidates[values >= np.partition(values, len(values) - k)[len(values) - k]]
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order[:k]]
