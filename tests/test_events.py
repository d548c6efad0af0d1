"""The stream parser: typed events for good lines, a reason for every bad one."""
from datetime import datetime

import pytest

from movierec.events import (
    REJECTION_REASONS,
    RateEvent,
    RecommendationEvent,
    Rejection,
    WatchEvent,
    parse_line,
    parse_user_id,
)


def test_watch_line_becomes_a_watch_event():
    event = parse_line("2019-09-05T19:27:01,614,GET /data/m/brides+2004/20.mpg")
    assert event == WatchEvent(datetime(2019, 9, 5, 19, 27, 1), 614, "brides+2004", 20)


def test_rate_line_becomes_a_rate_event():
    event = parse_line("2019-09-05T19:27:01,118106,GET /rate/grumpier+old+men+1995=3")
    assert event == RateEvent(datetime(2019, 9, 5, 19, 27, 1), 118106, "grumpier+old+men+1995", 3)


def test_successful_recommendation_line_keeps_result_ids_and_latency():
    line = (
        "2022-02-08T12:02:38.164729,141977,recommendation request host:8082, status 200, "
        "result: mona+lisa+1986, interstellar+2014, our+paradise+2011, 89 ms"
    )
    event = parse_line(line)
    assert isinstance(event, RecommendationEvent)
    assert event.time == datetime(2022, 2, 8, 12, 2, 38, 164729)
    assert event.user_id == 141977
    assert event.server == "host:8082"
    assert event.status == 200
    assert event.movie_ids == ("mona+lisa+1986", "interstellar+2014", "our+paradise+2011")
    assert event.error is None
    assert event.latency_ms == 89


def test_failed_recommendation_line_keeps_the_error_text():
    line = (
        "2022-02-08T12:02:38,284507,recommendation request host:8082, status 0, result: "
        "java.util.concurrent.TimeoutException: Request timeout to host:8082 after 800 ms, 815 ms"
    )
    event = parse_line(line)
    assert isinstance(event, RecommendationEvent)
    assert event.status == 0
    assert event.movie_ids == ()
    assert event.error.startswith("java.util.concurrent.TimeoutException: Request timeout")
    assert event.latency_ms == 815


@pytest.mark.parametrize(
    "time_text, expected",
    [
        ("2019-09-05T19:27:01", datetime(2019, 9, 5, 19, 27, 1)),
        ("2019-09-05T19:27:01.5", datetime(2019, 9, 5, 19, 27, 1, 500000)),
        ("2019-09-05T19:27:01.123456", datetime(2019, 9, 5, 19, 27, 1, 123456)),
        ("2019-09-05T19:27:01.123456789", datetime(2019, 9, 5, 19, 27, 1, 123456)),
    ],
)
def test_timestamps_with_and_without_fractions_parse(time_text, expected):
    assert parse_line(f"{time_text},1,GET /rate/heat+1995=4").time == expected


@pytest.mark.parametrize(
    "slug",
    ["the+matrix+1999", "amelie", "the+end+", "x", "l%c3%a9on+1994", "9+1%2f2+weeks+1986", "se7en+1995"],
)
def test_odd_but_valid_slugs_are_accepted(slug):
    assert parse_line(f"2020-01-01T00:00:00,7,GET /data/m/{slug}/3.mpg").movie_id == slug


@pytest.mark.parametrize(
    "line, reason",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("2019-09-05T19:27:01", "truncated"),
        ("2019-09-05T19:27:01,614", "truncated"),
        ("2019-09-05T19:27:01,614,GET /data/m/brides+2004/", "truncated"),
        ("2019-09-05T19:27:01,614,GET /data/m/brides+2004", "truncated"),
        ("2019-09-05T19:27:01,614,GET /rate/brides+2004", "truncated"),
        ("2019-13-05T19:27:01,614,GET /rate/brides+2004=3", "bad_time"),
        ("05/09/2019 19:27,614,GET /rate/brides+2004=3", "bad_time"),
        ("2019-09-05 19:27:01,614,GET /rate/brides+2004=3", "bad_time"),
        ("2019-09-05T19:27:01,abc,GET /rate/brides+2004=3", "bad_user_id"),
        ("2019-09-05T19:27:01,-5,GET /rate/brides+2004=3", "bad_user_id"),
        ("2019-09-05T19:27:01,,GET /rate/brides+2004=3", "bad_user_id"),
        ("2019-09-05T19:27:01,99999999999999999999,GET /rate/brides+2004=3", "bad_user_id"),
        ("2019-09-05T19:27:01,614,GET /rate/brides+2004=0", "rating_out_of_range"),
        ("2019-09-05T19:27:01,614,GET /rate/brides+2004=6", "rating_out_of_range"),
        ("2019-09-05T19:27:01,614,GET /rate/brides+2004=-1", "rating_out_of_range"),
        ("2019-09-05T19:27:01,614,GET /rate/brides+2004=3.5", "bad_rating"),
        ("2019-09-05T19:27:01,614,GET /rate/brides+2004=five", "bad_rating"),
        ("2019-09-05T19:27:01,614,GET /rate/=3", "bad_movie_id"),
        ("2019-09-05T19:27:01,614,GET /rate/brides 2004=3", "bad_movie_id"),
        ("2019-09-05T19:27:01,614,GET /data/m//20.mpg", "bad_movie_id"),
        ("2019-09-05T19:27:01,614,GET /data/m/brides+2004/x.mpg", "bad_minute"),
        ("2019-09-05T19:27:01,614,GET /data/m/brides+2004/20.mpg,extra", "bad_minute"),
        ("2019-09-05T19:27:01,614,recommendation request host:8082, status 200", "bad_recommendation"),
        ("2019-09-05T19:27:01,614,recommendation request h, status 200, result: a b, 3 ms", "bad_recommendation"),
        ("2019-09-05T19:27:01,614,POST /login", "unknown_kind"),
    ],
)
def test_garbage_is_rejected_with_its_reason(line, reason):
    result = parse_line(line)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert result.reason in REJECTION_REASONS
    assert result.line == line
    assert result.detail and "\n" not in result.detail


def test_invalid_utf8_bytes_are_rejected_not_raised():
    result = parse_line(b"2019-09-05T19:27:01,614,GET /rate/caf\xe9+2004=3")
    assert isinstance(result, Rejection) and result.reason == "not_utf8"


def test_bytes_and_trailing_newlines_are_accepted():
    assert parse_line(b"2019-09-05T19:27:01,614,GET /rate/heat+1995=5\r\n").rating == 5


@pytest.mark.parametrize(
    "line",
    [
        "2019-09-05T19:27:01,614,GET /data/m/brides+2004/20.mpg",
        "2019-09-05T19:27:01.250000,118106,GET /rate/grumpier+old+men+1995=3",
        "2022-02-08T12:02:38.164729,141977,recommendation request host:8082, status 200, result: a+1, b+, 89 ms",
        "2022-02-08T12:02:38,7,recommendation request host:8082, status 0, result: timeout, 801 ms",
    ],
)
def test_formatting_an_event_gives_back_the_line(line):
    assert parse_line(line).to_line() == line


def test_user_id_rule_accepts_only_non_negative_int64():
    assert parse_user_id("0") == 0
    assert parse_user_id("9223372036854775807") == 2**63 - 1
    for bad in ("", "9223372036854775808", "-1", "1.0", "１２", " 12", "0x10"):
        assert parse_user_id(bad) is None
