"""The one retry helper (movierec/adapters/retry.py): how often, how long, and what the last error
says, decided once for every adapter. No sleeping: the waits are recorded."""
from __future__ import annotations

import pytest

from movierec.adapters.gateway import GatewayError
from movierec.adapters.retry import retry
from movierec.errors import Conflict, NotFound, Rejected, Unavailable


class Flaky:
    """Fails with `errors` in turn, then answers "ok"; counts the calls."""

    def __init__(self, *errors: BaseException):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_a_call_that_recovers_is_retried_with_backoff_doubling():
    waits: list[float] = []
    call = Flaky(ConnectionRefusedError("refused"), TimeoutError("slow"))
    assert retry(call, what="svc http://127.0.0.1:1", attempts=4, backoff_s=0.25, sleep=waits.append) == "ok"
    assert call.calls == 3 and waits == [0.25, 0.5]


def test_after_the_last_attempt_one_line_names_the_endpoint_the_error_and_the_attempts():
    waits: list[float] = []
    call = Flaky(*(ConnectionRefusedError(f"refused #{n}\nsecond line") for n in range(3)))
    with pytest.raises(Unavailable) as raised:
        retry(call, what="prometheus http://127.0.0.1:9", attempts=3, backoff_s=0.1, sleep=waits.append)
    assert str(raised.value) == "prometheus http://127.0.0.1:9: ConnectionRefusedError: refused #2 (after 3 attempts)"
    assert call.calls == 3 and waits == [0.1, 0.2]  # no wait after the last attempt
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)


def test_a_client_librarys_long_wrapper_is_cut_to_the_reason():
    wrapped = ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: "
                              "/function/release/status (Caused by NewConnectionError(\"HTTPConnection(host="
                              "'127.0.0.1', port=1): Failed to establish a new connection: [Errno 111] Connection "
                              "refused\"))")
    with pytest.raises(Unavailable) as raised:
        retry(Flaky(wrapped), what="gateway http://127.0.0.1:1", attempts=1)
    assert str(raised.value) == "gateway http://127.0.0.1:1: ConnectionError: [Errno 111] Connection refused " \
                                "(after 1 attempts)"


def test_unavailable_raised_by_the_call_is_retried_and_its_message_kept():
    call = Flaky(Unavailable("HTTP 503"), Unavailable("HTTP 502"))
    with pytest.raises(Unavailable, match=r"^gateway http://g: PUT /x: HTTP 502 \(after 2 attempts\)$"):
        retry(call, what="gateway http://g: PUT /x", attempts=2, sleep=lambda s: None)


@pytest.mark.parametrize("deliberate", [Rejected("bad query"), NotFound("no such function"), Conflict("busy")])
def test_deliberate_errors_pass_through_at_once(deliberate):
    call = Flaky(deliberate)
    with pytest.raises(type(deliberate)) as raised:
        retry(call, what="svc", attempts=5, sleep=lambda s: pytest.fail("must not wait"))
    assert raised.value is deliberate and call.calls == 1


def test_errors_outside_retry_on_pass_through_at_once():
    call = Flaky(KeyError("a bug, not an outage"))
    with pytest.raises(KeyError):
        retry(call, what="svc", attempts=5, retry_on=(OSError,), sleep=lambda s: pytest.fail("must not wait"))
    assert call.calls == 1


def test_the_final_error_is_the_adapters_own_unavailable_class():
    with pytest.raises(GatewayError, match=r"^gateway http://g: OSError: down \(after 1 attempts\)$") as raised:
        retry(Flaky(OSError("down")), what="gateway http://g", attempts=1, error=GatewayError, sleep=lambda s: None)
    assert raised.value.status == 503


def test_at_least_one_attempt_is_made():
    call = Flaky()
    assert retry(call, what="svc", attempts=0) == "ok" and call.calls == 1
