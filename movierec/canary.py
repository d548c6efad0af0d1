"""Which users see the canary: the one place that decides it.

A user is in the canary when `user_id mod 100 < canary_percent`. The rule is a pure function
of the user id, so it is sticky, needs no state, and can be re-applied to the stream to compute
per-variant metrics. The nginx split in `gateway/` is rendered from `canary_suffixes`, so the
proxy and the analysis cannot disagree.
"""
from __future__ import annotations

import os

STABLE = "stable"
CANARY = "canary"
DEFAULT_CANARY_PERCENT = 20


def canary_percent_from_env(env: dict[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get("CANARY_PERCENT", "").strip() or str(DEFAULT_CANARY_PERCENT)
    value = int(raw)
    if not 0 <= value <= 100:
        raise ValueError(f"CANARY_PERCENT must be between 0 and 100, got {value}")
    return value


def variant_for_user(user_id: int, canary_percent: int = DEFAULT_CANARY_PERCENT) -> str:
    return CANARY if user_id % 100 < canary_percent else STABLE


def canary_suffixes(canary_percent: int = DEFAULT_CANARY_PERCENT) -> list[int]:
    """The values of `user_id mod 100` that go to the canary (what the nginx map is built from)."""
    return [r for r in range(100) if r < canary_percent]
