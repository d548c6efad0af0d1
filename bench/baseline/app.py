"""The capacity benchmark's baseline: a seed-style service, one Flask app under gunicorn.

What a team would write by hand instead of the stack: `GET /recommend/<uid>` in one Flask app,
the same model artifact loaded with the same loader (`movierec.artifact.load_model`, MODEL_PATH)
and the same scoring (`RecommenderModel.recommend`, 20 ids), the same one-line text/plain reply
with `X-Model-Version`. No gateway, no canary split, no nginx, no metrics. Run by
bench/capacity.py as `gunicorn --workers 2 --worker-class sync bench.baseline.app:app` on
127.0.0.1 (bench/baseline/requirements.txt: gunicorn, bench-only, never shipped).
Owns nothing but this comparison; not a product code path.
"""
from __future__ import annotations

import os

from flask import Flask, Response

from movierec.artifact import load_model
from movierec.events import parse_user_id

MODEL = load_model(os.environ["MODEL_PATH"])
VERSION = MODEL.version or "unversioned"
app = Flask(__name__)


@app.route("/recommend/<uid>")
def recommend(uid: str) -> Response:
    user_id = parse_user_id(uid)
    if user_id is None:
        return Response("invalid user id\n", status=400, mimetype="text/plain")
    return Response(",".join(MODEL.recommend(user_id, 20)), mimetype="text/plain",
                    headers={"X-Model-Version": VERSION})
