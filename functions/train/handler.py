"""train: one training job per POST (the cron trigger every 2 days, or by hand).

Thin on purpose: the pipeline (snapshot, checks, fit, gates, register, start a release) is
movierec.trainjob. `GET /` (or `/status`) answers the registry's versions and aliases.
A training takes minutes: stack.yml raises this function's timeouts, and the gateway's
upstream timeout must be raised to match.
"""
import logging

from movierec.deploy import DeployError, GatewayDeployer
from movierec.notify import Notifier
from movierec.registry import CANDIDATE, STABLE, Registry, RegistryError
from movierec.snapshot import SnapshotError
from movierec.store import StoreError, open_store
from movierec.trainjob import TrainConfig, TrainError, run_training

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _error(status, e):
    return {"statusCode": status, "body": {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}}


def handle(event, context):
    if event.method == "GET" and event.path.strip("/") in ("", "status"):
        try:
            registry = Registry(open_store())
            versions = registry.versions()
            aliases = {name: registry.alias_version(name) for name in (STABLE, CANDIDATE)}
        except StoreError as e:
            return _error(503, e)
        return {"statusCode": 200, "body": {"versions": versions[-20:], "aliases": aliases}}
    if event.method != "POST":
        return {"statusCode": 405, "body": "use POST to train, GET /status to look", "headers": {"Allow": "GET, POST"}}
    try:
        summary = run_training(TrainConfig.from_env(), open_store(), GatewayDeployer.from_env(), Notifier.from_env())
    except (TrainError, SnapshotError) as e:  # the data or configuration: retrying will not help
        return _error(422, e)
    except (StoreError, DeployError, RegistryError) as e:  # a dependency: the next trigger retries
        return _error(503, e)
    return {"statusCode": 200, "body": summary}
