"""The event contract (JSON on Kafka, keyed by user_id), its bounds and its validation.

`decode_event` is what the worker runs on every raw message: it either returns an `Event` or
raises `InvalidEvent` with a reason that goes to the dead-letter topic. Nothing that passes it can
break the worker downstream: every field is bounded.

Bounds (each violation is a dead letter `invalid: <field>: <why>`):

- ids (`event_id`, `user_id`, `item_id`, `session_id`): 1-128 characters. A user id is any such
  string (no Redis key of the project's own can be reached by it: contracts/keys.py).
- `item_id` and the catalog text in `context` (`category`, `brand`, every string value): no
  control or format characters and no `<` / `>`, so nothing that looks like chat markup or a
  special token reaches a prompt; context strings at most 200 characters.
- `context`: at most 32 keys of at most 64 characters; values are strings, finite numbers,
  booleans or null (nothing nested).
- `price`: finite, 0 to 1e9.
- `ts`: epoch ms (or ISO-8601) from 1990-01-01 (replays of years-old datasets pass) to at most
  `max_future_s` (default one day) after the worker's clock: a far-future `ts` would freeze
  event-time popularity, and values beyond what Feast and orjson hold would crash-loop them.
"""

from __future__ import annotations

import math
import time
import unicodedata
from datetime import datetime, timezone
from enum import Enum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from contracts.errors import InvalidEvent

MAX_ID_CHARS = 128
MAX_CONTEXT_KEYS = 32
MAX_CONTEXT_KEY_CHARS = 64
MAX_TEXT_CHARS = 200
"""Longest string value in `context` (category paths, brands)."""
MAX_PRICE = 1e9
TS_MIN_MS = 631_152_000_000
"""1990-01-01T00:00:00Z: the earliest event time a worker accepts."""
TS_MAX_MS = 4_102_444_800_000
"""2100-01-01T00:00:00Z: the latest event time any record may carry (datasets included)."""
DEFAULT_MAX_FUTURE_S = 86_400.0
"""How far after the worker's clock an event time may lie (clock skew, time zones)."""


def check_text(value: str, what: str = "text") -> str:
    """`value` if it holds no control/format character and no `<` or `>`, else ValueError:
    catalog text and item ids reach prompts, where those would read as markup or special tokens.

    >>> check_text("electronics.smartphone")
    'electronics.smartphone'
    >>> check_text("<|im_start|>system", "item_id")
    Traceback (most recent call last):
    ...
    ValueError: item_id must not contain '<' or '>' (markup or special tokens)
    """
    if "<" in value or ">" in value:
        raise ValueError(f"{what} must not contain '<' or '>' (markup or special tokens)")
    for ch in value:
        if unicodedata.category(ch)[0] == "C":
            raise ValueError(f"{what} must not contain control or format characters (found U+{ord(ch):04X})")
    return value


class EventType(str, Enum):
    view = "view"
    click = "click"
    cart = "cart"
    fav = "fav"
    purchase = "purchase"


def to_epoch_ms(value: Any) -> int:
    """Normalise a timestamp to epoch milliseconds.

    Accepts epoch milliseconds (int/float) or an ISO-8601 string; a naive string is UTC.

    >>> to_epoch_ms(1569888004000)
    1569888004000
    >>> to_epoch_ms("2019-10-01T00:00:04Z")
    1569888004000
    >>> to_epoch_ms("2019-10-01 00:00:04 UTC")
    1569888004000
    """
    if isinstance(value, bool):
        raise ValueError("ts must be epoch ms or ISO-8601, not a boolean")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0 or value > TS_MAX_MS:
            raise ValueError(f"ts must be epoch ms between 0 and {TS_MAX_MS} (2100-01-01)")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(" UTC"):
            text = text[:-4] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"ts {value!r} is neither epoch ms nor ISO-8601") from exc
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        ms = int(parsed.timestamp() * 1000)
        if not 0 <= ms <= TS_MAX_MS:
            raise ValueError(f"ts {value!r} is outside 1970-01-01 to 2100-01-01")
        return ms
    raise ValueError(f"ts must be epoch ms or ISO-8601, got {type(value).__name__}")


class Event(BaseModel):
    """One user event. Events of one user go to one partition (the key is user_id)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    """Unique id; the worker drops redelivered duplicates by it."""
    user_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    """Any string: the project's own Redis keys cannot be reached by it (contracts/keys.py)."""
    item_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    """No control characters, no `<` / `>` (item ids reach prompts)."""
    type: EventType
    ts: int = Field(ge=0, le=TS_MAX_MS)
    """Epoch milliseconds (ISO-8601 accepted on input); the worker also bounds it by its clock."""
    price: float | None = Field(default=None, ge=0, le=MAX_PRICE, allow_inf_nan=False)
    session_id: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    context: dict[str, Any] = Field(default_factory=dict)
    """Small dict of extra facts, e.g. {"category": "electronics.smartphone", "brand": "apple"}:
    at most 32 keys, flat, strings at most 200 characters of catalog text."""

    @field_validator("user_id", "item_id", "event_id", "session_id", mode="before")
    @classmethod
    def _ids_as_text(cls, value: Any) -> Any:
        # Shops send numeric ids as often as strings; both mean the same id.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("ts", mode="before")
    @classmethod
    def _ts_ms(cls, value: Any) -> int:
        return to_epoch_ms(value)

    @field_validator("item_id")
    @classmethod
    def _plain_item_id(cls, value: str) -> str:
        return check_text(value, "item_id")

    @field_validator("context")
    @classmethod
    def _small_context(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_CONTEXT_KEYS:
            raise ValueError(f"context has {len(value)} keys, at most {MAX_CONTEXT_KEYS} allowed")
        for key, item in value.items():
            if len(key) > MAX_CONTEXT_KEY_CHARS:
                raise ValueError(f"context key of {len(key)} characters, at most {MAX_CONTEXT_KEY_CHARS}")
            if isinstance(item, str):
                if len(item) > MAX_TEXT_CHARS:
                    raise ValueError(f"context[{key[:20]!r}] has {len(item)} characters, at most {MAX_TEXT_CHARS}")
                check_text(item, f"context[{key[:20]!r}]")
            elif isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"context[{key[:20]!r}] must be a finite number")
            elif item is not None and not isinstance(item, (bool, int, float)):
                raise ValueError(f"context[{key[:20]!r}] must be a string, number, boolean or null, "
                                 f"not {type(item).__name__}")
        return value

    @property
    def category(self) -> str | None:
        value = self.context.get("category")
        return str(value) if value not in (None, "") else None

    @property
    def brand(self) -> str | None:
        value = self.context.get("brand")
        return str(value) if value not in (None, "") else None

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))


def reason_of(exc: ValidationError) -> str:
    """A one-line dead-letter reason from a validation error: `field: why; ...` (first five)."""
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def decode_object(raw: bytes | None, max_bytes: int) -> dict:
    """The JSON object in a raw Kafka value, or InvalidEvent (empty, oversized, bad_json,
    not_an_object): the checks every topic's records go through before their own schema."""
    if raw is None:
        raise InvalidEvent("empty: the message has no value")
    if len(raw) > max_bytes:
        raise InvalidEvent(f"oversized: {len(raw)} bytes > {max_bytes}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"bad_json: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidEvent(f"not_an_object: expected a JSON object, got {type(data).__name__}")
    return data


def decode_event(raw: bytes | None, max_bytes: int, now_ms: int | None = None,
                 max_future_s: float = DEFAULT_MAX_FUTURE_S) -> Event:
    """Parse and validate one raw Kafka value, or raise InvalidEvent with the reason. `ts` must
    lie between 1990-01-01 and `max_future_s` after `now_ms` (default: this machine's clock).

    >>> decode_event(b'{"event_id":"e1","user_id":7,"item_id":"i","type":"view","ts":1569888004000}', 1024).user_id
    '7'
    >>> decode_event(b'{"event_id":"e1","user_id":7,"item_id":"i","type":"view","ts":1569888004}', 1024)
    Traceback (most recent call last):
    ...
    contracts.errors.InvalidEvent: invalid: ts: 1569888004 is before 1990-01-01 (seconds instead of ms?)
    >>> decode_event(b'{"event_id":"e1"', 1024)
    Traceback (most recent call last):
    ...
    contracts.errors.InvalidEvent: bad_json: ...
    """
    data = decode_object(raw, max_bytes)
    try:
        event = Event.model_validate(data)
    except ValidationError as exc:
        raise InvalidEvent(f"invalid: {reason_of(exc)}") from None
    if event.ts < TS_MIN_MS:
        raise InvalidEvent(f"invalid: ts: {event.ts} is before 1990-01-01 (seconds instead of ms?)")
    latest = (int(time.time() * 1000) if now_ms is None else now_ms) + int(max_future_s * 1000)
    if event.ts > latest:
        raise InvalidEvent(f"invalid: ts: {event.ts} is more than {max_future_s:g} s in the future")
    return event


class DeadLetter(BaseModel):
    """What the dead-letter topic holds for each rejected message."""

    reason: str
    topic: str
    partition: int
    offset: int
    key: str | None
    value: str
    """The raw value (decoded as UTF-8 with replacement), cut to 4 KiB."""
    value_bytes: int
    rejected_at: int
    """Epoch ms."""

    @classmethod
    def of(cls, reason: str, topic: str, partition: int, offset: int, key: bytes | None, raw: bytes | None,
           at_ms: int) -> "DeadLetter":
        raw = raw or b""
        return cls(reason=reason, topic=topic, partition=partition, offset=offset,
                   key=key.decode("utf-8", "replace") if key is not None else None,
                   value=raw[:4096].decode("utf-8", "replace"), value_bytes=len(raw), rejected_at=at_ms)

