"""Where batches live: the `data/` keys and the list of committed batches.

A record's identity is (topic, partition, log epoch, offset): a partition whose log was reset or
replaced starts a new epoch (`movierec.ingest.LogEpoch`), and its offsets start again. Epoch 0
keeps the keys batches had before epochs existed (`.../<topic>/p<partition>/<range>`), so those
stay readable as they are; later epochs add a component: `.../<topic>/e<epoch>/p<partition>/<range>`.

Owns: `KINDS` (the objects of a batch), `EVENT_KINDS` (the stream events a batch counts),
`EXTENSIONS`, `batch_key`, `BatchRef` (one batch, named by its manifest key; ordered by topic,
partition, epoch, offsets), `list_batches`, and the keys of the epoch records (`epoch_key`,
`list_epoch_keys`). The layout itself is drawn in the package docstring (`movierec.batches`).

Must not touch: what is inside the objects (`encoding`, `builder`, `movierec.ingest.LogEpoch`), Kafka.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import total_ordering

from movierec.store import ObjectStore

KINDS = ("ratings", "watches", "recommendations", "quarantine")
EVENT_KINDS = ("watch", "rate", "recommendation")
EXTENSIONS = {"ratings": "npz", "watches": "npz", "recommendations": "jsonl", "quarantine": "jsonl",
              "manifests": "json"}
EPOCHS = "data/epochs"


def batch_key(kind: str, topic: str, partition: int, first: int, last: int, epoch: int = 0) -> str:
    where = f"{topic}/p{partition}" if epoch == 0 else f"{topic}/e{epoch}/p{partition}"
    return f"data/{kind}/{where}/{first:020d}-{last:020d}.{EXTENSIONS[kind]}"


@total_ordering
@dataclass(frozen=True)
class BatchRef:
    """One stored batch, as named by its manifest key."""

    topic: str
    partition: int
    first: int
    last: int
    epoch: int = 0

    @property
    def sort_key(self) -> tuple[str, int, int, int, int]:
        return (self.topic, self.partition, self.epoch, self.first, self.last)

    def __lt__(self, other: BatchRef) -> bool:
        return self.sort_key < other.sort_key

    @classmethod
    def from_manifest_key(cls, key: str) -> BatchRef | None:
        # data/manifests/<topic>/p<partition>/<first>-<last>.json (epoch 0)
        # data/manifests/<topic>/e<epoch>/p<partition>/<first>-<last>.json
        parts = key.split("/")
        if len(parts) not in (5, 6) or parts[0] != "data" or parts[1] != "manifests":
            return None
        try:
            epoch = 0
            if len(parts) == 6:
                if not parts[3].startswith("e"):
                    return None
                epoch = int(parts[3][1:])
            if not parts[-2].startswith("p") or not parts[-1].endswith(".json"):
                return None
            first, last = parts[-1].removesuffix(".json").split("-")
            return cls(parts[2], int(parts[-2][1:]), int(first), int(last), epoch)
        except ValueError:
            return None

    def key(self, kind: str) -> str:
        return batch_key(kind, self.topic, self.partition, self.first, self.last, self.epoch)


def list_batches(store: ObjectStore, topic: str | None = None) -> list[BatchRef]:
    """Every committed batch (one with a manifest), sorted by topic, partition, epoch, first offset."""
    prefix = f"data/manifests/{topic}/" if topic else "data/manifests/"
    refs = (BatchRef.from_manifest_key(k) for k in store.list(prefix))
    return sorted(r for r in refs if r is not None)


def epoch_key(topic: str, partition: int, epoch: int) -> str:
    """The write-once record of one log epoch of one partition."""
    return f"{EPOCHS}/{topic}/p{partition}/e{epoch:06d}.json"


def list_epoch_keys(store: ObjectStore, topic: str) -> dict[int, list[tuple[int, str]]]:
    """partition -> [(epoch, key)] of the recorded epochs, oldest first."""
    out: dict[int, list[tuple[int, str]]] = {}
    for key in store.list(f"{EPOCHS}/{topic}/"):
        parts = key.split("/")
        try:
            if len(parts) != 5 or not parts[3].startswith("p") or not parts[4].startswith("e"):
                continue
            partition, epoch = int(parts[3][1:]), int(parts[4][1:].removesuffix(".json"))
        except ValueError:
            continue
        out.setdefault(partition, []).append((epoch, key))
    for entries in out.values():
        entries.sort()
    return out
