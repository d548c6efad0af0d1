"""Function logs: every replica's output, kept per function, and `/system/logs` as faas-provider serves it.

Each replica writes its stdout and stderr to its own output file (a file, not a pipe, so that it
outlives the runtime); `LogBook.pump` copies it into `<state>/logs/function-<name>.log`, one
line per output line, as soon as it is written (inotify; polled without it), resuming after a restart of the
runtime where it stopped (`<output>.offset`, the end of the last whole line copied): `<RFC3339 UTC timestamp> <instance> <text>`, where the instance is the
replica's HOSTNAME (`<name>-<generation>-<index>`, like a pod name). Lines of all replicas of a
function are in one file in the order they were written (each line one append, never interleaved).

`GET /system/logs?name=&namespace=&instance=&tail=&follow=&since=` answers as faas-provider's log
handler: 200 `application/x-ndjson`, one JSON object per line
`{"name","namespace","instance","timestamp","text"}` (every key always present); `tail` <= 0 or
absent means every line, N the last N; `since` RFC3339; `follow` (Go ParseBool, anything else
false) keeps the stream open with new lines until the client hangs up or localfaas stops. A `tail`
or `since` that does not parse: 422. What `faas-cli logs` sends: `follow` always, `tail=-1` unless
`--lines N`, `since` from `--since`/`--since-time`, `namespace` from `-n`.

Owns: the replica output pump (`LogBook.pump`), the function log files' line format, reading them
back (filters, tail, follow) and the `/system/logs` route.
Must not touch: processes (the replica module hands over their output file), other routes, auth.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web

from localfaas.replies import GatewayError, function_name
from localfaas.validate import whole_number

log = logging.getLogger("localfaas.logs")

_CHUNK = 64 * 1024
_FOLLOW_POLL = 0.25
_TAIL_POLL = 0.1  # how often a replica's output file is checked for new lines without inotify
_IN_MODIFY, _IN_NONBLOCK, _IN_CLOEXEC = 0x2, 0o4000, 0o2000000
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _inotify_init1, _inotify_add_watch = _libc.inotify_init1, _libc.inotify_add_watch
except (OSError, AttributeError):  # not Linux: polled
    _inotify_init1 = _inotify_add_watch = None


class _Changes:
    """Wakes up when a file is written to (inotify), else every `_TAIL_POLL` seconds."""

    def __init__(self, path: Path, done: asyncio.Event):
        self.done, self.fd, self.changed = done, -1, asyncio.Event()
        if _inotify_init1 is not None:
            fd = _inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd >= 0 and _inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY) >= 0:
                self.fd = fd
                asyncio.get_running_loop().add_reader(fd, self._drain)
            elif fd >= 0:
                os.close(fd)

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self.fd, 4096)
        self.changed.set()

    async def wait(self) -> None:
        waits = [asyncio.ensure_future(self.changed.wait()), asyncio.ensure_future(self.done.wait())]
        await asyncio.wait(waits, timeout=_TAIL_POLL if self.fd < 0 else 5.0, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()
        self.changed.clear()

    def close(self) -> None:
        if self.fd >= 0:
            asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
_ZERO_TIME = "0001-01-01T00:00:00Z"  # lines written before timestamps were kept
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LogBook:
    """The function log files under `<state>/logs/`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        return self.folder / f"function-{name}.log"

    async def pump(self, name: str, instance: str, source: Path, done: asyncio.Event) -> None:
        """Copy a replica's output file into its function's log, a timestamped line at a time, from
        where an earlier pump of it stopped, until `done` is set and the file is read to its end."""
        self.folder.mkdir(parents=True, exist_ok=True)
        prefix = f" {instance} ".encode()
        offset_file = source.with_suffix(".offset")
        try:
            offset = int(offset_file.read_text() or 0)
        except (OSError, ValueError):
            offset = 0
        partial = b""
        try:
            src = os.open(source, os.O_RDONLY)
        except OSError:
            return
        changes = _Changes(source, done)
        with open(self.path(name), "ab", buffering=0) as out:  # noqa: ASYNC230 - local appends
            def write(lines: list[bytes]) -> None:
                stamp = _now().encode()
                with contextlib.suppress(OSError):  # a full disk must not block the replica
                    out.write(b"".join(stamp + prefix + line.rstrip(b"\r") + b"\n" for line in lines))

            try:
                while True:
                    finished = done.is_set()
                    try:
                        chunk = os.pread(src, _CHUNK, offset + len(partial))
                    except OSError:
                        chunk = b""
                    if not chunk:
                        if finished:
                            break
                        await changes.wait()
                        continue
                    data = partial + chunk  # starts at `offset`
                    *lines, partial = data.split(b"\n")
                    if len(partial) > _CHUNK:  # an endless line: cut it rather than hold it
                        lines, partial = [*lines, partial], b""
                    if lines:
                        write(lines)
                        offset += len(data) - len(partial)
                        with contextlib.suppress(OSError):
                            offset_file.write_text(str(offset))
                if partial:
                    write([partial])
            finally:
                changes.close()
                os.close(src)


@dataclass(frozen=True)
class LogQuery:
    name: str
    namespace: str
    instance: str = ""
    tail: int = 0
    follow: bool = False
    since: datetime | None = None

    @classmethod
    def parse(cls, query: Any) -> LogQuery:
        """faas-provider's parseRequest: the last value of each key; tail/since must parse."""
        def last(key: str) -> str:
            values = query.getall(key, [])
            return values[-1] if values else ""

        name = last("name")
        if not name:
            raise ValueError("name is required")
        tail_text, since_text = last("tail"), last("since")
        try:
            tail = whole_number(tail_text) if tail_text else 0
        except ValueError:
            raise ValueError(f"tail {tail_text!r} is not a whole number") from None
        since = None
        if since_text:
            try:
                since = datetime.fromisoformat(since_text)
            except ValueError:
                raise ValueError(f"since {since_text!r} is not an RFC3339 time") from None
            if since.tzinfo is None:
                raise ValueError(f"since {since_text!r} has no time zone (RFC3339 needs one)")
        return cls(name, last("namespace"), last("instance"), tail, last("follow") in _TRUE, since)


def _parse_line(raw: bytes) -> tuple[str, str, str]:
    """(timestamp, instance, text) of one stored line."""
    text = raw.decode("utf-8", errors="replace")
    stamp, _, rest = text.partition(" ")
    instance, _, message = rest.partition(" ")
    if len(stamp) >= 20 and stamp[4] == "-" and stamp.endswith("Z") and instance:
        return stamp, instance, message
    return _ZERO_TIME, "", text


def _backward(f: BinaryIO, end: int) -> Iterator[bytes]:
    """The file's lines before `end`, last first."""
    pos, rest = end, b""
    while pos > 0:
        step = min(_CHUNK, pos)
        pos -= step
        f.seek(pos)
        lines = (f.read(step) + rest).split(b"\n")
        rest = lines[0]
        yield from reversed(lines[1:])
    yield rest


def _complete_end(f: BinaryIO, end: int) -> int:
    """The offset just after the file's last newline: a line still being written waits for follow."""
    pos = end
    while pos > 0:
        step = min(_CHUNK, pos)
        pos -= step
        f.seek(pos)
        newline = f.read(step).rfind(b"\n")
        if newline >= 0:
            return pos + newline + 1
    return 0


class LogReader:
    def __init__(self, book: LogBook, name: str, namespace: str, query: LogQuery):
        self.path = book.path(name)
        self.name, self.namespace, self.query = name, namespace, query

    def _recent(self, stamp: str) -> bool:
        if self.query.since is None:
            return True
        try:
            return datetime.fromisoformat(stamp) >= self.query.since
        except ValueError:
            return False

    def _keep(self, stamp: str, instance: str) -> bool:
        return (not self.query.instance or instance == self.query.instance) and self._recent(stamp)

    def message(self, stamp: str, instance: str, text: str) -> dict[str, str]:
        return {"name": self.name, "namespace": self.namespace, "instance": instance, "timestamp": stamp,
                "text": text}

    def initial(self) -> tuple[list[dict[str, str]], int]:
        """The lines the query asks for now, oldest first, and the file offset they end at."""
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return [], 0
        with f:
            data_end = _complete_end(f, os.fstat(f.fileno()).st_size)
            picked: list[dict[str, str]] = []
            if self.query.tail > 0:
                for raw in _backward(f, data_end):
                    if not raw:
                        continue
                    stamp, instance, text = _parse_line(raw)
                    if stamp != _ZERO_TIME and not self._recent(stamp):
                        break  # lines are in time order: everything before is older still
                    if self._keep(stamp, instance):
                        picked.append(self.message(stamp, instance, text))
                        if len(picked) >= self.query.tail:
                            break
                picked.reverse()
            else:
                f.seek(0)
                for raw in f.read(data_end).split(b"\n"):
                    if raw:
                        stamp, instance, text = _parse_line(raw)
                        if self._keep(stamp, instance):
                            picked.append(self.message(stamp, instance, text))
            return picked, data_end

    def newer(self, offset: int) -> tuple[list[dict[str, str]], int]:
        """Complete lines written after `offset`, and the offset they end at."""
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], offset
        complete = data.rfind(b"\n") + 1
        lines = []
        for raw in data[:complete].split(b"\n"):
            if raw:
                stamp, instance, text = _parse_line(raw)
                if self._keep(stamp, instance):
                    lines.append(self.message(stamp, instance, text))
        return lines, offset + complete


class LogsApi:
    def __init__(self, book: LogBook, known: Any):
        self.book = book
        self.known = known  # name -> bool: is the function deployed
        self.closing = asyncio.Event()

    def add_routes(self, app: web.Application, prefix: str = "") -> None:
        app.router.add_get(prefix + "/system/logs", self.logs)

    async def on_shutdown(self, _app: web.Application) -> None:
        self.closing.set()  # followers end, so a stop never waits on an open `faas-cli logs --tail`

    async def logs(self, request: web.Request) -> web.StreamResponse:
        try:
            query = LogQuery.parse(request.query)
        except ValueError as exc:
            raise GatewayError(422, f"could not parse the log request: {exc}") from None
        name, namespace = function_name(query.name, query.namespace or None)
        if namespace != "openfaas-fn":
            raise GatewayError(400, f"namespace {namespace!r} is not valid: only openfaas-fn")
        if not self.known(name) and not self.book.path(name).exists():
            raise GatewayError(404, f"function {name}.{namespace} not found")
        reader = LogReader(self.book, name, namespace, query)
        lines, offset = await asyncio.to_thread(reader.initial)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            await self._send(response, lines)
            while query.follow and not self.closing.is_set():
                if request.transport is None or request.transport.is_closing():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.closing.wait(), _FOLLOW_POLL)
                lines, offset = await asyncio.to_thread(reader.newer, offset)
                await self._send(response, lines)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, lines: list[dict[str, str]]) -> None:
        for start in range(0, len(lines), 200):
            batch = lines[start:start + 200]
            await response.write("".join(json.dumps(m) + "\n" for m in batch).encode())
