"""Local receivers for notifications, over real sockets on 127.0.0.1: a webhook endpoint that
records JSON bodies and an SMTP sink that speaks enough SMTP for smtplib (EHLO/HELO, optional
AUTH PLAIN/LOGIN acceptance, MAIL, RCPT, DATA, QUIT) and records each message.

Owns those two receivers, served on daemon threads while in a `with` block: `make demo` receives
the release notifications with them when no real channel is configured, and the tests use them as
the webhook and the mail server. Must not touch: anything beyond recording what arrives."""
from __future__ import annotations

import json
import socketserver
import threading
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _ServedInBackground:
    """Serves `self._server` (set by the subclass) on a daemon thread while in a `with` block."""

    _server: socketserver.BaseServer

    def __enter__(self):
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


class WebhookReceiver(_ServedInBackground):
    def __init__(self, status: int = 200):
        self.bodies: list[dict] = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.bodies.append(json.loads(data))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"


class SMTPSink(_ServedInBackground):
    def __init__(self):
        self.messages: list = []  # email.message.Message
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[str] = []
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def send(self, line: str):
                self.wfile.write((line + "\r\n").encode())

            def handle(self):
                self.send("220 sink ready")
                sender, recipients = "", []
                while True:
                    raw = self.rfile.readline()
                    if not raw:
                        return
                    command = raw.decode().strip()
                    verb = command.split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        self.send("250-sink")
                        self.send("250 AUTH PLAIN LOGIN")
                    elif verb == "HELO":
                        self.send("250 sink")
                    elif verb == "AUTH":
                        sink.logins.append(command)
                        self.send("235 ok")
                    elif verb == "MAIL":
                        sender, recipients = command[10:].strip("<>"), []
                        self.send("250 ok")
                    elif verb == "RCPT":
                        recipients.append(command[8:].strip("<>"))
                        self.send("250 ok")
                    elif verb == "DATA":
                        self.send("354 end with .")
                        lines = []
                        while (line := self.rfile.readline()) not in (b".\r\n", b""):
                            lines.append(line[1:] if line.startswith(b"..") else line)
                        sink.messages.append(message_from_bytes(b"".join(lines)))
                        sink.envelopes.append((sender, recipients))
                        self.send("250 queued")
                    elif verb == "QUIT":
                        self.send("221 bye")
                        return
                    else:
                        self.send("250 ok")

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
