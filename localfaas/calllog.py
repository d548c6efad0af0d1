"""The data plane's call log, read into the gateway's metrics.

nginx (localfaas.dataplane) appends one line per call it answered itself, `<function>.<namespace>
<status> <seconds>`, unbuffered, just after the caller has its answer (so a scrape may miss the
last milliseconds' calls; the next one counts them). The control plane reads what is new whenever the metrics are scraped or the functions listed, and every
quarter second besides: each line is one started and one finished call in `gateway_*`, and one more
`invocationCount` for the function. Nothing is sampled or dropped: a line cut off at the end of the
file waits for its rest. The file is rotated past `ROTATE_BYTES` (renamed, nginx told to reopen
it, the old one read to its end and removed).

Owns: reading and rotating `<state>/run/dataplane/calls.log`, and the offset read so far
(`calls.log.offset`, so a restarted runtime goes on where the last one stopped).
Must not touch: nginx's configuration and process (the data plane owns them), routing.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from localfaas.metrics import GatewayMetrics
from localfaas.supervisor import Supervisor

log = logging.getLogger("localfaas.calllog")

ROTATE_BYTES = 64 * 1024 * 1024
OLD_FILE_GRACE_S = 2.0  # after a reopen signal, how long nginx may still write to the old file


class CallLog:
    def __init__(self, path: Path, metrics: GatewayMetrics, supervisor: Supervisor,
                 reopen: Callable[[], None], rotate_bytes: int = ROTATE_BYTES):
        self.path, self.metrics, self.supervisor = path, metrics, supervisor
        self.reopen, self.rotate_bytes = reopen, rotate_bytes
        self._file: BinaryIO | None = None
        self._partial = b""
        self._old: tuple[BinaryIO, Path, bytes, float] | None = None  # rotated: file, path, partial line, when
        self._offset_file = path.with_name(path.name + ".offset")
        self._resumed = False
        self.malformed = 0

    def resume(self) -> None:
        """Go on from where the last reader stopped (the offset it recorded beside the file): the
        calls the data plane answered while no control plane ran (a killed runtime) are counted by
        the next one, the ones counted before are not counted again."""
        self._resumed = True
        self.path.touch()  # nginx opens it once a function is routed: from its first line on, it counts
        if not self._open():
            return
        assert self._file is not None
        try:
            inode, offset = (int(x) for x in self._offset_file.read_text().split())
        except (OSError, ValueError):
            inode, offset = -1, 0
        stat = os.fstat(self._file.fileno())
        self._file.seek(offset if inode == stat.st_ino and offset <= stat.st_size else stat.st_size)
        self._save_offset()

    def read(self) -> int:
        """Count every complete new line; returns how many (none before `resume`: a scrape that
        reaches the control plane while it starts must not count from the file's beginning)."""
        if not self._resumed:
            return 0
        counted = 0
        if self._old is not None:
            old, rotated, partial, since = self._old
            finished = time.monotonic() - since > OLD_FILE_GRACE_S  # nginx writes to the new file now
            n, partial = self._consume(old, partial)
            counted += n
            if finished:
                if partial:
                    self._count(partial)  # a line nginx never finished: counted as malformed
                old.close()
                rotated.unlink(missing_ok=True)
                self._old = None
            else:
                self._old = (old, rotated, partial, since)
        if self._file is None and not self._open():
            return counted
        assert self._file is not None
        n, self._partial = self._consume(self._file, self._partial)
        counted += n
        if n:
            self._save_offset()
        if self._file.tell() > self.rotate_bytes and self._old is None:
            self._rotate()
        return counted

    def close(self) -> None:
        self.read()
        for handle in (self._file, self._old[0] if self._old else None):
            if handle is not None:
                handle.close()
        self._file = self._old = None

    def _save_offset(self) -> None:
        assert self._file is not None
        self._offset_file.write_text(f"{os.fstat(self._file.fileno()).st_ino} {self._file.tell() - len(self._partial)}\n")

    def _open(self) -> bool:
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 (kept open between reads)
        except FileNotFoundError:
            return False
        return True

    def _consume(self, handle: BinaryIO, partial: bytes) -> tuple[int, bytes]:
        """Count the complete lines of what is new in `handle`; returns how many and the rest."""
        lines = (partial + handle.read()).split(b"\n")
        rest = lines.pop()  # after the last newline: a line nginx has not finished writing
        for line in lines:
            self._count(line)
        return len(lines), rest

    def _count(self, line: bytes) -> None:
        try:
            label, code, seconds = line.decode("ascii").split(" ")
            status, duration = int(code), float(seconds)
        except ValueError:
            self.malformed += 1
            log.warning("call log %s: a line that is not '<function> <status> <seconds>': %r", self.path, line[:200])
            return
        self.metrics.call_started(label)
        self.metrics.call_finished(label, status, duration)
        runtime = self.supervisor.functions.get(label.rsplit(".", 1)[0])
        if runtime is not None:
            runtime.invocation_count += 1

    def _rotate(self) -> None:
        assert self._file is not None
        rotated = self.path.with_name(self.path.name + ".old")
        os.replace(self.path, rotated)  # the open file is the rotated one now: reading goes on in it
        self._old = (self._file, rotated, self._partial, time.monotonic())
        self._file, self._partial = None, b""
        self.reopen()
        log.info("call log rotated (%s)", rotated)
