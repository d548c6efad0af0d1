"""Reads the Grafana dashboards as code: every panel's PromQL, ready to run, and the checks on them.

Owns: walking a dashboard JSON (rows and nested panels, annotations), substituting template
variables the way Grafana does before a query reaches Prometheus (`$var`, `${var}`, `${var:fmt}`,
`[[var]]`, with each variable's current value and fixed values for Grafana's built-ins such as
`$__rate_interval`), the structural checks a dashboard must pass (unique panel ids, every panel
with Prometheus targets, no credentials), and rendering the Kubernetes ConfigMap that carries the
dashboards to the Grafana sidecar (so the ConfigMap is never edited by hand).
Must not touch: the dashboards' content (dashboards/*.json is the source), running Prometheus.

CLI:
    python -m monitoring.grafana.panels list [DASHBOARD.json]     # every query, substituted
    python -m monitoring.grafana.panels check [DASHBOARD.json]    # exit 1 with one line per problem
    python -m monitoring.grafana.panels configmap [-o FILE]       # the Kubernetes ConfigMap
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DASHBOARDS = HERE / "dashboards"
CONFIGMAP = HERE / "kubernetes" / "dashboards-configmap.yaml"
CONFIGMAP_NAME = "movierec-grafana-dashboards"
SIDECAR_LABEL = "grafana_dashboard"

# What Grafana puts in place of its built-in variables depends on the time range and the scrape
# interval; these are the values used to run the queries outside Grafana (1m covers 4 scrapes at
# the 15s interval of faasd's Prometheus, the minimum $__rate_interval Grafana would pick).
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::[\w-]+)?\}|\[\[(\w+)(?::[\w-]+)?\]\]|\$(\w+)")
# Keys and values that would mean a credential was saved into a dashboard.
_CREDENTIAL_KEYS = re.compile(r"password|passwd|secret|token|apikey|api_key|basicauth|authorization|"
                              r"securejsondata|bearer", re.IGNORECASE)
_CREDENTIAL_VALUES = re.compile(r"://[^/\s:@]+:[^/\s@]+@|\bglsa_\w{10,}|\beyJ[\w-]{10,}\.[\w-]{10,}|"
                                r"\bAKIA[0-9A-Z]{16}\b|Basic [A-Za-z0-9+/=]{8,}|Bearer \S{8,}")


class DashboardError(ValueError):
    """A dashboard that cannot be read or refers to something it does not define."""


@dataclass(frozen=True)
class PanelQuery:
    """One Prometheus query of a panel (or of an annotation, with panel_id None)."""

    panel_id: int | None
    panel_title: str
    ref_id: str
    expr: str       # as written in the dashboard
    promql: str     # variables substituted: what Prometheus receives
    instant: bool

    @property
    def label(self) -> str:
        where = f"panel {self.panel_id}" if self.panel_id is not None else "annotation"
        return f"{where} {self.panel_title!r} {self.ref_id}"


def load(path: str | Path) -> dict[str, Any]:
    try:
        dashboard = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DashboardError(f"cannot read dashboard {path}: {exc}") from None
    if not isinstance(dashboard, dict) or not isinstance(dashboard.get("panels"), list):
        raise DashboardError(f"{path}: not a Grafana dashboard (no panels list)")
    return dashboard


def dashboard_files(folder: str | Path = DASHBOARDS) -> list[Path]:
    return sorted(Path(folder).glob("*.json"))


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, with the panels of collapsed rows (nested under the row)."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", []) or []


def variables(dashboard: Mapping[str, Any], overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each template variable's current value, plus Grafana's built-ins; `overrides` win."""
    values = dict(BUILTINS)
    for var in dashboard.get("templating", {}).get("list", []):
        current = var.get("current") or {}
        value = current.get("value", var.get("query", ""))
        if isinstance(value, list):  # a multi-value variable: Grafana's regex form for PromQL
            value = "(" + "|".join(value) + ")" if len(value) > 1 else (value[0] if value else "")
        values[var["name"]] = str(value)
    values.update(overrides or {})
    return values


def substitute(expr: str, values: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise DashboardError(f"variable ${name} is not defined in the dashboard: {expr}")
        return values[name]
    return _VARIABLE.sub(replace, expr)


def queries(dashboard: Mapping[str, Any], overrides: Mapping[str, str] | None = None) -> list[PanelQuery]:
    """Every Prometheus query of the dashboard's panels and annotations, variables substituted."""
    values = variables(dashboard, overrides)
    found = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets") or []:
            if target.get("expr") and not target.get("hide"):
                found.append(PanelQuery(panel.get("id"), panel.get("title", ""), target.get("refId", ""),
                                        target["expr"], substitute(target["expr"], values),
                                        bool(target.get("instant")) and not target.get("range")))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr") and annotation.get("enable", True):
            found.append(PanelQuery(None, annotation.get("name", ""), "annotation", annotation["expr"],
                                    substitute(annotation["expr"], values), False))
    return found


def _datasource_type(datasource: Any) -> str | None:
    if isinstance(datasource, Mapping):
        return datasource.get("type")
    return None


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield f"{path}.{key}", item
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]")


def credential_problems(document: Any, source: str) -> list[str]:
    """Places in a parsed JSON/YAML document that look like a stored credential."""
    problems = []
    for path, value in _walk(document):
        key = path.rsplit(".", 1)[-1]
        if _CREDENTIAL_KEYS.search(key) and not key.endswith("__FILE"):  # *__FILE: a path to a secret file
            problems.append(f"{source}: {path} looks like a credential; credentials come from files or secrets")
        if isinstance(value, str) and _CREDENTIAL_VALUES.search(value):
            problems.append(f"{source}: {path} holds what looks like a credential")
    return problems


def problems(dashboard: Mapping[str, Any], source: str = "dashboard") -> list[str]:
    """Everything wrong with a dashboard's structure, one line each; empty when it is fine."""
    found = []
    for key in ("uid", "title", "schemaVersion"):
        if not dashboard.get(key):
            found.append(f"{source}: missing {key}")
    ids: dict[Any, str] = {}
    for panel in iter_panels(dashboard):
        title = panel.get("title", "")
        pid = panel.get("id")
        where = f"{source}: panel {pid} {title!r}"
        if not isinstance(pid, int):
            found.append(f"{where}: id must be an integer")
        elif pid in ids:
            found.append(f"{where}: id {pid} is also used by {ids[pid]!r}")
        else:
            ids[pid] = title
        if not title:
            found.append(f"{where}: no title")
        if "gridPos" not in panel:
            found.append(f"{where}: no gridPos")
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        if not targets:
            found.append(f"{where}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or not all(refs):
            found.append(f"{where}: every target needs its own refId, got {refs}")
        for target in targets:
            datasource = target.get("datasource") or panel.get("datasource")
            if _datasource_type(datasource) != "prometheus":
                found.append(f"{where} {target.get('refId')}: datasource must be a Prometheus one, got {datasource}")
            if not target.get("expr"):
                found.append(f"{where} {target.get('refId')}: no PromQL expr")
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("builtIn"):
            continue
        if _datasource_type(annotation.get("datasource")) != "prometheus" or not annotation.get("expr"):
            found.append(f"{source}: annotation {annotation.get('name')!r} needs a Prometheus datasource and expr")
    try:
        queries(dashboard)
    except DashboardError as exc:
        found.append(f"{source}: {exc}")
    found += credential_problems(dashboard, source)
    return found


def render_configmap(files: list[Path] | None = None) -> str:
    """The ConfigMap the Grafana sidecar (label grafana_dashboard) loads the dashboards from."""
    files = dashboard_files() if files is None else files

    class Literal(str):
        pass

    def literal(dumper: yaml.SafeDumper, data: Literal) -> yaml.ScalarNode:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")

    dumper = type("ConfigMapDumper", (yaml.SafeDumper,), {})
    dumper.add_representer(Literal, literal)
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIGMAP_NAME,
            "labels": {SIDECAR_LABEL: "1", "app.kubernetes.io/part-of": "movierec"},
            # k8s-sidecar puts the dashboards in this folder when run with folderAnnotation set to it.
            "annotations": {"grafana_folder": "movierec"},
        },
        "data": {path.name: Literal(path.read_text().rstrip("\n") + "\n") for path in files},
    }
    header = ("# RENDERED by `python -m monitoring.grafana.panels configmap -o "
              "monitoring/grafana/kubernetes/dashboards-configmap.yaml`:\n"
              "# edit monitoring/grafana/dashboards/*.json, not this file. Apply it in Grafana's namespace:\n"
              "#   kubectl apply -n monitoring -f monitoring/grafana/kubernetes/\n")
    return header + yaml.dump(manifest, Dumper=dumper, sort_keys=False, width=1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.grafana.panels", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("list", "check"):
        cmd = sub.add_parser(name)
        cmd.add_argument("dashboards", nargs="*", type=Path)
    cfg = sub.add_parser("configmap")
    cfg.add_argument("-o", "--output", default="-", help="file to write, - for stdout (default)")
    args = parser.parse_args(argv)
    try:
        if args.command == "configmap":
            text = render_configmap()
            if args.output == "-":
                sys.stdout.write(text)
            else:
                Path(args.output).write_text(text)
            return 0
        paths = args.dashboards or dashboard_files()
        dashboards = {path: load(path) for path in paths}
    except DashboardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "list":
        for path, dashboard in dashboards.items():
            for query in queries(dashboard):
                print(f"{path.name}\t{query.label}\t{query.promql}")
        return 0
    found = [line for path, dashboard in dashboards.items() for line in problems(dashboard, path.name)]
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
