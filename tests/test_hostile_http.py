"""The functions over real HTTP, as an attacker or a careless caller would call them.

Every function is built from stack.yml the way `faas-cli build --shrinkwrap` builds it and served
by the template's own server (the approach of tests/test_recommend_function.py). Two tables:
- the bad-input table: malformed ids, non-ASCII digits, trailing newlines, NaN bounds, odd methods,
  long paths. Each must get its 4xx with ONE line of text or JSON, no traceback, no internal path,
  quickly; none may be a 5xx.
- the auth matrix: every mutating route x every credential variant. Only the right secret for the
  route passes; everything else is a 401 that changes nothing.
- the gateway's raw table: bytes no HTTP client would send, straight to localfaas's socket (bad request
  lines, bad headers, too-long lines, broken chunked bodies, an oversized body). Each must get its
  4xx as ONE line of text/plain that quotes none of the request back.
Each table prints its count tried / held."""
from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import pytest
import requests
from aiohttp import web

from localfaas.build import build_function
from localfaas.server import GatewayRunner
from localfaas.stackfile import load_stack
from movierec.artifact import save_model
from movierec.store import LocalDirectoryStore
from movierec.synthetic import SyntheticWorld
from movierec.training import SVDParams
from scripts.broker import free_port
from tests.fitting import train_model
from tests.localfaas_harness import start_stack
from tests.test_gateway_split import _raw
from tests.test_recommend_function import FunctionProcess

REPO = Path(__file__).resolve().parent.parent
CRON, ADMIN = "cron-secret-value-0123456789abcdef", "admin-secret-value-0123456789abcdef"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-http")
    secrets = root / "secrets"
    secrets.mkdir()
    (secrets / "cron-token").write_text(CRON + "\n")
    (secrets / "release-admin-token").write_text(ADMIN + "\n")
    model_dir = root / "model"
    model = train_model(SyntheticWorld(n_users=100, n_movies=80, seed=3).sample_ratings(3000),
                        SVDParams(n_factors=4, n_epochs=3, random_state=0))
    save_model(model, model_dir, extra_manifest={"version": "v-hostile"})
    return root


@pytest.fixture(scope="module")
def functions(world, tmp_path_factory):
    stack = load_stack(REPO / "stack.yml", env={})
    dead = f"http://127.0.0.1:{free_port()}"
    common = {"STORE_URL": str(world / "store"), "SECRETS_DIR": str(world / "secrets"), "PUSHGATEWAY_URL": "",
              "MODEL_CACHE_DIR": str(world / "cache")}
    envs = {
        "recommend": {"MODEL_PATH": str(world / "model")},
        "ingest": {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "KAFKA_TOPIC": "movielog1"},
        "train": {"AUTO_RELEASE": "0", "TRAIN_MIN_RATINGS": "10"},
        "release": {"PROMETHEUS_URL": dead, "OPENFAAS_URL": dead},
    }
    running = {}
    try:
        for name, env in envs.items():
            ctx = build_function(stack, stack.functions[name], tmp_path_factory.mktemp(f"build-{name}"))
            running[name] = FunctionProcess(ctx, {**common, **env}, world / f"{name}.log")
        yield running
    finally:
        for fn in running.values():
            fn.stop()


def _one_line(response: requests.Response) -> str:
    text = response.text
    try:
        body = json.loads(text)
        if isinstance(body, dict) and set(body) == {"error"}:
            text = body["error"] + "\n"
    except ValueError:
        pass
    return text


# -- the bad-input table ----------------------------------------------------------------------------
AUTH = {"Authorization": f"Bearer {CRON}"}
BAD_INPUTS = [  # (function, method, path, headers, expected status)
    ("recommend", "GET", "/1%0a", {}, 400),
    ("recommend", "GET", "/1%0d", {}, 400),
    ("recommend", "GET", "/1%00", {}, 400),
    ("recommend", "GET", "/%D9%A3", {}, 400),  # Arabic-Indic 3
    ("recommend", "GET", "/%EF%BC%93", {}, 400),  # full-width 3
    ("recommend", "GET", "/%C2%B2", {}, 400),  # superscript 2
    ("recommend", "GET", "/-1", {}, 400),
    ("recommend", "GET", "/+1", {}, 400),
    ("recommend", "GET", "/1.0", {}, 400),
    ("recommend", "GET", "/%201", {}, 400),
    ("recommend", "GET", "/0x10", {}, 400),
    ("recommend", "GET", "/9223372036854775808", {}, 400),
    ("recommend", "GET", "/" + "9" * 5000, {}, 400),
    ("recommend", "GET", "/%FF", {}, 400),
    ("recommend", "GET", "/1/2", {}, 404),
    ("recommend", "GET", "/health%0a", {}, 400),
    ("recommend", "POST", "/1", {}, 405),
    ("recommend", "DELETE", "/1", {}, 405),
    ("recommend", "TRACE", "/1", {}, 405),
    ("recommend", "FOO", "/1", {}, 405),
    ("ingest", "POST", "/?max_seconds=nan", AUTH, 400),
    ("ingest", "POST", "/?max_seconds=NaN", AUTH, 400),
    ("ingest", "POST", "/?max_seconds=inf", AUTH, 400),
    ("ingest", "POST", "/?max_seconds=-inf", AUTH, 400),
    ("ingest", "POST", "/?max_seconds=1e309", AUTH, 400),
    ("ingest", "POST", "/?max_seconds=-1", AUTH, 400),
    ("ingest", "POST", "/?max_seconds=0", AUTH, 400),
    ("ingest", "POST", "/?max_records=%D9%A3", AUTH, 400),
    ("ingest", "POST", "/?max_records=%EF%BC%93", AUTH, 400),
    ("ingest", "POST", "/?max_records=1%0a", AUTH, 400),
    ("ingest", "POST", "/?max_records=99999999999999999999", AUTH, 400),
    ("ingest", "POST", "/?max_records=1_000", AUTH, 400),
    ("ingest", "GET", "/", {}, 405),
    ("ingest", "TRACE", "/", {}, 405),
    ("train", "PUT", "/", {}, 405),
    ("train", "POST", "/anything", AUTH, 404),
    ("train", "TRACE", "/", {}, 405),
    ("release", "POST", "/deploy", AUTH, 404),
    ("release", "POST", "/promote%0a", {"Authorization": f"Bearer {ADMIN}"}, 404),
    ("release", "PUT", "/step", {}, 405),
    ("release", "DELETE", "/", {}, 405),
    ("release", "GET", "/" + "x" * 5000, {}, 405),
]


def test_the_bad_input_table_holds(functions, world):
    held, failed = 0, []
    for name, method, path, headers, expected in BAD_INPUTS:
        started = time.monotonic()
        response = requests.request(method, functions[name].url + path, headers=headers, timeout=30)
        took = time.monotonic() - started
        text = _one_line(response)
        ok = (response.status_code == expected and text.strip()
              and "\n" not in text.strip() and "Traceback" not in text and "<html" not in text.lower()
              and str(world) not in text and took < 10)
        held += bool(ok)
        if not ok:
            failed.append((name, method, path[:40], response.status_code, text[:120], round(took, 2)))
    print(f"HTTP bad-input table: {len(BAD_INPUTS)} tried, {held} held")
    assert not failed, failed


def test_no_bad_input_made_a_function_write_anything(functions, world):
    store = world / "store"
    assert not store.exists() or LocalDirectoryStore(store).list("data/") == []


# -- the auth matrix --------------------------------------------------------------------------------
def _basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()


ROUTES = [  # (function, path, the secret(s) that must pass, what a passing call answers)
    ("ingest", "/?max_seconds=nan", (CRON,), 400),  # auth first, then the bound: 400 proves it passed
    ("train", "/", (CRON,), 422),  # passes, then no data: 422
    ("release", "/", (CRON, ADMIN), 200),  # a step with no release running
    ("release", "/step", (CRON, ADMIN), 200),
    ("release", "/promote", (ADMIN,), 409),  # passes, then nothing to promote
    ("release", "/rollback", (ADMIN,), 409),
    ("release", "/abort", (ADMIN,), 409),
]
# (variant, headers for a given right token, passes?) -- `right` is the route's own secret.
VARIANTS = [
    ("no credential", lambda right, other: {}, False),
    ("cron-connector's headers only", lambda right, other: {"X-Topic": "cron-function",
                                                            "X-Connector": "cron-connector"}, False),
    ("empty bearer", lambda right, other: {"Authorization": "Bearer "}, False),
    ("wrong bearer", lambda right, other: {"Authorization": "Bearer not-the-token"}, False),
    ("a prefix of the token", lambda right, other: {"Authorization": f"Bearer {right[:-1]}"}, False),
    ("the token and more", lambda right, other: {"Authorization": f"Bearer {right}x"}, False),
    ("the token in another scheme", lambda right, other: {"Authorization": f"Token {right}"}, False),
    ("the token without a scheme", lambda right, other: {"Authorization": right}, False),
    ("the token in another header", lambda right, other: {"X-Cron-Token": right, "X-Auth-Token": right}, False),
    ("basic auth, wrong password", lambda right, other: {"Authorization": _basic("nope")}, False),
    ("basic auth, malformed", lambda right, other: {"Authorization": "Basic ###"}, False),
    ("the other secret's token", lambda right, other: {"Authorization": f"Bearer {other}"}, None),
    ("the right token", lambda right, other: {"Authorization": f"Bearer {right}"}, True),
    ("the right token, lower-case scheme", lambda right, other: {"Authorization": f"bearer {right}"}, True),
    ("the right token as basic auth's password", lambda right, other: {"Authorization": _basic(right)}, True),
]


def test_the_auth_matrix_holds(functions, world):
    held, failed, tried = 0, [], 0
    for name, path, accepted, passing_status in ROUTES:
        for right in accepted:
            other = ADMIN if right == CRON else CRON
            for variant, make, passes in VARIANTS:
                if passes is None:  # the other secret passes only where the route takes it too
                    passes = other in accepted
                tried += 1
                response = requests.post(functions[name].url + path, headers=make(right, other), timeout=60)
                text = _one_line(response)
                if passes:
                    ok = response.status_code == passing_status
                else:
                    ok = (response.status_code == 401 and "credentials required" in text
                          and response.headers.get("WWW-Authenticate", "").startswith("Bearer realm="))
                ok = ok and "\n" not in text.strip() and CRON not in text and ADMIN not in text
                held += ok
                if not ok:
                    failed.append((name, path, variant, response.status_code, text[:100]))
    print(f"auth matrix: {tried} tried, {held} held")
    assert not failed, failed
    store = LocalDirectoryStore(world / "store")  # no refused call (and no passing one here) wrote data
    assert store.list("data/") == [] and store.list("releases/") == []


# -- the gateway's raw table: what aiohttp's parser meets before any route ----------------------------
@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    stack = start_stack(tmp_path_factory.mktemp("hostile-gateway"))
    yield stack
    stack.stop()


_G = b"Host: x\r\nConnection: close\r\n"
_ECHO = b"POST /function/echo HTTP/1.1\r\n" + _G
GATEWAY_RAW = [  # (what it tries, raw request, expected status)
    ("not HTTP at all", b"GARBAGE\r\n\r\n", 400),
    ("TLS on the plain port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400),
    ("NUL in the method", b"G\x00T /healthz HTTP/1.1\r\n" + _G + b"\r\n", 400),
    ("HTTP/9.9", b"GET /healthz HTTP/9.9\r\n" + _G + b"\r\n", 400),
    ("bare LF line endings", b"GET /healthz HTTP/1.1\nHost: x\n\n", 400),
    ("NUL in the path", b"GET /function/echo\x00 HTTP/1.1\r\n" + _G + b"\r\n", 400),
    ("20 KB URI", b"GET /function/echo/" + b"1" * 20_000 + b" HTTP/1.1\r\n" + _G + b"\r\n", 414),
    ("20 KB header", b"GET /function/echo HTTP/1.1\r\n" + _G + b"X-A: " + b"a" * 20_000 + b"\r\n\r\n", 431),
    ("20 KB header name", b"GET /function/echo HTTP/1.1\r\n" + _G + b"X" * 20_000 + b": a\r\n\r\n", 431),
    ("300 headers", b"GET /function/echo HTTP/1.1\r\n" + _G + b"".join(b"X-%d: a\r\n" % i for i in range(300))
     + b"\r\n", 431),
    ("space in a header name", b"GET /function/echo HTTP/1.1\r\n" + _G + b"X A: b\r\n\r\n", 400),
    ("header line without a colon", b"GET /function/echo HTTP/1.1\r\n" + _G + b"nocolon\r\n\r\n", 400),
    ("no Host header", b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
    ("Content-Length with chunked", _ECHO + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("broken chunk size", _ECHO + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n\r\n", 400),
    ("chunk without its CRLF", _ECHO + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcXX\r\n0\r\n\r\n", 400),
    ("unknown Transfer-Encoding", _ECHO + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    ("non-numeric Content-Length", _ECHO + b"Content-Length: abc\r\n\r\n", 400),
    ("negative Content-Length", _ECHO + b"Content-Length: -1\r\n\r\n", 400),
    ("two Content-Lengths", _ECHO + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    ("100 MB body", _ECHO + b"Content-Length: 100000000\r\n\r\n", 413),
    ("the system API without credentials", b"GET /system/functions HTTP/1.1\r\n" + _G + b"\r\n", 401),
    ("an unknown function", b"GET /function/nope HTTP/1.1\r\n" + _G + b"\r\n", 404),
]


def test_the_gateways_raw_table_holds(gateway):
    held, failed = 0, []
    for name, request, expected in GATEWAY_RAW:
        status, body = _raw(gateway.port, request)
        text = body.decode("utf-8", "replace")
        ok = (status == expected and text.endswith("\n") and text.count("\n") == 1 and "Traceback" not in text
              and "<html" not in text.lower() and "b'" not in text and 'b"' not in text and "aaaa" not in text
              and "1111" not in text and str(gateway.root) not in text and "aiohttp" not in text.lower())
        held += ok
        if not ok:
            failed.append((name, status, text[:120]))
    print(f"gateway raw table: {len(GATEWAY_RAW)} tried, {held} held")
    assert not failed, failed
    gateway.wait_available("echo", 2)  # and it still serves
    assert gateway.call("echo").status_code == 200


def test_an_exception_escaping_a_gateway_handler_is_a_one_line_500_without_its_traceback():
    async def broken(_request):
        raise RuntimeError("internal detail /srv/secret/path")

    async def serve_once() -> tuple[int, bytes]:
        app = web.Application()
        app.router.add_get("/broken", broken)
        runner = GatewayRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            return await asyncio.to_thread(_raw, port, b"GET /broken HTTP/1.1\r\n" + _G + b"Accept: text/html\r\n\r\n")
        finally:
            await runner.cleanup()

    status, body = asyncio.run(serve_once())
    assert (status, body) == (500, b"internal error\n")
