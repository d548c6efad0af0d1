"""The ingest function, served from its build context over real HTTP, against a real broker.

The build context is made from stack.yml as `faas-cli build --shrinkwrap` would make it, and its
server runs in a subprocess with nothing from the repository on its import path (the approach of
tests/test_recommend_function.py, whose FunctionProcess this reuses)."""
from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import requests

from localfaas.build import build_function
from localfaas.stackfile import load_stack
from movierec.batches.loaders import load_quarantine, load_ratings, load_watches
from movierec.events import parse_line
from movierec.store import LocalDirectoryStore
from scripts.broker import free_port
from tests.test_batches import stream_lines
from tests.test_kafka_ingest import committed, produce
from tests.test_recommend_function import FunctionProcess

REPO = Path(__file__).resolve().parent.parent
CRON_TOKEN = "cron-token-for-tests"
CRON = {"X-Topic": "cron-function", "X-Connector": "cron-connector", "Authorization": f"Bearer {CRON_TOKEN}"}


@pytest.fixture(scope="module")
def build_context(tmp_path_factory):
    stack = load_stack(REPO / "stack.yml", env={})
    return build_function(stack, stack.functions["ingest"], tmp_path_factory.mktemp("build"))


def serve(build_context, tmp_path_factory, bootstrap: str, topic: str, store_dir: Path) -> FunctionProcess:
    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "cron-token").write_text(CRON_TOKEN + "\n")
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC": topic, "KAFKA_GROUP_ID": f"g-{topic}",
           "STORE_URL": str(store_dir), "INGEST_IDLE_SECONDS": "1.5", "KAFKA_SESSION_TIMEOUT_MS": "3000",
           "SECRETS_DIR": str(secrets)}
    return FunctionProcess(build_context, env, tmp_path_factory.mktemp("logs") / "ingest.log")


@pytest.fixture(scope="module")
def topic():
    return f"fn-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def served(build_context, tmp_path_factory, kafka_bootstrap, topic, store_dir):
    fn = serve(build_context, tmp_path_factory, kafka_bootstrap, topic, store_dir)
    yield fn
    fn.stop()


def test_build_context_has_the_handler_and_the_copied_core(build_context):
    for name in ("index.py", "function/handler.py", "function/movierec/ingest.py",
                 "function/movierec/events.py", "function/movierec/store.py",
                 "function/movierec/batches/builder.py", "function/movierec/adapters/kafka_ingest.py"):
        assert (build_context.path / name).is_file(), name


def test_a_cron_post_ingests_the_topic_and_replies_with_the_run_summary(served, kafka_bootstrap, topic, store_dir):
    lines = stream_lines(2000)
    produce(kafka_bootstrap, topic, lines)
    reply = requests.post(served.url + "/", headers=CRON, data=b"", timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    summary = reply.json()
    kinds = Counter(type(parse_line(x)).__name__ for x in lines)
    assert summary["topic"] == topic and summary["records"] == 2000
    assert summary["events"] == {"rate": kinds["RateEvent"], "watch": kinds["WatchEvent"],
                                 "recommendation": kinds["RecommendationEvent"]}
    assert sum(summary["quarantined"].values()) == kinds["Rejection"]
    assert summary["stopped_because"] == "caught_up" and summary["lag_total"] == 0
    store = LocalDirectoryStore(store_dir)
    assert len(load_ratings(store, topic)) == kinds["RateEvent"]
    assert len(load_watches(store, topic)) == kinds["WatchEvent"]
    assert len(load_quarantine(store, topic)) == kinds["Rejection"]
    assert committed(kafka_bootstrap, f"g-{topic}", topic) == [1000, 1000]


def test_a_second_post_with_nothing_new_stores_nothing(served):
    reply = requests.post(served.url + "/", headers=CRON, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["records"] == 0 and reply.json()["batches_written"] == 0


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_any_method_but_post_is_refused_with_405_and_starts_no_run(served, method):
    reply = requests.request(method, served.url + "/", timeout=10)
    assert reply.status_code == 405
    assert reply.json() == {"error": f"method {method} not allowed: POST starts an ingest run"}


@pytest.mark.parametrize("query", ["max_seconds=nan", "max_seconds=inf", "max_seconds=-1", "max_seconds=1e9",
                                   "max_records=%D9%A3", "max_records=%EF%BC%93", "max_records=0",
                                   "max_records=1.5", "max_seconds=%201"])
def test_a_bound_that_is_not_a_positive_finite_ascii_number_gets_400(served, query):
    reply = requests.post(f"{served.url}/?{query}", headers=CRON, timeout=10)
    assert reply.status_code == 400 and reply.json()["error"].startswith("Rejected: query parameter")


@pytest.mark.parametrize("headers", [{}, {"X-Topic": "cron-function", "X-Connector": "cron-connector"},
                                     {"Authorization": "Bearer wrong"}])
def test_a_run_without_the_cron_token_is_refused_and_starts_nothing(served, headers):
    reply = requests.post(served.url + "/", headers=headers, timeout=10)
    assert reply.status_code == 401 and "cron-token" in reply.json()["error"]
    assert reply.headers["WWW-Authenticate"] == 'Bearer realm="ingest"'


def test_a_bad_bound_in_the_query_gets_400_in_one_line(served):
    reply = requests.post(served.url + "/?max_records=lots", headers=CRON, timeout=10)
    assert reply.status_code == 400
    assert reply.json() == {"error": "Rejected: query parameter max_records must be a number, got 'lots'"}


def test_a_broker_that_is_down_gets_503_naming_it(build_context, tmp_path_factory, tmp_path):
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens here
    fn = serve(build_context, tmp_path_factory, bootstrap, "movielog1", tmp_path / "store")
    try:
        reply = requests.post(fn.url + "/", headers=CRON, timeout=60)
    finally:
        fn.stop()
    assert reply.status_code == 503
    assert reply.json()["error"].startswith(f"IngestError: Kafka broker at {bootstrap} unreachable")


def test_three_overlapping_calls_run_once_refuse_two_at_once_and_the_next_run_stores_everything(
        build_context, tmp_path_factory, kafka_bootstrap, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from tests.test_kafka_ingest_reliability import produced_facts, stored_lines

    topic = f"overlap-{uuid.uuid4().hex[:8]}"
    first = stream_lines(20_000)
    produce(kafka_bootstrap, topic, first)
    fn = serve(build_context, tmp_path_factory, kafka_bootstrap, topic, tmp_path / "store")
    try:
        def call(headers):
            started = time.monotonic()
            reply = requests.post(fn.url + "/", headers=headers, data=b"", timeout=120)
            return reply, time.monotonic() - started

        manual = {"Authorization": f"Bearer {CRON_TOKEN}"}  # what `scripts.release ingest` sends
        callers = [CRON, CRON, manual]  # the scheduled run fired twice (overlapping ticks) and a manual call
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(call, callers))
        ok = [(r, t) for r, t in answers if r.status_code == 200]
        refused = [(r, t) for r, t in answers if r.status_code == 409]
        assert len(ok) == 1 and len(refused) == 2, [r.text for r, _ in answers]
        run, run_took = ok[0]
        assert run.json()["records"] == 20_000 and run.json()["lag_total"] == 0
        for reply, took in refused:
            error = reply.json()["error"]
            assert error.startswith(f"LeaseHeld: ingest of consumer group g-{topic} is already running: held by ")
            assert " ingest of " in error and " pid " in error and "free when it ends, at the latest " in error
            assert took < min(3.0, run_took) and int(reply.headers["Retry-After"]) > 0

        # The group is usable at once: the next scheduled run stores what came since, all of it.
        second = stream_lines(3000, garbage_every=9)
        produce(kafka_bootstrap, topic, second)
        reply = requests.post(fn.url + "/", headers=CRON, data=b"", timeout=120)
        assert reply.status_code == 200, reply.text
        assert reply.json()["records"] == 3000 and reply.json()["lease"] == run.json()["lease"] + 1
    finally:
        fn.stop()
    assert stored_lines(LocalDirectoryStore(tmp_path / "store")) == produced_facts(first + second)
    assert committed(kafka_bootstrap, f"g-{topic}", topic) == [11_500, 11_500]


def test_the_operator_s_manual_ingest_says_at_once_what_holds_the_lease_and_until_when(tmp_path, monkeypatch, capsys):
    """`python -m scripts.release ingest` while the scheduled run holds the group: one line, no
    retries, naming the holder and when it is free (the body is the ingest handler's 409)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from scripts import release

    error = ("LeaseHeld: ingest of consumer group movierec-ingest is already running: held by cron ingest of "
             "movielog1 on host-a pid 41 (lease 7) since 2027-01-15T08:00:00Z; free when it ends, at the latest "
             "2027-01-15T08:01:45Z (in 95 s)")
    calls = []

    class Gateway(BaseHTTPRequestHandler):
        def do_POST(self):
            calls.append(self.path)
            body = json.dumps({"error": error}).encode()
            self.send_response(409)
            self.send_header("Content-Type", "application/json")
            self.send_header("Retry-After", "96")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OPENFAAS_URL", f"http://127.0.0.1:{server.server_port}")
        (tmp_path / "secrets").mkdir()
        (tmp_path / "secrets" / "cron-token").write_text(CRON_TOKEN + "\n")  # the manual call sends it
        started = time.monotonic()
        code = release.main(["--state-dir", str(tmp_path), "ingest"])
        took = time.monotonic() - started
    finally:
        server.shutdown()
    assert code == 1 and calls == ["/function/ingest"] and took < 5
    assert capsys.readouterr().err == (
        "error: ingest not started: ingest of consumer group movierec-ingest is already running: held by cron "
        "ingest of movielog1 on host-a pid 41 (lease 7) since 2027-01-15T08:00:00Z; free when it ends, at the "
        "latest 2027-01-15T08:01:45Z (in 95 s); run it again after that\n")
