"""The records between the stream worker and the reasoner service (stream/reasoner_service.py).

`IntentRequest` goes on the intent topic (`kafka.intent_topic`), keyed by user_id like the
events, so one user's requests land on one partition, in order, and one reasoner coalesces
them. It carries what reasoning reads (the user's recent items and purchases at the state it
was built from) and the behavioural list that state got, which the reasoner merges with the
intent items: the reasoner reads nothing else of the user (no Feast round trip per request).

`IntentResult` is what the reasoner stores at `intent:{user_id}` (contracts/keys.py): the
worker reads it at the user's next refresh and merges it into the fresh behavioural list, with
the weights the reasoner merged with, so a refresh never drops the intent items and the worker
needs no model. Both are JSON (orjson) on the wire and in Redis.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

INTENT_REQUEST_FORMAT = 1


class IntentRequest(BaseModel):
    """One refresh sent to reasoning."""

    format: int = INTENT_REQUEST_FORMAT
    user_id: str = Field(min_length=1)
    state_version: int = Field(ge=0)
    """The user's state version the refresh read; results are written only if Redis holds no newer one."""
    trigger: str
    """The refresh reason (stream/trigger.py refresh_reason)."""
    recent: list[list[Any]]
    """[item_id, type, ts_ms, ...], newest first, at most intent.max_items."""
    bought: list[str]
    behavioural: dict[str, Any]
    """The behavioural list (a `Recommendations` payload) this state was served."""
    recent_fused: bool = False
    """`behavioural` holds the user's recent items already (fused at the sequential model's
    fitted weight): merging the intent result must not add them again."""
    requested_ms: int
    """Wall-clock ms the worker sent it: the reasoner sheds a request older than intent.max_wait_s."""
    last_produced_ms: int
    """Broker time of the user's newest event in this state: event -> intent recs is measured from it."""


class IntentResult(BaseModel):
    """The user's last intent result (stored at intent:{user_id})."""

    user_id: str
    state_version: int
    """The state the reasoning read."""
    at_ms: int
    """Wall-clock ms the result was written (stream/trigger.py intent_due counts from it)."""
    version: str
    """The intent model version that produced it."""
    items: list[dict[str, Any]]
    intents: list[dict[str, Any]]
    tags: list[str]
    context_items: list[str]
    context_actions: list[str]
    weights: tuple[float, float, float]
    """(recent, behavioural, intent) merge weights the reasoner used (intent.merge_weights)."""
