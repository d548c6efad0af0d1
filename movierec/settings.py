"""Every environment variable the product reads, in one table, parsed one way.

Owns: `SETTINGS` (name, kind, default, one-line doc, group), the parsers for each kind (one error
style: `ConfigError("NAME must be ..., got '...'")`), `Settings` (typed reads over an environment
mapping) and the README's configuration table, rendered from the table
(`python -m movierec.settings --markdown`; a test fails when the README differs).

Rules every reader follows:
- an unset or blank variable means the default; a default of "" means "off" / "not configured";
- numbers are ASCII digits only and finite; booleans are 1/0, true/false, yes/no, on/off;
- durations are `500ms`, `90`, `90s`, `1m`, `2h`, `1d` (`parse_duration`, the one parser).

`deployed` records what stack.yml substitutes (`${VAR:-...}`) where that differs from the code's
default (a test checks stack.yml against this table). The local runtime (`localfaas/`) knows
nothing of this package and reads its own LOCALFAAS_* variables; they are listed here so a reader
finds every variable in one place.

Must not touch: what a setting means to its component (configs are built by their owners from
`Settings`), services, HTTP.
"""
from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from movierec.errors import ConfigError

KINDS = ("str", "int", "float", "bool", "duration", "list")


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str
    default: str
    doc: str
    group: str
    deployed: str | None = None  # stack.yml's `${NAME:-deployed}` when it differs from `default`
    minimum: float | None = None
    maximum: float | None = None


def _s(group: str):
    def make(name: str, kind: str, default: str, doc: str, **kw: Any) -> Setting:
        return Setting(name, kind, default, doc, group, **kw)
    return make


_store, _kafka, _ingest, _train = _s("store"), _s("kafka"), _s("ingest"), _s("train")
_serve, _release, _svc, _notify = _s("recommend"), _s("release"), _s("services"), _s("notify")
_tmpl, _stack, _lf = _s("template"), _s("local stack"), _s("localfaas")

SETTINGS: tuple[Setting, ...] = (
    # -- the object store ------------------------------------------------------------------------
    _store("STORE_URL", "str", "", "`s3://bucket[/prefix]` (MinIO/S3) or a local folder; blank: STORE_DIR"),
    _store("STORE_DIR", "str", "var/store", "local store folder when STORE_URL is blank"),
    _store("S3_ENDPOINT_URL", "str", "", "S3 endpoint (MinIO's URL); blank: AWS S3"),
    _store("S3_REGION", "str", "us-east-1", "S3 region (AWS_DEFAULT_REGION is read when this is unset)"),
    _store("S3_ATTEMPTS", "int", "4", "attempts per S3 call on connection errors", minimum=1),
    _store("S3_BUCKET", "str", "movierec", "bucket minio/create_buckets.py creates"),
    _store("S3_FUNCTIONS_PRINCIPAL", "str", "", "MinIO user the bucket policy grants the functions (create_buckets)"),
    _store("SECRETS_DIR", "str", "", "folder of secret files; blank: /var/openfaas/secrets (OpenFaaS)"),
    # -- Kafka -----------------------------------------------------------------------------------
    _kafka("KAFKA_BOOTSTRAP_SERVERS", "str", "127.0.0.1:9092", "Kafka bootstrap servers, comma-separated"),
    _kafka("KAFKA_TOPIC", "str", "movielog1", "the event stream's topic"),
    _kafka("KAFKA_GROUP_ID", "str", "movierec-ingest", "ingest's consumer group"),
    _kafka("KAFKA_SESSION_TIMEOUT_MS", "int", "6000", "consumer session timeout (a batch consumer joins in ~half)",
           minimum=1000),
    # -- ingest ----------------------------------------------------------------------------------
    _ingest("INGEST_MAX_RECORDS", "int", "2000000", "records per ingest run at most", minimum=1),
    _ingest("INGEST_MAX_SECONDS", "float", "120", "seconds per ingest run at most", deployed="45", minimum=0.001),
    _ingest("INGEST_BATCH_RECORDS", "int", "200000", "records per stored batch (per partition)", minimum=1),
    _ingest("INGEST_IDLE_SECONDS", "float", "3", "end the run when nothing new arrived for this long", minimum=0),
    _ingest("INGEST_BUILDER_PROCESS", "bool", "1", "parse batches in a child process (on the other core)"),
    _ingest("INGEST_LEASE_GRACE", "duration", "60s", "a run holds its group's lease for INGEST_MAX_SECONDS plus "
            "this; a run that died frees the group after that"),
    # -- training ----------------------------------------------------------------------------------
    _train("SVD_N_FACTORS", "int", "", "SVD factors; blank: params.yaml's, else 100", deployed="100", minimum=1),
    _train("SVD_N_EPOCHS", "int", "", "SVD epochs; blank: params.yaml's, else 20", deployed="20", minimum=0),
    _train("SVD_LR_ALL", "float", "", "SVD learning rate; blank: params.yaml's, else 0.005", deployed="0.005"),
    _train("SVD_REG_ALL", "float", "", "SVD regularisation; blank: params.yaml's, else 0.02", deployed="0.02"),
    _train("SVD_RANDOM_STATE", "int", "", "SVD seed; blank: params.yaml's, else 0"),
    _train("TEST_FRACTION", "float", "", "holdout share; blank: params.yaml's, else 0.2"),
    _train("SPLIT_SEED", "int", "", "holdout split seed; blank: params.yaml's, else 0"),
    _train("TRAIN_MIN_RATINGS", "int", "", "refuse to train on fewer ratings; blank: params.yaml's, else 1000",
           deployed="1000"),
    _train("TRAIN_MIN_USERS", "int", "", "refuse to train on fewer users; blank: params.yaml's, else 10"),
    _train("TRAIN_MIN_MOVIES", "int", "", "refuse to train on fewer movies; blank: params.yaml's, else 10"),
    _train("RMSE_MAX", "float", "", "gate: holdout RMSE at most; blank: params.yaml's, else 1.0", deployed="1.0"),
    _train("RMSE_TOLERANCE", "float", "", "gate: not worse than stable's RMSE by more; blank: params.yaml's, "
           "else 0.02", deployed="0.02"),
    _train("RANKING_FACTORS", "int", "", "factors of the top-20 ranking model (PureSVD of watches + ratings); "
           "blank: params.yaml's, else tuned on a validation split of training (4 to 64)", minimum=1),
    _train("RANKING_POP_DAMPING", "float", "", "popularity damping of the ranking model (0..1); blank: "
           "params.yaml's, else tuned on a validation split of training (0, 0.25 or 0.5)", minimum=0, maximum=1),
    _train("RANKING_MIN_LIFT", "float", "", "gate: holdout NDCG@20 at least this times the popularity "
           "baseline's on the same holdout; blank: params.yaml's, else 0.95 (at most 5% below)", minimum=0),
    _train("COLD_START_WINDOW", "duration", "", "unknown users get the movies most watched or rated in this "
           "last stretch of the snapshot; blank: params.yaml's, else 7d"),
    _train("TRAIN_TOPIC", "str", "", "train on this topic's batches only; blank: every topic"),
    _train("TRAIN_MIN_INTERVAL", "duration", "0", "scheduled trainings skip while the newest model is younger "
           "than this (the first model never waits)"),
    _train("AUTO_RELEASE", "bool", "1", "start a canary release when a model passes the gates"),
    _train("CODE_VERSION", "str", "", "recorded in each model version; blank: `git describe`, else unknown"),
    # -- recommend ---------------------------------------------------------------------------------
    _serve("MODEL_VERSION", "str", "stable", "model version or alias a recommend deployment serves"),
    _serve("MODEL_PATH", "str", "", "serve this local model folder instead of the registry"),
    _serve("MODEL_CACHE_DIR", "str", "", "local model cache, used only once it matches the registry's sha256; "
           "blank: $STACK_STATE_DIR/model-cache, else beside a local store (`var/model-cache`), "
           "else $TMPDIR/movierec-model-cache-<uid>"),
    _serve("MODEL_RETRY_SECONDS", "float", "5", "retry loading a missing model at most this often", minimum=0),
    _serve("RECOMMEND_K", "int", "20", "movies per answer (at most 100)", minimum=1, maximum=100),
    _serve("POPULARITY_MAX_BATCHES", "int", "64", "before the first model: answer from the popularity of at "
           "most this many newest batches", minimum=1),
    _serve("POPULARITY_REFRESH_SECONDS", "float", "10", "before the first model: recompute that popularity at "
           "most this often", minimum=0.1),
    # -- release -----------------------------------------------------------------------------------
    _release("RELEASE_WINDOW", "duration", "2h", "analysis window of a canary release"),
    _release("RELEASE_MIN_REQUESTS", "int", "200", "canary requests needed before any decision", minimum=1),
    _release("RELEASE_MIN_SUCCESS_RATE", "float", "0.99", "check: canary success rate (non-5xx) at least",
             minimum=0, maximum=1),
    _release("RELEASE_MAX_P99", "duration", "500ms", "check: canary p99 latency at most"),
    _release("RELEASE_MAX_P99_RATIO", "float", "1.5", "check: canary p99 at most this times stable's", minimum=1),
    _release("RELEASE_MAX_OVER_BUDGET_SHARE", "float", "0.01", "check: share of canary calls slower than 250 ms "
             "(the gateway's bucket within nginx's 300ms canary budget, whose users got stable's answer) not "
             "significantly above this", minimum=0, maximum=1),
    _release("RELEASE_P99_RATIO_FLOOR", "duration", "100ms", "below this p99 the ratio check is not judged"),
    _release("RELEASE_ALPHA", "float", "0.05", "significance level of the statistical checks (online quality: "
             "over all the looks of a window)", minimum=0, maximum=1),
    _release("RELEASE_TIMEOUT", "duration", "24h", "roll back a release that never gathered enough evidence"),
    _release("RELEASE_ONLINE_QUALITY", "bool", "0", "also compare the share of recommendations watched"),
    _release("RELEASE_LEASE_TTL", "duration", "3m", "one release step at a time: a lease held longer than this "
             "is taken over (keep it above the release function's exec_timeout)", minimum=1),
    _release("RELEASE_MIN_RECOMMENDED", "int", "1000", "online quality: recommended movies per variant needed "
             "before it is judged (fewer: wait)", minimum=1),
    _release("RELEASE_QUALITY_MARGIN", "float", "0", "online quality: roll back only when the canary's share "
             "watched is significantly below (1 - this) x stable's", minimum=0, maximum=0.99),
    _release("CANARY_PERCENT", "int", "20", "users in the canary: user id mod 100 below this",
             minimum=0, maximum=100),
    _release("RELEASE_SCRAPE_INTERVAL", "duration", "15s", "how often Prometheus scrapes the gateway (faasd: "
             "15s): the analysis measures no range shorter than two of these", minimum=0.001),
    _release("RELEASE_GATEWAY_JOB", "str", "openfaas-gateway",
             "Prometheus job of the gateway's own metrics: the only series the analysis counts"),
    _release("STABLE_FUNCTION", "str", "recommend", "the function serving the stable model"),
    _release("CANARY_FUNCTION", "str", "recommend-canary", "the function serving the candidate"),
    _release("FUNCTION_NAMESPACE", "str", "openfaas-fn", "namespace of the recommend functions"),
    # -- services ----------------------------------------------------------------------------------
    _svc("OPENFAAS_URL", "str", "http://127.0.0.1:8080", "the OpenFaaS gateway the functions (and the operator "
         "CLIs) call; in a cluster env/<target>.yml sets the functions' own"),
    _svc("OPENFAAS_GATEWAY", "str", "http://127.0.0.1:8080", "stack.yml: faas-cli's gateway (provider.gateway), "
         "as seen from where faas-cli runs"),
    _svc("PROMETHEUS_URL", "str", "http://127.0.0.1:9090", "Prometheus, for the release analysis"),
    _svc("PUSHGATEWAY_URL", "str", "", "Pushgateway for the batch functions' figures; blank: no push",
         deployed="http://127.0.0.1:9091"),
    # -- notifications -----------------------------------------------------------------------------
    _notify("NOTIFY_WEBHOOK_URL", "str", "", "POST each release decision as JSON here; blank: no webhook"),
    _notify("SMTP_HOST", "str", "", "SMTP server for decision emails; blank: no email"),
    _notify("SMTP_PORT", "int", "25", "SMTP port", minimum=1, maximum=65535),
    _notify("SMTP_FROM", "str", "movierec@localhost", "sender of decision emails", deployed=""),
    _notify("SMTP_TO", "list", "", "recipients of decision emails, comma-separated"),
    _notify("SMTP_STARTTLS", "bool", "0", "use STARTTLS"),
    # -- the function template ---------------------------------------------------------------------
    _tmpl("BIND_HOST", "str", "127.0.0.1", "address the function server binds (in a container too: the watchdog forwards to 127.0.0.1)"),
    _tmpl("PORT", "int", "5000", "port the function server listens on", minimum=1, maximum=65535),
    _tmpl("SERVER_THREADS", "int", "8", "function server threads (granian's Python threads running the handler); stack.yml gives recommend and recommend-canary 1", minimum=1),
    # -- the local stack (make up) and stack.yml substitutions ------------------------------------
    _stack("DEPLOY_TARGET", "str", "kubernetes", "stack.yml: the functions' address overlay env/<target>.yml: "
           "kubernetes, faasd, localfaas (make up)"),
    _stack("STACK_STATE_DIR", "str", "var", "the local stack's state folder (store, logs, pids, secrets)"),
    _stack("STACK_FILE", "str", "stack.yml", "the stack file `make up` deploys"),
    _stack("STACK_SIMULATOR", "bool", "1", "start the stream simulator with `make up`"),
    _stack("SIMULATOR_ARGS", "str", "", "extra simulator options for `make up`"),
    _stack("PUBLIC_URL", "str", "http://127.0.0.1:8082", "the public entry (nginx)"),
    _stack("RECOMMEND_URL", "str", "", "where the simulator calls GET /recommend/<uid>; blank: PUBLIC_URL"),
    _stack("BROKER_PORT", "int", "9092", "port of the local broker (scripts/broker.py)", minimum=1, maximum=65535),
    _stack("INGEST_SCHEDULE", "str", "*/15 * * * *", "stack.yml: cron schedule of ingest"),
    _stack("TRAIN_SCHEDULE", "str", "0 3 */2 * *", "stack.yml: cron schedule of train"),
    _stack("RELEASE_SCHEDULE", "str", "*/1 * * * *", "stack.yml: cron schedule of the release step"),
    _stack("STABLE_MODEL_VERSION", "str", "stable", "stack.yml: MODEL_VERSION of recommend"),
    _stack("CANARY_MODEL_VERSION", "str", "stable", "stack.yml: MODEL_VERSION of recommend-canary"),
    _stack("IMAGE_REGISTRY", "str", "movierec", "stack.yml: image name prefix"),
    _stack("IMAGE_TAG", "str", "latest", "stack.yml: image tag"),
    # -- localfaas (read by localfaas itself) ------------------------------------------------------
    _lf("LOCALFAAS_PORT", "int", "8080", "port of the local gateway", minimum=1, maximum=65535),
    _lf("LOCALFAAS_UPSTREAM_TIMEOUT", "float", "65", "seconds the local gateway waits for a function"),
    _lf("LOCALFAAS_READY_TIMEOUT", "float", "60", "seconds a new replica has to become ready"),
    _lf("LOCALFAAS_HEALTH_INTERVAL", "float", "2", "seconds between replica health checks"),
    _lf("LOCALFAAS_CRON_INTERVAL", "float", "10", "seconds between the cron connector's re-reads of the functions"),
    _lf("LOCALFAAS_DRAIN_TIMEOUT", "float", "30", "seconds a stopping replica may finish its calls"),
    _lf("LOCALFAAS_DEPLOY_WAIT", "float", "30",
        "seconds a deploy call waits for its new replicas to serve before answering 202 anyway (0: at once)"),
    _lf("LOCALFAAS_NO_REPLICA_WAIT", "float", "0",
        "seconds a call waits for a ready replica of a function that should have one (0: 503 at once)"),
    _lf("LOCALFAAS_MAX_BODY", "int", "16777216",
        "request body bytes the local gateway passes to a function (413 above; label "
        "com.openfaas.localfaas.max-body-bytes per function)", minimum=0),
    _lf("LOCALFAAS_DATA_PLANE", "str", "python",
        "who answers /function/ calls: python (the gateway app) or nginx (nginx calls ready replicas "
        "straight, localfaas is the control plane; env/local.yml sets it)"),
    _lf("LOCALFAAS_NGINX", "str", "", "the nginx binary of the nginx data plane (default: nginx on PATH or /usr/sbin)"),
    _lf("LOCALFAAS_KEEP_IMAGES", "int", "5", "unused image snapshots kept besides those in use", minimum=0),
    _lf("LOCALFAAS_REDEPLOY_STACK", "bool", "0",
        "`up` deploys stack.yml for every function instead of restoring what was deployed"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_duration(text: str) -> float:
    """Seconds in `90`, `90s`, `1m`, `2h`, `1d`, `500ms` (ASCII digits only)."""
    m = _DURATION.fullmatch(text.strip()) if text.isascii() else None
    if not m:
        raise ValueError(f"invalid duration {text!r}: expected e.g. 500ms, 90s, 1m, 2h")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def _number(raw: str, kind: str) -> float:
    if not raw.isascii():
        raise ValueError("non-ASCII characters")
    value = int(raw) if kind == "int" else float(raw)
    if not math.isfinite(value):
        raise ValueError("not finite")
    return value


def parse_value(setting: Setting, raw: str) -> Any:
    """The typed value of `raw` for `setting`; ConfigError naming the variable otherwise."""
    kind = setting.kind
    text = raw.strip()
    try:
        if kind == "str":
            return text
        if kind == "list":
            return [item.strip() for item in text.split(",") if item.strip()]
        if kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError("not a boolean")
        value = parse_duration(text) if kind == "duration" else _number(text, kind)
    except ValueError:
        expected = {"int": "an integer", "float": "a number", "bool": "1 or 0", "duration": "a duration "
                    "such as 500ms, 90s, 1m, 2h"}[kind]
        raise ConfigError(f"{setting.name} must be {expected}, got {raw[:60]!r}") from None
    if setting.minimum is not None and value < setting.minimum:
        raise ConfigError(f"{setting.name} must be at least {setting.minimum:g}, got {raw[:60]!r}")
    if setting.maximum is not None and value > setting.maximum:
        raise ConfigError(f"{setting.name} must be at most {setting.maximum:g}, got {raw[:60]!r}")
    return value


class Settings:
    """Typed reads of the table's variables from one environment (os.environ by default)."""

    def __init__(self, env: Mapping[str, str] | None = None):
        self.env: Mapping[str, str] = os.environ if env is None else env

    def is_set(self, name: str) -> bool:
        _setting(name)
        return bool((self.env.get(name) or "").strip())

    def raw(self, name: str) -> str:
        setting = _setting(name)
        value = (self.env.get(name) or "").strip()
        return value if value else setting.default

    def get(self, name: str) -> Any:
        """The variable's typed value, its default when unset or blank; None for a blank default
        of a numeric, duration or boolean kind (nothing configured)."""
        setting = _setting(name)
        raw = self.raw(name)
        if raw == "" and setting.kind not in ("str", "list"):
            return None
        return parse_value(setting, raw)


def setting_field(name: str, default: Any) -> Any:
    """A dataclass field that names its row in the table (`field.metadata["setting"]`), for
    configs that layer the environment over another source (e.g. params.yaml)."""
    _setting(name)
    return field(default=default, metadata={"setting": name})


def _setting(name: str) -> Setting:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name} is not in movierec.settings.SETTINGS: add it there first") from None


def markdown_table() -> str:
    """The README's configuration table."""
    lines = ["| variable | kind | default | what it sets |", "| --- | --- | --- | --- |"]
    group = None
    for s in SETTINGS:
        if s.group != group:
            group = s.group
            lines.append(f"| **{group}** | | | |")
        default = f"`{s.default}`" if s.default else "(blank)"
        if s.deployed is not None:
            default += f"; stack.yml: `{s.deployed}`" if s.deployed else "; stack.yml: (blank)"
        lines.append(f"| `{s.name}` | {s.kind} | {default} | {s.doc.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


README_BEGIN, README_END = "<!-- settings:begin -->\n", "<!-- settings:end -->"


def with_table(readme: str) -> str:
    """`readme` with the text between its settings markers replaced by `markdown_table()`."""
    start, end = readme.index(README_BEGIN) + len(README_BEGIN), readme.index(README_END)
    return readme[:start] + markdown_table() + readme[end:]


def main(argv: list[str] | None = None) -> int:
    """`--markdown` prints the table; `--readme PATH` rewrites PATH's copy; no flag: NAME=value."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--markdown"]:
        sys.stdout.write(markdown_table())
        return 0
    if len(args) == 2 and args[0] == "--readme":
        with open(args[1], encoding="utf-8") as f:
            text = f.read()
        with open(args[1], "w", encoding="utf-8") as f:
            f.write(with_table(text))
        return 0
    if args:
        print("usage: python -m movierec.settings [--markdown | --readme README.md]", file=sys.stderr)
        return 2
    for s in SETTINGS:
        print(f"{s.name}={Settings().raw(s.name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
