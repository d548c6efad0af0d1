"""A stand-in for the OpenFaaS gateway's deployment API, over real HTTP on 127.0.0.1.

Serves `GET /system/function/<name>`, `GET /system/functions`, `GET /system/info` and
`PUT /system/functions` (the calls `faas-cli deploy`, `make status` and the release controller
make) with basic auth, and records every PUT body. Used by the
tests of the deploy client, the train job and the release function until they run against the
local OpenFaaS-compatible gateway in the end-to-end tests.
"""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class GatewayDouble:
    def __init__(self, user: str, password: str, functions: list[str]):
        self.user, self.password = user, password
        self.functions = {
            name: {
                "name": name,
                "image": f"movierec/{name}:latest",
                "namespace": "openfaas-fn",
                "envProcess": "python index.py",
                "envVars": {"MODEL_VERSION": "stable", "RECOMMEND_K": "20"},
                "labels": {"com.openfaas.scale.min": "1"},
                "annotations": {},
                "secrets": [],
                "limits": {"memory": "1Gi"},
                "replicas": 1,
                "availableReplicas": 1,
                "invocationCount": 0.0,
                "createdAt": "2026-11-28T00:00:00Z",
            }
            for name in functions
        }
        self.puts: list[dict] = []
        self.fail_next = 0  # answer this many requests with 503 first
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def env(self, name: str) -> dict:
        return self.functions[name]["envVars"]

    def _handler(self):
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, body=b""):
                data = json.dumps(body).encode() if not isinstance(body, bytes) else body
                self.send_response(code)
                if code == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="Restricted"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                expected = base64.b64encode(f"{double.user}:{double.password}".encode()).decode()
                return self.headers.get("Authorization") == f"Basic {expected}"

            def _guard(self) -> bool:
                if double.fail_next > 0:
                    double.fail_next -= 1
                    self._reply(503, b"provider busy")
                    return False
                if not self._authorized():
                    self._reply(401, b"unauthorized")
                    return False
                return True

            def do_GET(self):
                if not self._guard():
                    return
                path = self.path.split("?")[0]
                name = path.removeprefix("/system/function/")
                if path.startswith("/system/function/") and name in double.functions:
                    self._reply(200, double.functions[name])
                elif path == "/system/functions":
                    self._reply(200, list(double.functions.values()))
                elif path == "/system/info":
                    self._reply(200, {"provider": {"provider": "gateway-double", "orchestration": "none"}})
                else:
                    self._reply(404, b"not found")

            def do_PUT(self):
                if not self._guard():
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if self.path != "/system/functions" or body.get("service") not in double.functions:
                    self._reply(404, b"not found")
                    return
                double.puts.append(body)
                double.functions[body["service"]]["envVars"] = body.get("envVars", {})
                self._reply(202, b"")

        return Handler
