"""The compressed lifecycle on a local stack: `make demo` (`python -m scripts.demo`), and the driver
the end-to-end tests use.

Owns: driving one whole lifecycle against a running local stack through its public interfaces
only (the gateway's function routes and /system API through the one gateway client
`movierec.adapters.gateway`, the public entry, Prometheus through `movierec.adapters.prometheus`,
the object store, `python -m scripts.release`, and the replica pids the local runtime publishes in
its state file `<state>/run/localfaas-replicas.json`), measuring what clients see through nginx, and
the release report. By module:
- `progress`: `Progress`, `DemoError`, `wait_for`, `format_ms` / `format_rate`.
- `handle`: `StackHandle`, `local_stack_env` (env/demo.yml), `attach_env`, `handle_for`,
  `bring_up` / `bring_down`.
- `load`: `SteadyLoad`, `Sample`, `DrillWindow`, `is_failure`, `is_drill_fault`, `load_figures`.
- `releases`: `current_release`, `wait_release_decided`, `wait_no_release_running`.
- `replicas`: `replica_pids`, `kill_one_replica`.
- `phases`: `run_lifecycle`, `LifecycleOptions`, `LifecycleResult`, `ingest_all`, `train`, `run_drill`.
- `report`: `write_report`, `release_lines`, `release_series`, `draw_report`.
- `cli`: `main`, `notification_receivers`.

Must not touch: release policy, training, serving or the runtime's internals (it only calls them
like an operator or a client would); processes it did not start.

The names below are the package's public surface (`from scripts.demo import run_lifecycle`).
"""
from scripts.demo.cli import main
from scripts.demo.handle import (
    DEMO_ENV_FILE,
    StackHandle,
    attach_env,
    bring_down,
    bring_up,
    demo_defaults,
    handle_for,
    local_stack_env,
)
from scripts.demo.load import DrillWindow, Sample, SteadyLoad, is_drill_fault, is_failure, load_figures
from scripts.demo.phases import LifecycleOptions, LifecycleResult, run_lifecycle
from scripts.demo.progress import DemoError, Progress, wait_for
from scripts.demo.replicas import kill_one_replica, replica_pids
from scripts.demo.report import write_report

__all__ = ["DEMO_ENV_FILE", "DemoError", "DrillWindow", "LifecycleOptions", "LifecycleResult", "Progress",
           "Sample", "StackHandle", "SteadyLoad", "attach_env", "bring_down", "bring_up", "demo_defaults",
           "handle_for", "is_drill_fault", "is_failure", "kill_one_replica", "load_figures", "local_stack_env",
           "main", "replica_pids", "run_lifecycle", "wait_for", "write_report"]
