"""The feedback contract: JSON records on the feedback topic (keyed by user_id) and their
validation.

- **impression**: the recommendations the shop showed, as read from `recs:{user_id}` (`items`,
  and for an intent-refreshed list `tags` and the context the model read), with the record's
  `state_version` and `model_version`.
- **action**: a click, cart or purchase of the user after an impression, with the
  `impression_id` it follows (the shop's attribution token) or without one.

`decode_feedback` either returns a record or raises `InvalidEvent` with the reason that goes to the
dead-letter topic. The log that keeps valid records is stream/feedback.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from contracts.errors import InvalidEvent
from contracts.events import MAX_ID_CHARS, check_text, decode_object, reason_of, to_epoch_ms

ACTIONS = ("click", "cart", "purchase")
MAX_ITEMS = 200


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    feedback_id: str = Field(min_length=1, max_length=160)
    """Unique per record; redeliveries are dropped by it."""
    user_id: str = Field(min_length=1, max_length=128)
    ts: int
    """Epoch ms (ISO-8601 accepted)."""

    @field_validator("user_id", "feedback_id", mode="before")
    @classmethod
    def _ids_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("ts", mode="before")
    @classmethod
    def _ts_ms(cls, value: Any) -> int:
        return to_epoch_ms(value)


class Impression(_Record):
    kind: Literal["impression"]
    impression_id: str = Field(min_length=1, max_length=160)
    items: list[str] = Field(min_length=1, max_length=MAX_ITEMS)
    """Item ids shown, in order."""
    state_version: int = Field(ge=0)
    model_version: str = Field(min_length=1, max_length=256)
    tags: list[str] = Field(default_factory=list, max_length=MAX_ITEMS)
    """The intent model's final tags, when the list came from it."""
    context_items: list[str] = Field(default_factory=list, max_length=MAX_ITEMS)
    """The items the intent model read (newest first), when the list came from it."""
    context_actions: list[str] = Field(default_factory=list, max_length=MAX_ITEMS)

    @field_validator("items", "context_items", mode="before")
    @classmethod
    def _item_ids(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value

    @field_validator("items", "context_items", "tags", "context_actions")
    @classmethod
    def _plain_texts(cls, value: list[str]) -> list[str]:
        # These reach the trainer's prompts: the same rule and cap as item ids on events.
        for text in value:
            if len(text) > MAX_ID_CHARS:
                raise ValueError(f"an entry of {len(text)} characters, at most {MAX_ID_CHARS}")
            check_text(text, "entry")
        return value


class Action(_Record):
    kind: Literal["action"]
    item_id: str = Field(min_length=1, max_length=128)
    action: Literal["click", "cart", "purchase"]
    impression_id: str | None = Field(default=None, max_length=160)

    @field_validator("item_id", mode="before")
    @classmethod
    def _item_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("item_id")
    @classmethod
    def _plain_item_id(cls, value: str) -> str:
        return check_text(value, "item_id")


def decode_feedback(raw: bytes | None, max_bytes: int = 65536) -> Impression | Action:
    """Parse and validate one feedback record, or raise InvalidEvent with the reason.

    >>> decode_feedback(b'{"kind":"action","feedback_id":"f1","user_id":7,"ts":1,"item_id":"i","action":"click"}').user_id
    '7'
    >>> decode_feedback(b'{"kind":"impression","feedback_id":"f2","user_id":"u","ts":1}')
    Traceback (most recent call last):
    ...
    contracts.errors.InvalidEvent: invalid_feedback: impression_id: Field required; items: Field required; ...
    """
    data = decode_object(raw, max_bytes)
    kind = data.get("kind")
    model = {"impression": Impression, "action": Action}.get(kind)
    if model is None:
        raise InvalidEvent(f"invalid_feedback: kind must be 'impression' or 'action', got {kind!r}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidEvent(f"invalid_feedback: {reason_of(exc)}") from None
