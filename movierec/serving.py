"""Serving: which model a recommend deployment serves, loaded once and kept.

The model is resolved once per process from the environment:
- `MODEL_PATH`: a model directory (model.npz + manifest.json) on local disk, or
- `MODEL_VERSION` (a version such as `v3` or an alias such as `stable`), looked up in the
  model registry on the object store (`STORE_URL`), verified by sha256 and cached locally
  (`MODEL_CACHE_DIR`) so a restart still serves when the store is unreachable.

If no model can be loaded the process stays up, reports "no model" on its readiness check,
answers 503, and tries again at most every `MODEL_RETRY_SECONDS`.

Knows nothing of HTTP: the recommend function's handler maps requests and outcomes to it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Mapping

from movierec.model import RecommenderModel, load_model

log = logging.getLogger("movierec.serving")

DEFAULT_K = 20
MAX_K = 100


def _load_from_env(env: Mapping[str, str]) -> RecommenderModel:
    path = env.get("MODEL_PATH", "").strip()
    if path:
        return load_model(path)
    from movierec.registry import load_serving_model  # the registry needs the store; import lazily
    from movierec.store import open_store

    spec = env.get("MODEL_VERSION", "").strip() or "stable"
    cache_dir = env.get("MODEL_CACHE_DIR", "").strip() or os.path.join(
        env.get("TMPDIR", "/tmp"), "movierec-model-cache"
    )
    return load_serving_model(spec, open_store(dict(env)), cache_dir)


class ModelHolder:
    """Loads the model once, retries while there is none, and says what it serves."""

    def __init__(self, env: Mapping[str, str] | None = None, loader=_load_from_env):
        self._env = dict(os.environ if env is None else env)
        self._loader = loader
        self._lock = threading.Lock()
        self._model: RecommenderModel | None = None
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
                    self._model = self._loader(self._env)
                    log.info("loaded %s", self.describe())
                except Exception as e:  # any failure leaves the process up, reporting "no model"
                    self._error = f"{type(e).__name__}: {e}".splitlines()[0]
                    log.error("no model: %s", self._error)
            return self._model

    def describe(self) -> str:
        model = self._model
        if model is None:
            return f"no model: {self._error}"
        version = model.version or "unversioned"
        return f"loaded model {version}, sha256 ok ({model.sha256[:12]})"

    def ready(self) -> tuple[bool, str]:
        return self.get() is not None, self.describe()
