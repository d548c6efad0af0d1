"""An open-loop HTTP/1.1 load generator for the capacity benchmark, run in its own process.

Request i is due at start + i/rate whatever earlier answers do; its latency is measured from that
scheduled time, not from when a connection was free to send it, so a server that falls behind is
charged for the queue it causes (no coordinated omission). Up to `connections` keep-alive
connections to one 127.0.0.1 address, raw asyncio protocols (no HTTP client library in the way:
the client must cost far less than the server it measures). A request still unanswered `timeout`
seconds after it was due counts as an error. Bounded: rate*seconds requests, rate <= 20000/s.

Run by bench/capacity.py as `python -m bench.loadgen --port P --paths FILE --rate R --seconds S`;
prints one JSON object (requests, ok, errors by kind, p50/p99/max ms from the scheduled time,
send lag p99: how late the client itself sent, the sign that it, not the server, is the limit).
Owns nothing but this measurement.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time

MAX_RATE = 20000.0
MAX_SECONDS = 120.0


class Conn(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self, gen: Generator):
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.due = 0.0
        self.busy = False
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, request: bytes, due: float) -> None:
        self.busy, self.due = True, due
        self.gen.sent_lag.append(time.perf_counter() - due)
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        status = head[9:12]
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            length = int(head[i + 17:j if j > 0 else None])
            if len(self.buf) < end + 4 + length:
                return
            rest = self.buf[end + 4 + length:]
        elif b"transfer-encoding: chunked" in head:
            if not self.buf.endswith(b"0\r\n\r\n"):
                return
            rest = bytearray()
        else:
            self.gen.finish(self, b"no_length", self.due, reusable=False)
            self.transport.close()
            return
        self.buf = bytearray(rest)
        close = b"\r\nconnection: close" in head
        self.gen.finish(self, b"200" if status == b"200" else b"http_" + status, self.due, reusable=not close)
        if close:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if self.busy:
            self.gen.finish(self, b"connection_lost", self.due, reusable=False)
        self.gen.lost(self)
        if not self.closed.done():
            self.closed.set_result(None)


class Generator:
    def __init__(self, port: int, paths: list[str], rate: float, seconds: float, connections: int,
                 timeout: float):
        self.port, self.rate, self.seconds, self.timeout = port, rate, seconds, timeout
        self.requests = [f"GET {p} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench-loadgen\r\n\r\n".encode()
                         for p in paths]
        self.max_connections = connections
        self.idle: list[Conn] = []
        self.all: set[Conn] = set()
        self.opening = 0
        self.backlog: collections.deque[tuple[int, float]] = collections.deque()
        self.latencies: list[float] = []
        self.sent_lag: list[float] = []
        self.errors: dict[str, int] = {}
        self.done = 0
        self.total = int(rate * seconds)

    def finish(self, conn: Conn, kind: bytes, due: float, reusable: bool = True) -> None:
        conn.busy = False
        self.done += 1
        if kind == b"200":
            self.latencies.append(time.perf_counter() - due)
        else:
            name = kind.decode()
            self.errors[name] = self.errors.get(name, 0) + 1
        if reusable and not conn.transport.is_closing():
            if self.backlog:
                i, d = self.backlog.popleft()
                conn.send(self.requests[i % len(self.requests)], d)
            else:
                self.idle.append(conn)

    def lost(self, conn: Conn) -> None:
        self.all.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self.opening += 1
        try:
            _, conn = await loop.create_connection(lambda: Conn(self), "127.0.0.1", self.port)
        except OSError as e:
            self.errors[f"connect_{type(e).__name__}"] = self.errors.get(f"connect_{type(e).__name__}", 0) + 1
            return
        finally:
            self.opening -= 1
        self.all.add(conn)
        if self.backlog:
            i, d = self.backlog.popleft()
            conn.send(self.requests[i % len(self.requests)], d)
        else:
            self.idle.append(conn)

    def dispatch(self, i: int, due: float) -> None:
        if self.idle:
            self.idle.pop().send(self.requests[i % len(self.requests)], due)
            return
        self.backlog.append((i, due))
        if len(self.all) + self.opening < self.max_connections:
            asyncio.ensure_future(self._open())

    async def run(self) -> dict:
        for _ in range(min(8, self.max_connections)):  # a few warm connections before the clock starts
            await self._open()
        start = time.perf_counter()
        i = 0
        while i < self.total:
            now = time.perf_counter()
            while i < self.total and start + i / self.rate <= now:
                self.dispatch(i, start + i / self.rate)
                i += 1
            await asyncio.sleep(max(0.0, min(0.001, start + i / self.rate - time.perf_counter())))
        deadline = start + self.seconds + self.timeout
        while self.done < self.total and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        unanswered = self.total - self.done
        if unanswered:
            self.errors["timeout"] = self.errors.get("timeout", 0) + unanswered
        elapsed = time.perf_counter() - start
        for conn in list(self.all):
            conn.transport.close()
        return self.summary(elapsed)

    def summary(self, elapsed: float) -> dict:
        ms = sorted(x * 1000 for x in self.latencies)
        lag = sorted(x * 1000 for x in self.sent_lag)

        def pct(values: list[float], q: float) -> float | None:
            return values[min(len(values) - 1, int(q * len(values)))] if values else None

        return {"rate": self.rate, "seconds": self.seconds, "requests": self.total, "ok": len(ms),
                "errors": sum(self.errors.values()), "error_kinds": self.errors,
                "p50_ms": pct(ms, 0.50), "p99_ms": pct(ms, 0.99), "max_ms": ms[-1] if ms else None,
                "send_lag_p99_ms": pct(lag, 0.99), "connections_used": self.max_connections,
                "elapsed_s": elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True, help="on 127.0.0.1")
    parser.add_argument("--paths", required=True, help="a file of request paths, one a line, used in turn")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    if not (0 < args.rate <= MAX_RATE and 0 < args.seconds <= MAX_SECONDS and 0 < args.connections <= 1024):
        print(f"error: rate in (0, {MAX_RATE:g}], seconds in (0, {MAX_SECONDS:g}], connections in (0, 1024]",
              file=sys.stderr)
        return 2
    with open(args.paths) as f:
        paths = [line.strip() for line in f if line.strip()]
    gen = Generator(args.port, paths, args.rate, args.seconds, args.connections, args.timeout)
    print(json.dumps(asyncio.run(gen.run())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
