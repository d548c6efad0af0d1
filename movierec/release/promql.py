"""The PromQL templates over the OpenFaaS gateway's metrics: the one source of these expressions.

The release analysis (`variant_queries`), the demo's report (scripts/demo/report.py), the Grafana
dashboard (monitoring/grafana/dashboards/*.json) and the alert rules (monitoring/alerts.yml) all
say "requests", "5xx share", "mean latency", "p99", "p99 ratio" in these words: the analysis and
the demo render them from here; tests/test_grafana_panels.py and tests/test_monitoring.py assert
that every gateway expression of the dashboard and the alert rules is one of these templates
(with the dashboard's `$namespace` / `$__rate_interval` or the rule's window) and run them
against a live Prometheus.

Templates take a label `selector` (`function_is(...)` for one deployment, `function_matches(...)`
for a regex, "" for every function) and a range `window` (`120s`, `5m`, `$__rate_interval`);
`by` names the labels an aggregation keeps.

Evidence only from the gateway itself: the release analysis (`variant_queries`) also selects the
gateway's own scrape job (`scraped_by(GATEWAY_JOB)`, `job="openfaas-gateway"`, the job name
monitoring/render.py gives the gateway's /metrics; RELEASE_GATEWAY_JOB where a platform names it
otherwise). A series pushed to the Pushgateway cannot carry that job: the Pushgateway's scrape
keeps only the batch jobs' own metrics (monitoring/render.py), and gateway_* are not among them.

The canary's fallback answers (nginx's `@canary_fallback`: a canary call answered 502/503/504,
or not within `canary_read_timeout`, is sent to `recommend`) reach the gateway as `recommend`
calls: the canary's figures select the exact `function_name` `recommend-canary.<namespace>`
(`function_is`, never a regex), so none of them counts as the canary's; they count in stable's
figures, as the answers of stable's model they are. The failed canary attempt itself is the
canary's (its 5xx, or its late answer's latency, once the gateway sees the call complete).
The canary's latency budget: nginx waits `canary_read_timeout` (gateway/render.py, 300ms) for the
canary, then serves stable's answer. The gateway counts a late canary answer a success, but its
user never saw it; `over_budget_calls` counts the calls slower than CANARY_BUDGET_LE (0.25 s, the
largest of the gateway's buckets, DURATION_BUCKETS, within that budget: tests/test_release_policy.py
keeps the two in step), so the 250-300 ms slice of answers users did get counts against the canary.
Ranges: the analysis asks for none shorter than two scrape intervals (analysis.py); the alert
rules use 1m and 2m (4 and 8 of faasd's 15 s scrapes), the dashboards `$__rate_interval` (at
least 4x the datasource's 15 s timeInterval).

Owns: the metric names, the buckets and the canary's budget bucket, the selectors, the templates, the range format, the gateway's job name.
Must not touch: querying (the MetricsSource the controller is given), thresholds (checks.py, the
rules' own numbers).
"""
from __future__ import annotations

from collections.abc import Sequence

INVOCATIONS = "gateway_function_invocation_total"  # counter, labels function_name, code
DURATION = "gateway_functions_seconds"  # histogram (_bucket, _sum, _count), labels function_name, code
REPLICAS = "gateway_service_count"  # gauge, label function_name
GATEWAY_METRICS = (INVOCATIONS, DURATION, REPLICAS)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)  # the gateway's `le` bounds (s)
# The largest bucket within nginx's canary budget (`canary_read_timeout`, 300ms, gateway/render.py).
CANARY_BUDGET_LE = 0.25

GATEWAY_JOB = "openfaas-gateway"  # the scrape job of the gateway's own /metrics (monitoring/render.py)

SERVER_ERROR = 'code=~"5.."'
NOT_SERVER_ERROR = 'code!~"5.."'


def prom_range(seconds: float) -> str:
    """A PromQL range of whole seconds, at least one: 120.7 -> `120s`."""
    return f"{max(int(seconds), 1)}s"


def _quoted(value: str) -> str:
    """A PromQL label value between double quotes: backslash and quote escaped, one line."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def function_is(function: str, namespace: str) -> str:
    """The selector of one deployment: the gateway labels calls `<function>.<namespace>`."""
    return f"function_name={_quoted(f'{function}.{namespace}')}"


def function_matches(pattern: str) -> str:
    """The selector of every function whose `<function>.<namespace>` matches the regex `pattern`."""
    return f'function_name=~"{pattern}"'


def scraped_by(job: str = GATEWAY_JOB) -> str:
    """The selector of series a Prometheus scrape job took itself (the gateway's: GATEWAY_JOB)."""
    return f"job={_quoted(job)}"


def series(metric: str, *matchers: str) -> str:
    """`metric{a,b}`; just `metric` when no matcher is given."""
    inner = ",".join(m for m in matchers if m)
    return f"{metric}{{{inner}}}" if inner else metric


def summed(expr: str, by: Sequence[str] = ()) -> str:
    return f"sum by ({', '.join(by)}) ({expr})" if by else f"sum({expr})"


def counted(metric: str, matchers: Sequence[str], window: str, func: str = "rate", by: Sequence[str] = ()) -> str:
    """`sum [by (...)] (<func>(metric{matchers}[window]))`: a counter's rate or increase."""
    return summed(f"{func}({series(metric, *matchers)}[{window}])", by)


def ratio(numerator: str, denominator: str) -> str:
    return f"{numerator} / {denominator}"


# -- the figures ----------------------------------------------------------------------------------
def calls(selector: str, window: str, func: str = "rate", by: Sequence[str] = (), code: str = "") -> str:
    """Calls per second (`rate`) or calls (`increase`) over `window`; `code` narrows them."""
    return counted(INVOCATIONS, (selector, code), window, func, by)


def success_rate(selector: str, window: str, by: Sequence[str] = ()) -> str:
    """Share of calls not answered 5xx."""
    return ratio(calls(selector, window, by=by, code=NOT_SERVER_ERROR), calls(selector, window, by=by))


def error_rate(selector: str, window: str, by: Sequence[str] = (), absent_as_zero: bool = False) -> str:
    """Share of calls answered 5xx; `absent_as_zero`: no 5xx series yet counts as none."""
    errors = calls(selector, window, by=by, code=SERVER_ERROR)
    return ratio(f"({errors} or vector(0))" if absent_as_zero else errors, calls(selector, window, by=by))


def mean_latency(selector: str, window: str, by: Sequence[str] = ()) -> str:
    return ratio(counted(f"{DURATION}_sum", (selector,), window, by=by),
                 counted(f"{DURATION}_count", (selector,), window, by=by))


def latency_quantile(q: float, selector: str, window: str, by: Sequence[str] = ()) -> str:
    """The q-quantile of the gateway's latency histogram (per `by` group)."""
    buckets = summed(f"rate({series(f'{DURATION}_bucket', selector)}[{window}])", (*by, "le"))
    return f"histogram_quantile({q:g}, {buckets})"


def timed_calls(selector: str, window: str, func: str = "increase") -> str:
    """Calls the latency histogram observed over `window`."""
    return counted(f"{DURATION}_count", (selector,), window, func)


def over_budget_calls(selector: str, window: str, le: float = CANARY_BUDGET_LE, func: str = "increase") -> str:
    """Calls the latency histogram observed slower than its bucket `le` (count minus that bucket)."""
    within = counted(f"{DURATION}_bucket", (selector, f'le="{le:g}"'), window, func)
    return f"{timed_calls(selector, window, func)} - {within}"


def p99_ratio(canary_selector: str, stable_selector: str, window: str) -> str:
    """Canary p99 over stable p99: what the release's `p99_vs_stable` check compares."""
    return ratio(latency_quantile(0.99, canary_selector, window), latency_quantile(0.99, stable_selector, window))


def replicas(selector: str = "", by: Sequence[str] = ()) -> str:
    inner = series(REPLICAS, selector)
    return f"max by ({', '.join(by)}) ({inner})" if by else f"max({inner})"


# -- the release analysis --------------------------------------------------------------------------
def figures(selector: str, window: str) -> dict[str, str]:
    """The release analysis' PromQL for one variant, by figure name (VariantMetrics' fields)."""
    return {
        "requests": calls(selector, window, func="increase"),
        "errors": calls(selector, window, func="increase", code=SERVER_ERROR),
        "mean_latency_s": mean_latency(selector, window),
        "p99_latency_s": latency_quantile(0.99, selector, window),
        "timed_calls": timed_calls(selector, window),
        "over_budget_calls": over_budget_calls(selector, window),
    }


def variant_queries(function: str, namespace: str, range_s: float, job: str = GATEWAY_JOB) -> dict[str, str]:
    """The PromQL for one variant over the last `range_s` seconds, by metric name: only the series
    the gateway's own scrape job took (`job`), so no pushed series can stand in for them."""
    return figures(f"{scraped_by(job)},{function_is(function, namespace)}", prom_range(range_s))
