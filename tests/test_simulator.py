"""The stream simulator: its pure behaviour (seeded, statistical), and the real thing run as a process
against a real Kafka-protocol broker (Tansu) and a small real HTTP server standing in for the public entry."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from movierec.canary import variant_for_user
from movierec.events import RateEvent, RecommendationEvent, Rejection, WatchEvent, parse_line
from movierec.synthetic import SyntheticWorld
from scripts.simulator import (
    GARBAGE_KINDS,
    Behaviour,
    RecommendationCall,
    Simulation,
    call_recommend,
)

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2024, 3, 1, 12, 0, 0)
USERS, MOVIES, SEED = 300, 200, 7  # the world the CLI runs below build (--users/--movies/--seed)


def small_sim(seed: int = 1, **behaviour) -> Simulation:
    return Simulation(SyntheticWorld(USERS, MOVIES, seed=SEED), Behaviour(**behaviour), seed=seed)


def watched_movies(plans) -> set[str]:
    return {p.item.movie_id for p in plans if isinstance(p.item, WatchEvent)}


# -- pure behaviour ------------------------------------------------------------------------------
def test_users_watch_recommended_movies_more_when_their_true_scores_are_higher():
    sim = small_sim()
    world = sim.world
    best_watched = worst_watched = shown = 0
    for user in sim.known_user_ids[:150]:
        order = np.argsort(-world.true_score(user, world.movie_ids))
        best = world.movie_ids[order[:20]].tolist()
        worst = world.movie_ids[order[-20:]].tolist()
        middle = world.movie_ids[order[90:110]].tolist()
        # Each list for a fresh copy of the user's history, so one list does not hide another.
        sim._seen.pop(user, None)
        best_watched += len(watched_movies(sim.on_recommendations(user, best, T0)))
        sim._seen.pop(user, None)
        worst_watched += len(watched_movies(sim.on_recommendations(user, worst, T0)))
        sim._seen.pop(user, None)
        shown += len(watched_movies(sim.on_recommendations(user, middle, T0)))
    # 3000 recommended movies per list: the shares are far apart, not a close call.
    assert best_watched > 2 * shown > 0
    assert shown > 2 * worst_watched


def test_a_better_ranking_of_the_same_movies_earns_more_watches():
    sim = small_sim()
    world = sim.world
    good_rank = bad_rank = 0
    for user in sim.known_user_ids[:200]:
        picked = world.movie_ids[np.argsort(-world.true_score(user, world.movie_ids))[:40]]
        ranked = picked.tolist()
        sim._seen.pop(user, None)
        good_rank += len(watched_movies(sim.on_recommendations(user, ranked[:20], T0)))
        sim._seen.pop(user, None)
        bad_rank += len(watched_movies(sim.on_recommendations(user, ranked[20:][::-1], T0)))
    assert good_rank > bad_rank


def test_watched_movies_are_rated_with_the_true_score_plus_noise_within_one_to_five():
    sim = small_sim(rate_share=1.0)
    world = sim.world
    errors = []
    for user in sim.known_user_ids[:100]:
        best = world.movie_ids[np.argsort(-world.true_score(user, world.movie_ids))[:20]].tolist()
        for p in sim.on_recommendations(user, best, T0):
            if isinstance(p.item, RateEvent):
                assert 1 <= p.item.rating <= 5
                true = float(np.clip(world.true_score(user, [p.item.movie_id])[0], 1, 5))
                errors.append(p.item.rating - true)
    assert len(errors) > 100
    assert abs(np.mean(errors)) < 0.2 and np.sqrt(np.mean(np.square(errors))) < 0.8


def test_a_reaction_watches_before_it_rates_and_never_rewatches_a_movie():
    sim = small_sim(rate_share=1.0, max_watch=1.0, attention=1.0, center=-10.0)
    user = sim.known_user_ids[0]
    movies = sim.world.movie_ids[:10].tolist()
    plans = sim.on_recommendations(user, movies, T0)
    assert watched_movies(plans) == set(movies)
    delays = [p.delay_s for p in plans]
    assert delays == sorted(delays) and delays[0] > 0
    for movie in movies:
        kinds = [type(p.item).__name__ for p in plans if p.item.movie_id == movie]
        assert kinds[-1] == "RateEvent" and set(kinds[:-1]) == {"WatchEvent"}
        minutes = [p.item.minute for p in plans if p.item.movie_id == movie and isinstance(p.item, WatchEvent)]
        assert minutes == list(range(len(minutes)))
    assert sim.on_recommendations(user, movies, T0) == []  # already seen


def test_movies_and_users_the_world_does_not_know_are_not_watched():
    sim = small_sim(max_watch=1.0, attention=1.0, center=-10.0)
    user = sim.known_user_ids[0]
    assert sim.on_recommendations(user, ["no+such+movie+1999", "another+unknown"], T0) == []
    stranger = max(sim.world.user_ids.tolist()) + 1
    assert sim.on_recommendations(stranger, sim.world.movie_ids[:5].tolist(), T0) == []


def test_garbage_lines_are_rejected_by_the_parser_for_every_kind():
    sim = small_sim()
    for kind in GARBAGE_KINDS:
        for _ in range(30):
            assert isinstance(parse_line(sim.garbage_line(T0, kind)), Rejection), kind


def test_sessions_mix_requests_watches_rates_and_a_small_share_of_garbage():
    sim = small_sim(garbage_share=0.05, request_share=0.3)
    items = [p.item for _ in range(3000) for p in sim.next_session(T0)]
    calls = sum(isinstance(i, RecommendationCall) for i in items)
    garbage = [i for i in items if isinstance(i, str)]
    assert 800 < calls < 1100  # ~0.95 x 0.3 x 3000
    assert 100 < len(garbage) < 210  # ~0.05 x 3000
    assert all(isinstance(parse_line(g), Rejection) for g in garbage)
    parsed = [parse_line(i.to_line()) for i in items if isinstance(i, (WatchEvent, RateEvent))]
    assert parsed and not any(isinstance(p, Rejection) for p in parsed)
    assert any(isinstance(p, RateEvent) for p in parsed)


def test_new_users_appear_over_time_and_were_never_in_the_stream_before():
    sim = small_sim(new_user_share=0.1, new_user_rate=0.05)
    held_back = set(sim.unseen_user_ids)
    assert len(held_back) == 30 and not held_back & set(sim.known_user_ids)
    seen_before: set[int] = set()
    newcomers = []
    for _ in range(2000):
        for p in sim.next_session(T0):
            user = p.item.user_id if not isinstance(p.item, str) else None
            if user is None:
                continue
            if user in held_back and user not in seen_before:
                newcomers.append(user)
            seen_before.add(user)
    assert len(newcomers) == len(set(newcomers)) >= 20
    assert set(newcomers) <= set(sim.known_user_ids)  # once seen, they are regular users


def test_the_same_seed_gives_the_same_stream():
    def lines(sim):
        out = []
        for _ in range(300):
            for p in sim.next_session(T0):
                out.append(p.item if isinstance(p.item, (str, RecommendationCall)) else p.item.to_line())
        return out

    assert lines(small_sim(seed=3)) == lines(small_sim(seed=3))
    assert lines(small_sim(seed=3)) != lines(small_sim(seed=4))


def test_backfill_is_history_of_rated_sessions_in_the_past_that_all_parse():
    sim = small_sim()
    lines = list(sim.backfill(200, T0))
    events = [parse_line(line) for line in lines]
    assert not any(isinstance(e, Rejection) for e in events)
    assert sum(isinstance(e, RateEvent) for e in events) == 200
    assert all(e.time <= T0 for e in events)


# -- the real caller against a real HTTP server ----------------------------------------------------
class EntryStandIn:
    """A real HTTP server on a free port: GET /recommend/<uid> answered by `answer(uid)` ->
    (status, body, delay_s). Records the user ids it was asked for."""

    def __init__(self, answer):
        self.asked: list[int] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                uid = int(self.path.rsplit("/", 1)[1])
                stand_in.asked.append(uid)
                status, body, delay = answer(uid)
                if delay:
                    time.sleep(delay)
                data = body.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the caller gave up (timeout)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def entry_factory():
    made = []

    def make(answer):
        made.append(EntryStandIn(answer))
        return made[-1]

    yield make
    for entry in made:
        entry.close()


def unused_url() -> str:
    from scripts.broker import free_port

    return f"http://127.0.0.1:{free_port()}"


def test_call_recommend_reports_status_ids_and_latency_and_never_raises(entry_factory):
    import requests

    ids = ["the+last+harbor+1999", "frontier+", "echo"]
    ok = entry_factory(lambda uid: (200, ",".join(ids), 0))
    broken = entry_factory(lambda uid: (500, "model not loaded\nretry later", 0))
    slow = entry_factory(lambda uid: (200, ",".join(ids), 1.2))
    with requests.Session() as s:
        r = call_recommend(s, ok.url, 42)
        assert (r.status, r.movie_ids, r.error) == (200, tuple(ids), None) and r.latency_ms >= 0
        r = call_recommend(s, broken.url, 42)
        assert (r.status, r.movie_ids, r.error) == (500, (), "model not loaded retry later")
        r = call_recommend(s, slow.url, 42, timeout_ms=300)
        assert r.status == 0 and "timeout" in r.error.lower() and r.latency_ms >= 300
        r = call_recommend(s, unused_url(), 42)
        assert r.status == 0 and r.error.startswith("ConnectException")


# -- the process against a real broker ---------------------------------------------------------------
def new_topic(bootstrap: str) -> str:
    from scripts.broker import ensure_topic

    topic = f"sim-{uuid.uuid4().hex[:10]}"
    ensure_topic(bootstrap, topic, partitions=1)
    return topic


def read_topic(bootstrap: str, topic: str, expected: int, deadline_s: float = 30.0) -> list[str]:
    """All values on partition 0, waiting (bounded) until at least `expected` arrived."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=1000)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        values: list[str] = []
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500, max_records=5000)
            for records in batch.values():
                values.extend(r.value.decode("utf-8", "surrogateescape") for r in records)
            if len(values) >= expected and not batch:
                break
        return values
    finally:
        consumer.close()


def simulator_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "scripts.simulator", "--users", str(USERS), "--movies", str(MOVIES),
            "--seed", str(SEED), "--report-every", "0", *args]


def run_simulator(bootstrap: str, topic: str, url: str, *args: str, timeout: float = 90) -> dict:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC": topic, "RECOMMEND_URL": url}
    done = subprocess.run(simulator_argv(*args), check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return summary_of(done.stdout)


def summary_of(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("summary ")]
    assert lines, stdout[-2000:]
    return json.loads(lines[-1][len("summary "):])


def world_top(uid: int, world: SyntheticWorld, best: bool) -> list[str]:
    if uid not in set(world.user_ids.tolist()):
        return world.movie_ids[:20].tolist()
    order = np.argsort(-world.true_score(uid, world.movie_ids))
    return world.movie_ids[order[:20] if best else order[-20:]].tolist()


def test_every_produced_line_parses_except_the_deliberate_garbage_and_the_run_stops_at_the_event_bound(
    kafka_bootstrap, entry_factory
):
    world = SyntheticWorld(USERS, MOVIES, seed=SEED)
    served = world.movie_ids[:20].tolist()
    entry = entry_factory(lambda uid: (200, ",".join(served), 0))
    topic = new_topic(kafka_bootstrap)
    summary = run_simulator(kafka_bootstrap, topic, entry.url, "--events", "600", "--rate", "400",
                            "--garbage-share", "0.05", "--request-share", "0.5")
    assert summary["total"] == 600 and summary["send_failures"] == 0
    lines = read_topic(kafka_bootstrap, topic, 600)
    assert len(lines) == 600
    parsed = [parse_line(line) for line in lines]
    rejected = [p for p in parsed if isinstance(p, Rejection)]
    assert len(rejected) == summary["produced"]["garbage"] > 0
    recos = [p for p in parsed if isinstance(p, RecommendationEvent)]
    assert len(recos) == summary["produced"]["recommendation"] == len(entry.asked) > 0
    assert all(r.status == 200 and list(r.movie_ids) == served for r in recos)
    assert all(r.server == entry.url.split("//")[1] and 0 <= r.latency_ms < 800 for r in recos)
    assert summary["requests_by_status"] == {"200": len(recos)}
    assert summary["produced"]["watch"] > 0 and summary["produced"]["rate"] > 0
    # Users only react after seeing a list: some served movies get watched after a recommendation.
    first_reco = min(r.time for r in recos)
    assert any(isinstance(p, WatchEvent) and p.movie_id in served and p.time >= first_reco for p in parsed)


def test_failing_or_absent_service_becomes_status_lines_and_the_simulator_keeps_going(
    kafka_bootstrap, entry_factory
):
    broken = entry_factory(lambda uid: (500, "internal error", 0))
    for url, status in ((broken.url, 500), (unused_url(), 0)):
        topic = new_topic(kafka_bootstrap)
        summary = run_simulator(kafka_bootstrap, topic, url, "--events", "150", "--rate", "400",
                                "--request-share", "0.6")
        recos = [p for p in map(parse_line, read_topic(kafka_bootstrap, topic, 150))
                 if isinstance(p, RecommendationEvent)]
        assert summary["total"] == 150 and recos
        assert {r.status for r in recos} == {status} and all(r.movie_ids == () and r.error for r in recos)
        assert summary["requests_by_status"] == {str(status): len(recos)}


def test_a_service_slower_than_the_caller_timeout_is_logged_as_status_0_after_800_ms(
    kafka_bootstrap, entry_factory
):
    slow = entry_factory(lambda uid: (200, "echo", 1.5))
    topic = new_topic(kafka_bootstrap)
    summary = run_simulator(kafka_bootstrap, topic, slow.url, "--events", "40", "--rate", "200",
                            "--request-share", "0.5")
    recos = [p for p in map(parse_line, read_topic(kafka_bootstrap, topic, 40))
             if isinstance(p, RecommendationEvent)]
    assert recos and summary["total"] == 40
    assert all(r.status == 0 and "after 800 ms" in r.error and r.latency_ms >= 800 for r in recos)


def test_a_model_that_recommends_what_users_truly_like_earns_a_higher_watched_share(
    kafka_bootstrap, entry_factory
):
    """What the release controller measures from the stream: canary users get their true top 20,
    stable users their true bottom 20; the canary's watched share must come out higher."""
    from movierec.release import online_quality

    world = SyntheticWorld(USERS, MOVIES, seed=SEED)
    entry = entry_factory(lambda uid: (200, ",".join(world_top(uid, world, variant_for_user(uid) == "canary")), 0))
    topic = new_topic(kafka_bootstrap)
    summary = run_simulator(kafka_bootstrap, topic, entry.url, "--events", "1500", "--rate", "600",
                            "--request-share", "0.6")
    events = [p for p in map(parse_line, read_topic(kafka_bootstrap, topic, summary["total"]))
              if not isinstance(p, Rejection)]
    quality = online_quality(events, canary_percent=20)
    assert quality["canary"].recommended > 100 and quality["stable"].recommended > 100
    assert quality["canary"].share > 3 * quality["stable"].share


def test_replay_sends_exactly_the_file_lines_in_order(kafka_bootstrap, tmp_path):
    sim = small_sim()
    lines = list(sim.backfill(60, T0))
    lines[5:5] = [sim.garbage_line(T0, "truncated"), "", "2024-01-01T00:00:00,12,GET /rate/x=9"]
    path = tmp_path / "stream.log"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    topic = new_topic(kafka_bootstrap)
    summary = run_simulator(kafka_bootstrap, topic, unused_url(), "--replay", str(path))
    assert summary["produced"] == {"replay": len(lines)}
    assert read_topic(kafka_bootstrap, topic, len(lines)) == lines


def test_replay_stops_at_the_event_bound(kafka_bootstrap, tmp_path):
    lines = list(small_sim().backfill(50, T0))
    path = tmp_path / "stream.log"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    topic = new_topic(kafka_bootstrap)
    summary = run_simulator(kafka_bootstrap, topic, unused_url(), "--replay", str(path), "--events", "25",
                            "--rate", "1000")
    assert summary["total"] == 25
    assert read_topic(kafka_bootstrap, topic, 25) == lines[:25]


def test_backfill_goes_first_and_counts_towards_the_event_bound(kafka_bootstrap):
    topic = new_topic(kafka_bootstrap)
    summary = run_simulator(kafka_bootstrap, topic, unused_url(), "--backfill", "100", "--events", "50")
    assert summary["produced"] == {"backfill": 50}
    events = [parse_line(line) for line in read_topic(kafka_bootstrap, topic, 50)]
    assert len(events) == 50 and not any(isinstance(e, Rejection) for e in events)


def test_the_run_stops_at_the_duration_bound(kafka_bootstrap, entry_factory):
    entry = entry_factory(lambda uid: (200, "echo", 0))
    topic = new_topic(kafka_bootstrap)
    summary = run_simulator(kafka_bootstrap, topic, entry.url, "--duration", "2", "--rate", "50")
    assert 1.5 < summary["elapsed_s"] < 10  # it ends by itself, about when told to
    assert 0 < summary["total"] <= 2 * 50 + 20
    assert len(read_topic(kafka_bootstrap, topic, summary["total"])) == summary["total"]


def test_sigterm_stops_a_run_without_bound_cleanly_and_flushes_every_line(kafka_bootstrap, entry_factory):
    entry = entry_factory(lambda uid: (200, "echo", 0))
    topic = new_topic(kafka_bootstrap)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC": topic,
           "RECOMMEND_URL": entry.url}
    proc = subprocess.Popen(simulator_argv("--duration", "0", "--rate", "200", "--report-every", "0.2"),
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("simulator: ")  # it is running and producing
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    summary = summary_of(out)
    assert summary["total"] > 0 and summary["send_failures"] == 0
    assert len(read_topic(kafka_bootstrap, topic, summary["total"])) == summary["total"]


def test_record_appends_every_line_the_broker_acknowledged_across_runs(kafka_bootstrap, entry_factory, tmp_path):
    entry = entry_factory(lambda uid: (200, "echo", 0))
    topic = new_topic(kafka_bootstrap)
    record = tmp_path / "produced.lines"
    for _ in range(2):  # a second run (a restarted stack) appends
        summary = run_simulator(kafka_bootstrap, topic, entry.url, "--events", "150", "--rate", "400",
                                "--record", str(record))
        assert summary["total"] == 150 and summary["send_failures"] == 0
    recorded = record.read_text(encoding="utf-8").splitlines()
    assert sorted(recorded) == sorted(read_topic(kafka_bootstrap, topic, 300))
    assert len(recorded) == 300


def test_bad_arguments_get_a_one_line_error():
    done = subprocess.run(simulator_argv("--garbage-share", "1.5"), check=False, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "must be between 0 and 1" in done.stderr
    done = subprocess.run(simulator_argv("--replay", "/nonexistent/stream.log"), check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "cannot read replay file" in done.stderr


def test_a_stop_wait_ends_within_a_slice_of_a_sigterm_and_runs_its_time_without_one():
    """The handler sets a flag only (an Event.set() in a signal handler can wait forever for the
    lock the interrupted thread holds); waits sleep in short slices that look at the flag."""
    from scripts.simulator.runner import Stop

    stop = Stop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop.install()
        started = time.monotonic()
        assert stop.wait(0.12) is False and not stop.requested
        assert time.monotonic() - started >= 0.12
        timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        started = time.monotonic()
        assert stop.wait(30) is True and stop.requested
        assert time.monotonic() - started < 0.1 + 10 * Stop.SLICE_S
        timer.join()
        assert stop.wait(30) is True  # once requested, a wait returns at once
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_the_periodic_line_reports_latency_over_the_last_interval_and_the_final_line_over_the_run():
    from scripts.simulator import Stats

    stats = Stats()
    for _ in range(100):
        stats.record(200, 1000.0)
    assert "p50 1000 ms p99 1000 ms" in stats.interval_line()
    for _ in range(10):
        stats.record(200, 10.0)
    window = stats.interval_line()
    assert "(10 calls) p50 10 ms p99 10 ms" in window and "requests by status 200:110" in window
    assert "p50 1000 ms" in stats.line()  # the whole run: mostly the slow calls
    assert "(0 calls) p50 - ms p99 - ms" in stats.interval_line()  # a quiet interval says so
