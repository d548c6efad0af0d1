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
