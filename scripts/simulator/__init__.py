"""The stream simulator: synthetic users who watch, rate and ask for recommendations, on one machine
(`python -m scripts.simulator`, `make simulate`; `make up` runs it until `down`).

Owns, by module:
- `simulation`: `Simulation`, `Behaviour`, `Planned`, `RecommendationCall`, `GARBAGE_KINDS`,
  `utc_now`: the pure, seeded behaviour of the population (plans, never I/O).
- `caller`: `call_recommend`, `CallResult`, `server_name`: the real caller of GET /recommend/<uid>.
- `sink`: `KafkaSink`, `SinkError`: the producer the lines go to.
- `runner`: `run_live`, `run_replay`, `Bounds`, `Stop`, `Stats`: pacing, bounds, signals, summary.
- `cli`: `build_parser`, `example_user_ids`, `main`.

Must not touch: parsing rules (movierec.events), the model, the object store, the services it calls
(it only calls them, like a client would), processes it did not start.

The names below are the package's public surface (`from scripts.simulator import Simulation`).
"""
from scripts.simulator.caller import CALLER_TIMEOUT_MS, CallResult, call_recommend, server_name
from scripts.simulator.cli import build_parser, example_user_ids, main
from scripts.simulator.runner import Bounds, Stats, Stop, run_live, run_replay
from scripts.simulator.simulation import (
    GARBAGE_KINDS,
    Behaviour,
    Planned,
    RecommendationCall,
    Simulation,
    utc_now,
)
from scripts.simulator.sink import DEFAULT_BOOTSTRAP, DEFAULT_TOPIC, KafkaSink, SinkError

__all__ = ["CALLER_TIMEOUT_MS", "DEFAULT_BOOTSTRAP", "DEFAULT_TOPIC", "GARBAGE_KINDS", "Behaviour", "Bounds",
           "CallResult", "KafkaSink", "Planned", "RecommendationCall", "Simulation", "SinkError", "Stats", "Stop",
           "build_parser", "call_recommend", "example_user_ids", "main", "run_live", "run_replay", "server_name", "utc_now"]
