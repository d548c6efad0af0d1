"""recommend / recommend-canary: GET /<userid> -> up to 20 movie ids, best first, one plain line.

Thin on purpose: the model and its loading live in movierec.serving; this maps HTTP to it.
The same handler is deployed twice; MODEL_VERSION pins what each deployment serves.
"""
from movierec.events import parse_user_id
from movierec.serving import DrillFault, ModelHolder

TEXT = {"Content-Type": "text/plain; charset=utf-8"}
MODEL = ModelHolder()  # loaded once per process, at import


def ready():
    """Readiness for the runtime: true once the model is loaded and its sha256 verified."""
    return MODEL.ready()


def _reply(status, body, **headers):
    return {"statusCode": status, "body": body, "headers": {**TEXT, **headers}}


def handle(event, context):
    if event.method not in ("GET", "HEAD"):
        return _reply(405, f"method {event.method} not allowed: use GET", Allow="GET, HEAD")
    segments = [s for s in event.path.split("/") if s]
    if segments == ["health"]:
        ok, text = MODEL.ready()
        return _reply(200 if ok else 503, text)
    if len(segments) != 1:
        return _reply(404, "not found: use GET /<userid> or GET /health")
    user_id = parse_user_id(segments[0])
    if user_id is None:
        return _reply(400, f"invalid user id {segments[0][:40]!r}: expected a non-negative integer")
    model = MODEL.get()
    if model is None:
        return _reply(503, MODEL.describe())
    try:
        movie_ids = MODEL.recommend(model, user_id)
    except DrillFault as e:  # a release drill's deliberately bad model: a real 5xx for the canary analysis
        return _reply(500, str(e), **{"X-Model-Version": model.version or "unversioned"})
    return _reply(200, ",".join(movie_ids), **{"X-Model-Version": model.version or "unversioned"})
