"""Metric families as plain data: what the batch functions and the release controller report.

Owns `Family` (a gauge: name, help text, label names, samples) and `render_text` (the Prometheus
text exposition format, version 0.0.4). The domain builds families from what it knows; the
Pushgateway adapter (`movierec.adapters.pushgateway`) sends them. No client library here.

Must not touch: where the figures go (HTTP), what they mean beyond their help text.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


@dataclass
class Family:
    name: str
    doc: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name) or not all(_NAME.fullmatch(label) for label in self.labels):
            raise ValueError(f"invalid metric or label name in {self.name}{list(self.labels)}")

    def set(self, value: float, *label_values: str) -> Family:
        if len(label_values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {label_values}")
        self.samples.append((tuple(str(v) for v in label_values), float(value)))
        return self


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if value != int(value) or abs(value) >= 1e15 else str(int(value))


def render_text(families: list[Family]) -> str:
    """The families in the text exposition format, HELP and TYPE lines included."""
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {family.doc.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        out.append(f"# TYPE {family.name} gauge")
        for label_values, value in family.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(family.labels, label_values, strict=True))
            out.append(f"{family.name}{{{labels}}} {_number(value)}" if labels else f"{family.name} {_number(value)}")
    return "\n".join(out) + "\n"
