"""The public entry (gateway/): the nginx canary split, rendered from movierec.canary.

Real nginx (Debian package) in front of a small real HTTP server that plays the OpenFaaS gateway
and answers /function/recommend/<uid> and /function/recommend-canary/<uid> with the function's name.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

from gateway.render import NginxSettings, RenderError, canary_map_entries, nginx_argv, render, write_config
from movierec.canary import CANARY, STABLE, variant_for_user
from scripts._proc import free_port

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                                reason="nginx (Debian package) is not installed")

BIG_IDS = [10**18, 10**18 + 7, 2**63 - 1, 9_223_372_036_854_775_719, 1_000_000_000_000_000_099]




def variant_from_rendered_map(config: str, user_id_text: str) -> str:
    """What nginx does: take the id's last two digits as written and look them up in the map."""
    block = re.search(r"map \$uid_last2 \$recommend_variant \{(.*?)\}", config, re.DOTALL).group(1)
    table = dict(re.findall(r'"(\d+)" (\w+);', block))
    return table.get(user_id_text[-2:], STABLE)


# -- the renderer ---------------------------------------------------------------------------------
@pytest.mark.parametrize("percent", [0, 1, 20, 50, 99, 100])
def test_rendered_map_agrees_with_movierec_canary_for_ids_0_to_10000_and_big_ids(percent, tmp_path):
    config = render(NginxSettings.local(tmp_path, canary_percent=percent))
    for user_id in [*range(10001), *BIG_IDS]:
        assert variant_from_rendered_map(config, str(user_id)) == variant_for_user(user_id, percent), user_id


def test_rendered_map_treats_leading_zeros_as_the_same_number(tmp_path):
    config = render(NginxSettings.local(tmp_path, canary_percent=20))
    for text in ["07", "007", "0100", "00019", "0020", "0000"]:
        assert variant_from_rendered_map(config, text) == variant_for_user(int(text), 20), text


def test_map_has_both_spellings_of_one_digit_residues():
    assert canary_map_entries(2) == ['"0" canary;', '"00" canary;', '"1" canary;', '"01" canary;']


def test_renderer_takes_the_canary_percent_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CANARY_PERCENT", "35")
    config = render(NginxSettings.local(tmp_path))
    assert '"34" canary;' in config and '"35" canary;' not in config


def test_renderer_refuses_an_out_of_range_percent_with_one_line(tmp_path):
    with pytest.raises(RenderError, match="between 0 and 100"):
        render(NginxSettings.local(tmp_path, canary_percent=101))


def test_rendered_configs_pass_nginx_syntax_check_for_both_profiles(tmp_path):
    local = NginxSettings.local(tmp_path / "state", listen=f"127.0.0.1:{free_port()}")
    conf = write_config(local, tmp_path / "local" / "nginx.conf")
    run = subprocess.run(nginx_argv(conf, local, "-t"), check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "syntax is ok" in run.stderr
    container = render(NginxSettings.container())
    assert "server gateway:8080;" in container and "access_log /dev/stdout split;" in container


def test_container_profile_passes_nginx_syntax_check(tmp_path):
    settings = NginxSettings.container(upstream="127.0.0.1:8080")  # `gateway` only resolves on faasd/k8s
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(settings))
    run = subprocess.run(nginx_argv(conf, settings, "-t"), check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_kubernetes_and_faasd_manifests_run_the_rendered_config_without_a_second_daemon_directive():
    folder = Path(__file__).resolve().parents[1] / "gateway"
    kustomization = yaml.safe_load((folder / "kubernetes" / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (folder / "kubernetes" / resource).is_file()
    assert kustomization["configMapGenerator"][0]["files"] == ["nginx.conf"]
    deployment = yaml.safe_load((folder / "kubernetes" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    compose = yaml.safe_load((folder / "faasd" / "docker-compose.recommend-split.yaml").read_text())
    for command in (container["command"], compose["services"]["recommend-split"]["command"]):
        assert command[:3] == ["nginx", "-c", "/etc/nginx/movierec/nginx.conf"] and "daemon off;" not in command
    assert "daemon off;" in render(NginxSettings.container())
    assert container["ports"][0]["containerPort"] == int(NginxSettings.container().listen)


def test_cli_renders_to_stdout(tmp_path):
    run = subprocess.run([".venv/bin/python", "-m", "gateway.render", "--profile", "container",
                          "--canary-percent", "10"], check=False, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr
    assert '"09" canary;' in run.stdout and '"10" canary;' not in run.stdout


# -- real nginx in front of a stand-in gateway ---------------------------------------------------
class StandInGateway:
    """A real HTTP/1.1 server playing the OpenFaaS gateway: the body names the function that answered.
    `canary_status` set to 502/503/504 makes recommend-canary fail the way a down function does."""

    def __init__(self):
        self.canary_status = 200
        self.canary_delay_s = 0.0
        self.stable_delay_s = 0.0
        self.calls: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def do_GET(self):
                outer.calls.append(self.path)
                match = re.fullmatch(r"/function/(recommend|recommend-canary)/(\d+)(\?.*)?", self.path)
                if not match:
                    return self._reply(404, "no such function")
                function, uid = match.group(1), match.group(2)
                delay = outer.canary_delay_s if function == "recommend-canary" else outer.stable_delay_s
                if delay:
                    time.sleep(delay)
                if function == "recommend-canary" and outer.canary_status != 200:
                    return self._reply(outer.canary_status, "canary unavailable")
                self._reply(200, f"{function} {uid} {match.group(3) or ''}".strip())

            def _reply(self, status, text):
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class RunningNginx:
    def __init__(self, state_dir: Path, upstream: str, **overrides):
        self.port = free_port()
        self.settings = dataclasses.replace(
            NginxSettings.local(state_dir, listen=f"127.0.0.1:{self.port}", upstream=upstream, canary_percent=20),
            **overrides)
        conf = write_config(self.settings, state_dir / "nginx" / "nginx.conf")
        with open(state_dir / "logs" / "nginx.log", "ab") as log:  # nginx keeps its own copy of the fd
            self.process = subprocess.Popen(nginx_argv(conf, self.settings), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 10
        while True:
            assert self.process.poll() is None, (state_dir / "logs" / "nginx-error.log").read_text()
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "nginx did not answer /healthz within 10s"
            time.sleep(0.05)

    @property
    def access_log(self) -> Path:
        return Path(self.settings.access_log)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def stand_in():
    gateway = StandInGateway()
    yield gateway
    gateway.close()


@pytest.fixture(scope="module")
def nginx(stand_in, tmp_path_factory):
    running = RunningNginx(tmp_path_factory.mktemp("nginx-state"), f"127.0.0.1:{stand_in.port}")
    yield running
    running.stop()


@pytest.fixture
def session():
    with requests.Session() as s:
        yield s


def test_split_sends_about_20_percent_of_users_to_the_canary(nginx, session):
    users = range(1_000_000, 1_003_000)
    canary = sum(session.get(f"{nginx.url}/recommend/{u}").text.startswith("recommend-canary ") for u in users)
    assert abs(canary / len(users) - 0.20) <= 0.02


def test_each_user_is_sticky_to_the_function_the_canary_rule_names(nginx, session):
    for user_id in [0, 7, 19, 20, 99, 100, 119, 12345, 2**63 - 1]:
        expected = "recommend-canary" if variant_for_user(user_id) == CANARY else "recommend"
        answers = {session.get(f"{nginx.url}/recommend/{user_id}").text for _ in range(3)}
        assert answers == {f"{expected} {user_id}"}


def test_variant_header_matches_movierec_canary_for_every_id_0_to_10000(stand_in, tmp_path):
    # The gateway is unreachable here, so nginx answers 502 itself: the split is nginx's alone.
    dead = RunningNginx(tmp_path, f"127.0.0.1:{free_port()}")
    try:
        with requests.Session() as s:
            for user_id in [*range(10001), *BIG_IDS]:
                got = s.get(f"{dead.url}/recommend/{user_id}").headers["X-Recommend-Variant"]
                assert got == variant_for_user(user_id), user_id
    finally:
        dead.stop()


def test_an_unreachable_gateway_gives_every_user_a_one_line_502(tmp_path):
    dead = RunningNginx(tmp_path, f"127.0.0.1:{free_port()}")
    try:
        for user_id in (3, 42):  # a canary user (whose fallback fails too) and a stable one
            response = requests.get(f"{dead.url}/recommend/{user_id}")
            assert response.status_code == 502
            assert response.text == "recommendations unavailable: the OpenFaaS gateway could not be reached\n"
    finally:
        dead.stop()


def test_a_gateway_answering_too_late_gives_a_one_line_504(tmp_path, stand_in):
    slow = RunningNginx(tmp_path, f"127.0.0.1:{stand_in.port}", read_timeout="200ms")
    stand_in.stable_delay_s = 0.5
    try:
        response = requests.get(f"{slow.url}/recommend/42")
    finally:
        stand_in.stable_delay_s = 0.0
        slow.stop()
    assert response.status_code == 504
    assert response.text == "recommendations unavailable: no answer from the recommend function in time\n"


def test_leading_zeros_route_like_the_number_and_reach_the_function_verbatim(nginx, session):
    assert session.get(f"{nginx.url}/recommend/007").text == "recommend-canary 007"
    assert session.get(f"{nginx.url}/recommend/0120").text == "recommend 0120"


def test_canary_users_fall_back_to_stable_when_the_canary_is_down(nginx, stand_in, session):
    canary_users = [u for u in range(200) if variant_for_user(u) == CANARY]
    try:
        for status in (502, 503, 504):
            stand_in.canary_status = status
            for user_id in canary_users:
                response = session.get(f"{nginx.url}/recommend/{user_id}")
                assert (response.status_code, response.text) == (200, f"recommend {user_id}")
                assert response.headers["X-Served-By"] == "recommend"
    finally:
        stand_in.canary_status = 200


def test_canary_users_get_stable_when_the_canary_is_silent_beyond_the_callers_budget(nginx, stand_in, session):
    stand_in.canary_delay_s = 1.5  # the canary's read timeout is 300ms: callers give up at 600-800 ms
    try:
        response = session.get(f"{nginx.url}/recommend/3")
    finally:
        stand_in.canary_delay_s = 0.0
    assert (response.status_code, response.text, response.headers["X-Served-By"]) == (200, "recommend 3", "recommend")


def test_stable_users_never_touch_the_canary(nginx, stand_in, session):
    stand_in.calls.clear()
    for user_id in [20, 21, 55, 99, 1234]:
        session.get(f"{nginx.url}/recommend/{user_id}")
    assert stand_in.calls and not any("recommend-canary" in call for call in stand_in.calls)


@pytest.mark.parametrize("bad", ["abc", "12a", "-1", "1.5", "%201", "1" * 20, ""])
def test_non_numeric_ids_get_400_with_a_one_line_reason(nginx, session, bad, stand_in):
    stand_in.calls.clear()
    response = session.get(f"{nginx.url}/recommend/{bad}")
    assert response.status_code == 400
    assert response.text.count("\n") == 1 and "invalid user id" in response.text
    assert stand_in.calls == []


def test_query_string_passes_through_to_the_function(nginx, session):
    assert session.get(f"{nginx.url}/recommend/25?k=5").text == "recommend 25 ?k=5"


def test_other_paths_are_not_proxied(nginx, session):
    assert session.get(f"{nginx.url}/system/functions").status_code == 404
    assert session.get(f"{nginx.url}/function/recommend/1").status_code == 404


def test_access_log_records_variant_serving_function_upstream_status_and_time(nginx, stand_in, session):
    session.get(f"{nginx.url}/recommend/424242")
    stand_in.canary_status = 503
    try:
        session.get(f"{nginx.url}/recommend/515")
    finally:
        stand_in.canary_status = 200
    deadline = time.monotonic() + 5
    while True:  # nginx writes the line after the response is sent
        lines = nginx.access_log.read_text().splitlines()
        stable = [line for line in lines if '"GET /recommend/424242 ' in line]
        fallback = [line for line in lines if '"GET /recommend/515 ' in line]
        if stable and fallback or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert re.search(r"status=200 variant=stable function=recommend upstream_status=200 "
                     r"upstream_time=\d+\.\d{3} ", stable[-1])
    # " : " separates the canary attempt from the stable one (nginx's notation for a redirect)
    assert re.search(r"status=200 variant=canary function=recommend upstream_status=503 : 200 "
                     r"upstream_time=\d+\.\d{3} : \d+\.\d{3} ", fallback[-1])


# -- hostile requests: every error nginx itself produces is one line of text ------------------------
def _raw(port: int, data: bytes, timeout_s: float = 5.0) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    head, _, body = out.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body


_H = b"Host: x\r\nConnection: close\r\n"
HOSTILE_REQUESTS = [  # (what it tries, raw request, expected status)
    ("trailing newline after the id", b"GET /recommend/1%0a HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("trailing carriage return", b"GET /recommend/1%0d HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("NUL in the id", b"GET /recommend/1%00 HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("newline inside the id", b"GET /recommend/1%0a2 HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("Arabic-Indic digit id", "GET /recommend/\u0663 HTTP/1.1\r\n".encode() + _H + b"\r\n", 400),
    ("full-width digit id", b"GET /recommend/%EF%BC%93 HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("20 KB URI", b"GET /recommend/" + b"1" * 20_000 + b" HTTP/1.1\r\n" + _H + b"\r\n", 414),
    ("20 KB header", b"GET /recommend/21 HTTP/1.1\r\n" + _H + b"X-A: " + b"a" * 20_000 + b"\r\n\r\n", 400),
    ("not HTTP at all", b"GARBAGE\r\n\r\n", 400),
    ("HTTP/9.9", b"GET /recommend/21 HTTP/9.9\r\n" + _H + b"\r\n", 505),
    ("no Host header", b"GET /recommend/21 HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
    ("TRACE", b"TRACE /recommend/21 HTTP/1.1\r\n" + _H + b"\r\n", 405),
    ("100 MB body, stable user", b"POST /recommend/21 HTTP/1.1\r\n" + _H + b"Content-Length: 100000000\r\n\r\n", 413),
    ("100 MB body, canary user", b"POST /recommend/1 HTTP/1.1\r\n" + _H + b"Content-Length: 100000000\r\n\r\n", 413),
    ("Content-Length with chunked", b"POST /recommend/21 HTTP/1.1\r\n" + _H +
     b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("broken chunked body, canary user", b"POST /recommend/1 HTTP/1.1\r\n" + _H +
     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n\r\n", 400),
    ("dot-dot out of /recommend", b"GET /recommend/../function/train HTTP/1.1\r\n" + _H + b"\r\n", 404),
    ("encoded dot-dot", b"GET /recommend/%2e%2e/function/train HTTP/1.1\r\n" + _H + b"\r\n", 404),
    ("the internal split location", b"GET /_split/stable/1 HTTP/1.1\r\n" + _H + b"\r\n", 404),
    ("an internal error page", b"GET /_errors/500 HTTP/1.1\r\n" + _H + b"\r\n", 404),
    ("the gateway's function route", b"POST /function/train HTTP/1.1\r\n" + _H + b"Content-Length: 0\r\n\r\n", 404),
    ("the gateway's system route", b"GET /system/functions HTTP/1.1\r\n" + _H + b"\r\n", 404),
]


def test_hostile_requests_get_one_line_text_errors_without_internals(nginx, stand_in):
    held, failed = 0, []
    for name, request, expected in HOSTILE_REQUESTS:
        status, body = _raw(nginx.port, request)
        text = body.decode("utf-8", "replace")
        ok = (status == expected and text.endswith("\n") and text.count("\n") == 1 and "<html" not in text.lower()
              and "nginx" not in text.lower() and "/_" not in text and str(nginx.settings.temp_dir) not in text)
        held += ok
        if not ok:
            failed.append((name, status, text[:120]))
    print(f"nginx bad-input table: {len(HOSTILE_REQUESTS)} tried, {held} held")
    assert not failed
    assert not any("\n" in call or "%0a" in call.lower() for call in stand_in.calls)
