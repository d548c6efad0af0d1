"""The demo's release report: `report.md`, `report.json` and a picture `report.png`.

Owns: `write_report` (phases, versions, client traffic per phase, each release's decision, checks
and queries, the notifications received), `release_lines` (one release as markdown),
`release_series` / `range_queries` / `query_range` (canary vs stable p50/p99 latency and success rate
over each release from Prometheus' range API, through `movierec.adapters.prometheus`, with the
release's PromQL templates as the one source) and `draw_report` (matplotlib, Agg).

Must not touch: the release records (it reads them as given), Prometheus' configuration.
"""
from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from movierec.adapters.prometheus import PrometheusClient, PrometheusError
from scripts.demo.handle import StackHandle
from scripts.demo.phases import LifecycleResult
from scripts.demo.progress import Progress, format_ms, format_rate

NAMESPACE = "openfaas-fn"


def query_range(prometheus_url: str, promql: str, start: float, end: float, step: float) -> list[tuple[float, float]]:
    """The points of a range query for the report ([] when Prometheus cannot answer: best effort)."""
    try:
        return PrometheusClient(prometheus_url, attempts=1).query_range(promql, start, end, step)
    except (PrometheusError, ValueError, KeyError, IndexError, TypeError):
        return []


def range_queries(function: str, rate_window: str = "15s") -> dict[str, str]:
    """The report's series per variant, from the release's PromQL templates (the one source)."""
    from movierec.release import promql

    sel = promql.function_is(function, NAMESPACE)
    return {
        "p50": promql.latency_quantile(0.5, sel, rate_window),
        "p99": promql.latency_quantile(0.99, sel, rate_window),
        "success_rate": promql.success_rate(sel, rate_window),
    }


def release_series(handle: StackHandle, release: dict[str, Any], until: float | None = None) -> dict[str, dict[str, list]]:
    """Per variant, p50/p99 latency and success rate over the release, from 10 s before it to 15 s
    after the decision (or `until`, the next release's start, whichever is first)."""
    start = datetime.fromisoformat(release["started"]).timestamp() - 10
    end = datetime.fromisoformat(release["decided"] or release["updated"]).timestamp() + 15
    end = min(end, time.time(), until or float("inf"))
    series = {}
    for variant, function in (("canary", "recommend-canary"), ("stable", "recommend")):
        series[variant] = {name: query_range(handle.prometheus_url, q, start, end, 2)
                           for name, q in range_queries(function).items()}
    return series


def draw_report(releases: list[dict[str, Any]], series: dict[str, dict], path: Path) -> Path | None:
    if not releases:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(releases), 2, figsize=(13, 3.6 * len(releases)), squeeze=False)
    colours = {"canary": "tab:red", "stable": "tab:blue"}
    for row, release in zip(axes, releases):
        t0 = datetime.fromisoformat(release["started"]).timestamp()
        decided = datetime.fromisoformat(release["decided"]).timestamp() if release.get("decided") else None
        data = series.get(release["id"], {})
        latency, success = row
        for variant, colour in colours.items():
            for name, style in (("p50", "-"), ("p99", "--")):
                points = data.get(variant, {}).get(name, [])
                if points:
                    latency.plot([t - t0 for t, _ in points], [v * 1000 for _, v in points], style, color=colour,
                                 label=f"{variant} {name}")
            points = data.get(variant, {}).get("success_rate", [])
            if points:
                success.plot([t - t0 for t, _ in points], [v * 100 for _, v in points], color=colour, label=variant)
        for ax in row:
            ax.axvline(0, color="grey", lw=0.8)
            if decided is not None:
                ax.axvline(decided - t0, color="black", lw=1, ls=":")
            ax.set_xlabel("seconds since the canary started (dotted: decision)")
            ax.grid(alpha=0.3)
        latency.set_ylabel("gateway latency (ms)")
        latency.set_yscale("log")
        success.set_ylabel("success rate (% non-5xx)")
        success.set_ylim(min(90.0, success.get_ylim()[0]), 100.5)
        latency.set_title(f"{release['state'].upper()}: canary {release['candidate']}\nvs stable {release['stable']}",
                          fontsize=8, loc="left")
        success.set_title(f"{release['id']}\n{release['reason'][:75]}", fontsize=8, loc="left")
        latency.legend(fontsize=7, loc="upper left")
        success.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def release_lines(release: dict[str, Any]) -> list[str]:
    analysis = release.get("analysis") or {}
    metrics = analysis.get("metrics") or {}
    lines = [
        f"### {release['id']}: {release['state']}",
        "",
        f"- versions: candidate `{release['candidate']}`, stable `{release['stable']}`",
        (f"- decision: **{release['state']}** by {release['actor']} at {release['decided']} "
         f"(started {release['started']})"),
        f"- reason: {release['reason']}",
        f"- notification: {', '.join(f'{k} {v}' for k, v in (release.get('notifications') or {}).items()) or 'none configured'}",
        "",
        "| variant | requests | errors | success rate | mean latency | p99 latency |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant in ("canary", "stable"):
        m = metrics.get(variant) or {}
        lines.append(f"| {variant} | {m.get('requests', 0):g} | {m.get('errors', 0):g} | "
                     f"{format_rate(m.get('success_rate'))} | {format_ms(m.get('mean_latency_s'))} | {format_ms(m.get('p99_latency_s'))} |")
    checks = (analysis.get("decision") or {}).get("checks") or []
    if checks:
        lines += ["", "checks:"]
        lines += [f"- {'wait' if c['passed'] is None else 'pass' if c['passed'] else 'FAIL'} {c['name']}: "
                  f"{c['detail']}" for c in checks]
    quality = analysis.get("quality") or {}
    if quality:
        lines += ["", "online quality (recommended movies the user then started watching):"]
        lines += [f"- {v}: {_share(q)}" for v, q in sorted(quality.items())]
    queries = analysis.get("queries") or {}
    if queries:
        lines += ["", f"queries (range {analysis.get('range')}, at {analysis.get('at')}):", "", "```"]
        for variant, q in queries.items():
            lines += [f"{variant} {name}: {promql}" for name, promql in q.items()]
        lines += ["```"]
    return lines + [""]


def _share(counts: dict[str, Any]) -> str:
    watched, recommended = counts.get("watched", 0), counts.get("recommended", 0)
    return f"{watched}/{recommended}" + (f" = {watched / recommended:.1%}" if recommended else "")


def write_report(handle: StackHandle, result: LifecycleResult, out: Path, progress: Progress,
                 notifications: dict[str, Any] | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    figures = result.load()
    starts = [datetime.fromisoformat(r["started"]).timestamp() for r in result.releases]
    series = {r["id"]: release_series(handle, r, until=next_start)
              for r, next_start in zip(result.releases, [*starts[1:], None])}
    picture = draw_report(result.releases, series, out / "report.png")
    report = {
        "phases": result.phases,
        "versions": result.versions,
        "load": figures,
        "releases": result.releases,
        "stable_after_drill": result.stable_after_drill,
        "replica_kill": result.kill,
        "trainings": result.trainings,
        "notifications_received": notifications or {},
        "picture": str(picture) if picture else None,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    total = figures["total"]
    md = ["# movierec lifecycle demo", "",
          f"Versions: {', '.join(f'{k} `{v}`' for k, v in result.versions.items())}", "",
          "## Phases", "", "| phase | seconds | ok |", "| --- | ---: | --- |"]
    md += [f"| {p['phase']} | {p['seconds']} | {'yes' if p['ok'] else 'NO'} |" for p in result.phases]
    md += ["", "## Client traffic through the public entry (nginx)", "",
           "| phase | requests | failures | drill faults | p50 ms | p99 ms | max ms |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, f in [*figures["phases"].items(), ("all", total)]:
        md.append(f"| {name} | {f['requests']} | {f['failures']} | {f['drill_faults']} | {f['p50_ms']} | "
                  f"{f['p99_ms']} | {f['max_ms']} |")
    md += ["", ("A failure is a connection error, a timeout or a 5xx from the public entry; a drill model's "
                "deliberate 500s from the canary during its drill are counted apart as drill faults."), ""]
    if result.kill:
        md += [(f"Replica kill: `kill -9` of recommend pid {result.kill['killed_pid']}, back to full strength in "
                f"{result.kill['restored_s']} s (replicas now {result.kill['replicas_after']})."), ""]
    md += ["## Releases", ""]
    for release in result.releases:
        md += release_lines(release)
    if notifications:
        md += ["## Notifications received", ""]
        md += [f"- {channel}: {', '.join(items) or 'none'}" for channel, items in notifications.items()]
        md.append("")
    if picture:
        md += ["![canary vs stable](report.png)", ""]
    (out / "report.md").write_text("\n".join(md))

    progress.log("== release report")
    for release in result.releases:
        for line in release_lines(release):
            if line.startswith("queries"):
                break  # the PromQL is in report.md / report.json
            if line and not line.startswith("|"):
                progress.log(f"   {line}")
        for variant, m in ((release.get("analysis") or {}).get("metrics") or {}).items():
            progress.log(f"   {variant:<7} {m.get('requests', 0):g} requests, {m.get('errors', 0):g} errors, success "
                         f"{format_rate(m.get('success_rate'))}, mean {format_ms(m.get('mean_latency_s'))}, "
                         f"p99 {format_ms(m.get('p99_latency_s'))}")
    progress.log(f"   client traffic: {total['requests']} requests, {total['failures']} failures, "
                 f"{total['drill_faults']} expected drill faults, p50 {total['p50_ms']} ms, p99 {total['p99_ms']} ms")
    for p in result.phases:
        progress.log(f"   phase {p['phase']:<45} {p['seconds']:>6}s")
    progress.log(f"   wrote {out / 'report.md'}, {out / 'report.json'}" + (f", {picture}" if picture else ""))
    return report
