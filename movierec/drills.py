"""Release drills: a deliberately bad model, so a canary rollback can be rehearsed end to end.

A model version whose manifest carries `"drill": {"delay_ms": N, "error_rate": F, "ranking": R}`
(any of the three) is served badly on purpose: `movierec.serving.ModelHolder` sleeps `delay_ms`
on every request, then fails a share `error_rate` of them with `DrillFault` (the recommend
handler answers 500), so the release analysis has a real bad candidate to roll back.

A ranking drill (`ranking`, one of `RANKINGS`) is bad at the list only, at the same latency and
error rate: the model scores and orders its whole candidate list exactly as it would (never a
movie the user has seen), and the drill serves another top-k of that same list, `reverse` (the
model's least preferred first) or `shuffle` (a uniformly random k of them: the random baseline).
Only online quality (watch-through, movierec.release.quality) can tell it from its source.

Owns: `Drill` (the flag, validated: `DrillError` for a malformed or out-of-range one),
`Drill.rerank`, `DrillFault`, `DRILL_KEY`, `RANKINGS`, and `register_drill_version`, which copies
a model version (the stable one by default) into a new version whose manifest carries the drill.
Only the operator command (`python -m scripts.release drill-bad-model`) and tests call it;
training never writes a drill.

Must not touch: how a drill is served (movierec.serving), how it is released (movierec.release),
HTTP, services.
"""
from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from movierec.errors import MovierecError, Rejected
from movierec.registry import STABLE, ModelVersion, Registry
from movierec.store import ObjectStore

DRILL_KEY = "drill"
DRILL_MAX_DELAY_MS = 10_000  # a drill slows answers down; it must not hang a replica
RANKINGS = ("reverse", "shuffle")  # how a ranking drill re-orders the model's candidate list
_FIELDS = {"delay_ms", "error_rate", "ranking"}


class DrillFault(MovierecError):
    """A request failed on purpose: the model being served is a release drill (a deliberate 500)."""


class DrillError(Rejected, ValueError):
    """A drill setting that is out of range or malformed (one line)."""


@dataclass(frozen=True)
class Drill:
    """How a drill model misbehaves on every request."""

    delay_ms: float = 0.0
    error_rate: float = 0.0
    ranking: str | None = None  # None: the model's own order; else one of RANKINGS

    def __post_init__(self) -> None:
        if not 0 <= self.delay_ms <= DRILL_MAX_DELAY_MS:
            raise DrillError(f"drill delay_ms must be between 0 and {DRILL_MAX_DELAY_MS}, got {self.delay_ms:g}")
        if not 0 <= self.error_rate <= 1:
            raise DrillError(f"drill error_rate must be between 0 and 1, got {self.error_rate:g}")
        if self.ranking is not None and self.ranking not in RANKINGS:
            raise DrillError(f"drill ranking must be one of {', '.join(RANKINGS)}, got {str(self.ranking)!r:.40}")
        if self.delay_ms == 0 and self.error_rate == 0 and self.ranking is None:
            raise DrillError("a drill needs delay_ms > 0 or error_rate > 0 or a ranking "
                             "(otherwise the model is not bad)")

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Drill | None:
        """The drill a model manifest asks for, None for a normal model."""
        raw = manifest.get(DRILL_KEY)
        if raw is None:
            return None
        if not isinstance(raw, Mapping) or set(raw) - _FIELDS:
            raise DrillError(f"drill must be an object with delay_ms and/or error_rate (and/or ranking), "
                             f"got {raw!r:.80}")
        try:
            delay_ms, error_rate = float(raw.get("delay_ms", 0)), float(raw.get("error_rate", 0))
        except (TypeError, ValueError):
            raise DrillError(f"drill values must be numbers, got {dict(raw)!r:.80}") from None
        ranking = raw.get("ranking")
        if ranking is not None and not isinstance(ranking, str):
            raise DrillError(f"drill ranking must be one of {', '.join(RANKINGS)}, got {ranking!r:.40}")
        return cls(delay_ms, error_rate, ranking)

    def as_manifest(self) -> dict[str, float | str]:
        flag: dict[str, float | str] = {"delay_ms": self.delay_ms, "error_rate": self.error_rate}
        if self.ranking is not None:
            flag["ranking"] = self.ranking
        return flag

    def describe(self) -> str:
        ranking = f", ranking {self.ranking}" if self.ranking is not None else ""
        return f"DRILL delay {self.delay_ms:g} ms, error rate {self.error_rate:g}{ranking}"

    def rerank(self, ranked: list[str], k: int, rng: random.Random | None = None) -> list[str]:
        """The k movies this drill serves from `ranked`, the model's whole candidate list best
        first: `reverse` its last k, least preferred first; `shuffle` k of it uniformly at random
        (`rng`, default the module's). Without a ranking, the model's own top k."""
        if self.ranking == "reverse":
            return ranked[::-1][:k]
        if self.ranking == "shuffle":
            return (rng or random).sample(ranked, min(k, len(ranked)))
        return ranked[:k]


def register_drill_version(
    store: ObjectStore, drill: Drill, source: str | None = None, now: datetime | None = None
) -> ModelVersion:
    """A new model version: the files of `source` (default: the stable model) with `drill` in its
    manifest. The artifact is unchanged, so the drill model scores exactly as its source does,
    only slower, failing and/or re-ranked on purpose."""
    registry = Registry(store)
    source = source or registry.alias_version(STABLE)
    if source is None:
        # Imported here: the serving path imports this module and should not load the release package.
        from movierec.release.state import ReleaseError

        raise ReleaseError("no stable model yet to copy into a drill model: train one first")
    entry = registry.get(source)
    with tempfile.TemporaryDirectory(prefix="movierec-drill-") as tmp:
        fetched = registry.fetch(source, Path(tmp) / "cache")
        copy = Path(tmp) / "drill"
        copy.mkdir()
        for name in entry.metadata["files"]:
            shutil.copyfile(fetched / name, copy / name)  # streamed: a model file is never held whole
        manifest_path = copy / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest[DRILL_KEY] = drill.as_manifest()
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return registry.publish(
            copy,
            params=entry.metadata.get("params"),
            metrics=entry.metadata.get("metrics"),
            snapshot_id=entry.snapshot_id,
            code=entry.metadata.get("code_version"),
            extra={"drill": drill.as_manifest(), "copied_from": source},
            now=(now or datetime.now(UTC)).astimezone(UTC),
        )
