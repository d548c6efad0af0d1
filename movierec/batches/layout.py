"""Where batches live: the `data/` keys and the list of committed batches.

Owns: `KINDS` (the objects of a batch), `EVENT_KINDS` (the stream events a batch counts),
`EXTENSIONS`, `batch_key`, `BatchRef` (one batch, named by its manifest key) and `list_batches`.
The layout itself is drawn in the package docstring (`movierec.batches`).

Must not touch: what is inside the objects (`encoding`, `builder`), Kafka.
"""
from __future__ import annotations

from dataclasses import dataclass

from movierec.store import ObjectStore

KINDS = ("ratings", "watches", "recommendations", "quarantine")
EVENT_KINDS = ("watch", "rate", "recommendation")
EXTENSIONS = {"ratings": "npz", "watches": "npz", "recommendations": "jsonl", "quarantine": "jsonl",
              "manifests": "json"}


def batch_key(kind: str, topic: str, partition: int, first: int, last: int) -> str:
    return f"data/{kind}/{topic}/p{partition}/{first:020d}-{last:020d}.{EXTENSIONS[kind]}"


@dataclass(frozen=True, order=True)
class BatchRef:
    """One stored batch, as named by its manifest key."""

    topic: str
    partition: int
    first: int
    last: int

    @classmethod
    def from_manifest_key(cls, key: str) -> BatchRef | None:
        # data/manifests/<topic>/p<partition>/<first>-<last>.json
        parts = key.split("/")
        if len(parts) != 5 or parts[0] != "data" or parts[1] != "manifests":
            return None
        try:
            first, last = parts[4].removesuffix(".json").split("-")
            return cls(parts[2], int(parts[3][1:]), int(first), int(last))
        except ValueError:
            return None

    def key(self, kind: str) -> str:
        return batch_key(kind, self.topic, self.partition, self.first, self.last)


def list_batches(store: ObjectStore, topic: str | None = None) -> list[BatchRef]:
    """Every committed batch (one with a manifest), sorted by topic, partition, first offset."""
    prefix = f"data/manifests/{topic}/" if topic else "data/manifests/"
    refs = (BatchRef.from_manifest_key(k) for k in store.list(prefix))
    return sorted(r for r in refs if r is not None)
