"""Typed records of what reasoning produces: the recommendations stored at recs:{user_id}.

`Recommendations` is the contract readers parse. Reasoners build the same shape as plain dicts
with `recommendations_payload` on the hot path (a refresh writes 100 items per user; building a
validated model per item costs more than the ranking), and the tests check that every payload
the worker writes parses as `Recommendations`.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field

from contracts.text import MAX_EXPLANATION_CHARS, MAX_TAG_CHARS, is_plain


def _plain(limit: int, what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not is_plain(value, limit):
            raise ValueError(f"{what} must be plain text of at most {limit} characters (no markup, "
                             f"links or control characters): {value[:80]!r}")
        return value
    return AfterValidator(check)


PlainTag = Annotated[str, _plain(MAX_TAG_CHARS, "a tag or persona")]
PlainExplanation = Annotated[str, _plain(MAX_EXPLANATION_CHARS, "an explanation")]


class FallbackReason(StrEnum):
    """Why a served list is not the full product of every route (`fallback_reason`; null when
    nothing fell back). The one list: writers use the members, readers compare with them."""

    unknown_user = "unknown_user"
    """The user has no state yet: the popularity list serves."""
    no_covisitation = "no_covisitation"
    """None of the user's items has co-visited neighbours yet: recent items and popularity serve."""
    refresh_failed = "refresh_failed"
    """Building this user's list raised (logged and counted as `refresh_errors`): popularity serves."""
    overloaded = "overloaded"
    """Built while the worker was behind (worker.shed_lag_s): the behavioural routes only."""
    intent_pending = "intent_pending"
    """Queued for the intent route: the behavioural list serves until its result lands."""
    intent_queue_full = "intent_queue_full"
    """The intent queue was full: the behavioural list serves."""
    intent_timeout = "intent_timeout"
    """The user waited longer than `intent.max_wait_s`, or the batch ran past `intent.batch_timeout_s`."""
    intent_failed = "intent_failed"
    """The intent batch raised (logged and counted as `intent_errors`)."""


class RecItem(BaseModel):
    item_id: str
    score: float
    route: str
    """Which route proposed it: recent, covisit, popular, sequential or intent."""
    tag: PlainTag | None = None
    """The intent tag that retrieved it (intent route only)."""
    explanation: PlainExplanation
    """Why this item, grounded in the user's history or the catalog; plain text (contracts/text.py)."""


class Intent(BaseModel):
    persona: PlainTag
    tags: list[PlainTag] = Field(default_factory=list)


class Recommendations(BaseModel):
    """The JSON contract of recs:{user_id} (best item first)."""

    user_id: str
    items: list[RecItem]
    intents: list[Intent] = Field(default_factory=list)
    generated_at: str
    """ISO-8601 UTC."""
    state_version: int
    """The user's state version these recommendations were computed from (0: no state)."""
    trigger: str
    """What caused the refresh: first_events, purchase, dominant_category, event_count, ..."""
    model_version: str
    fallback_reason: FallbackReason | None = None
    """Null unless a fallback served (`FallbackReason`)."""
    tags: list[PlainTag] = Field(default_factory=list)
    """The intent model's final tags (empty when the intent route has not run for the user)."""
    context_items: list[str] = Field(default_factory=list)
    """The items the intent model read, newest first: the shop echoes them and `tags` in its
    impression feedback, so the trainer can rebuild what the model saw (stream/feedback.py)."""
    context_actions: list[str] = Field(default_factory=list)


RecsPayload = dict[str, Any]
"""A `Recommendations` as a plain dict (what the sink serialises)."""


def rec_item(item_id: str, score: float, route: str, explanation: str, tag: str | None = None) -> dict[str, Any]:
    """One entry of `items` in dict form (the shape of `RecItem`)."""
    return {"item_id": item_id, "score": score, "route": route, "tag": tag, "explanation": explanation}


def recommendations_payload(
    user_id: str,
    items: list[dict[str, Any]],
    generated_at: str,
    state_version: int,
    trigger: str,
    model_version: str,
    fallback_reason: FallbackReason | None = None,
    intents: Sequence[dict[str, Any]] = (),
) -> RecsPayload:
    """The dict form of `Recommendations`; `items` are `rec_item` dicts, best first.

    >>> p = recommendations_payload("u1", [rec_item("i1", 0.5, "popular", "Popular")], "t", 3, "purchase", "m")
    >>> Recommendations.model_validate(p).items[0].route
    'popular'
    """
    return {
        "user_id": user_id,
        "items": items,
        "intents": list(intents),
        "generated_at": generated_at,
        "state_version": state_version,
        "trigger": trigger,
        "model_version": model_version,
        "fallback_reason": fallback_reason,
    }
