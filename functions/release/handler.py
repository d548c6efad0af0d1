"""release: the canary controller's HTTP face.

- `POST /` (the cron trigger, every minute) or `POST /step`: one analysis step of the running
  release. A step can promote or roll back, so it needs a credential: the `cron-token` secret
  (what the local cron sends) or `release-admin-token`, as `Authorization: Bearer <token>`.
- `GET /status` (or `GET /`): the running release, aliases and recent history (open: it reads).
- `POST /promote`, `POST /rollback`, `POST /abort`: manual actions. They need the token in the
  secret file `release-admin-token` (the cron token is not enough), sent as
  `Authorization: Bearer <token>` (or as the password of basic auth).
  Either way: 401 without the credential, 503 when its secret is not configured (no default).
  An optional `reason` comes as `?reason=` or a JSON body `{"reason": ...}`.
- After every step and action, the controller's figures go to the Pushgateway (PUSHGATEWAY_URL,
  job="release"): serving versions, decisions, online quality
  (movierec.adapters.release_metrics.push_release_metrics).
- Errors answer with their taxonomy status (movierec.errors): a release state that excludes the
  action 409, a bad setting 400 (ConfigError), an unavailable dependency 503; JSON `{"error": ...}`.
  One step acts at a time: a step or action while another holds the release lease answers 409 at
  once, naming the holder and when its lease expires (movierec.lease, named in movierec.release.state).

Thin on purpose: the state machine and policy are movierec.release; replies movierec.adapters.replies.
"""
import json
import logging

from movierec.adapters.gateway import GatewayClient
from movierec.adapters.notify import Notifier
from movierec.adapters.prometheus import PrometheusClient
from movierec.adapters.release_metrics import push_release_metrics
from movierec.adapters.replies import ADMIN_TOKEN, CRON_TOKEN, check_token, error, from_exception, reply
from movierec.adapters.stores import open_store
from movierec.release import (
    MANUAL_ACTIONS,
    ReleaseConfig,
    manual_action,
    run_release_step,
    status,
    stored_quality_source,
)
from movierec.settings import Settings

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
TOKEN_SECRET = ADMIN_TOKEN
STEP_TOKENS = (CRON_TOKEN, ADMIN_TOKEN)


def _reason(event):
    reason = event.query.get("reason", "") if event.query else ""
    if not reason and event.body:
        try:
            reason = str(json.loads(event.body).get("reason", ""))
        except (ValueError, AttributeError):
            reason = ""
    return reason[:200]


def _step():
    config, store = ReleaseConfig.from_env(), open_store()
    quality = stored_quality_source(store, config.canary_percent) if config.online_quality else None
    deployer = GatewayClient.from_env()
    result = run_release_step(
        config, store, PrometheusClient.from_env(), deployer, Notifier.from_env(), quality_source=quality,
    )
    pushed = push_release_metrics(Settings().get("PUSHGATEWAY_URL"), store, config, deployer)
    return reply(200, {**result.as_dict(), "pushed": pushed})


def _manual(action, event):
    config, store, deployer = ReleaseConfig.from_env(), open_store(), GatewayClient.from_env()
    release = manual_action(action, config, store, deployer, Notifier.from_env(), actor="operator",
                            reason=_reason(event))
    pushed = push_release_metrics(Settings().get("PUSHGATEWAY_URL"), store, config, deployer)
    return reply(200, {"action": action, "release": release.__dict__, "pushed": pushed})


def handle(event, context):
    path = event.path.strip("/")
    try:
        if event.method == "GET" and path in ("", "status"):
            return reply(200, status(open_store()))
        if event.method != "POST":
            return error(405, "use GET /status, or POST /step|/promote|/rollback|/abort", Allow="GET, POST")
        if path in ("", "step"):
            refused = check_token(event.headers, STEP_TOKENS, realm="release")
            return refused if refused is not None else _step()
        if path not in MANUAL_ACTIONS:
            return error(404, f"unknown action /{path[:40]}: use /step, /promote, /rollback or /abort")
        refused = check_token(event.headers, TOKEN_SECRET, realm="release")
        if refused is not None:
            return refused
        return _manual(path, event)
    except Exception as e:  # noqa: BLE001 (the taxonomy's status; anything else is a 500 that says so)
        return from_exception(e)
