"""The function server of the python3-http-debian template.

Serves `function/handler.py`'s `handle(event, context)` over HTTP with Flask (the WSGI app
below) under granian, a Rust HTTP server: HTTP parsing, keep-alive and writes happen in Rust, only
the app runs in Python (measured against the former waitress with `make bench-capacity`: see
bench/README.md). In a container of-watchdog (mode=http) sits in front on :8080 and forwards to
127.0.0.1:5000; without a container the local runtime starts this file directly and sets PORT.

Processes: `python index.py` is granian's main process; it binds the port, then forks one worker
that imports the handler (the model loads there, once) and serves. The worker dies with the main
process (PR_SET_PDEATHSIG: a `kill -9` of the replica leaves nothing holding its port), and a
handler that exits at import (recommend's `SystemExit(78)` for a model that can never load) makes
the main process exit with that same code. No access log, no per-request line.

Health, as the real platforms see it (see README.md):
- `/_/ready` answers the handler's optional `ready()` hook: (ok, one line), 200 or 503. The
  local runtime probes it directly; in a container the watchdog forwards its own `/_/ready` here
  (the Dockerfile sets `ready_path`).
- `/_/health` answers the optional `alive()` hook (200 "ok" without one).
- The lock file. Kubernetes (faas-netes CE) probes only the watchdog's `/_/health`, for readiness
  AND liveness, and the watchdog answers it from `$TMPDIR/.lock` (a stat). With `suppress_lock`
  set (the Dockerfile does) the watchdog never writes that file, and this server keeps it in step
  with `ready()` instead: written once the server listens and the handler is ready, removed when
  it is not. So "ready" on Kubernetes means what `ready()` says, and a handler that can always
  answer usefully (e.g. recommend's warm-up popularity) is never restarted for waiting.

`function/` is put on sys.path so a handler imports the code that `configuration.copy`
placed beside it (e.g. `import movierec`) the same way in a container, a local build
context and the tests.
"""
import json
import os
import socket
import sys
import threading
from functools import cached_property

if __name__ == "__main__":  # granian's main process: bind, fork the worker, never import the handler
    import ctypes
    import multiprocessing
    import signal

    from granian.constants import Interfaces
    from granian.server import Server

    multiprocessing.set_start_method("fork")  # the worker inherits the bound socket and this module
    _WORKER_EXIT = multiprocessing.Value("i", 0)
    _MAIN_PID = os.getpid()

    def _load_app(_target):
        """In the worker: die with the main process, import the handler, serve `app`."""
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != _MAIN_PID:
            os._exit(1)
        try:
            import index
        except SystemExit as e:  # the handler refused to start: the main process says so by its code
            _WORKER_EXIT.value = e.code if isinstance(e.code, int) else 1
            raise
        index.start_lock_thread()
        return index.serve

    def _refuse_a_shared_port(host: str, port: int) -> None:
        """granian binds with SO_REUSEPORT, so on a port another server already listens on (with
        SO_REUSEPORT too, e.g. another replica) it would share the calls silently. A probe bound
        without SO_REUSEPORT fails with EADDRINUSE while anyone listens there (SO_REUSEADDR only
        passes connections left in TIME_WAIT)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))

    _server = Server("index:serve", address=os.getenv("BIND_HOST", "127.0.0.1"), port=int(os.getenv("PORT", "5000")),
                     interface=Interfaces.WSGI, workers=1,
                     blocking_threads=int(os.getenv("SERVER_THREADS", "8")), log_enabled=False, log_access=False)
    try:
        _refuse_a_shared_port(os.getenv("BIND_HOST", "127.0.0.1"), int(os.getenv("PORT", "5000")))
        _server.serve(target_loader=_load_app)
    except SystemExit as e:
        sys.exit(_WORKER_EXIT.value or e.code)
    except (OSError, RuntimeError) as e:  # e.g. the port is taken: one line, not a Rust backtrace
        print(f"index.py: cannot serve on {os.getenv('BIND_HOST', '127.0.0.1')}:{os.getenv('PORT', '5000')}: "
              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(_WORKER_EXIT.value)

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import PathConverter
from werkzeug.wrappers import Request
from werkzeug.wsgi import get_path_info

FUNCTION_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "function")
sys.path.insert(0, FUNCTION_DIR)

import handler  # needs the path above

app = Flask(__name__)
# Where of-watchdog looks: Go's os.TempDir() is $TMPDIR, else /tmp.
LOCK_FILE = os.path.join(os.environ.get("TMPDIR") or "/tmp", ".lock")
LOCK_INTERVAL_S = 1.0


class _AnyPath(PathConverter):
    """Every path, control characters included (`/1%0a` reaches the handler, which refuses it
    with its own reason, instead of werkzeug's 404)."""

    regex = r"(?s:[^/].*?)"


app.url_map.converters["anypath"] = _AnyPath


class Event:
    """A call as the handler sees it: method, path, and (read when the handler first asks) body,
    headers and query. From Flask's request, or, on the straight way (`serve`), from the WSGI
    environ alone: the werkzeug request is only built if the handler reads body, headers or query."""

    def __init__(self, path, wsgi_call=None):
        self.path = path
        self._wsgi_call = wsgi_call
        self._req = request if wsgi_call is None else None  # Flask's request of this call, or built later
        self.method = request.method if wsgi_call is None else wsgi_call.get("REQUEST_METHOD", "GET").upper()

    def _request(self):
        if self._req is None:
            self._req = Request(self._wsgi_call)
        return self._req

    @cached_property
    def body(self):
        return self._request().get_data()

    @cached_property
    def headers(self):
        return self._request().headers

    @cached_property
    def query(self):
        return self._request().args


class Context:
    def __init__(self, hostname):
        self.hostname = hostname


# The same for every request of this process: computed once, not per call.
CONTEXT = Context(os.getenv("HOSTNAME") or socket.gethostname())


def _shape(result):
    """(status code, headers, body) of what `handle` returned: None, a value (its text), or a dict
    with statusCode, body and headers (a dict or list body as JSON)."""
    if result is None:
        return 200, {}, ""
    if not isinstance(result, dict):
        return 200, {}, str(result)
    body = result.get("body", "")
    headers = dict(result.get("headers") or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    elif body is None:
        body = ""
    elif not isinstance(body, (bytes, str)):
        body = str(body)
    return int(result.get("statusCode", 200)), headers, body


def _format(result):
    status, headers, body = _shape(result)
    return Response(body, status=status, headers=headers)


# Headers werkzeug rewrites on the way out (made URLs, recomputed): such replies go through it.
_REWRITTEN = frozenset(("location", "content-location", "content-length"))


def _plain_reply(status, headers, body):
    """(status line, header list, body bytes) exactly as werkzeug's Response would send this reply
    (tests/test_template_server.py compares them), or None for what werkzeug changes or refuses:
    1xx/204/304 and codes outside 200-599, headers from _REWRITTEN, non-text or multi-line headers."""
    if not 200 <= status < 600 or status in (204, 304):
        return None
    listed = []
    typed = False
    for key, value in headers.items():
        if not (isinstance(key, str) and isinstance(value, str)) or "\n" in value or "\r" in value:
            return None
        lowered = key.lower()
        if lowered in _REWRITTEN:
            return None
        typed = typed or lowered == "content-type"
        listed.append((key, value))
    if not typed:
        listed.append(("Content-Type", "text/html; charset=utf-8"))  # werkzeug's default
    data = body.encode() if isinstance(body, str) else body
    listed.append(("Content-Length", str(len(data))))
    phrase = HTTP_STATUS_CODES.get(status)
    return f"{status} {phrase.upper() if phrase else 'UNKNOWN'}", listed, data


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
    # Liveness: the process is up and the handler imported (the watchdog answers its own
    # /_/health from the lock file in a container; see the module docstring).
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
    return _format(handler.handle(Event("/" + path), CONTEXT))


def serve(wsgi_call, start_response):
    """The WSGI app granian runs. `GET /<path>` (the calls, e.g. `GET /<userid>`) goes straight to
    the handler through the same Event, Context, reply shaping and error answers as Flask's
    `call_handler` route, without Flask's per-request dispatch (contexts, URL map), which cost
    more CPU than recommend's scoring; everything else (other methods, `/`, `/_/...`, `//`) is
    Flask's `app`, unchanged. Neither is a werkzeug request built unless the handler reads body,
    headers or query (`Event`), nor a werkzeug Response for a plain reply (`_plain_reply`, byte for
    byte what it would send): both cost more CPU per call, cold, than the handler itself.

    Every reply leaves as one piece (`_whole`): given an iterator, granian may write the head and
    the body in two writes, and a replica killed between them cuts a call the gateway can no longer
    send to another replica; given one bytes item it writes both at once."""
    path = wsgi_call.get("PATH_INFO") or ""  # the WSGI environ of this call
    if (wsgi_call.get("REQUEST_METHOD") != "GET" or len(path) < 2 or path[1] == "/" or "//" in path
            or path.startswith("/_/")):
        return _whole(app(wsgi_call, start_response))
    try:
        status, headers, body = _shape(handler.handle(Event("/" + get_path_info(wsgi_call).lstrip("/"), wsgi_call=wsgi_call),
                                                      CONTEXT))
        plain = _plain_reply(status, headers, body)
        if plain is not None:
            start_response(plain[0], plain[1])
            return [plain[2]]
        response = Response(body, status=status, headers=headers)
    except HTTPException as error:
        response = _http_error(error)
    except Exception as error:  # noqa: BLE001 (as Flask's errorhandler(Exception): a one-line 500)
        response = _unexpected(error)
    return _whole(response(wsgi_call, start_response))


def _whole(body_iterable):
    """The WSGI body as a list of one bytes item (the iterable closed, as a server would)."""
    try:
        return [b"".join(body_iterable)]
    finally:
        close = getattr(body_iterable, "close", None)
        if close is not None:
            close()


def owns_lock_file(env=os.environ):
    """True when the watchdog was told not to write the lock (`suppress_lock`), so this server must."""
    return (env.get("suppress_lock") or "").strip().lower() in ("1", "true")


def sync_lock_file(path=LOCK_FILE):
    """Make the lock file say what `ready()` says (no hook: ready). Returns the state written."""
    try:
        status, _ = _hook("ready")
    except Exception as e:  # noqa: BLE001 (a failing hook means "not ready", never a dead lock thread)
        print(f"index.py: ready() failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        status = 503
    try:
        if status == 200:
            if not os.path.exists(path):
                with open(path, "w"):
                    pass
        elif os.path.exists(path):
            os.remove(path)
    except OSError as e:  # a read-only /tmp: say so once per state, keep serving
        print(f"index.py: cannot update {path}: {e}", file=sys.stderr, flush=True)
    return status == 200


def _keep_lock_in_step(stop):
    while True:
        sync_lock_file()
        if stop.wait(LOCK_INTERVAL_S):
            return


def start_lock_thread():
    """In the serving process, once the port is bound (granian's main bound it before the fork):
    keep the lock file in step with `ready()` when the watchdog left it to us."""
    if owns_lock_file():
        threading.Thread(target=_keep_lock_in_step, args=(threading.Event(),), name="lock-file",
                         daemon=True).start()
