"""Shared pytest fixtures. Each block is self-contained and owned by the part it serves."""
from __future__ import annotations

import os

import pytest


# -- Kafka (Tansu) ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory):
    """Bootstrap servers of a real Kafka-protocol broker: `KAFKA_BOOTSTRAP_SERVERS` if set,
    else a Tansu broker of our own on a free port, stopped at the end of the session."""
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if existing:
        yield existing
        return
    from scripts.broker import free_port, start_broker, stop_broker

    log = tmp_path_factory.mktemp("broker") / "broker.log"
    handle = start_broker(free_port(), log)
    try:
        yield handle.bootstrap
    finally:
        stop_broker(handle)


# -- S3 (moto's server) ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a real S3-protocol server (moto's, threaded, on a free 127.0.0.1 port), shared by the
    session: tests make their own uniquely named buckets. moto accepts any credentials."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
