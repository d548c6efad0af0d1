"""recommend / recommend-canary: GET /<userid> -> up to 20 movie ids, best first, one plain line.

Thin on purpose: the model and its loading live in movierec.serving; this maps HTTP to it.
The same handler is deployed twice; MODEL_VERSION pins what each deployment serves.
Every body is one line of text/plain (movierec.adapters.replies, content type TEXT).
A MODEL_VERSION that can never load (movierec.serving) makes the process exit at import with
one line on stderr, so the deploy fails at once instead of after the readiness timeout.
"""
import sys

from movierec.adapters.replies import TEXT, error, reply
from movierec.adapters.stores import open_store
from movierec.drills import DrillFault
from movierec.events import parse_user_id
from movierec.serving import ModelHolder

MODEL = ModelHolder(open_store=open_store)  # loaded once per process, at import
if MODEL.fatal:  # a MODEL_VERSION that can never load: fail the deploy now, in one line (movierec.serving)
    print(f"recommend: cannot serve: {MODEL.fatal}", file=sys.stderr, flush=True)
    raise SystemExit(78)  # EX_CONFIG


def ready():
    """Readiness for the runtime: true once the model is loaded and its sha256 verified."""
    return MODEL.ready()


def handle(event, context):
    if event.method not in ("GET", "HEAD"):
        return error(405, f"method {event.method} not allowed: use GET", TEXT, Allow="GET, HEAD")
    segments = [s for s in event.path.split("/") if s]
    if segments == ["health"]:
        ok, text = MODEL.ready()
        return reply(200 if ok else 503, text, TEXT)
    if len(segments) != 1:
        return error(404, "not found: use GET /<userid> or GET /health", TEXT)
    user_id = parse_user_id(segments[0])
    if user_id is None:
        return error(400, f"invalid user id {segments[0][:40]!r}: expected a non-negative integer", TEXT)
    model = MODEL.get()
    if model is None:
        return error(503, MODEL.describe(), TEXT)
    version = {"X-Model-Version": model.version or "unversioned"}
    try:
        movie_ids = MODEL.recommend(model, user_id)
    except DrillFault as e:  # a release drill's deliberately bad model: a real 5xx for the canary analysis
        return error(500, str(e), TEXT, **version)
    return reply(200, ",".join(movie_ids), TEXT, **version)
