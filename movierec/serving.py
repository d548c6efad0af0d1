"""Serving: which model a recommend deployment serves, loaded once and kept, and what it answers
before there is one.

The model is resolved once per process from the settings (movierec.settings):
- `MODEL_PATH`: a model directory (model.npz + manifest.json) on local disk, or
- `MODEL_VERSION` (a version such as `v3` or an alias such as `stable`), looked up in the
  model registry on the object store (`STORE_URL`; the caller injects `open_store`, the store's
  client being an adapter), verified by sha256 and cached locally (`MODEL_CACHE_DIR`) so a
  restart still serves when the store is unreachable.

A holder is in one of four states, and `ready()` says which in one line:
- **serving**: a model is loaded ("loaded model vN, sha256 ok (...)");
- **waiting**: the deployment follows an alias that is not set yet, i.e. no model was ever
  registered for it (the stack's first minutes). It answers from `movierec.popularity` (what was
  ingested so far; `X-Model-Version: popularity`), is ready, and is reported once, at INFO, as
  "waiting for a model": that is not a failure. The popularity list is refreshed at most every
  `POPULARITY_REFRESH_SECONDS` from the newest `POPULARITY_MAX_BATCHES` batches;
- **failed**: the pinned model exists but cannot be served (a missing MODEL_PATH, a version that
  is not registered, a sha256 mismatch, the store down with nothing cached). It answers 503 and is
  not ready: serving something else under a pinned version would hide the fault from the canary
  analysis. Logged at ERROR once per distinct reason, not at every retry;
- **fatal**: MODEL_VERSION can never resolve (`movierec.registry.UnresolvableModelError`: a
  malformed name, a version the registry does not hold, an alias the product never sets; or a
  `ConfigError`). Not ready, never retried, and `describe()` says so in one line ("cannot serve:
  MODEL_VERSION ..."). The recommend handler exits at once on it, so a deploy pinned to it fails
  in a second (a rolling update keeps the old replicas) instead of waiting out the readiness
  timeout.
Retries (every `MODEL_RETRY_SECONDS`) and popularity refreshes run in one background thread, never
on the request path: a request only reads what is there.

Release drills: a model version whose manifest carries `"drill": {"delay_ms": N, "error_rate": F}`
is deliberately bad. Only the operator command `python -m scripts.release drill-bad-model` writes
that key (training never does); `ModelHolder.recommend` applies it to every request: it sleeps
`delay_ms`, then fails a share `error_rate` of requests with `DrillFault` (the handler answers 500),
so the canary analysis has a real slow or erroring candidate to roll back. A ranking drill
(`"ranking": "reverse" | "shuffle"`) has the model rank its whole candidate list as usual and
serves another k of it (`Drill.rerank`): a worse list at the same cost. The flag (`Drill`) and
the drill copy are movierec.drills'.

Owns: `ModelHolder` (load once, retry in the background, the four states, describe, apply a
drill, the warm-up popularity), `NoModelYet` and `load_configured_model`.
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
from movierec.drills import Drill, DrillFault
from movierec.errors import ConfigError
from movierec.model import RecommenderModel
from movierec.popularity import Popularity, popularity_from_batches
from movierec.registry import ModelNotFoundError, UnresolvableModelError, is_version
from movierec.settings import Settings

log = logging.getLogger("movierec.serving")

SERVING, WAITING, FAILED, FATAL = "serving", "waiting", "failed", "fatal"
POPULARITY_VERSION = "popularity"  # the X-Model-Version of a warm-up answer


class NoModelYet(ModelNotFoundError):
    """The alias a deployment follows is not set: no model was ever registered for it (warm-up)."""


def load_configured_model(env: Mapping[str, str], open_store: Callable[[dict[str, str]], Any] | None = None
                          ) -> RecommenderModel:
    """The model the settings name: MODEL_PATH's folder, else MODEL_VERSION from the registry on
    the store `open_store(env)` opens (injected: the store's client is an adapter), cached in
    MODEL_CACHE_DIR. An alias that is not set raises `NoModelYet`."""
    settings = Settings(env)
    path = settings.get("MODEL_PATH")
    if path:
        return load_model(path)
    if open_store is None:
        raise ConfigError("MODEL_PATH is blank and no object store was given to load MODEL_VERSION from")
    from movierec.registry import load_serving_model, model_cache_dir  # the registry needs the store

    spec = settings.get("MODEL_VERSION") or "stable"
    store = open_store(dict(env))
    try:
        return load_serving_model(spec, store, model_cache_dir(env, store))
    except NoModelYet:
        raise
    except ModelNotFoundError as e:
        if is_version(spec) or isinstance(e, UnresolvableModelError):
            raise  # a pinned version that does not exist, or a spec that never resolves: a fault
        raise NoModelYet(str(e)) from None


class ModelHolder:
    """Loads the model once, retries in the background while there is none, and says what it serves."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        loader: Callable[[Mapping[str, str]], RecommenderModel] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        chance: Callable[[], float] = random.random,
        open_store: Callable[[dict[str, str]], Any] | None = None,
        popularity: Callable[[Mapping[str, str]], Popularity] | None = None,
        background: bool = True,
    ):
        """`loader(env)` loads the model; by default `load_configured_model` with `open_store`.
        `popularity(env)` computes the warm-up list; by default from the store `open_store` opens
        (none without a store). `background=False` leaves retries to explicit `retry()` calls."""
        self._env = dict(os.environ if env is None else env)
        self._loader = loader or functools.partial(load_configured_model, open_store=open_store)
        settings = Settings(self._env)
        max_batches = settings.get("POPULARITY_MAX_BATCHES")
        if popularity is None and open_store is not None:
            def popularity(env: Mapping[str, str]) -> Popularity:
                return popularity_from_batches(open_store(dict(env)), max_batches=max_batches)
        self._popularity_source = popularity
        self._sleep, self._chance = sleep, chance  # injectable so drill tests need no clock
        self._lock = threading.Lock()
        self._model: RecommenderModel | None = None
        self._drill: Drill | None = None
        self._state = FAILED
        self._error = "not loaded yet"
        self._reported: str | None = None  # the last state/reason logged, so each is logged once
        self._popularity: Popularity | None = None
        self._popularity_at = float("-inf")
        self._last_attempt = float("-inf")
        self._retry_s = settings.get("MODEL_RETRY_SECONDS")
        self._refresh_s = settings.get("POPULARITY_REFRESH_SECONDS")
        self.k = settings.get("RECOMMEND_K")  # 1..100, else ConfigError naming the variable
        self._stop = threading.Event()
        self.retry()  # the first attempt at construction (import), so a replica starts serving
        if background and self._state not in (SERVING, FATAL):
            threading.Thread(target=self._retry_loop, name="model-retry", daemon=True).start()

    # -- loading ----------------------------------------------------------------------------------
    def retry(self, force: bool = True) -> RecommenderModel | None:
        """One load attempt (unless `force` is off and the last was under MODEL_RETRY_SECONDS
        ago) and, while waiting, a popularity refresh when one is due."""
        with self._lock:
            if self._model is not None:
                return self._model
            if self._state == FATAL:  # it can never load: no more attempts
                return None
            if not force and time.monotonic() - self._last_attempt < self._retry_s:
                if self._state == WAITING:
                    self._refresh_popularity()
                return None
            self._last_attempt = time.monotonic()
            try:
                model = self._loader(self._env)
                # A malformed drill refuses the whole model: serving it "half bad" would make
                # the drill say nothing.
                drill = Drill.from_manifest(model.manifest)
            except NoModelYet as e:
                self._state, self._error = WAITING, str(e)
            except Exception as e:  # noqa: BLE001 (any failure leaves the process up, reporting "no model")
                self._state, self._error = FAILED, f"{type(e).__name__}: {e}".splitlines()[0]
                if isinstance(e, (UnresolvableModelError, ConfigError)):
                    spec = Settings(self._env).get("MODEL_VERSION")[:80]
                    self._state, self._error = FATAL, f"MODEL_VERSION {spec!r}: {self._error}"
            else:
                self._model, self._drill, self._state = model, drill, SERVING
                self._popularity = None
                log.info("loaded %s", self.describe())
                return model
            if self._state == WAITING:
                self._refresh_popularity()
            self._report()
            return None

    def _refresh_popularity(self) -> None:
        if self._popularity_source is None or time.monotonic() - self._popularity_at < self._refresh_s:
            return
        self._popularity_at = time.monotonic()
        try:
            self._popularity = self._popularity_source(self._env)
        except Exception as e:  # noqa: BLE001 (keep the last list; an empty store or outage is not fatal)
            log.warning("popularity not refreshed: %s: %s", type(e).__name__, str(e).splitlines()[0] if str(e) else "")

    def _report(self) -> None:
        key = f"{self._state}:{self._error}"
        if key == self._reported:
            return
        self._reported = key
        if self._state == WAITING:
            log.info("%s", self.describe())
        else:
            log.error("%s", self.describe())

    def _retry_loop(self) -> None:
        while not self._stop.wait(max(0.05, min(self._retry_s, self._refresh_s))):
            if self.retry(force=False) is not None or self._state == FATAL:
                return

    def stop(self) -> None:
        self._stop.set()

    # -- what it serves -------------------------------------------------------------------------
    def get(self) -> RecommenderModel | None:
        """The loaded model, or None (never waits: loading happens in the background)."""
        return self._model

    @property
    def retry_seconds(self) -> float:
        return self._retry_s

    @property
    def state(self) -> str:
        return self._state

    def popularity(self) -> Popularity | None:
        """The warm-up answer while waiting for the first model (an empty one until data arrives);
        None when serving a model or failed."""
        if self._state != WAITING:
            return None
        return self._popularity or Popularity()

    def describe(self) -> str:
        model = self._model
        if model is not None:
            version = model.version or "unversioned"
            drill = f", {self._drill.describe()}" if self._drill is not None else ""
            return f"loaded model {version}, sha256 ok ({model.sha256[:12]}){drill}"
        if self._state == WAITING:
            return f"waiting for a model ({self._error}): serving {(self._popularity or Popularity()).describe()}"
        if self._state == FATAL:
            return f"cannot serve: {self._error}"
        return f"no model: {self._error}"

    @property
    def drill(self) -> Drill | None:
        return self._drill

    def recommend(self, model: RecommenderModel, user_id: int) -> list[str]:
        """The top-k movie ids for `user_id` from `model` (what `get()` returned), with the drill
        of a drill model applied: its delay first, then a DrillFault for its share of requests,
        then its ranking (the model's whole candidate list, re-ranked by the drill)."""
        drill = self._drill
        if drill is not None:
            if drill.delay_ms:
                self._sleep(drill.delay_ms / 1000)
            if drill.error_rate and self._chance() < drill.error_rate:
                raise DrillFault(f"release drill: model {model.version or 'unversioned'} fails "
                                 f"{drill.error_rate:g} of requests on purpose")
            if drill.ranking is not None:
                return drill.rerank(model.recommend(user_id, model.n_movies), self.k)
        return model.recommend(user_id, self.k)

    def ready(self) -> tuple[bool, str]:
        """(able to answer usefully, what it serves): a loaded model, or the warm-up popularity."""
        return self._state in (SERVING, WAITING), self.describe()
