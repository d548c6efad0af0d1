"""recommend / recommend-canary: GET /<userid> -> up to 20 movie ids, best first, one plain line.

Thin on purpose: the model, its loading and the warm-up answer live in movierec.serving; this maps
HTTP to it. The same handler is deployed twice; MODEL_VERSION pins what each deployment serves.
Every body is one line of text/plain (movierec.adapters.replies, content type TEXT).

- `GET /<userid>` (also `GET /?user=<userid>`, and `POST /` with the id as the body, so
  `echo 42 | faas-cli invoke recommend` works): 200 with the ids and `X-Model-Version: <version>`;
  before any model exists, 200 from the popularity of what was ingested so far with
  `X-Model-Version: popularity` (never a hang, never a 503 for "not trained yet"); 503 with
  `Retry-After` only when the pinned model cannot be served; 400 for a malformed id.
- `GET /health`: what the replica serves, 200 while it can answer usefully (a model, or warm-up
  popularity), else 503; `ready()` is the same check for the template's readiness and lock file.
A MODEL_VERSION that can never load (the holder's FATAL state, movierec.serving) makes the
process exit at import with one line on stderr (the holder's own `describe()`), so the deploy fails at once instead of after the readiness timeout.
"""
import logging
import sys

from movierec.adapters.replies import TEXT, error, reply
from movierec.adapters.stores import open_store
from movierec.drills import DrillFault
from movierec.events import parse_user_id
from movierec.serving import FATAL, POPULARITY_VERSION, ModelHolder

# State changes only (waiting / loaded / failed, each once), never a line per request.
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
MODEL = ModelHolder(open_store=open_store)  # first load at import; retries in the background
if MODEL.state == FATAL:  # a MODEL_VERSION that can never load: fail the deploy now, in one line
    print(f"recommend: {MODEL.describe()}", file=sys.stderr, flush=True)
    raise SystemExit(78)  # EX_CONFIG
_RETRY_AFTER = str(max(1, round(MODEL.retry_seconds)))  # seconds, for 503 replies


def ready():
    """Readiness for the runtime: a verified model is loaded, or no model exists yet and the
    replica answers from popularity. False only when it could answer nothing but 503."""
    return MODEL.ready()


def _user_segment(event):
    """The user id as written: the path's one segment, `?user=`, or a POST body."""
    segments = [s for s in event.path.split("/") if s]
    if event.method == "POST":
        if segments:
            return None, error(405, "POST only to / with the user id as the body; else GET /<userid>", TEXT,
                               Allow="GET, HEAD, POST")
        return event.body.decode("utf-8", "replace").strip(), None
    if not segments and event.query.get("user"):
        return event.query.get("user").strip(), None
    if segments == ["health"]:
        ok, text = MODEL.ready()
        return None, reply(200 if ok else 503, text, TEXT)
    if len(segments) != 1:
        return None, error(404, "not found: use GET /<userid> or GET /health", TEXT)
    return segments[0], None


def handle(event, context):
    if event.method not in ("GET", "HEAD", "POST"):
        return error(405, f"method {event.method} not allowed: use GET", TEXT, Allow="GET, HEAD, POST")
    raw, answered = _user_segment(event)
    if answered is not None:
        return answered
    user_id = parse_user_id(raw)
    if user_id is None:
        return error(400, f"invalid user id {raw[:40]!r}: expected a non-negative integer", TEXT)
    model = MODEL.get()
    if model is None:
        warmup = MODEL.popularity()
        if warmup is None:
            return error(503, MODEL.describe(), TEXT, **{"Retry-After": _RETRY_AFTER})
        return reply(200, ",".join(warmup.recommend(user_id, MODEL.k)), TEXT,
                     **{"X-Model-Version": POPULARITY_VERSION})
    version = {"X-Model-Version": model.version or "unversioned"}
    try:
        movie_ids = MODEL.recommend(model, user_id)
    except DrillFault as e:  # a release drill's deliberately bad model: a real 5xx for the canary analysis
        return error(500, str(e), TEXT, **version)
    return reply(200, ",".join(movie_ids), TEXT, **version)
