"""Numbers localfaas reads from labels, env, schedules and query strings are ASCII digits.

Python's int() and float() take other scripts' digits ('٣', '３' read as 3), '1_000', 'nan' and
'inf'; OpenFaaS (Go's strconv and time.ParseDuration) takes none of them, so neither does localfaas."""
from __future__ import annotations

import pytest
from multidict import MultiDict

from localfaas.cron import CronError, CronSchedule
from localfaas.functionconfig import DEFAULT_MAX_REPLICAS, DeployError, FunctionConfig, parse_duration
from localfaas.logs import LogQuery
from localfaas.validate import finite_number, whole_number

NOT_ASCII = ["\u0663", "\uff13", "\u00b2", "\u0663s", "1m\u0663s", "\uff15\uff10\uff10ms"]


@pytest.mark.parametrize("text", NOT_ASCII + ["", "s", "1_000s", "1.s", "nan", "inf", "3 s"])
def test_a_duration_in_other_digits_or_malformed_is_refused(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_go_style_durations_still_parse():
    assert [parse_duration(t) for t in ("30", "1.5", "10s", "1m30s", "500ms", "2h")] == [30, 1.5, 10, 90, 0.5, 7200]


@pytest.mark.parametrize("expression", ["@every \u0663s", "\u0663 * * * *", "*/\uff13 * * * *"])
def test_a_schedule_in_other_digits_is_refused(expression):
    with pytest.raises(CronError, match="invalid schedule"):
        CronSchedule.parse(expression)


def test_a_function_timeout_in_other_digits_fails_its_deploy_in_one_line():
    config = FunctionConfig(name="echo", image="img", env_vars={"exec_timeout": "\u0663\u0660s"})
    with pytest.raises(DeployError, match="exec_timeout: invalid duration"):
        config.exec_timeout()


@pytest.mark.parametrize("value", ["\u0663", "\uff13", "1_0", "3.0", " "])
def test_a_scaling_label_in_other_digits_means_the_default(value):
    config = FunctionConfig(name="echo", image="img", labels={"com.openfaas.scale.max": value})
    assert config.max_replicas() == DEFAULT_MAX_REPLICAS


@pytest.mark.parametrize("tail", ["\u0663", "\uff13", "1_0", "nan"])
def test_a_log_tail_in_other_digits_is_refused(tail):
    with pytest.raises(ValueError, match="tail"):
        LogQuery.parse(MultiDict(name="echo", tail=tail))


def test_the_number_readers_take_ascii_digits_only():
    assert [whole_number(t) for t in ("3", "-1", "+2", " 4 ")] == [3, -1, 2, 4]
    assert [finite_number(t) for t in ("3", "1.5", ".5", "1e3")] == [3, 1.5, 0.5, 1000]
    for text in NOT_ASCII + ["1_000", ""]:
        with pytest.raises(ValueError):
            whole_number(text)
    for text in NOT_ASCII + ["nan", "inf", "-inf", "1e309", "NaN"]:
        with pytest.raises(ValueError):
            finite_number(text)
