"""Renders the Prometheus config for the local stack (or faasd) with its ports and paths filled in.

Owns: which targets Prometheus scrapes and which of their series it keeps: the OpenFaaS gateway's
/metrics (job `openfaas-gateway`, GATEWAY_JOB: the only evidence the release analysis reads,
movierec.release.promql.GATEWAY_JOB), the Pushgateway (the only job with honor_labels, so a batch
function's push keeps its own job label; and kept to the batch jobs' OWN metrics: job `ingest`
only `ingest_*`, `train` only `train_*`, `release` only `release_*`, plus the Pushgateway's
`push_time_seconds`/`push_failure_time_seconds` of those groups. Anything else pushed, such as a
forged `gateway_*` counter or a push claiming `job="openfaas-gateway"`, is dropped before it is
stored: the Pushgateway takes writes from anyone who reaches it), Prometheus itself; the
scrape/evaluation intervals, and the path of the alert rules (monitoring/alerts.yml). Also the
command lines of Prometheus and the Pushgateway run as our own unprivileged processes.

Must not touch: starting or stopping processes (scripts/stack), the alert rules' content.

CLI:
    python -m monitoring.render [--profile local|faasd] [-o FILE]
Ports come from OPENFAAS_URL, PUSHGATEWAY_URL, PROMETHEUS_URL (defaults :8080, :9091, :9090).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

HERE = Path(__file__).resolve().parent
ALERT_RULES = HERE / "alerts.yml"

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
DEFAULT_PUSHGATEWAY = "http://127.0.0.1:9091"
DEFAULT_PROMETHEUS = "http://127.0.0.1:9090"

GATEWAY_JOB = "openfaas-gateway"  # == movierec.release.promql.GATEWAY_JOB (a test keeps them equal)
# The batch functions that push, each only under its own job and its own metric prefix.
PUSH_JOBS = ("ingest", "train", "release")
PUSHGATEWAY_OWN = ("push_time_seconds", "push_failure_time_seconds")  # per pushed group


def pushed_series_kept() -> str:
    """The regex over `<job>;<metric name>` a pushed series must match to be stored."""
    jobs = "|".join(PUSH_JOBS)
    own = "|".join(f"{job};{job}_.+" for job in PUSH_JOBS)
    return f"{own}|({jobs});({'|'.join(PUSHGATEWAY_OWN)})"


def host_port(url: str) -> str:
    """`http://127.0.0.1:9091/` -> `127.0.0.1:9091` (what a static_config target is)."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    if not parts.hostname or not parts.port:
        raise ValueError(f"expected a URL with host and port, got {url!r}")
    return f"{parts.hostname}:{parts.port}"


@dataclass(frozen=True)
class MonitoringSettings:
    gateway: str             # host:port serving the OpenFaaS gateway metrics
    pushgateway: str
    prometheus: str
    rule_files: tuple[str, ...]
    scrape_interval: str = "5s"
    gateway_metrics_path: str = "/metrics"

    @classmethod
    def local(cls, env: dict[str, str] | None = None) -> MonitoringSettings:
        env = os.environ if env is None else env
        return cls(
            gateway=host_port(env.get("OPENFAAS_URL") or DEFAULT_GATEWAY),
            pushgateway=host_port(env.get("PUSHGATEWAY_URL") or DEFAULT_PUSHGATEWAY),
            prometheus=host_port(env.get("PROMETHEUS_URL") or DEFAULT_PROMETHEUS),
            rule_files=(str(ALERT_RULES),),
        )

    @classmethod
    def faasd(cls) -> MonitoringSettings:
        # faasd's own Prometheus container: the gateway's metrics port is 8082 there, and the rules
        # file is mounted beside the config (/var/lib/faasd/prometheus.yml -> /etc/prometheus/).
        return cls(gateway="gateway:8082", pushgateway="pushgateway:9091", prometheus="localhost:9090",
                   rule_files=("/etc/prometheus/alerts.yml",), scrape_interval="15s")


def render(settings: MonitoringSettings) -> str:
    config = {
        "global": {
            "scrape_interval": settings.scrape_interval,
            "evaluation_interval": settings.scrape_interval,
            "external_labels": {"stack": "movierec"},
        },
        "rule_files": list(settings.rule_files),
        "scrape_configs": [
            # No honor_labels: every series of this job is labelled job="openfaas-gateway" by
            # Prometheus itself, whatever the target says.
            {"job_name": GATEWAY_JOB, "metrics_path": settings.gateway_metrics_path,
             "static_configs": [{"targets": [settings.gateway]}]},
            # honor_labels (here only): a pushed series keeps the job/instance its batch function
            # gave it; so what a push may claim is limited to the batch jobs' own metrics.
            {"job_name": "pushgateway", "honor_labels": True,
             "static_configs": [{"targets": [settings.pushgateway]}],
             "metric_relabel_configs": [
                 {"source_labels": ["job", "__name__"], "separator": ";", "regex": pushed_series_kept(),
                  "action": "keep"},
             ]},
            {"job_name": "prometheus", "static_configs": [{"targets": [settings.prometheus]}]},
        ],
    }
    header = "# RENDERED by `python -m monitoring.render`: edit monitoring/render.py, not this file.\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def write_config(settings: MonitoringSettings, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(settings))
    return path


def _binary(name: str, package: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if not found:
        raise FileNotFoundError(f"{name} is not installed: run `apt-get install -y {package}` (Debian package)")
    return found


def prometheus_argv(config_path: str | os.PathLike[str], data_dir: str | os.PathLike[str],
                    listen: str) -> list[str]:
    return [_binary("prometheus", "prometheus"),
            f"--config.file={Path(config_path).resolve()}",
            f"--storage.tsdb.path={Path(data_dir).resolve()}",
            f"--web.listen-address={listen}",
            "--storage.tsdb.retention.time=7d",
            "--web.enable-lifecycle"]  # POST /-/reload after re-rendering


def pushgateway_argv(data_dir: str | os.PathLike[str], listen: str) -> list[str]:
    return [_binary("prometheus-pushgateway", "prometheus-pushgateway"),
            f"--web.listen-address={listen}",
            f"--persistence.file={Path(data_dir).resolve() / 'metrics.store'}"]


def promtool_binary() -> str:
    return _binary("promtool", "prometheus")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.render", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=["local", "faasd"], default="local")
    parser.add_argument("-o", "--output", default="-", help="file to write, - for stdout (default)")
    args = parser.parse_args(argv)
    try:
        settings = MonitoringSettings.local() if args.profile == "local" else MonitoringSettings.faasd()
        if args.output == "-":
            sys.stdout.write(render(settings))
        else:
            print(write_config(settings, args.output))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
