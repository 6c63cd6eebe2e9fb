"""The event contract (JSON on Kafka, keyed by user_id) and its validation.

`decode_event` is what the worker runs on every raw message: it either returns an `Event` or
raises `InvalidEvent` with a reason that goes to the dead-letter topic.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stream.errors import InvalidEvent

MAX_CONTEXT_KEYS = 32


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
        if value < 0:
            raise ValueError("ts must not be negative")
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
        return int(parsed.timestamp() * 1000)
    raise ValueError(f"ts must be epoch ms or ISO-8601, got {type(value).__name__}")


class Event(BaseModel):
    """One user event. Events of one user go to one partition (the key is user_id)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: str = Field(min_length=1, max_length=128)
    """Unique id; the worker drops redelivered duplicates by it."""
    user_id: str = Field(min_length=1, max_length=128)
    item_id: str = Field(min_length=1, max_length=128)
    type: EventType
    ts: int
    """Epoch milliseconds (ISO-8601 accepted on input)."""
    price: float | None = Field(default=None, ge=0)
    session_id: str | None = Field(default=None, max_length=128)
    context: dict[str, Any] = Field(default_factory=dict)
    """Small dict of extra facts, e.g. {"category": "electronics.smartphone", "brand": "apple"}."""

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

    @field_validator("context")
    @classmethod
    def _small_context(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_CONTEXT_KEYS:
            raise ValueError(f"context has {len(value)} keys, at most {MAX_CONTEXT_KEYS} allowed")
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


def _reason(exc: ValidationError) -> str:
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


def decode_event(raw: bytes | None, max_bytes: int) -> Event:
    """Parse and validate one raw Kafka value, or raise InvalidEvent with the reason.

    >>> decode_event(b'{"event_id":"e1","user_id":7,"item_id":"i","type":"view","ts":1}', 1024).user_id
    '7'
    >>> decode_event(b'{"event_id":"e1"', 1024)
    Traceback (most recent call last):
    ...
    stream.errors.InvalidEvent: bad_json: ...
    """
    data = decode_object(raw, max_bytes)
    try:
        return Event.model_validate(data)
    except ValidationError as exc:
        raise InvalidEvent(f"invalid: {_reason(exc)}") from None


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

