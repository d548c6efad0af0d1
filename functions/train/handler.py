"""train: one training job per POST (the cron trigger every 2 days, or by hand).

Thin on purpose: the pipeline (snapshot, checks, fit the SVD and the ranking model, gates,
register, start a release, or tell the notifier why not) is movierec.trainjob; this composes it
with the store, the gateway client, the notifier and the
Pushgateway (PUSHGATEWAY_URL; blank: no push), and maps errors to replies by their class
(movierec.errors: rejected data or configuration 4xx, TrainError/SnapshotError 422, an unavailable
dependency 503). `GET /` (or `/status`) answers the registry's versions and aliases. JSON bodies.
A POST starts a training (and maybe a canary release), so it needs the `cron-token` secret as
`Authorization: Bearer <token>` (the local cron sends it; movierec.adapters.replies.check_token):
401 without it, 503 when the secret is not configured.
A training takes minutes: stack.yml raises this function's timeouts, and the gateway's
upstream timeout must be raised to match.
A cron call (`X-Topic: cron-function`) first asks movierec.traindue whether a training is due
(enough data for a first model, anything new since the last one, TRAIN_MIN_INTERVAL) and answers
200 `{"trained": false, "reason"}` at once when not, so the schedule can be frequent; one
training runs at a time in a replica (a cron call finding one running answers the same way, a
manual one 409). Manual calls always train.
"""
import logging
import threading

from movierec.adapters.gateway import GatewayClient
from movierec.adapters.notify import Notifier
from movierec.adapters.pushgateway import push
from movierec.adapters.replies import CRON_TOKEN, check_token, error, from_exception, reply
from movierec.adapters.stores import open_store
from movierec.registry import CANDIDATE, STABLE, Registry
from movierec.settings import Settings
from movierec.traindue import training_due
from movierec.trainjob import TrainConfig, run_training, train_families

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
_TRAINING = threading.Lock()  # one training at a time in this replica (stack.yml: one replica)


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
    if event.path.strip("/") not in ("", "train"):
        return error(404, f"unknown route /{event.path.strip('/')[:40]}: POST / trains, GET /status looks")
    refused = check_token(event.headers, CRON_TOKEN, realm="train")
    if refused is not None:
        return refused
    scheduled = event.headers.get("X-Topic") == "cron-function"
    if not _TRAINING.acquire(blocking=False):
        if scheduled:
            return reply(200, {"trained": False, "reason": "a training is running"})
        return error(409, "a training is running in this replica: try again when it has finished")
    try:
        config = TrainConfig.from_env()
        store = open_store()
        if scheduled:
            reason = training_due(store, config.min_ratings, config.topic, Settings().get("TRAIN_MIN_INTERVAL"))
            if reason is not None:
                return reply(200, {"trained": False, "reason": reason})
        summary = run_training(config, store, GatewayClient.from_env(), Notifier.from_env())
    except Exception as e:  # noqa: BLE001
        return from_exception(e)
    finally:
        _TRAINING.release()
    summary["pushed"] = push(config.pushgateway_url, "train", train_families(summary))
    return reply(200, summary)
