"""Where the simulator's lines go: one Kafka topic, through a kafka-python producer.

Owns: `KafkaSink` (lines as UTF-8 values without key, to one topic or one partition; a few attempts
to reach the broker, then `SinkError`; send failures counted and reported now and then; `close()`
flushes what is buffered; with `record`, every line the broker acknowledged is appended to that
file, one per line: what was produced, for tests that count what was stored against it),
`DEFAULT_BOOTSTRAP` and `DEFAULT_TOPIC`.

Must not touch: what the lines say (scripts/simulator/simulation.py and movierec.events), the broker
itself (scripts/broker.py starts the local one), pacing (scripts/simulator/runner.py).
"""
from __future__ import annotations

import sys
import threading
import time

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_TOPIC = "movielog1"


class SinkError(RuntimeError):
    pass


class KafkaSink:
    """Produces lines (UTF-8, no key) to one topic; `close()` flushes what is buffered."""

    def __init__(self, bootstrap: str, topic: str, partition: int | None = None, attempts: int = 5,
                 record: str | None = None) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self.topic = topic
        self.partition = partition
        self.failed = 0
        self._lock = threading.Lock()
        # closed by close(), after the last acknowledgement
        self._record = open(record, "a", encoding="utf-8") if record else None  # noqa: SIM115
        last: Exception | None = None
        for attempt in range(attempts):
            try:
                self._producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                                               max_in_flight_requests_per_connection=1)
                return
            except KafkaError as e:
                last = e
                time.sleep(min(0.5 * 2 ** attempt, 4.0))
        raise SinkError(f"cannot reach the Kafka broker at {bootstrap} (KAFKA_BOOTSTRAP_SERVERS): {last}")

    def send(self, line: str) -> None:
        future = self._producer.send(self.topic, line.encode("utf-8"), partition=self.partition)
        future.add_errback(self._on_error)
        if self._record is not None:
            future.add_callback(lambda _metadata: self._acknowledged(line))

    def _acknowledged(self, line: str) -> None:
        with self._lock:
            self._record.write(line.rstrip("\n") + "\n")

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            if self.failed in (1, 10, 100, 1000):
                print(f"simulator: producing to {self.topic} failed ({self.failed} so far): {exc}",
                      file=sys.stderr, flush=True)

    def close(self, timeout_s: float = 30.0) -> None:
        try:
            self._producer.flush(timeout=timeout_s)
        finally:
            self._producer.close(timeout=timeout_s)
            if self._record is not None:
                with self._lock:
                    self._record.close()
