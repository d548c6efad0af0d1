"""The stream simulator's command line: synthetic users who watch, rate and ask for recommendations.

Owns: the options, `example_user_ids` (users a run with given options is sure to produce) and `main`: a live simulation (optionally after a backfill of history) or a
file replay, produced to Kafka (`KafkaSink`), calling the public entry (`call_recommend`), printing
a summary line every --report-every seconds and at the end, the final one also as one JSON line
starting with `summary ` (tests and scripts read it). Exit 0, or 1 when lines could not be produced,
2 when the replay file cannot be read.

Must not touch: parsing rules (movierec.events), the model, the object store, the services it calls
(it only calls them, like a client would), processes it did not start.

CLI (`python -m scripts.simulator --help`):
    python -m scripts.simulator [--rate 20] [--duration 60 | --events N] [--duration 0 (forever)]
        [--users 2000 --movies 800 --seed 0] [--garbage-share 0.01] [--request-share 0.3]
        [--new-user-share 0.05] [--backfill RATINGS] [--report-every 10] [--record FILE]
    python -m scripts.simulator --replay FILE [--rate 0 (as fast as possible)] [--partition P]
Env: KAFKA_BOOTSTRAP_SERVERS (127.0.0.1:9092), KAFKA_TOPIC (movielog1), RECOMMEND_URL
(http://127.0.0.1:8082, else PUBLIC_URL).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from movierec.synthetic import SyntheticWorld
from scripts.simulator.caller import CALLER_TIMEOUT_MS, DEFAULT_RECOMMEND_URL, call_recommend, server_name
from scripts.simulator.runner import Bounds, Stats, Stop, run_live, run_replay
from scripts.simulator.simulation import Behaviour, Simulation, utc_now
from scripts.simulator.sink import DEFAULT_BOOTSTRAP, DEFAULT_TOPIC, KafkaSink, SinkError


def _nonneg_float(text: str) -> float:
    value = float(text)
    if value < 0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _pos_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(prog="python -m scripts.simulator",
                                description="Synthetic users producing stream lines and calling /recommend.")
    p.add_argument("--bootstrap", default=env.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP,
                   help="Kafka bootstrap servers (env KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--topic", default=env.get("KAFKA_TOPIC") or DEFAULT_TOPIC, help="topic (env KAFKA_TOPIC)")
    p.add_argument("--partition", type=int, default=None,
                   help="produce to this partition only (default: the producer spreads lines)")
    p.add_argument("--recommend-url", default=env.get("RECOMMEND_URL") or env.get("PUBLIC_URL")
                   or DEFAULT_RECOMMEND_URL, help="public entry serving GET /recommend/<uid> (env RECOMMEND_URL)")
    p.add_argument("--rate", type=_nonneg_float, default=None,
                   help="lines per second (live default 20; replay default 0 = as fast as possible)")
    p.add_argument("--duration", type=_nonneg_float, default=60.0,
                   help="stop after this many seconds; 0 = run until SIGTERM/SIGINT (default 60)")
    p.add_argument("--events", type=_pos_int, default=None, help="stop after producing this many lines")
    p.add_argument("--users", type=_pos_int, default=2000)
    p.add_argument("--movies", type=_pos_int, default=800)
    p.add_argument("--seed", type=int, default=0, help="seeds the world and the behaviour")
    p.add_argument("--garbage-share", type=_share, default=Behaviour.garbage_share)
    p.add_argument("--request-share", type=_share, default=Behaviour.request_share)
    p.add_argument("--new-user-share", type=_share, default=Behaviour.new_user_share,
                   help="share of the population held back to appear later as never-seen users")
    p.add_argument("--backfill", type=int, default=0, metavar="RATINGS",
                   help="first produce this many historical rated sessions (past week), as fast as possible; "
                        "its lines count towards --events")
    p.add_argument("--timeout-ms", type=_pos_int, default=CALLER_TIMEOUT_MS, help="caller timeout (800)")
    p.add_argument("--workers", type=_pos_int, default=4, help="concurrent recommendation calls")
    p.add_argument("--report-every", type=_nonneg_float, default=10.0, help="seconds between summary lines")
    p.add_argument("--replay", metavar="FILE", default=None, help="send this file's lines instead of simulating")
    p.add_argument("--record", metavar="FILE", default=None,
                   help="append every line the broker acknowledged to FILE (what was produced, for counting)")
    return p


def example_user_ids(argv: list[str], n: int = 3) -> list[int]:
    """Users a run with these options is sure to produce (the population's most active), with the same
    seeded world and behaviour `main` builds; [] for a replay, which has no population."""
    args = build_parser().parse_args(argv)
    if args.replay:
        return []
    return _simulation(args).most_active_user_ids(n)


def _simulation(args: argparse.Namespace) -> Simulation:
    behaviour = Behaviour(request_share=args.request_share, new_user_share=args.new_user_share,
                          garbage_share=args.garbage_share)
    return Simulation(SyntheticWorld(args.users, args.movies, seed=args.seed), behaviour, seed=args.seed + 1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bounds = Bounds(duration_s=args.duration or None, events=args.events)
    stop = Stop()
    stop.install()
    report_every = args.report_every or float("inf")

    def report(text: str) -> None:
        print(text, flush=True)

    if args.replay and not (os.path.isfile(args.replay) and os.access(args.replay, os.R_OK)):
        print(f"error: cannot read replay file {args.replay}: not a readable file", file=sys.stderr)
        return 2
    try:
        sink = KafkaSink(args.bootstrap, args.topic, args.partition, record=args.record)
    except SinkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stats = Stats()
    try:
        if args.replay:
            with open(args.replay, encoding="utf-8", errors="surrogateescape", newline="") as lines:
                run_replay(lines, sink.send, args.rate or 0.0, bounds, stop, stats, report_every, report)
        else:
            sim = _simulation(args)
            if args.backfill > 0:
                for line in sim.backfill(args.backfill, utc_now()):
                    if stop.requested or bounds.reached(stats, time.monotonic()):
                        break
                    sink.send(line)
                    stats.produced["backfill"] += 1
                report(f"simulator: backfilled {stats.produced['backfill']} lines")
            import requests

            with requests.Session() as session:
                run_live(sim, sink.send,
                         lambda user: call_recommend(session, args.recommend_url, user, args.timeout_ms),
                         server_name(args.recommend_url), args.rate or 20.0, bounds, stop, stats,
                         report_every, report, workers=args.workers)
    finally:
        sink.close()
    summary = stats.summary()
    summary["send_failures"] = sink.failed
    report(stats.line())
    report("summary " + json.dumps(summary, sort_keys=True))
    return 0 if sink.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
