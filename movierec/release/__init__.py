"""The canary release: a small package, its public API re-exported here.

Owns: the release state machine, its policy (checks as data), the PromQL it reads, its state and
history in the store, online quality, and the figures it reports.

A release moves `canary` -> `promoted` | `rolled_back` | `aborted` (by hand). Where each part lives:
| module | owns |
| --- | --- |
| `config.py` | `ReleaseConfig`, built from movierec.settings (RELEASE_*, CANARY_PERCENT, function names) |
| `checks.py` | the policy: `RELEASE_CHECKS` (named checks as data: bounds, "not worse than stable at alpha", ratio to stable, a share not significantly above a bound: calls over the canary's latency budget), the one loop `evaluate_checks`, `decide` (pure), the z-tests (watch-through: per user, an O'Brien-Fleming-type boundary over the window's looks, `look_bound`) |
| `promql.py` | the PromQL templates over the gateway metrics (the analysis, demo, dashboards and alerts use them) |
| `state.py` | states, `Release` (with `serving_since` and its `events`), `ReleaseStore` (`releases/current.json`, `releases/history/`, fenced writes), the release errors; one step at a time: `acquire_lease`, `holding`, `read_lease` over THE lease (movierec.lease, `leases/release/`: `Lease.check` is the fencing token, `LeaseHeld` 409, `LeaseLost`), `clock_from` |
| `drift.py` | the record as desired state: `observe`, `reconcile` (re-apply drift, restart the window, record events) |
| `analysis.py` | `measure` (counts rounded to whole requests), `window_of`, `evidence_start`, `analyse` (the controller's own probes subtracted), `not_counted` |
| `quality.py` | online quality: `QualityCounts`, `online_quality`, `stored_quality_source` |
| `controller.py` | `bootstrap_stable`, `start_release`, `finish_release`, `run_release_step`, `manual_action`, `status`, `serving_versions`, `release_families` |

Collaborators are movierec.ports protocols, injected; the Pushgateway push of the dashboard figures
is an adapter (movierec.adapters.release_metrics.push_release_metrics), drills are movierec.drills.

Owns: the package's public API (re-exported below). Must not touch: HTTP, credentials and
service clients (functions/release/handler.py composes).
"""
from movierec.canary import CANARY, STABLE
from movierec.lease import Lease, LeaseHeld, LeaseLost
from movierec.release.analysis import COUNTS, measure, window_of
from movierec.release.checks import (
    PROMOTE,
    RELEASE_CHECKS,
    ROLLBACK,
    WAIT,
    Bound,
    Check,
    Decision,
    NotWorse,
    RatioToStable,
    ShareAtMost,
    VariantMetrics,
    decide,
    evaluate_checks,
    look_bound,
    one_proportion_z_test,
    per_user_z_test,
    two_proportion_z_test,
)
from movierec.release.config import ReleaseConfig
from movierec.release.controller import (
    MANUAL_ACTIONS,
    StepResult,
    bootstrap_stable,
    finish_release,
    manual_action,
    release_families,
    run_release_step,
    serving_versions,
    start_release,
    status,
)
from movierec.release.drift import Observation, observe, reconcile
from movierec.release.promql import prom_range, variant_queries
from movierec.release.quality import QualityCounts, online_quality, stored_quality_source
from movierec.release.state import (
    ABORTED,
    CURRENT_KEY,
    FINAL_STATES,
    HISTORY_PREFIX,
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    InvalidTransition,
    Release,
    ReleaseError,
    ReleaseRunningError,
    ReleaseStore,
    acquire_lease,
    holding,
    read_lease,
)

__all__ = [
    "ABORTED", "CANARY", "COUNTS", "CURRENT_KEY", "FINAL_STATES", "HISTORY_PREFIX",
    "MANUAL_ACTIONS", "PROMOTE", "PROMOTED", "RELEASE_CHECKS", "ROLLBACK", "ROLLED_BACK", "RUNNING", "STABLE",
    "WAIT", "Bound", "Check", "Decision", "InvalidTransition", "Lease", "LeaseHeld", "LeaseLost", "NotWorse",
    "Observation", "QualityCounts", "RatioToStable", "Release", "ReleaseConfig", "ReleaseError",
    "ReleaseRunningError", "ReleaseStore", "ShareAtMost", "StepResult", "VariantMetrics", "acquire_lease",
    "bootstrap_stable", "decide", "evaluate_checks", "finish_release", "holding", "look_bound", "manual_action",
    "measure", "observe", "one_proportion_z_test", "online_quality", "per_user_z_test", "prom_range", "read_lease", "reconcile",
    "release_families", "run_release_step", "serving_versions", "start_release", "status", "stored_quality_source",
    "two_proportion_z_test", "variant_queries", "window_of",
]
