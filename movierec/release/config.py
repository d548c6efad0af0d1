"""The release controller's configuration, built from the one settings table.

Owns `ReleaseConfig`: the analysis window, the minimum sample, the bounds the checks read
(checks.py names these fields, among them the online-quality minimum), the timeout, the lease's
TTL, the canary share and the function names. Its
defaults are the table's (movierec.settings, group "release"; a test keeps the two equal), and
`from_env` reads RELEASE_* (RELEASE_GATEWAY_JOB: whose series count as evidence; RELEASE_SCRAPE_INTERVAL: the shortest range measured is two of them), CANARY_PERCENT, STABLE_FUNCTION, CANARY_FUNCTION and
FUNCTION_NAMESPACE through `Settings`, so a bad value is a `ConfigError` naming the variable.

Must not touch: what the figures mean (checks.py), services.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from movierec.settings import Settings


@dataclass(frozen=True)
class ReleaseConfig:
    window_s: float = 2 * 3600
    min_requests: int = 200
    min_success_rate: float = 0.99
    max_p99_s: float = 0.5
    max_p99_ratio: float = 1.5
    # The canary's calls slower than its budget bucket (promql.CANARY_BUDGET_LE, within nginx's
    # canary_read_timeout): their users got stable's fallback. Rolled back when significantly above.
    max_over_budget_share: float = 0.01
    # Below this p99 the ratio to stable is not judged: histogram buckets double in width
    # (.01 .025 .05 .1 ...), so 20 ms vs 30 ms already reads as "2x", and no caller notices it.
    p99_ratio_floor_s: float = 0.1
    alpha: float = 0.05
    timeout_s: float = 24 * 3600
    stable_function: str = "recommend"
    canary_function: str = "recommend-canary"
    namespace: str = "openfaas-fn"
    canary_percent: int = 20
    online_quality: bool = False  # also compare the share of recommendations watched
    lease_ttl_s: float = 180.0  # one step at a time (lease.py): longer than the function's exec_timeout
    # Online quality is judged only once each variant has this many recommended movies: fewer
    # waits (and times out like too few requests), it never passes on no evidence.
    min_recommended: int = 1000
    # ... and fails only when the canary's watch-through is significantly below stable's x (1 - this):
    # 0 rolls back any significant drop; a small world's fixed canary users may watch less by nature.
    quality_margin: float = 0.0
    gateway_job: str = "openfaas-gateway"  # the Prometheus job of the gateway's own metrics (promql.GATEWAY_JOB)
    # Prometheus' scrape interval of the gateway: increase()/rate() over a range shorter than two
    # of these holds fewer than two samples (empty, or one interval extrapolated), so none is asked.
    scrape_interval_s: float = 15.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReleaseConfig:
        """The configuration in `env` (os.environ by default); ConfigError for a bad value."""
        s = Settings(env)
        return cls(
            window_s=s.get("RELEASE_WINDOW"),
            min_requests=s.get("RELEASE_MIN_REQUESTS"),
            min_success_rate=s.get("RELEASE_MIN_SUCCESS_RATE"),
            max_p99_s=s.get("RELEASE_MAX_P99"),
            max_p99_ratio=s.get("RELEASE_MAX_P99_RATIO"),
            max_over_budget_share=s.get("RELEASE_MAX_OVER_BUDGET_SHARE"),
            p99_ratio_floor_s=s.get("RELEASE_P99_RATIO_FLOOR"),
            alpha=s.get("RELEASE_ALPHA"),
            timeout_s=s.get("RELEASE_TIMEOUT"),
            stable_function=s.get("STABLE_FUNCTION"),
            canary_function=s.get("CANARY_FUNCTION"),
            namespace=s.get("FUNCTION_NAMESPACE"),
            canary_percent=s.get("CANARY_PERCENT"),
            online_quality=s.get("RELEASE_ONLINE_QUALITY"),
            lease_ttl_s=s.get("RELEASE_LEASE_TTL"),
            min_recommended=s.get("RELEASE_MIN_RECOMMENDED"),
            quality_margin=s.get("RELEASE_QUALITY_MARGIN"),
            gateway_job=s.get("RELEASE_GATEWAY_JOB"),
            scrape_interval_s=s.get("RELEASE_SCRAPE_INTERVAL"),
        )
