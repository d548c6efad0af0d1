"""The training job from the command line: `python -m scripts.train [...]`.

    python -m scripts.train                        # the full job, configured by env (as the function)
    python -m scripts.train --params params.yaml   # ... with params.yaml's train: section under the env
    python -m scripts.train --export-snapshot latest --out data/ratings.npz
    python -m scripts.train --offline --ratings data/ratings.npz --params params.yaml --out build/model
    python -m scripts.train --lineage <version> --out lineage/   # its snapshot + artifact, for DVC

The `train` stage of dvc.yaml runs `--offline`. Owns the composition only: the object store, the
OpenFaaS gateway client and the notifier are built here from the environment and handed to the
domain (`movierec.trainjob`, `movierec.lineage`), and the run's figures are pushed with
`push_metrics` (PUSHGATEWAY_URL; blank: no push), as the train function does.

Must not touch: the pipeline, its checks and gates (movierec.trainjob), lineage files (movierec.lineage).
Exit codes: 0 done, 1 the job failed (one line on stderr), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from movierec.adapters.pushgateway import push
from movierec.errors import one_line
from movierec.trainjob import TrainConfig, read_params, run_training, train_families


def push_metrics(url: str | None, summary: Mapping[str, Any]) -> str:
    """Push a run's figures (job "train"): "pushed", "skipped" (no URL) or "failed: ..."; never raises."""
    return push(url, "train", train_families(summary))


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    if args.offline:
        from movierec.lineage import train_offline

        if not args.ratings or not args.out:
            parser.error("--offline needs --ratings and --out")
        result = train_offline(args.ratings, read_params(args.params), args.out)
        if args.metrics:
            Path(args.metrics).write_text(json.dumps(result["metrics"], indent=2, sort_keys=True) + "\n")
        return result
    from movierec.adapters.stores import open_store

    if args.lineage:
        from movierec.lineage import write_lineage

        if not args.out:
            parser.error("--lineage needs --out")
        return write_lineage(open_store(), args.lineage, args.out)
    if args.export_snapshot:
        from movierec.lineage import export_snapshot

        if not args.out:
            parser.error("--export-snapshot needs --out")
        return export_snapshot(open_store(), args.export_snapshot, args.out)
    from movierec.adapters.gateway import GatewayClient
    from movierec.adapters.notify import Notifier

    config = TrainConfig.from_env(params=read_params(args.params))
    summary = run_training(config, open_store(), GatewayClient.from_env(), Notifier.from_env())
    summary["pushed"] = push_metrics(config.pushgateway_url, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.train", description=__doc__.splitlines()[0])
    parser.add_argument("--offline", action="store_true", help="train from --ratings into --out (no store)")
    parser.add_argument("--ratings", help="ratings .npz file (offline input, or --export-snapshot output)")
    parser.add_argument("--params", help="params.yaml (its train: section)")
    parser.add_argument("--out", help="model directory (offline) or ratings file (export)")
    parser.add_argument("--metrics", help="write the offline metrics JSON here")
    parser.add_argument("--export-snapshot", metavar="ID", help="write a snapshot's ratings ('latest' takes one now)")
    parser.add_argument("--lineage", metavar="VERSION", help="write a model's data snapshot and artifact into --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = _run(args, parser)
    except Exception as e:  # noqa: BLE001  (the command line reports one line, not a traceback)
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
