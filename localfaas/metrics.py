"""The gateway's Prometheus metrics, with the real OpenFaaS gateway's names.

Owns: the `gateway_*` series (`gateway_function_invocation_total` and
`gateway_function_invocation_started` by function, `gateway_functions_seconds` with the gateway's
buckets, `gateway_service_count` read from the supervisor at scrape time) in a private registry,
and their text exposition for `/metrics`, with bucket bounds printed as the Go client prints them
(`le="1"`, `le="5"`, `le="10"`, where Python's client prints `1.0`).
Must not touch: processes, HTTP routing; it only counts what the proxy and the data plane's call
log (`sources`, read before each scrape) report, and reads replica counts.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from localfaas.supervisor import Supervisor

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

prometheus_client.disable_created_metrics()  # the Go gateway exposes no *_created series
# Go formats a float64 bound with strconv 'g': a whole number has no ".0".
_WHOLE_LE = re.compile(rb'le="(\d+)\.0"')


class GatewayMetrics:
    """`gateway_*` series with the real gateway's names, labels and buckets, in a private registry."""

    def __init__(self, supervisor: Supervisor):
        self.registry = CollectorRegistry(auto_describe=True)
        self.invocations = Counter("gateway_function_invocation", "Function invocations by code",
                                   ["function_name", "code"], registry=self.registry)
        self.seconds = Histogram("gateway_functions_seconds", "Function call duration",
                                 ["function_name", "code"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.started: dict[str, float] = {}
        # The labelled children per (function, code), looked up once: prometheus_client's labels()
        # validates and locks on every call, which the invoke path does not need to pay each time.
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self.supervisor = supervisor
        self.sources: list[Callable[[], object]] = []  # read before each scrape (the data plane's call log)
        self.registry.register(self)  # collect() below reads replica counts at scrape time

    def collect(self) -> list[Metric]:
        services = GaugeMetricFamily("gateway_service_count", "Current replicas of a function",
                                     labels=["function_name"])
        for fn in self.supervisor.functions.values():
            services.add_metric([f"{fn.config.name}.{fn.config.namespace}"], float(fn.desired))
        return [services]

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("gateway_service_count", "")]

    def refresh(self) -> None:
        """Count what the sources hold that is not counted yet (before a scrape or a listing)."""
        for source in self.sources:
            source()

    def exposition(self) -> bytes:
        self.refresh()
        # prometheus_client always names a counter family "<name>_total"; the Go gateway's
        # `gateway_function_invocation_started` has no suffix, so that one family is written here.
        lines = ["# HELP gateway_function_invocation_started Function invocations started",
                 "# TYPE gateway_function_invocation_started counter"]
        lines += [f'gateway_function_invocation_started{{function_name="{name}"}} {value!r}'
                  for name, value in sorted(self.started.items())]
        text = _WHOLE_LE.sub(rb'le="\1"', prometheus_client.generate_latest(self.registry))
        return text + ("\n".join(lines) + "\n").encode()

    def call_started(self, function_name: str) -> None:
        self.started[function_name] = self.started.get(function_name, 0.0) + 1

    def call_finished(self, function_name: str, code: int, seconds: float) -> None:
        children = self._children.get((function_name, code))
        if children is None:
            children = self._children[(function_name, code)] = (
                self.invocations.labels(function_name, str(code)), self.seconds.labels(function_name, str(code)))
        children[0].inc()
        children[1].observe(seconds)

