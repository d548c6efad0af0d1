"""ingest: one bounded run of Kafka topic -> object store batches (cron-connector or by hand).

Thin on purpose: the run lives in movierec.adapters.kafka_ingest (configured by
movierec.ingest.IngestConfig). `POST /` (the cron connector sends an empty body with
`X-Topic: cron-function`) runs with the settings from env; `?max_records=N&max_seconds=S` bound a
manual run. Replies with the run's JSON summary; any other method gets 405 (a run writes, so a
stray GET must not start one); a bad bound or setting gives 400 and a failing dependency 503, each
with a one-line JSON error (movierec.adapters.replies). One run per consumer group: while another
run (cron, manual, async) holds the group's lease, a call is refused at once with 409 naming the
holder and when it will be free (`Retry-After` in seconds), never a 200 with nothing ingested.
"""
from movierec.adapters.kafka_ingest import run_ingest
from movierec.adapters.replies import error, from_exception, reply
from movierec.errors import Rejected, one_line
from movierec.ingest import IngestConfig
from movierec.lease import LeaseHeld


def _number(query, name, kind):
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise Rejected(f"query parameter {name} must be a number, got {raw[:20]!r}") from None
    if value <= 0:
        raise Rejected(f"query parameter {name} must be positive, got {raw[:20]!r}")
    return value


def _caller(headers) -> str:
    """Who started the run, as a refused second run is told: cron, or a manual call."""
    return "cron" if (headers.get("X-Connector") or "").startswith("cron") else "manual"


def handle(event, context):
    if event.method != "POST":
        return error(405, f"method {event.method} not allowed: POST starts an ingest run")
    try:
        config = IngestConfig.from_env(
            max_records=_number(event.query, "max_records", int),
            max_seconds=_number(event.query, "max_seconds", float),
            caller=_caller(event.headers),
        )
        summary = run_ingest(config)
    except LeaseHeld as e:
        return error(409, one_line(e), **{"Retry-After": str(e.retry_after_s)})
    except Exception as e:  # noqa: BLE001 (from_exception answers by the error taxonomy; bugs are 500)
        return from_exception(e)
    return reply(200, summary.as_dict())
