"""train: one training job per POST (the cron trigger every 2 days, or by hand).

Thin on purpose: the pipeline (snapshot, checks, fit the SVD and the ranking model, gates,
register, start a release, or tell the notifier why not) is movierec.trainjob; this composes it
with the store, the gateway client, the notifier and the
Pushgateway (PUSHGATEWAY_URL; blank: no push), and maps errors to replies by their class
(movierec.errors: rejected data or configuration 4xx, TrainError/SnapshotError 422, an unavailable
dependency 503). `GET /` (or `/status`) answers the registry's versions and aliases. JSON bodies.
A training takes minutes: stack.yml raises this function's timeouts, and the gateway's
upstream timeout must be raised to match.
"""
import logging

from movierec.adapters.gateway import GatewayClient
from movierec.adapters.notify import Notifier
from movierec.adapters.pushgateway import push
from movierec.adapters.replies import error, from_exception, reply
from movierec.adapters.stores import open_store
from movierec.registry import CANDIDATE, STABLE, Registry
from movierec.trainjob import TrainConfig, run_training, train_families

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def handle(event, context):
    if event.method == "GET" and event.path.strip("/") in ("", "status"):
        try:
            registry = Registry(open_store())
            versions = registry.versions()
            aliases = {name: registry.alias_version(name) for name in (STABLE, CANDIDATE)}
        except Exception as e:  # noqa: BLE001  (every failure becomes a reply of its class)
            return from_exception(e)
        return reply(200, {"versions": versions[-20:], "aliases": aliases})
    if event.method != "POST":
        return error(405, "use POST to train, GET /status to look", Allow="GET, POST")
    try:
        config = TrainConfig.from_env()
        summary = run_training(config, open_store(), GatewayClient.from_env(), Notifier.from_env())
    except Exception as e:  # noqa: BLE001
        return from_exception(e)
    summary["pushed"] = push(config.pushgateway_url, "train", train_families(summary))
    return reply(200, summary)
