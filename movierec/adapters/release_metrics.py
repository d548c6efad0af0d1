"""Pushing the release controller's dashboard figures to the Pushgateway (job="release").

Owns: `push_release_metrics(url, store, config, deployer)`, the one call the release function
makes after every step and manual action: the families movierec.release builds
(`release_families`), sent by the Pushgateway adapter, replacing the job's group. Never fails the
caller: "pushed", "skipped" (no URL, nothing is read) or "failed: <one line>".

Must not touch: which figures there are (movierec.release.controller), the push itself (pushgateway.py).
"""
from __future__ import annotations

from typing import Any

from movierec.adapters.pushgateway import push
from movierec.release import ReleaseConfig, release_families
from movierec.store import ObjectStore

JOB = "release"


def push_release_metrics(
    url: str | None, store: ObjectStore, config: ReleaseConfig, deployer: Any | None = None, history: int = 20
) -> str:
    """Push the controller's figures to the Pushgateway at `url` (blank: no push)."""
    if not url:
        return "skipped"
    return push(url, JOB, release_families(store, config, deployer, history))
