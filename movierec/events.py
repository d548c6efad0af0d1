"""The movie event stream's wire format, both ways: the one parser and the one formatter.

A stream line is one of three kinds (see the stream conventions):

    <time>,<userid>,GET /data/m/<movieid>/<minute>.mpg          -> WatchEvent
    <time>,<userid>,GET /rate/<movieid>=<rating>                -> RateEvent
    <time>,<userid>,recommendation request <server>, status <code>, result: <ids>, <n> ms
                                                                -> RecommendationEvent

`parse_line` never raises on bad input: anything that does not parse comes back as a
`Rejection` carrying a short machine-readable `reason` (used as a metric label and as the
quarantine key) and a human `detail`. Everything that reads or writes stream lines goes
through this module, so producers and consumers cannot drift apart.

Sizes the stream sets are bounded here, so nothing downstream scales with what one line says:
- a line is at most `LINE_MAX_BYTES` (8 KiB) of UTF-8; a longer one is quarantined as
  `line_too_long` with its first `QUARANTINE_RAW_BYTES` bytes and its length;
- a movie id is 1 to `MOVIE_ID_MAX_CHARS` (200) characters of printable ASCII other than space,
  the line's separators `,` `/` `=` and the quoting characters `"` `\\` `<` `>` `` ` ``
  (slugs are URL path segments: anything else arrives percent-encoded, e.g. `l%c3%a9on+1994`);
  a control character (a trailing NUL too) makes the line `bad_movie_id`, it is never stripped;
- every number is ASCII digits (`[0-9]`, never `\\d`, which also matches `'٣'` or `'３'`).
A line that is not UTF-8 keeps its exact bytes in the quarantine (`Rejection.raw`, base64 in
`quarantine_record`).

Owns: the event types, `parse_line`, `parse_user_id`, `is_movie_id`, the bounds above, the
rejection reasons and the quarantine record of a rejected line.
Must not touch: where events go (batches), Kafka, HTTP.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime

RATING_MIN = 1
RATING_MAX = 5
# Kafka user ids are integers; anything wider than int64 cannot be a real id.
USER_ID_MAX = 2**63 - 1
# The longest movie id accepted. Real slugs are title + year (the longest MovieLens titles give
# about 150 characters); the bound keeps every per-row string column (numpy '<U' arrays hold
# 4 bytes per character of the LONGEST id) at most 800 bytes a row, whatever the stream sends.
MOVIE_ID_MAX_CHARS = 200
# The longest line accepted, in bytes: 20 recommended ids of the longest length plus the rest
# of a recommendation line fit in 4.2 KiB.
LINE_MAX_BYTES = 8192
# How much of a rejected over-long line the quarantine keeps (with the line's full length).
QUARANTINE_RAW_BYTES = 1024

_D = "[0-9]"  # ASCII digits only: `\d` also matches other scripts' digits
_TIME = re.compile(rf"{_D}{{4}}-{_D}{{2}}-{_D}{{2}}T{_D}{{2}}:{_D}{{2}}:{_D}{{2}}(?:\.{_D}{{1,9}})?")
# A slug: `name+year`, the year may be missing, may end in '+'. Printable ASCII without space,
# the line's separators (, / =) and quoting characters (" \ < > `).
_MOVIE_CHAR = r"[-0-9A-Za-z+_.%'!()*:;&~@$?#\[\]^{}|]"
_MOVIE = _MOVIE_CHAR + f"{{1,{MOVIE_ID_MAX_CHARS}}}"
_WATCH = re.compile(r"GET /data/m/(" + _MOVIE + rf")/({_D}{{1,9}})\.mpg")
_RATE = re.compile(r"GET /rate/(" + _MOVIE + rf")=(-?{_D}{{1,9}}(?:\.{_D}{{0,9}})?)")
_RECO = re.compile(
    r"recommendation request (?P<server>[^,]*), status (?P<status>-?[0-9]{1,4}), "
    r"result: (?P<result>.*), (?P<latency>[0-9]{1,12}(?:\.[0-9]{1,9})?) ?ms"
)
_MOVIE_ONLY = re.compile(_MOVIE)
# The fast path (see `_parse_well_formed`): a whole well-formed watch or rate line in one match.
# ASCII digits only, a user id short enough to fit int64, microseconds at most, a rating 1-5.
_FAST_HEAD = r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?),([0-9]{1,18}),"
_FAST_WATCH = re.compile(_FAST_HEAD + r"GET /data/m/(" + _MOVIE + r")/([0-9]{1,9})\.mpg")
_FAST_RATE = re.compile(_FAST_HEAD + r"GET /rate/(" + _MOVIE + r")=([1-5])")


@dataclass(frozen=True, slots=True)
class WatchEvent:
    time: datetime
    user_id: int
    movie_id: str
    minute: int

    def to_line(self) -> str:
        return f"{format_time(self.time)},{self.user_id},GET /data/m/{self.movie_id}/{self.minute}.mpg"


@dataclass(frozen=True, slots=True)
class RateEvent:
    time: datetime
    user_id: int
    movie_id: str
    rating: int

    def to_line(self) -> str:
        return f"{format_time(self.time)},{self.user_id},GET /rate/{self.movie_id}={self.rating}"


@dataclass(frozen=True, slots=True)
class RecommendationEvent:
    time: datetime
    user_id: int
    server: str
    status: int
    movie_ids: tuple[str, ...]  # empty unless status is 200
    error: str | None  # the caller's error text when status is not 200
    latency_ms: float

    def to_line(self) -> str:
        result = ", ".join(self.movie_ids) if self.status == 200 else (self.error or "")
        latency = f"{self.latency_ms:g}" if self.latency_ms % 1 else f"{int(self.latency_ms)}"
        return (
            f"{format_time(self.time)},{self.user_id},recommendation request {self.server}, "
            f"status {self.status}, result: {result}, {latency} ms"
        )


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str  # short code: quarantine key and metric label
    detail: str  # one line for a human
    line: str  # the raw line as text, kept so nothing is lost (escaped where it was not UTF-8)
    raw: bytes | None = None  # the exact bytes, when `line` is not them (not UTF-8, or cut short)
    size: int | None = None  # the line's length in bytes, when `line` was cut short

    def quarantine_record(self) -> dict:
        """The quarantine's JSON record (the batch adds the offset): reason, detail, line, and for
        a line that is not UTF-8 or was cut short its exact bytes (`line_b64`) and length."""
        record: dict = {"reason": self.reason, "detail": self.detail, "line": self.line}
        if self.raw is not None:
            record["line_b64"] = base64.b64encode(self.raw).decode("ascii")
        if self.size is not None:
            record["line_bytes"] = self.size
            record["truncated"] = True
        return record


Event = WatchEvent | RateEvent | RecommendationEvent
ParseResult = WatchEvent | RateEvent | RecommendationEvent | Rejection

# Every reason `parse_line` can give, so metrics can be pre-declared and documented.
REJECTION_REASONS = (
    "not_utf8",
    "empty",
    "truncated",
    "bad_time",
    "bad_user_id",
    "bad_movie_id",
    "bad_minute",
    "bad_rating",
    "rating_out_of_range",
    "bad_recommendation",
    "unknown_kind",
    "line_too_long",
)


def format_time(t: datetime) -> str:
    """Stream time format: ISO seconds, with microseconds only when present."""
    return t.isoformat(timespec="microseconds" if t.microsecond else "seconds")


def is_movie_id(text: str) -> bool:
    """A movie id as the stream may carry it: 1 to MOVIE_ID_MAX_CHARS characters of the slug set."""
    return bool(text) and len(text) <= MOVIE_ID_MAX_CHARS and _MOVIE_ONLY.fullmatch(text) is not None


def parse_user_id(text: str) -> int | None:
    """The one rule for a valid user id (also used by the recommend API): a non-negative int64."""
    if not text or len(text) > 19 or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= USER_ID_MAX else None


def _parse_time(text: str) -> datetime | None:
    if not _TIME.fullmatch(text):
        return None
    frac = text.find(".")
    if frac != -1 and len(text) - frac - 1 > 6:
        text = text[: frac + 7]  # datetime holds microseconds; finer digits carry no meaning here
    try:
        return datetime.fromisoformat(text)
    except ValueError:  # e.g. month 13
        return None


def parse_line(raw: str | bytes) -> ParseResult:
    """Parse one stream line into a typed event, or a Rejection saying why not."""
    if isinstance(raw, bytes):
        if len(raw) > LINE_MAX_BYTES:
            return _too_long(raw)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return Rejection("not_utf8", f"line is not valid UTF-8 (byte {e.start})",
                             raw.decode("utf-8", "backslashreplace"), raw=raw)
    else:
        line = raw
        if len(line) > LINE_MAX_BYTES // 4 and len(line.encode("utf-8", "surrogatepass")) > LINE_MAX_BYTES:
            return _too_long(line.encode("utf-8", "surrogatepass"))
    line = line.rstrip("\r\n")
    return _parse_well_formed(line) or _parse_checked(line)


def _too_long(raw: bytes) -> Rejection:
    head = raw[:QUARANTINE_RAW_BYTES]
    return Rejection("line_too_long", f"line is {len(raw)} bytes: at most {LINE_MAX_BYTES}",
                     head.decode("utf-8", "backslashreplace"), raw=head, size=len(raw))


def _parse_well_formed(line: str) -> WatchEvent | RateEvent | None:
    """The common case, fast: a well-formed watch or rate line in one regex match instead of the
    field-by-field checks of `_parse_checked` (about 3x faster). It accepts a strict subset of
    what `_parse_checked` accepts and gives the same event; anything else (including every bad
    line) returns None and goes the checked way, which also says what is wrong."""
    m = _FAST_WATCH.fullmatch(line)
    kind = WatchEvent
    if m is None:
        m = _FAST_RATE.fullmatch(line)
        kind = RateEvent
        if m is None:
            return None
    time_text, user_text, movie_id, number = m.groups()
    try:
        time = datetime.fromisoformat(time_text)
    except ValueError:  # e.g. month 13: the checked path names it
        return None
    return kind(time, int(user_text), movie_id, int(number))


def _parse_checked(line: str) -> ParseResult:
    """Every line, field by field: the event, or a Rejection saying why not."""
    if not line.strip():
        return Rejection("empty", "empty line", line)

    parts = line.split(",", 2)
    if len(parts) < 3:
        return Rejection("truncated", f"expected 3 comma-separated fields, got {len(parts)}", line)
    time_text, user_text, rest = parts

    time = _parse_time(time_text)
    if time is None:
        return Rejection("bad_time", f"bad timestamp {time_text[:40]!r}", line)
    user_id = parse_user_id(user_text)
    if user_id is None:
        return Rejection("bad_user_id", f"bad user id {user_text[:40]!r}", line)

    if rest.startswith("GET /data/m/"):
        m = _WATCH.fullmatch(rest)
        if m is None:
            return _reject_request(rest, line, "watch")
        return WatchEvent(time, user_id, m.group(1), int(m.group(2)))

    if rest.startswith("GET /rate/"):
        m = _RATE.fullmatch(rest)
        if m is None:
            return _reject_request(rest, line, "rate")
        rating_text = m.group(2)
        if not rating_text.lstrip("-").isascii() or not rating_text.lstrip("-").isdigit():
            return Rejection("bad_rating", f"rating {rating_text!r} is not a whole number", line)
        rating = int(rating_text)
        if not RATING_MIN <= rating <= RATING_MAX:
            return Rejection(
                "rating_out_of_range", f"rating {rating} outside {RATING_MIN}..{RATING_MAX}", line
            )
        return RateEvent(time, user_id, m.group(1), rating)

    if rest.startswith("recommendation request "):
        m = _RECO.fullmatch(rest)
        if m is None:
            return Rejection("bad_recommendation", "recommendation line does not match the format", line)
        status = int(m.group("status"))
        result = m.group("result")
        movie_ids: tuple[str, ...] = ()
        error = None
        if status == 200:
            movie_ids = tuple(x for x in result.split(", ") if x)
            if not all(is_movie_id(x) for x in movie_ids):
                return Rejection("bad_recommendation", "result holds a malformed movie id", line)
        else:
            error = result
        return RecommendationEvent(
            time, user_id, m.group("server"), status, movie_ids, error, float(m.group("latency"))
        )

    return Rejection("unknown_kind", f"unknown request {rest[:40]!r}", line)


def _reject_request(rest: str, line: str, kind: str) -> Rejection:
    """Say precisely what is wrong with a watch or rate request that did not match."""
    path = rest[4:]  # after "GET "
    segments = path.split("/")
    if kind == "watch":
        # /data/m/<movie>/<minute>.mpg -> ['', 'data', 'm', movie, 'N.mpg']
        if len(segments) < 5 or ".mpg" not in segments[4]:
            return Rejection("truncated", "watch request is incomplete", line)
        if not is_movie_id(segments[3]):
            return Rejection("bad_movie_id", f"bad movie id {segments[3][:60]!r}", line)
        return Rejection("bad_minute", f"bad minute {segments[4][:20]!r}", line)
    movie, sep, rating = path[len("/rate/"):].partition("=")
    if not sep:
        return Rejection("truncated", "rate request has no '=<rating>'", line)
    if not is_movie_id(movie):
        return Rejection("bad_movie_id", f"bad movie id {movie[:60]!r}", line)
    return Rejection("bad_rating", f"rating {rating[:20]!r} is not a number", line)
