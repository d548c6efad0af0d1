"""`up`'s last step: the stack answers the first `curl` a newcomer types with movie ids.

Right after `up` starts the simulator nothing is ingested yet, so recommend answers an empty line
(popularity of nothing) until the cron's first ingest tick, a whole `INGEST_SCHEDULE` interval
after the runtime started, has stored a batch. `first_answer` closes that gap: while the public
entry answers an example user without ids, it starts one ingest run through the gateway with the
scheduler's own credential (`cron-token`, as the cron sends it; the ingest lease keeps it from
overlapping a scheduled run, which is then as good), and polls, bounded, until the answer has ids.

Owns: that wait and the one line `up` prints about it.
Must not touch: processes and the services' definitions (scripts/stack/services.py); the ingest
run itself (the ingest function does it; this only asks for it, as `faas-cli invoke` would).
"""
from __future__ import annotations

import time
from collections.abc import Callable

import requests

from movierec.adapters.gateway import GatewayClient
from movierec.errors import MovierecError
from movierec.store import read_secret
from scripts.stack.config import StackConfig

FIRST_ANSWER_S = 90.0  # the longest `up` waits for ids before it says so and returns
POLL_S = 1.0
INGEST_TIMEOUT_S = 60.0  # the ingest function's own exec_timeout


def first_answer(config: StackConfig, user: int, wait_s: float = FIRST_ANSWER_S,
                 clock: Callable[[], float] = time.monotonic) -> str:
    """Wait until `GET /recommend/<user>` through the public entry has ids, asking for an ingest
    run while it has none; the line to print: how long it took and what answered, or that it
    did not within `wait_s` (the stack keeps starting; `up` still succeeds)."""
    gateway = config.gateway(timeout_s=INGEST_TIMEOUT_S, attempts=1)
    token = read_secret("cron-token", {"SECRETS_DIR": str(config.secrets_dir)})
    auth = {"Authorization": f"Bearer {token or ''}"}
    url = f"{config.url(config.public_port)}/recommend/{user}"
    started, stored = clock(), False
    while True:
        version = _ids_from(url)
        if version is not None:
            what = ("popularity of what is ingested, until the first model serves" if version == "popularity"
                    else f"model {version}")
            return f"first recommendations {clock() - started:.0f} s after the services were up ({what})"
        if clock() - started >= wait_s:
            return (f"no recommendations with ids yet after {wait_s:g} s; the stack keeps starting "
                    f"(see {config.state_dir / 'logs'}/function-ingest.log)")
        if not stored:
            stored = _ingest(gateway, auth)
        time.sleep(POLL_S)


def _ids_from(url: str) -> str | None:
    """The answer's X-Model-Version when it is a 200 with at least one id, else None."""
    try:
        reply = requests.get(url, timeout=5)
    except requests.RequestException:
        return None
    if reply.status_code != 200 or not reply.text.strip():
        return None
    return reply.headers.get("X-Model-Version") or "unversioned"


def _ingest(gateway: GatewayClient, auth: dict[str, str]) -> bool:
    """One ingest run; True once it stored records or another run holds the lease (409)."""
    try:
        reply = gateway.invoke("POST", "ingest", headers=auth)
    except MovierecError:  # not answering yet: asked again at the next poll
        return False
    if reply.status_code == 409:
        return True
    try:
        return reply.status_code == 200 and int(reply.json().get("records", 0)) > 0
    except (ValueError, AttributeError, TypeError):
        return False
