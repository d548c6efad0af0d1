"""Serving: which model a recommend deployment serves, loaded once and kept.

The model is resolved once per process from the environment:
- `MODEL_PATH`: a model directory (model.npz + manifest.json) on local disk, or
- `MODEL_VERSION` (a version such as `v3` or an alias such as `stable`), looked up in the
  model registry on the object store (`STORE_URL`), verified by sha256 and cached locally
  (`MODEL_CACHE_DIR`) so a restart still serves when the store is unreachable.

If no model can be loaded the process stays up, reports "no model" on its readiness check,
answers 503, and tries again at most every `MODEL_RETRY_SECONDS`.

Release drills: a model version whose manifest carries `"drill": {"delay_ms": N, "error_rate": F}`
is deliberately bad. Only the operator command `python -m scripts.release drill-bad-model` writes
that key (training never does); `ModelHolder.recommend` applies it to every request: it sleeps
`delay_ms`, then fails a share `error_rate` of requests with `DrillFault` (the handler answers 500),
so the canary analysis has a real slow or erroring candidate to roll back.

Knows nothing of HTTP: the recommend function's handler maps requests and outcomes to it.
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from movierec.model import RecommenderModel, load_model

log = logging.getLogger("movierec.serving")

DEFAULT_K = 20
MAX_K = 100
DRILL_KEY = "drill"
DRILL_MAX_DELAY_MS = 10_000  # a drill slows answers down; it must not hang a replica


class DrillFault(Exception):
    """A request failed on purpose: the model being served is a release drill."""


class DrillError(ValueError):
    """A drill setting that is out of range or malformed (one line)."""


@dataclass(frozen=True)
class Drill:
    """How a drill model misbehaves on every request."""

    delay_ms: float = 0.0
    error_rate: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.delay_ms <= DRILL_MAX_DELAY_MS:
            raise DrillError(f"drill delay_ms must be between 0 and {DRILL_MAX_DELAY_MS}, got {self.delay_ms:g}")
        if not 0 <= self.error_rate <= 1:
            raise DrillError(f"drill error_rate must be between 0 and 1, got {self.error_rate:g}")
        if self.delay_ms == 0 and self.error_rate == 0:
            raise DrillError("a drill needs delay_ms > 0 or error_rate > 0 (otherwise the model is not bad)")

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Drill | None:
        """The drill a model manifest asks for, None for a normal model."""
        raw = manifest.get(DRILL_KEY)
        if raw is None:
            return None
        if not isinstance(raw, Mapping) or set(raw) - {"delay_ms", "error_rate"}:
            raise DrillError(f"drill must be an object with delay_ms and/or error_rate, got {raw!r:.80}")
        try:
            delay_ms, error_rate = float(raw.get("delay_ms", 0)), float(raw.get("error_rate", 0))
        except (TypeError, ValueError):
            raise DrillError(f"drill values must be numbers, got {dict(raw)!r:.80}") from None
        return cls(delay_ms, error_rate)

    def as_manifest(self) -> dict[str, float]:
        return {"delay_ms": self.delay_ms, "error_rate": self.error_rate}

    def describe(self) -> str:
        return f"DRILL delay {self.delay_ms:g} ms, error rate {self.error_rate:g}"


def _load_from_env(env: Mapping[str, str]) -> RecommenderModel:
    path = env.get("MODEL_PATH", "").strip()
    if path:
        return load_model(path)
    # The registry needs the store; imported lazily. A domain -> adapter import: the train branch
    # (owner of serving.py) moves this composition to the recommend handler.
    from movierec.adapters.stores import open_store
    from movierec.registry import load_serving_model

    spec = env.get("MODEL_VERSION", "").strip() or "stable"
    cache_dir = env.get("MODEL_CACHE_DIR", "").strip() or os.path.join(
        env.get("TMPDIR", "/tmp"), "movierec-model-cache"
    )
    return load_serving_model(spec, open_store(dict(env)), cache_dir)


class ModelHolder:
    """Loads the model once, retries while there is none, and says what it serves."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        loader=_load_from_env,
        sleep: Callable[[float], None] = time.sleep,
        chance: Callable[[], float] = random.random,
    ):
        self._env = dict(os.environ if env is None else env)
        self._loader = loader
        self._sleep, self._chance = sleep, chance  # injectable so drill tests need no clock
        self._lock = threading.Lock()
        self._model: RecommenderModel | None = None
        self._drill: Drill | None = None
        self._error = "not loaded yet"
        self._last_attempt = float("-inf")
        self._retry_s = float(self._env.get("MODEL_RETRY_SECONDS", "5") or 5)
        self.k = min(int(self._env.get("RECOMMEND_K", DEFAULT_K) or DEFAULT_K), MAX_K)
        self.get()

    def get(self) -> RecommenderModel | None:
        model = self._model
        if model is not None:
            return model
        with self._lock:
            if self._model is None and time.monotonic() - self._last_attempt >= self._retry_s:
                self._last_attempt = time.monotonic()
                try:
                    model = self._loader(self._env)
                    # A malformed drill refuses the whole model: serving it "half bad" would make
                    # the drill say nothing.
                    self._drill = Drill.from_manifest(model.manifest)
                    self._model = model
                    log.info("loaded %s", self.describe())
                except Exception as e:  # noqa: BLE001 (any failure leaves the process up, reporting "no model")
                    self._error = f"{type(e).__name__}: {e}".splitlines()[0]
                    log.error("no model: %s", self._error)
            return self._model

    def describe(self) -> str:
        model = self._model
        if model is None:
            return f"no model: {self._error}"
        version = model.version or "unversioned"
        drill = f", {self._drill.describe()}" if self._drill is not None else ""
        return f"loaded model {version}, sha256 ok ({model.sha256[:12]}){drill}"

    @property
    def drill(self) -> Drill | None:
        return self._drill

    def recommend(self, model: RecommenderModel, user_id: int) -> list[str]:
        """The top-k movie ids for `user_id` from `model` (what `get()` returned), with the drill
        of a drill model applied: its delay first, then a DrillFault for its share of requests."""
        drill = self._drill
        if drill is not None:
            if drill.delay_ms:
                self._sleep(drill.delay_ms / 1000)
            if drill.error_rate and self._chance() < drill.error_rate:
                raise DrillFault(f"release drill: model {model.version or 'unversioned'} fails "
                                 f"{drill.error_rate:g} of requests on purpose")
        return model.recommend(user_id, self.k)

    def ready(self) -> tuple[bool, str]:
        return self.get() is not None, self.describe()
