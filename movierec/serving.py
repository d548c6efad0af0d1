"""Serving: which model a recommend deployment serves, loaded once and kept.

The model is resolved once per process from the settings (movierec.settings):
- `MODEL_PATH`: a model directory (model.npz + manifest.json) on local disk, or
- `MODEL_VERSION` (a version such as `v3` or an alias such as `stable`), looked up in the
  model registry on the object store (`STORE_URL`; the caller injects `open_store`, the store's
  client being an adapter), verified by sha256 and cached locally (`MODEL_CACHE_DIR`) so a
  restart still serves when the store is unreachable.

If no model can be loaded the process stays up, reports "no model" on its readiness check,
answers 503, and tries again at most every `MODEL_RETRY_SECONDS`; unless MODEL_VERSION can never
resolve (`movierec.registry.UnresolvableModelError`: a malformed name, a version the registry does
not hold, an alias the product never sets): then `ModelHolder.fatal` says so in one line and the
recommend handler exits at once, so a deploy pinned to it fails in a second (a rolling update
keeps the old replicas) instead of waiting out the readiness timeout.

Release drills: a model version whose manifest carries `"drill": {"delay_ms": N, "error_rate": F}`
is deliberately bad. Only the operator command `python -m scripts.release drill-bad-model` writes
that key (training never does); `ModelHolder.recommend` applies it to every request: it sleeps
`delay_ms`, then fails a share `error_rate` of requests with `DrillFault` (the handler answers 500),
so the canary analysis has a real slow or erroring candidate to roll back. The flag (`Drill`) and
the drill copy are movierec.drills'.

Owns: `ModelHolder` (load once, retry, describe, apply a drill) and `load_configured_model`.
Must not touch: HTTP (the recommend function's handler maps requests and outcomes to it) and
service clients (the handler injects the store opener).
"""
from __future__ import annotations

import functools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from movierec.artifact import load_model
from movierec.drills import Drill, DrillError, DrillFault  # noqa: F401 (DrillError: re-exported for callers)
from movierec.errors import ConfigError
from movierec.model import RecommenderModel
from movierec.settings import Settings

log = logging.getLogger("movierec.serving")


def load_configured_model(env: Mapping[str, str], open_store: Callable[[dict[str, str]], Any] | None = None
                          ) -> RecommenderModel:
    """The model the settings name: MODEL_PATH's folder, else MODEL_VERSION from the registry on
    the store `open_store(env)` opens (injected: the store's client is an adapter), cached in
    MODEL_CACHE_DIR."""
    settings = Settings(env)
    path = settings.get("MODEL_PATH")
    if path:
        return load_model(path)
    if open_store is None:
        raise ConfigError("MODEL_PATH is blank and no object store was given to load MODEL_VERSION from")
    from movierec.registry import load_serving_model, model_cache_dir  # the registry needs the store

    store = open_store(dict(env))
    return load_serving_model(settings.get("MODEL_VERSION"), store, model_cache_dir(env, store))


class ModelHolder:
    """Loads the model once, retries while there is none, and says what it serves."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        loader: Callable[[Mapping[str, str]], RecommenderModel] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        chance: Callable[[], float] = random.random,
        open_store: Callable[[dict[str, str]], Any] | None = None,
    ):
        """`loader(env)` loads the model; by default `load_configured_model` with `open_store`."""
        self._env = dict(os.environ if env is None else env)
        self._loader = loader or functools.partial(load_configured_model, open_store=open_store)
        self._sleep, self._chance = sleep, chance  # injectable so drill tests need no clock
        self._lock = threading.Lock()
        self._model: RecommenderModel | None = None
        self._drill: Drill | None = None
        self._error = "not loaded yet"
        self.fatal: str | None = None  # set when the configured model can never load (see the docstring)
        self._last_attempt = float("-inf")
        settings = Settings(self._env)
        self._retry_s = settings.get("MODEL_RETRY_SECONDS")
        self.k = settings.get("RECOMMEND_K")  # 1..100, else ConfigError naming the variable
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
                    from movierec.registry import UnresolvableModelError

                    if isinstance(e, (UnresolvableModelError, ConfigError)):
                        self.fatal = f"MODEL_VERSION {Settings(self._env).get('MODEL_VERSION')[:80]!r}: {self._error}"
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
