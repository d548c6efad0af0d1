"""cron-connector, locally: schedules functions from their annotations and calls them via the gateway.

Owns: the cron expression matcher (5 fields, and `@every <duration>`, `@hourly`, `@daily`, ...),
refreshing the schedule from the gateway's own HTTP API every rebuild interval (with basic auth,
exactly as cron-connector does), and invoking `POST /function/<name>.<namespace>` with the
`X-Topic: cron-function` and `X-Connector: cron-connector` headers; plus one thing cron-connector
cannot do: the scheduler's credential. When the secret `cron-token` exists in the secrets folder
(`ensure_cron_token` makes one, random, on the first start), every call also carries
`Authorization: Bearer <cron-token>`, so functions whose scheduled route changes state can refuse
anyone else (a header such as `X-Topic` can be sent by any caller: it proves nothing).
Must not touch: processes and function state (it only talks HTTP to the gateway).
Times are UTC, as in the cron-connector container.

Also a standalone relay, for platforms where cron-connector would call those functions without
the credential (`python -m localfaas.cron --gateway URL --secrets DIR`): it reads
`basic-auth-user`, `basic-auth-password` and `cron-token` from DIR, as cron-connector reads its
`secret_mount_path`, and does the same scheduling with the credential.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets as _random
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from localfaas.functionconfig import parse_duration

log = logging.getLogger("localfaas.cron")

TOPIC = "cron-function"
CRON_TOKEN = "cron-token"  # the secret whose value scheduled calls carry as a bearer token
_NAMES = {
    3: {m: i for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1)},
    4: {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}
_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]  # minute hour day-of-month month day-of-week
_DESCRIPTORS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}


class CronError(ValueError):
    pass


def _field(text: str, position: int) -> frozenset[int]:
    low, high = _RANGES[position]
    names = _NAMES.get(position, {})
    values: set[int] = set()

    def number(token: str) -> int:
        token = token.lower()
        if token in names:
            return names[token]
        if not (token.isascii() and token.isdigit()):
            raise CronError(f"{token!r} is not a number")
        value = int(token)
        if position == 4 and value == 7:  # Sunday is 0 or 7
            return 0
        if not low <= value <= high:
            raise CronError(f"{value} is out of range {low}-{high}")
        return value

    for part in text.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isascii() and step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise CronError(f"bad step in {part!r}")
        if span == "*":
            start, end = low, high
        elif "-" in span:
            a, b = span.split("-", 1)
            start, end = number(a), number(b)
            if start > end:
                raise CronError(f"range {span!r} runs backwards")
        else:
            start = number(span)
            end = high if step else start
        values.update(range(start, end + 1, step or 1))
    return frozenset(values)


@dataclass(frozen=True)
class CronSchedule:
    """When a schedule fires next. `every` is set for `@every <duration>`, the fields otherwise."""

    expression: str
    every: timedelta | None = None
    minutes: frozenset[int] = frozenset()
    hours: frozenset[int] = frozenset()
    days: frozenset[int] = frozenset()
    months: frozenset[int] = frozenset()
    weekdays: frozenset[int] = frozenset()
    day_restricted: bool = False
    weekday_restricted: bool = False

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        text = expression.strip()
        try:
            if text.startswith("@every "):
                seconds = parse_duration(text[len("@every "):])
                if seconds <= 0:
                    raise CronError("the interval must be positive")
                return cls(expression, every=timedelta(seconds=seconds))
            text = _DESCRIPTORS.get(text, text)
            fields = text.split()
            if len(fields) != 5:
                raise CronError(f"expected 5 fields (minute hour day month weekday), got {len(fields)}")
            parsed = [_field(f, i) for i, f in enumerate(fields)]
        except (CronError, ValueError) as exc:
            raise CronError(f"invalid schedule {expression!r}: {exc}") from None
        return cls(expression, None, *parsed, day_restricted=not fields[2].startswith("*"),
                   weekday_restricted=not fields[4].startswith("*"))

    def _day_matches(self, t: datetime) -> bool:
        dom, dow = t.day in self.days, (t.isoweekday() % 7) in self.weekdays
        if self.day_restricted and self.weekday_restricted:
            return dom or dow  # classic cron: either restricted day field may match
        return dom and dow

    def next_after(self, after: datetime) -> datetime:
        if self.every is not None:
            return after + self.every
        t = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = after + timedelta(days=366 * 5)
        while t <= limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
            elif not self._day_matches(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t += timedelta(minutes=1)
            else:
                return t
        raise CronError(f"schedule {self.expression!r} never fires")


@dataclass
class _Entry:
    schedule: CronSchedule
    next_run: datetime


def ensure_cron_token(secrets_dir: str | Path) -> Path:
    """The scheduler's credential `<secrets>/cron-token`: generated once (random, mode 0600, never a
    default) and reused; functions that list the secret `cron-token` get the same value."""
    directory = Path(secrets_dir)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    path = directory / CRON_TOKEN
    if not path.is_file() or not path.read_text().strip():
        tmp = directory / f".{CRON_TOKEN}.{_random.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(_random.token_urlsafe(32) + "\n")
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return path


class CronConnector:
    def __init__(self, gateway_url: str, user: str, password: str, *, rebuild_interval: float = 10.0,
                 token_file: str | Path | None = None):
        self.gateway_url = gateway_url.rstrip("/")
        self._auth_headers = {"Authorization": aiohttp.encode_basic_auth(user, password)}
        self.rebuild_interval = rebuild_interval
        self.token_file = Path(token_file) if token_file is not None else None  # read at every call
        self.entries: dict[str, _Entry] = {}  # "<name>.<namespace>" -> its schedule
        self._session: aiohttp.ClientSession | None = None
        self._calls: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        try:
            next_refresh = 0.0
            loop = asyncio.get_running_loop()
            while True:
                if loop.time() >= next_refresh:
                    await self.refresh()
                    next_refresh = loop.time() + self.rebuild_interval
                self.fire_due(datetime.now(UTC))
                await asyncio.sleep(min(0.5, max(0.05, next_refresh - loop.time())))
        finally:
            for task in list(self._calls):
                task.cancel()
            await self._session.close()

    async def _get_json(self, path: str) -> object:
        assert self._session is not None
        async with self._session.get(self.gateway_url + path, headers=self._auth_headers,
                                     timeout=aiohttp.ClientTimeout(total=10)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {resp.status} {(await resp.text()).strip()}")
            return await resp.json()

    async def refresh(self) -> None:
        try:
            namespaces = await self._get_json("/system/namespaces")
            functions = []
            for namespace in namespaces if isinstance(namespaces, list) else []:
                functions += await self._get_json(f"/system/functions?namespace={namespace}")
        except (TimeoutError, aiohttp.ClientError, RuntimeError, ValueError) as exc:
            log.warning("cron: cannot list functions from the gateway %s: %s", self.gateway_url, exc)
            return
        now = datetime.now(UTC)
        seen = set()
        for fn in functions:
            annotations = fn.get("annotations") or {}
            if annotations.get("topic") != TOPIC or not annotations.get("schedule"):
                continue
            key = f"{fn['name']}.{fn.get('namespace') or 'openfaas-fn'}"
            expression = annotations["schedule"]
            seen.add(key)
            current = self.entries.get(key)
            if current is not None and current.schedule.expression == expression:
                continue
            try:
                schedule = CronSchedule.parse(expression)
            except CronError as exc:
                log.error("cron: function %s: %s", key, exc)
                continue
            self.entries[key] = _Entry(schedule, schedule.next_after(now))
            log.info("cron: scheduled %s at %r", key, expression)
        for key in set(self.entries) - seen:
            del self.entries[key]
            log.info("cron: unscheduled %s", key)

    def fire_due(self, now: datetime) -> None:
        for key, entry in self.entries.items():
            if entry.next_run <= now:
                entry.next_run = entry.schedule.next_after(max(now, entry.next_run))
                task = asyncio.create_task(self.invoke(key))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)

    async def invoke(self, key: str) -> None:
        assert self._session is not None
        url = f"{self.gateway_url}/function/{key}"
        headers = {"X-Topic": TOPIC, "X-Connector": "cron-connector"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self._session.post(url, data=b"", headers=headers) as resp:
                body = await resp.read()
                level = logging.INFO if resp.status < 400 else logging.WARNING
                log.log(level, "cron: %s -> %s (%d bytes)", key, resp.status, len(body))
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("cron: calling %s failed: %s", key, exc)

    def _token(self) -> str | None:
        """The cron token's current value (a rotated secret is picked up at the next call)."""
        if self.token_file is None:
            return None
        try:
            return self.token_file.read_text().strip() or None
        except OSError:
            return None


def main(argv: list[str] | None = None) -> int:
    """The relay: cron-connector's scheduling, with the cron token on every call."""
    parser = argparse.ArgumentParser(prog="python -m localfaas.cron", description=main.__doc__)
    parser.add_argument("--gateway", default="http://127.0.0.1:8080", help="the OpenFaaS gateway (gateway_url)")
    parser.add_argument("--secrets", default="/var/openfaas/secrets",
                        help="folder with basic-auth-user, basic-auth-password and cron-token (secret_mount_path)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between re-reads of the functions")
    args = parser.parse_args(argv)
    folder = Path(args.secrets)
    try:
        user, password = ((folder / n).read_text().strip() for n in ("basic-auth-user", "basic-auth-password"))
        if not (folder / CRON_TOKEN).read_text().strip():
            raise OSError(f"{folder / CRON_TOKEN} is empty")
    except OSError as exc:
        print(f"localfaas.cron: cannot read the secrets in {folder}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    connector = CronConnector(args.gateway, user, password, rebuild_interval=args.interval,
                              token_file=folder / CRON_TOKEN)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(connector.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
