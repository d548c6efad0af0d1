"""The function server of the python3-http-debian template.

Serves `function/handler.py`'s `handle(event, context)` over HTTP with Flask under waitress.
In a container of-watchdog (mode=http) sits in front on :8080 and forwards to 127.0.0.1:5000;
without a container the local runtime starts this file directly and sets PORT.

`function/` is put on sys.path so a handler imports the code that `configuration.copy`
placed beside it (e.g. `import movierec`) the same way in a container, a local build
context and the tests.
"""
import json
import os
import socket
import sys

from flask import Flask, Response, request
from waitress import serve
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

FUNCTION_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "function")
sys.path.insert(0, FUNCTION_DIR)

import handler  # needs the path above

app = Flask(__name__)


class _AnyPath(PathConverter):
    """Every path, control characters included (`/1%0a` reaches the handler, which refuses it
    with its own reason, instead of werkzeug's 404)."""

    regex = r"(?s:[^/].*?)"


app.url_map.converters["anypath"] = _AnyPath


class Event:
    def __init__(self, path):
        self.body = request.get_data()
        self.headers = request.headers
        self.method = request.method
        self.query = request.args
        self.path = path


class Context:
    def __init__(self):
        self.hostname = os.getenv("HOSTNAME", socket.gethostname())


def _format(result):
    if result is None:
        return Response("", status=200)
    if not isinstance(result, dict):
        return Response(str(result), status=200)
    body = result.get("body", "")
    headers = dict(result.get("headers") or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    elif body is None:
        body = ""
    elif not isinstance(body, (bytes, str)):
        body = str(body)
    return Response(body, status=int(result.get("statusCode", 200)), headers=headers)


def _hook(name):
    hook = getattr(handler, name, None)
    if hook is None:
        return 200, "ok"
    ok, message = hook()
    return (200 if ok else 503), message


@app.errorhandler(HTTPException)
def _http_error(error):
    # Werkzeug's own answers (an unknown method: 405, a malformed request: 400) as one plain line,
    # like every error a handler gives, instead of an HTML page.
    text = f"{error.code} {error.name}: " + " ".join(str(error.description or "").split())[:200]
    response = Response(text + "\n", status=error.code, mimetype="text/plain")
    if error.code == 405:
        response.headers["Allow"] = ", ".join(METHODS)
    return response


@app.errorhandler(Exception)
def _unexpected(error):
    # A handler that raised: a one-line 500 naming the type, never a traceback (it goes to the log).
    app.logger.exception("handler raised")
    return Response(f"internal error ({type(error).__name__}); see the function's log\n", status=500,
                    mimetype="text/plain")


@app.route("/_/health", methods=["GET"])
def health():
    # Liveness: the process is up and the handler imported (of-watchdog's /_/health in a container).
    status, message = _hook("alive")
    return Response(message + "\n", status=status, mimetype="text/plain")


@app.route("/_/ready", methods=["GET"])
def ready():
    # Readiness: the handler says it can serve (e.g. its model is loaded and verified).
    status, message = _hook("ready")
    return Response(message + "\n", status=status, mimetype="text/plain")


METHODS = ["GET", "PUT", "POST", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@app.route("/", defaults={"path": ""}, methods=METHODS)
@app.route("/<anypath:path>", methods=METHODS)
def call_handler(path):
    return _format(handler.handle(Event("/" + path), Context()))


if __name__ == "__main__":
    serve(
        app,
        host=os.getenv("BIND_HOST", "127.0.0.1"),
        port=int(os.getenv("PORT", "5000")),
        threads=int(os.getenv("SERVER_THREADS", "8")),
        ident=None,
    )
