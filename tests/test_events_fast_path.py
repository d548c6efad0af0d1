"""parse_line's fast path for well-formed watch and rate lines gives exactly what the checked,
field-by-field path gives, on good lines, near misses and random mutations."""
from __future__ import annotations

import random

import pytest

from movierec.events import _parse_checked, _parse_well_formed, parse_line

GOOD = [
    "2019-09-05T19:27:01,614,GET /data/m/brides+2004/20.mpg",
    "2019-09-05T19:27:01,118106,GET /rate/grumpier+old+men+1995=3",
    "2019-09-05T19:27:01.5,7,GET /rate/heat+1995=5",
    "2019-09-05T19:27:01.123456,0,GET /data/m/l%c3%a9on+1994/0.mpg",
    "2024-02-29T23:59:59,999999999999999999,GET /data/m/the+end+/123456789.mpg",
    "2020-01-01T00:00:00,007,GET /data/m/a/0003.mpg",
]
NEAR_MISSES = [
    "2019-09-05T19:27:01.1234567,5,GET /rate/x=3",  # finer than microseconds
    "2019-13-05T19:27:01,614,GET /rate/brides+2004=3",  # month 13
    "2019-02-30T19:27:01,614,GET /data/m/a/1.mpg",  # no such day
    "2019-09-05T19:27:01,9223372036854775807,GET /rate/a=3",  # largest user id, 19 digits
    "2019-09-05T19:27:01,9223372036854775808,GET /rate/a=3",  # one too many
    "2019-09-05T19:27:01,٦١٤,GET /rate/a=3",  # non-ASCII digits
    "٢٠١٩-09-05T19:27:01,614,GET /rate/a=3",
    "2019-09-05T19:27:01,614,GET /data/m/a/٣.mpg",
    "2019-09-05T19:27:01,614,GET /rate/a=05",
    "2019-09-05T19:27:01,614,GET /rate/a=3.0",
    "2019-09-05T19:27:01,614,GET /rate/a=0",
    "2019-09-05T19:27:01,614,GET /rate/a=6",
    "2019-09-05T19:27:01,614,GET /rate/a\u00a0b=3",  # a no-break space is whitespace
    "2019-09-05T19:27:01,614,GET /data/m/a/1234567890.mpg",
    "2019-09-05T19:27:01,614,GET /data/m/a/1.mpg ",
    "2019-09-05T19:27:01,614,GET /data/m/a/1.mpg\r\n",
    "2019-09-05 19:27:01,614,GET /rate/a=3",
    "2019-09-05T19:27:01+00:00,614,GET /rate/a=3",
    "2019-09-05T19:27:01,614,GET /rate/a=3,",
]


def checked(line: str):
    return _parse_checked(line.rstrip("\r\n"))


@pytest.mark.parametrize("line", GOOD)
def test_well_formed_lines_take_the_fast_path_and_give_the_checked_result(line):
    assert _parse_well_formed(line) is not None
    assert parse_line(line) == checked(line)
    assert parse_line(line.encode()) == checked(line)


@pytest.mark.parametrize("line", NEAR_MISSES)
def test_near_misses_give_the_checked_result(line):
    assert parse_line(line) == checked(line)


def test_random_mutations_of_good_lines_give_the_checked_result():
    rng = random.Random(20240305)
    alphabet = "0123456789-:T.,+=/ \u00a0\u0663xmpgGET"
    for _ in range(20_000):
        chars = list(rng.choice(GOOD))
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(chars))
            op = rng.random()
            if op < 0.4:
                chars[i] = rng.choice(alphabet)
            elif op < 0.7:
                chars.insert(i, rng.choice(alphabet))
            else:
                del chars[i]
        line = "".join(chars)
        assert parse_line(line) == checked(line), line
