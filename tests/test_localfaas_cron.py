"""The cron matcher of localfaas' cron-connector (the HTTP side is covered in test_localfaas_gateway)."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from localfaas.cron import CronError, CronSchedule

T = datetime(2024, 1, 31, 23, 59, 30)  # a Wednesday, just before a month turns


@pytest.mark.parametrize("expression, expected", [
    ("* * * * *", datetime(2024, 2, 1, 0, 0)),
    ("*/15 * * * *", datetime(2024, 2, 1, 0, 0)),
    ("5,35 * * * *", datetime(2024, 2, 1, 0, 5)),
    ("0 3 */2 * *", datetime(2024, 2, 1, 3, 0)),
    ("0 0 29 2 *", datetime(2024, 2, 29, 0, 0)),
    ("0 12 * * mon-fri", datetime(2024, 2, 1, 12, 0)),
    ("0 0 * * 7", datetime(2024, 2, 4, 0, 0)),  # 7 is Sunday, like 0
    ("0 9 1 * mon", datetime(2024, 2, 1, 9, 0)),  # day-of-month OR weekday when both are set
    ("0 0 1 jan *", datetime(2025, 1, 1, 0, 0)),
    ("@hourly", datetime(2024, 2, 1, 0, 0)),
    ("@daily", datetime(2024, 2, 1, 0, 0)),
    ("@weekly", datetime(2024, 2, 4, 0, 0)),
])
def test_next_run_is_the_first_matching_minute_after(expression, expected):
    assert CronSchedule.parse(expression).next_after(T) == expected


@pytest.mark.parametrize("expression, step", [("@every 30s", 30), ("@every 5m", 300), ("@every 1h30m", 5400)])
def test_every_descriptor_runs_at_fixed_intervals(expression, step):
    assert CronSchedule.parse(expression).next_after(T) == T + timedelta(seconds=step)


@pytest.mark.parametrize("expression", ["* * * *", "61 * * * *", "* * * * 8", "5-1 * * * *",
                                        "*/0 * * * *", "@every", "@every soon", "@sometimes"])
def test_invalid_schedules_are_refused_with_the_expression(expression):
    with pytest.raises(CronError, match="invalid schedule"):
        CronSchedule.parse(expression)


def test_a_schedule_that_can_never_fire_says_so():
    with pytest.raises(CronError, match="never fires"):
        CronSchedule.parse("0 0 30 2 *").next_after(T)


def test_cron_digits_are_ascii_only():
    for expression in ("\u0663 * * * *", "*/\u0665 * * * *", "\uff11 * * * *"):
        with pytest.raises(CronError, match="invalid schedule"):
            CronSchedule.parse(expression)


# -- the scheduler's credential ------------------------------------------------------------------
def _fake_gateway(seen: list):
    """A gateway's API as cron-connector sees it: one namespace, one function scheduled every second."""
    from aiohttp import web

    async def namespaces(request):
        assert request.headers.get("Authorization", "").startswith("Basic ")
        return web.json_response(["openfaas-fn"])

    async def functions(request):
        return web.json_response([{"name": "job", "namespace": "openfaas-fn",
                                   "annotations": {"topic": "cron-function", "schedule": "@every 1s"}}])

    async def invoke(request):
        seen.append(dict(request.headers))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/system/namespaces", namespaces)
    app.router.add_get("/system/functions", functions)
    app.router.add_post("/function/job.openfaas-fn", invoke)
    return app


@pytest.mark.parametrize("with_token", [True, False])
def test_scheduled_calls_carry_the_cron_token_when_the_secret_exists(tmp_path, with_token):
    import asyncio
    import stat

    from aiohttp import web

    from localfaas.cron import CronConnector, ensure_cron_token

    token_file = ensure_cron_token(tmp_path / "secrets") if with_token else tmp_path / "secrets" / "cron-token"
    if with_token:
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(token_file.read_text().strip()) >= 32
        assert ensure_cron_token(tmp_path / "secrets").read_text() == token_file.read_text()  # generated once
    seen: list = []

    async def scenario():
        runner = web.AppRunner(_fake_gateway(seen))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        cron = CronConnector(f"http://127.0.0.1:{port}", "admin", "pw", rebuild_interval=0.2, token_file=token_file)
        task = asyncio.create_task(cron.run())
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await runner.cleanup()

    asyncio.run(scenario())
    assert seen, "no scheduled call arrived"
    headers = seen[0]
    assert headers["X-Topic"] == "cron-function" and headers["X-Connector"] == "cron-connector"
    if with_token:
        assert headers["Authorization"] == f"Bearer {token_file.read_text().strip()}"
    else:
        assert "Authorization" not in headers


def test_the_relay_refuses_to_start_without_its_secrets(tmp_path):
    from localfaas.cron import main

    assert main(["--gateway", "http://127.0.0.1:9", "--secrets", str(tmp_path)]) == 2
