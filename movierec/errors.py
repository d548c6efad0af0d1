"""One error taxonomy for the whole product: every error the core or an adapter raises on
purpose is a subclass of `MovierecError`, and its class says what a caller should do.

- `Unavailable` (HTTP 503): a dependency (broker, store, gateway, Prometheus, SMTP) failed or is
  not ready yet; the same call later may succeed. Messages name the dependency.
- `Rejected` (HTTP 400): the input, the data or the configuration is wrong; retrying the same
  thing will not help. `NotFound` (404) is a rejected reference to something that does not exist.
  `ConfigError` is a rejected setting (the message names the environment variable).
- `Conflict` (HTTP 409): the call is valid but the system is busy with something that excludes it
  (a running release, a held ingest lease).

Handlers map errors to replies with `http_status(error)` only, so a new error type cannot turn
into an unhandled 500: anything else is a bug and is reported as one.

Owns: the classes and their HTTP status. Must not touch: HTTP itself (the status is a number).
"""
from __future__ import annotations


class MovierecError(Exception):
    """Base of every deliberate error; its message is one line."""

    status = 500

    def __str__(self) -> str:
        text = super().__str__()
        return text.splitlines()[0] if text else type(self).__name__


class Unavailable(MovierecError):
    """A dependency failed or is not ready; try again later."""

    status = 503


class Rejected(MovierecError):
    """Bad input, data or configuration; the same call will fail again."""

    status = 400


class NotFound(Rejected):
    status = 404


class ConfigError(Rejected):
    """A setting is malformed or out of range; the message names the variable."""


class Conflict(MovierecError):
    """Valid, but excluded by something already running (the message says what holds it)."""

    status = 409


def http_status(error: BaseException) -> int:
    """The status a handler answers for `error`: its class's, or 500 for anything unexpected."""
    return error.status if isinstance(error, MovierecError) else 500


def one_line(error: BaseException) -> str:
    """`Type: first line of the message`, for error bodies and logs."""
    text = str(error)
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
