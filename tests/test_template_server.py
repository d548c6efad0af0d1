"""The template's server answers a call the same whichever way it takes through index.py.

`index.serve` (what granian runs) sends `GET /<path>` straight to the handler and everything else
to the Flask `app`; the straight way must be invisible: for every GET path a caller may send,
well-formed or hostile, the status, body and headers equal what the Flask app answers. Run in the
recommend build context with a small saved model, as the function runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.recommend import build_bench_model
from localfaas.build import build_function
from localfaas.stackfile import load_stack
from movierec.artifact import save_model
from tests.test_template_probes import REPO

PATHS = ["/1", "/7", "/123456789", "/1999999999", "/abc", "/1%0a", "/-5", "/%ff", "/1?x=2", "/?user=7",
         "/health", "/1/2", "/1/", "/%2F1", "/99999999999999999999999", "/" + "9" * 300, "/_/ready",
         "/_/health", "/_/other", "//1", "/1//2", "/", "/1%20"]

COMPARE = """
import json, sys, index
from werkzeug.test import Client
fast, flask = Client(index.serve), Client(index.app)
out = []
for path in json.loads(sys.argv[1]):
    a, b = fast.get(path), flask.get(path)
    out.append([path, [a.status_code, a.get_data(as_text=True), sorted(a.headers.items())],
                [b.status_code, b.get_data(as_text=True), sorted(b.headers.items())]])
print(json.dumps(out))
"""

# What index.serve hands granian for each kind of call: the body as one item or not.
SHAPES = """
import io, json, sys, index
shapes = {}
for method, path, body in json.loads(sys.argv[1]):
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "t",
               "SERVER_PORT": "5000", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
               "wsgi.input": io.BytesIO(body.encode()), "CONTENT_LENGTH": str(len(body))}
    result = index.serve(environ, lambda status, headers, exc_info=None: None)
    shapes[f"{method} {path}"] = [type(result).__name__, len(result), [type(item).__name__ for item in result]]
print(json.dumps(shapes))
"""


# What the straight way sends for each shape of handler result, against werkzeug's Response.
REPLIES = r"""
import json, sys, index
out = []
for result in json.loads(sys.argv[1]):
    plain = index._plain_reply(*index._shape(result))
    sent = {}
    try:
        body = index._format(result)({"REQUEST_METHOD": "GET"}, lambda status, headers, exc=None: sent.update(
            status=status, headers=headers))
        werkzeug = [sent["status"], [list(h) for h in sent["headers"]], b"".join(body).decode("latin-1")]
    except ValueError as e:
        werkzeug = f"ValueError: {e}"
    out.append([result, plain and [plain[0], [list(h) for h in plain[1]], plain[2].decode("latin-1")], werkzeug])
print(json.dumps(out))
"""

# The same call's Event built from the WSGI environ (the straight way) and from Flask's request.
EVENTS = r"""
import json, sys, index
from werkzeug.test import EnvironBuilder
def build():
    return EnvironBuilder(path="/7", method="GET", query_string="user=3&x=1&x=2", headers={"X-Trace": "t1"},
                          data=b"seven").get_environ()
def seen(event):
    return [event.method, event.path, event.body.decode(), sorted(event.headers.items()),
            event.query.to_dict(flat=False)]
straight = seen(index.Event("/7", wsgi_call=build()))
with index.app.request_context(build()):
    flask = seen(index.Event("/7"))
print(json.dumps([straight, flask]))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The recommend build context with a small saved model, and the env its replica gets."""
    tmp = tmp_path_factory.mktemp("template-server")
    stack = load_stack(REPO / "stack.yml", env={})
    context = build_function(stack, stack.functions["recommend"], tmp / "build")
    model = build_bench_model(50, 40, n_factors=4, seed=3)
    save_model(model, tmp / "model")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp), "TMPDIR": str(tmp), "MODEL_PATH": str(tmp / "model"),
           "STORE_URL": "", "PUSHGATEWAY_URL": "", "OPENBLAS_NUM_THREADS": "1"}
    return context, env


def _run_in(built, script: str, argument) -> object:
    context, env = built
    done = subprocess.run([sys.executable, "-c", script, json.dumps(argument)], cwd=context.path, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def answers(built):
    return _run_in(built, COMPARE, PATHS)


def test_every_get_path_gets_from_the_straight_way_exactly_what_flask_answers(answers):
    assert [a[0] for a in answers] == PATHS
    for path, fast, flask in answers:
        assert fast == flask, path


def test_the_comparison_covers_served_ids_refusals_and_the_probe_routes(answers):
    """Not a comparison of empty answers: known ids get ids, hostile ones a 4xx, probes their line."""
    by_path = {path: fast for path, fast, _ in answers}
    assert by_path["/1"][0] == 200 and by_path["/1"][1].count(",") >= 1
    assert by_path["/abc"][0] == 400 and by_path["/1%0a"][0] == 400
    assert by_path["/1/2"][0] == 404 and by_path["/_/ready"][0] == 200



PLAIN_RESULTS = [None, "text", 42, {"body": "1,2,3", "headers": {"Content-Type": "text/plain; charset=utf-8",
                                                                   "X-Model-Version": "v1"}},
                 {"statusCode": 400, "body": "invalid user id\n", "headers": {"Content-Type": "text/plain"}},
                 {"statusCode": 599, "body": "x"}, {"statusCode": 418, "body": "é"}, {"body": {"a": 1}},
                 {"body": [1, 2], "headers": {"content-type": "text/plain"}},
                 {"body": None, "statusCode": 503, "headers": {"Retry-After": "5"}}]
REWRITTEN_RESULTS = [{"headers": {"X-Count": 3}}, {"statusCode": 204}, {"statusCode": 304}, {"statusCode": 101}, {"statusCode": 600},
                     {"headers": {"Location": "/é"}}, {"headers": {"content-length": "3"}},
                     {"headers": {"X-Bad": "a\r\nb"}}]


def test_the_straight_way_sends_byte_for_byte_what_werkzeug_would_for_every_plain_reply(built):
    """Status line, header names, values and order, and body equal werkzeug's Response's (its
    default Content-Type, Content-Length, reason phrases); what werkzeug rewrites or refuses
    (1xx/204/304, codes out of range, Location, a given Content-Length, non-text or multi-line
    header values) is left to werkzeug itself."""
    out = _run_in(built, REPLIES, PLAIN_RESULTS + REWRITTEN_RESULTS)
    plain = [(result, mine, theirs) for result, mine, theirs in out if mine is not None]
    assert [result for result, _, _ in plain] == PLAIN_RESULTS
    for result, mine, theirs in plain:
        assert mine == theirs, result
    by_result = {json.dumps(result): theirs for result, _, theirs in out}
    assert by_result[json.dumps({"headers": {"X-Bad": "a\r\nb"}})].startswith("ValueError")  # werkzeug refuses it
    assert by_result[json.dumps({"statusCode": 418, "body": "é"})][0] == "418 I'M A TEAPOT"


def test_an_event_from_the_environ_reads_what_flasks_request_reads(built):
    """Body, headers and query of the straight way's Event (built only when the handler reads them)
    equal those of the Event made from Flask's request for the same call."""
    straight, flask = _run_in(built, EVENTS, None)
    assert straight == flask
    assert straight[2] == "seven" and straight[4] == {"user": ["3"], "x": ["1", "2"]}


def test_every_reply_is_handed_to_the_server_as_one_bytes_item(built):
    """Given an iterator granian may write a reply's head and body in two writes; a replica killed
    between them cuts a call nobody can resend. One bytes item goes out in one write."""
    calls = [["GET", "/1", ""], ["GET", "/abc", ""], ["GET", "/_/ready", ""], ["GET", "/", ""],
             ["POST", "/", "7"], ["DELETE", "/1", ""]]
    shapes = _run_in(built, SHAPES, calls)
    assert shapes == {f"{method} {path}": ["list", 1, ["bytes"]] for method, path, _ in calls}


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


def _recommend_replica_env(tmp_path):
    """A built recommend function with a small saved model, and the env a runtime gives its replica."""
    from scripts._proc import free_port

    stack = load_stack(REPO / "stack.yml", env={})
    context = build_function(stack, stack.functions["recommend"], tmp_path / "build")
    save_model(build_bench_model(50, 40, n_factors=4, seed=3), tmp_path / "model")
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "PORT": str(port),
           "MODEL_PATH": str(tmp_path / "model"), "STORE_URL": "", "PUSHGATEWAY_URL": ""}
    return context, env, port


def _start_ready_replica(context, env, port) -> subprocess.Popen:
    """`python index.py` as the runtime starts it, once its /_/ready answers 200."""
    import time

    import requests

    process = subprocess.Popen([sys.executable, "index.py"], cwd=context.path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/_/ready", timeout=2).status_code == 200:
                return process
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            process.wait()
            raise AssertionError("index.py never became ready")
        time.sleep(0.05)


def test_a_replica_killed_with_sigkill_leaves_no_worker_holding_its_port(tmp_path):
    """`python index.py` is granian's main process and the handler runs in its forked worker: a
    `kill -9` of the process the runtime started (what the demo and an OOM kill do) must take the
    worker with it, or the old worker would keep answering on the port."""
    import signal
    import time

    import requests

    from scripts._proc import pid_alive

    context, env, port = _recommend_replica_env(tmp_path)
    process = _start_ready_replica(context, env, port)
    try:
        workers = _children_of(process.pid)
        assert workers, "the handler runs in a forked worker"
        process.send_signal(signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 10
        while any(pid_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(pid_alive(w) for w in workers)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/1", timeout=2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_second_server_on_a_port_already_served_refuses_to_start_instead_of_sharing_it(tmp_path):
    """granian binds with SO_REUSEPORT: without a check, a replica started on a port another
    replica already serves (a port race in the runtime) would silently take half of its calls,
    e.g. ingest's cron calls answered by recommend. The second must exit with one line."""
    import requests

    context, env, port = _recommend_replica_env(tmp_path)
    first = _start_ready_replica(context, env, port)
    try:
        second = subprocess.run([sys.executable, "index.py"], cwd=context.path, env=env, timeout=60,
                                capture_output=True, text=True, check=False)
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"cannot serve on 127.0.0.1:{port}" in lines[0], second.stderr
        assert first.poll() is None and requests.get(f"http://127.0.0.1:{port}/_/ready", timeout=5).status_code == 200
    finally:
        first.kill()
        first.wait()
