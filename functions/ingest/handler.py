"""ingest: one bounded run of Kafka topic -> object store batches (cron-connector or by hand).

Thin on purpose: the run lives in movierec.adapters.kafka_ingest (configured by
movierec.ingest.IngestConfig). `POST /` (the cron connector sends an empty body with
`X-Topic: cron-function`) runs with the settings from env; `?max_records=N&max_seconds=S` bound a
manual run. A run writes, so it needs the `cron-token` secret as `Authorization: Bearer <token>`
(the local cron sends it; movierec.adapters.replies.check_token): 401 without it, 503 when the
secret is not configured. Replies with the run's JSON summary; any other method gets 405 (a stray
GET must not start one); a bad bound (not a positive finite ASCII number) or setting gives 400 and
a failing dependency 503, each with a one-line JSON error (movierec.adapters.replies).
One run per consumer group: while another run (cron, manual, async) holds the group's lease, a
call is refused at once with 409 naming the holder and when it will be free (`Retry-After` in
seconds), never a 200 with nothing ingested.
"""
import math
import re

from movierec.adapters.kafka_ingest import run_ingest
from movierec.adapters.replies import CRON_TOKEN, check_token, error, from_exception, reply
from movierec.errors import Rejected, one_line
from movierec.ingest import IngestConfig
from movierec.lease import LeaseHeld

_NUMBER = {int: re.compile(r"[0-9]{1,12}"), float: re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")}


def _number(query, name, kind):
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if not _NUMBER[kind].fullmatch(raw):  # ASCII digits only: no 'nan', 'inf', '1e9', '٣'
        raise Rejected(f"query parameter {name} must be a number, got {raw[:20]!r}")
    value = kind(raw)
    if value <= 0 or not math.isfinite(value):
        raise Rejected(f"query parameter {name} must be positive, got {raw[:20]!r}")
    return value


def _caller(headers) -> str:
    """Who started the run, as a refused second run is told: cron, or a manual call."""
    return "cron" if (headers.get("X-Connector") or "").startswith("cron") else "manual"


def handle(event, context):
    if event.method != "POST":
        return error(405, f"method {event.method} not allowed: POST starts an ingest run", Allow="POST")
    refused = check_token(event.headers, CRON_TOKEN, realm="ingest")
    if refused is not None:
        return refused
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
