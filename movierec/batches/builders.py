"""Where batches are built: in this process, or in a child process on the other core.

Throughput: with `ProcessBuilders` batches are built (parsed, checked, encoded) in a child process
while the ingest process keeps consuming; `InlineBuilders` (`INGEST_BUILDER_PROCESS=0`) keeps it
all in one process. Both offer the same calls (`add`, `build`, `drop`, `close`) and give the same
bytes. The child only computes bytes: storing and committing stay in the ingest process, in the
order `movierec.adapters.kafka_ingest` keeps, so the exactly-once guarantees do not depend on it.

IPC: two pipes carrying `multiprocessing.connection` messages: ("add", partition, offsets,
values), ("build", partition, recent_volumes) answered by the `ParsedBatch` (or a one-line error
string), ("drop", partition, None). The child exits when its input pipe closes, which also
happens when the ingest process is killed with SIGKILL.

Owns: `InlineBuilders`, `ProcessBuilders`, `serve_builders` (the child's loop). A child that dies
or fails is reported as `movierec.ingest.IngestError` (nothing was committed for its batch).

Must not touch: Kafka, the store, commits.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

from movierec.batches.builder import BatchBuilder, ParsedBatch
from movierec.ingest import IngestError


class InlineBuilders:
    """Batch builders in this process: one core does everything (consume, parse, store)."""

    def __init__(self, topic: str):
        self.topic = topic
        self.builders: dict[int, BatchBuilder] = {}

    def add(self, partition: int, offsets: list[int], values: list[bytes | None]) -> None:
        if partition not in self.builders:
            self.builders[partition] = BatchBuilder(self.topic, partition)
        self.builders[partition].add(offsets, values)

    def build(self, partition: int, recent_volumes: list[int]) -> ParsedBatch:
        return self.builders.pop(partition).build(recent_volumes)

    def drop(self, partition: int) -> None:
        self.builders.pop(partition, None)

    def close(self) -> None:
        self.builders.clear()


class ProcessBuilders:
    """Batch builders in a child process, so parsing runs on another core while this process keeps
    consuming: `add` only ships the raw records; `build` waits for the finished batch.

    The child only computes bytes; this process stores the batch and then commits, exactly as
    inline. So a crash or kill of either process at any point cannot store or commit anything
    the other did not finish. The child exits when its input pipe closes, which also happens when
    this process is killed with SIGKILL."""

    def __init__(self, topic: str):
        from multiprocessing.connection import Connection

        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        package_root = str(Path(__file__).resolve().parents[2])  # the folder holding movierec/
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root,
                                                                         os.environ.get("PYTHONPATH")])))
        code = "import sys; from movierec.batches.builders import serve_builders; serve_builders(*sys.argv[1:])"
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, topic, str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.to_child = Connection(to_child_w, readable=False)
        self.from_child = Connection(from_child_r, writable=False)

    def _send(self, message: tuple) -> None:
        try:
            self.to_child.send(message)
        except OSError as e:
            raise self._died(e) from e

    def _died(self, cause: BaseException) -> IngestError:
        code = self.process.poll()
        return IngestError(f"batch builder process (pid {self.process.pid}) ended unexpectedly "
                           f"(exit code {code}, {type(cause).__name__}); nothing was committed for "
                           "the batch it was building")

    def add(self, partition: int, offsets: list[int], values: list[bytes | None]) -> None:
        self._send(("add", partition, offsets, values))

    def build(self, partition: int, recent_volumes: list[int]) -> ParsedBatch:
        self._send(("build", partition, recent_volumes))
        try:
            reply = self.from_child.recv()
        except (EOFError, OSError) as e:
            raise self._died(e) from e
        if isinstance(reply, str):
            raise IngestError(f"batch builder process failed: {reply}")
        return reply

    def drop(self, partition: int) -> None:
        self._send(("drop", partition, None))

    def close(self) -> None:
        self.to_child.close()  # the child sees end-of-input and exits
        self.from_child.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def serve_builders(topic: str, read_fd: str, write_fd: str) -> None:
    """The child of `ProcessBuilders`: build batches from the records it is sent, until its input
    ends. Between slices of records it takes in whatever arrived, so the ingest process never
    waits on a full pipe while this one parses."""
    from multiprocessing.connection import Connection

    # Columns of plain ints and strings, no reference cycles: the cyclic collector would only
    # rescan the growing columns again and again.
    gc.disable()
    inbox, outbox = Connection(int(read_fd), writable=False), Connection(int(write_fd), readable=False)
    builders = InlineBuilders(topic)
    received: deque[tuple] = deque()
    slice_records = 2000  # ~10 ms of parsing
    try:
        while True:
            if not received:
                received.append(inbox.recv())
            op, partition, *args = received.popleft()
            if op == "add":
                offsets, values = args
                for i in range(0, len(offsets), slice_records):
                    builders.add(partition, offsets[i:i + slice_records], values[i:i + slice_records])
                    while inbox.poll():
                        received.append(inbox.recv())
            elif op == "build":
                try:
                    batch = builders.build(partition, *args)
                except Exception as e:  # noqa: BLE001 (reported to the ingest process, which stops)
                    outbox.send(f"{type(e).__name__}: {e}")
                    return
                outbox.send(batch)
            elif op == "drop":
                builders.drop(partition)
    except (EOFError, OSError):  # the ingest process ended or was killed
        return

