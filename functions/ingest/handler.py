"""ingest: one bounded run of Kafka topic -> object store batches (cron-connector or by hand).

Thin on purpose: the run lives in movierec.ingest. `POST /` (the cron connector sends an empty
body with `X-Topic: cron-function`) runs with the settings from env; `?max_records=N&max_seconds=S`
bound a manual run. Replies with the run's JSON summary; any other method gets 405 (a run writes,
so a stray GET must not start one); a failing dependency gives 503 with a one-line error naming it.
"""
from movierec.ingest import IngestConfig, IngestError, run_ingest
from movierec.store import StoreError

JSON = {"Content-Type": "application/json"}


def _reply(status, body):
    return {"statusCode": status, "body": body, "headers": JSON}


def _number(query, name, kind):
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"query parameter {name} must be a number, got {raw[:20]!r}") from None
    if value <= 0:
        raise ValueError(f"query parameter {name} must be positive, got {raw[:20]!r}")
    return value


def handle(event, context):
    if event.method != "POST":
        return _reply(405, {"error": f"method {event.method} not allowed: POST starts an ingest run"})
    try:
        config = IngestConfig.from_env(
            max_records=_number(event.query, "max_records", int),
            max_seconds=_number(event.query, "max_seconds", float),
        )
    except ValueError as e:
        return _reply(400, {"error": str(e)})
    try:
        summary = run_ingest(config)
    except (IngestError, StoreError) as e:
        return _reply(503, {"error": str(e)})
    return _reply(200, summary.as_dict())
