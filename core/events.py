"""The click event: the one wire contract every producer and consumer shares.

JSON object, UTF-8::

    user_id    str, 1..MAX_ID_LEN chars, required
    item_id    str, 1..MAX_ID_LEN chars, required
    ts         int, epoch milliseconds UTC, required, within [MIN_TS_MS, MAX_TS_MS]
    type       str, default "click"
    weight     float, optional, finite, within [-MAX_WEIGHT, MAX_WEIGHT]
    session_id str, optional

Parsing is hand-written over orjson rather than a pydantic model because it runs
once per message on the consumer's hot path; the rules are all here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import orjson

from core.errors import InvalidEvent

MAX_MESSAGE_BYTES = 4096  # a click is ~100 bytes; 40x headroom, and a hard stop for junk
MAX_ID_LEN = 128
# The one rule for every id, written (POST /events, the topic) or read (the
# paths of GET /recommendations/{user_id} and /items/{item_id}/similar):
# 1..MAX_ID_LEN characters, not only blanks, no "/" (an id is one path segment,
# so one with a slash could be written but never read) and no U+FFFD (what a
# decoder makes of undecodable bytes: such an id was mangled on its way in).
# The pattern is what OpenAPI documents; id_problem() says which part failed.
_BLANK = " \t\n\v\f\r"
ID_PATTERN = "^[^/\ufffd]*[^/\ufffd \t\n\v\f\r][^/\ufffd]*$"
MAX_TYPE_LEN = 32
MAX_WEIGHT = 1e6
# 1973-03-03 .. 2100-01-01 in ms. The lower bound rejects timestamps sent in
# seconds by mistake: "now" in seconds (~1.7e9) is far below 1e11 ms.
MIN_TS_MS = 100_000_000_000
MAX_TS_MS = 4_102_444_800_000
DEFAULT_TYPE = "click"


@dataclass(frozen=True, slots=True)
class ClickEvent:
    user_id: str
    item_id: str
    ts: int
    type: str = DEFAULT_TYPE
    weight: float | None = None
    session_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "user_id": self.user_id,
            "item_id": self.item_id,
            "ts": self.ts,
            "type": self.type,
        }
        if self.weight is not None:
            out["weight"] = self.weight
        if self.session_id is not None:
            out["session_id"] = self.session_id
        return out

    def encode(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def to_wire(self) -> bytes:
        """The event as it travels on the topic, or InvalidEvent if it cannot: text
        that is not valid UTF-8 (a lone surrogate, which JSON's \\u escapes allow),
        or more than the consumer accepts (``decode``'s limit)."""
        try:
            raw = self.encode()
        except orjson.JSONEncodeError:
            raise InvalidEvent(
                "not_utf8", "text that is not valid UTF-8 (a lone surrogate?)"
            ) from None
        if len(raw) > MAX_MESSAGE_BYTES:
            raise InvalidEvent("oversized", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
        return raw


def _id(obj: dict[str, Any], field: str, *, required: bool) -> str | None:
    value = obj.get(field)
    if value is None:
        if required:
            raise InvalidEvent("missing_field", field)
        return None
    if not isinstance(value, str):
        raise InvalidEvent("wrong_type", f"{field} must be a string, got {type(value).__name__}")
    problem = id_problem(value)
    if problem is not None:
        raise InvalidEvent(problem, field)
    return value


def id_problem(value: str) -> str | None:
    """What breaks the one id rule (``ID_PATTERN``), as a reason code; None if nothing."""
    if not value.strip(_BLANK):
        return "empty_field"
    if len(value) > MAX_ID_LEN:
        return "too_long"
    if "/" in value or "\ufffd" in value:
        return "bad_character"
    return None


def _short(value: object, limit: int = 24) -> str:
    """A value for an error message, cut so a huge one is never echoed back whole."""
    text = str(value) if not isinstance(value, int) or value.bit_length() < 200 else "<huge>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate(obj: Any, *, latest_ms: int | None = None) -> ClickEvent:
    """Check a decoded JSON value against the contract; raise InvalidEvent if it breaks it.

    ``latest_ms``: the latest event time accepted (now plus the allowed clock
    skew, ``future_limit_ms``). An event dated later would outweigh any number of
    real ones in the forward-decayed trending set, so it is refused.
    """
    if not isinstance(obj, dict):
        raise InvalidEvent("not_an_object", f"got {type(obj).__name__}")
    user_id = _id(obj, "user_id", required=True)
    item_id = _id(obj, "item_id", required=True)
    assert user_id is not None and item_id is not None
    ts = obj.get("ts")
    if ts is None:
        raise InvalidEvent("missing_field", "ts")
    # A number with no fraction is an integer in JSON Schema (1.6e12 included).
    if isinstance(ts, float) and ts.is_integer():
        ts = int(ts)
    # bool is an int subclass in Python; a JSON true is not a timestamp.
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise InvalidEvent("wrong_type", f"ts must be an integer, got {type(ts).__name__}")
    if not MIN_TS_MS <= ts <= MAX_TS_MS:
        raise InvalidEvent(
            "ts_out_of_range", f"ts={_short(ts)} is not epoch milliseconds in 1973..2100"
        )
    if latest_ms is not None and ts > latest_ms:
        raise InvalidEvent(
            "ts_in_future", f"ts={ts} is {ts - latest_ms} ms past the latest accepted, {latest_ms}"
        )
    etype = obj.get("type", DEFAULT_TYPE)
    if not isinstance(etype, str) or not etype or len(etype) > MAX_TYPE_LEN:
        raise InvalidEvent("wrong_type", f"type must be a non-empty string <= {MAX_TYPE_LEN}")
    weight = obj.get("weight")
    if weight is not None:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise InvalidEvent("wrong_type", "weight must be a number")
        try:
            weight = float(weight)
        except OverflowError:  # an integer too large for a float: out of range too
            raise InvalidEvent("weight_out_of_range", f"weight={_short(weight)}") from None
        if not math.isfinite(weight) or abs(weight) > MAX_WEIGHT:
            raise InvalidEvent("weight_out_of_range", f"weight={_short(weight)}")
    session_id = _id(obj, "session_id", required=False)
    return ClickEvent(user_id, item_id, ts, etype, weight, session_id)


def future_limit_ms(max_ahead_ms: int, now_ms: int | None = None) -> int:
    """The latest event time accepted now: the wall clock plus ``max_ahead_ms``.

    Measured from the wall clock, not from the stream's newest event: a replay
    of history runs far behind the wall clock and may legitimately jump days
    ahead of its own previous event, while nothing real is dated in the future.
    """
    return (int(time.time() * 1000) if now_ms is None else now_ms) + max_ahead_ms


def decode(raw: bytes | None, *, latest_ms: int | None = None) -> ClickEvent:
    """Parse one wire message. Raises InvalidEvent with a reason for anything off-contract."""
    if raw is None:
        raise InvalidEvent("empty_message", "null value")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidEvent("oversized", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("not_json", str(exc)[:200]) from None
    return validate(obj, latest_ms=latest_ms)
