"""Ingest under failure, with real processes: `python -m movierec.adapters.kafka_ingest` killed with SIGKILL at
random points, a broker that is down, a store that is down, and a flood of malformed lines."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

from movierec.batches.loaders import iter_recommendations, load_quarantine, load_ratings, load_watches
from movierec.store import LocalDirectoryStore
from scripts.broker import free_port
from tests.test_batches import stream_lines
from tests.test_kafka_ingest import committed, produce

ROOT = Path(__file__).resolve().parents[1]


def ingest_env(bootstrap: str, topic: str, store_dir: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "STORE_", "S3_", "PUSHGATEWAY"))}
    env.update(KAFKA_BOOTSTRAP_SERVERS=bootstrap, KAFKA_TOPIC=topic, KAFKA_GROUP_ID=f"g-{topic}",
               STORE_URL=str(store_dir), INGEST_IDLE_SECONDS="1.5", KAFKA_SESSION_TIMEOUT_MS="3000",
               PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "movierec.adapters.kafka_ingest", *args], check=False, env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _first(movie_ids) -> object:
    """The first recommended movie, None for an empty answer (e.g. an error, or nothing ingested yet)."""
    return next(iter(movie_ids), None)


def stored_lines(store) -> Counter:
    """Every stored record rebuilt as (kind, user, movie) facts, to compare with what was produced."""
    ratings = load_ratings(store)
    watches = load_watches(store)
    return Counter(
        [("rate", u, m, r) for u, m, r in zip(ratings.user_ids.tolist(), ratings.movie_ids.tolist(),
                                             ratings.ratings.tolist())]
        + [("watch", u, m, n) for u, m, n in zip(watches.user_ids.tolist(), watches.movie_ids.tolist(),
                                                watches.minutes.tolist())]
        + [("reco", r["user_id"], _first(r["movie_ids"]), r["status"]) for r in iter_recommendations(store)]
        + [("quarantine", q["line"]) for q in load_quarantine(store)]
    )


def produced_facts(lines: list[str]) -> Counter:
    from movierec.events import RateEvent, RecommendationEvent, Rejection, WatchEvent, parse_line

    facts = []
    for line in lines:
        e = parse_line(line)
        if isinstance(e, RateEvent):
            facts.append(("rate", e.user_id, e.movie_id, float(e.rating)))
        elif isinstance(e, WatchEvent):
            facts.append(("watch", e.user_id, e.movie_id, e.minute))
        elif isinstance(e, RecommendationEvent):
            facts.append(("reco", e.user_id, _first(e.movie_ids), e.status))
        else:
            assert isinstance(e, Rejection)
            facts.append(("quarantine", e.line))
    return Counter(facts)


def test_sigkill_at_random_points_loses_and_duplicates_nothing(kafka_bootstrap, tmp_path):
    topic = f"kill-{uuid.uuid4().hex[:8]}"
    lines = stream_lines(24_000)
    produce(kafka_bootstrap, topic, lines)
    env = ingest_env(kafka_bootstrap, topic, tmp_path / "store", INGEST_BATCH_RECORDS="300")
    rng = random.Random(1234)
    kills = 0
    for trial in range(10):
        proc = subprocess.Popen([sys.executable, "-m", "movierec.adapters.kafka_ingest", "-v"], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            # Kill after a random number of stored batches (0 = while joining or mid-first batch),
            # plus a random few milliseconds so kills also land between a store write and a commit.
            stored, target = 0, rng.randint(0, 6)
            for line in proc.stderr:
                if "movierec.ingest: stored" in line:
                    stored += 1
                if stored >= target and (target > 0 or "partition" in line or "stored" in line):
                    break
            os.kill(proc.pid, signal.SIGKILL)
            kills += proc.wait(30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert kills >= 8  # almost every trial died mid-run rather than finishing first
    final = run_cli(env, timeout=120)
    assert final.returncode == 0, final.stderr
    store = LocalDirectoryStore(tmp_path / "store")
    assert stored_lines(store) == produced_facts(lines)
    assert committed(kafka_bootstrap, f"g-{topic}", topic) == [12_000, 12_000]


def test_a_broker_that_is_down_gives_one_clear_error_and_stores_nothing(tmp_path):
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens here
    result = run_cli(ingest_env(bootstrap, "movielog1", tmp_path / "store"))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ingest failed: Kafka broker at " + bootstrap + " unreachable")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.json"))


def test_a_store_that_is_down_gives_one_clear_error_and_commits_nothing(kafka_bootstrap, tmp_path):
    topic = f"down-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topic, stream_lines(500))
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = ingest_env(kafka_bootstrap, topic, tmp_path, STORE_URL="s3://movierec", S3_ENDPOINT_URL=endpoint,
                     S3_ATTEMPTS="2", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y")
    result = run_cli(env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ingest failed: object store unavailable") and endpoint in last
    assert committed(kafka_bootstrap, f"g-{topic}", topic) == [None, None]


def test_a_flood_of_malformed_lines_is_all_quarantined_with_reasons(kafka_bootstrap, tmp_path):
    topic = f"flood-{uuid.uuid4().hex[:8]}"
    bad = [
        "", "garbage", "2020-01-01T00:00:00,1", "2020-13-01T00:00:00,1,GET /rate/a=3",
        "2020-01-01T00:00:00,-1,GET /rate/a=3", "2020-01-01T00:00:00,1,GET /rate/a=11",
        "2020-01-01T00:00:00,1,GET /rate/a=x", "2020-01-01T00:00:00,1,GET /data/m/a/x.mpg",
        "2020-01-01T00:00:00,1,POST /nothing", "2020-01-01T00:00:00,1,recommendation request h, status",
        "\u00ff" * 500, "2020-01-01T00:00:00,1,GET /rate/a b=3",
    ]
    lines = [bad[i % len(bad)] for i in range(6000)] + ["2020-01-01T00:00:00,7,GET /rate/ok+2000=4"]
    produce(kafka_bootstrap, topic, lines)
    result = run_cli(ingest_env(kafka_bootstrap, topic, tmp_path / "store"))
    assert result.returncode == 0, result.stderr
    store = LocalDirectoryStore(tmp_path / "store")
    quarantined = load_quarantine(store)
    assert len(quarantined) == 6000
    assert all(q["reason"] and q["detail"] for q in quarantined)
    assert {"empty", "truncated", "bad_time", "bad_user_id", "rating_out_of_range", "bad_rating",
            "bad_minute", "unknown_kind", "bad_recommendation"} <= {q["reason"] for q in quarantined}
    assert load_ratings(store).movie_ids.tolist() == ["ok+2000"]
