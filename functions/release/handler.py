"""release: the canary controller's HTTP face.

- `POST` with `X-Topic: cron-function` (the cron trigger, every minute), or `POST /step`: one
  analysis step of the running release (open: a step only reads metrics and applies the policy).
- `GET /status` (or `GET /`): the running release, aliases and recent history (open).
- `POST /promote`, `POST /rollback`, `POST /abort`: manual actions. They need the token in the
  secret file `release-admin-token`, sent as `Authorization: Bearer <token>` (or as the password
  of basic auth); 401 otherwise, 503 when the secret is not configured (there is no default).
  An optional `reason` comes as `?reason=` or a JSON body `{"reason": ...}`.
- After every step and action, the controller's figures go to the Pushgateway (PUSHGATEWAY_URL,
  job="release"): serving versions, decisions, online quality (movierec.release.push_release_metrics).

Thin on purpose: the state machine and policy are movierec.release.
"""
import base64
import hmac
import json
import logging
import os

from movierec.deploy import DeployError, GatewayDeployer
from movierec.notify import Notifier
from movierec.prometheus import PrometheusClient, PrometheusError
from movierec.release import (
    MANUAL_ACTIONS,
    InvalidTransition,
    ReleaseConfig,
    ReleaseError,
    manual_action,
    push_release_metrics,
    run_release_step,
    status,
    stored_quality_source,
)
from movierec.store import StoreError, open_store, read_secret

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
TOKEN_SECRET = "release-admin-token"


def _reply(status_code, body, **headers):
    return {"statusCode": status_code, "body": body, "headers": headers}


def _error(status_code, e):
    return _reply(status_code, {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})


def _presented_token(headers):
    auth = headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    return None


def _reason(event):
    reason = event.query.get("reason", "") if event.query else ""
    if not reason and event.body:
        try:
            reason = str(json.loads(event.body).get("reason", ""))
        except (ValueError, AttributeError):
            reason = ""
    return reason[:200]


def handle(event, context):
    path = event.path.strip("/")
    try:
        if event.method == "GET" and path in ("", "status"):
            return _reply(200, status(open_store()))
        if event.method != "POST":
            return _reply(405, {"error": "use GET /status, or POST /step|/promote|/rollback|/abort"}, Allow="GET, POST")
        if event.headers.get("X-Topic") == "cron-function" or path in ("", "step"):
            config, store = ReleaseConfig.from_env(), open_store()
            quality = None
            if os.environ.get("RELEASE_ONLINE_QUALITY", "0") == "1":  # share of recommendations watched
                quality = stored_quality_source(store, config.canary_percent)
            deployer = GatewayDeployer.from_env()
            result = run_release_step(
                config, store, PrometheusClient.from_env(), deployer, Notifier.from_env(), quality_source=quality,
            )
            pushed = push_release_metrics(os.environ.get("PUSHGATEWAY_URL"), store, config, deployer)
            return _reply(200, {**result.as_dict(), "pushed": pushed})
        if path not in MANUAL_ACTIONS:
            return _reply(404, {"error": f"unknown action /{path[:40]}: use /promote, /rollback or /abort"})
        expected = read_secret(TOKEN_SECRET)
        if not expected:
            return _reply(503, {"error": f"manual actions are disabled: secret {TOKEN_SECRET} is not configured"})
        presented = _presented_token(event.headers)
        if presented is None or not hmac.compare_digest(presented.encode(), expected.encode()):
            return _reply(401, {"error": "credentials required: Authorization: Bearer <release-admin-token>"},
                          **{"WWW-Authenticate": 'Bearer realm="release"'})
        config, store, deployer = ReleaseConfig.from_env(), open_store(), GatewayDeployer.from_env()
        release = manual_action(path, config, store, deployer, Notifier.from_env(), actor="operator",
                                reason=_reason(event))
        pushed = push_release_metrics(os.environ.get("PUSHGATEWAY_URL"), store, config, deployer)
        return _reply(200, {"action": path, "release": release.__dict__, "pushed": pushed})
    except InvalidTransition as e:  # nothing running, or already finished
        return _error(409, e)
    except ReleaseError as e:  # e.g. a bad RELEASE_* setting
        return _error(500, e)
    except (StoreError, DeployError, PrometheusError) as e:  # a dependency: the next step retries
        return _error(503, e)
