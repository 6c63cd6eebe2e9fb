"""When has a user's state changed enough to refresh their recommendations, and when may a
refresh's intent have changed enough to reason about it again?

A refresh has a *reason* (the first events of a user, a purchase, a new dominant category that
beats the old one by a hysteresis margin, N events since the last refresh) and is *debounced*:
at most one refresh per user per `min_interval_s`. A debounced reason is not forgotten: the
worker keeps the user pending and refreshes them when the interval has passed. Events that give
no reason (fewer than N since the last refresh) are not forgotten either: once none of the
user's came for `settle_s`, the worker refreshes them (trigger `settled`, stream/processor.py),
so a session's last events reach the list.

Reasoning (the intent route) is far dearer than a refresh, so a refresh goes to it only when the
user's intent may have changed (`intent_due`); otherwise the user's last intent result is merged
into the fresh behavioural list.
"""

from __future__ import annotations

from typing import NamedTuple

from contracts.settings import IntentSettings, TriggerSettings
from features.state import UserState

INTENT_CHANGING = frozenset({"first_events", "purchase", "dominant_category"})
"""Refresh reasons that may change a user's intent by themselves."""


class IntentMark(NamedTuple):
    """When the intent route last ran for a user, or was last asked to (the newer of the two:
    stream/intent_route.py), and on which state."""

    at_ms: int
    state_version: int


def refresh_reason(state: UserState, cfg: TriggerSettings) -> str | None:
    """Why `state` needs a refresh now, or None.

    >>> from contracts.settings import TriggerSettings
    >>> cfg = TriggerSettings(every_n_events=3)
    >>> s = UserState("u", state_version=1, events_since_refresh=1)
    >>> refresh_reason(s, cfg)
    'first_events'
    >>> s.refreshed_version, s.state_version = 1, 2
    >>> s.categories, s.dominant_at_refresh = {"a": 1.0, "b": 1.1}, "a"
    >>> refresh_reason(s, cfg) is None      # b leads a by 10%: inside the 25% hysteresis band
    True
    >>> s.categories["b"] = 1.3
    >>> refresh_reason(s, cfg)
    'dominant_category'
    """
    if state.state_version == state.refreshed_version:
        return None
    if state.refreshed_version == 0:
        return "first_events"
    if cfg.on_purchase and state.purchase_since_refresh:
        return "purchase"
    dominant = state.dominant_category
    if dominant is not None and dominant != state.dominant_at_refresh:
        previous = state.categories.get(state.dominant_at_refresh or "", 0.0)
        if state.categories[dominant] >= previous * (1.0 + cfg.category_hysteresis):
            return "dominant_category"
    if state.events_since_refresh >= cfg.every_n_events:
        return "event_count"
    return None


def due_at_ms(state: UserState, cfg: TriggerSettings) -> int:
    """Wall-clock ms from which the debounce lets this user refresh again."""
    if state.last_refresh_ms == 0:
        return 0
    return state.last_refresh_ms + int(cfg.min_interval_s * 1000)


def mark_refreshed(state: UserState, now_ms: int) -> None:
    state.last_refresh_ms = now_ms
    state.refreshed_version = state.state_version
    state.events_since_refresh = 0
    state.purchase_since_refresh = False
    state.dominant_at_refresh = state.dominant_category


def intent_due(trigger: str, state_version: int, last: IntentMark | None, now_ms: int,
               cfg: IntentSettings) -> bool:
    """Whether a refresh (its reason `trigger`, the state it read) goes to the intent route: never
    reasoned about; or at least `cfg.min_interval_s` since the last run and then either a reason
    that may change the intent (a purchase, a new dominant category) or at least
    `cfg.every_n_events` events since the state the last run read.

    >>> from contracts.settings import IntentSettings
    >>> cfg = IntentSettings(min_interval_s=10, every_n_events=8)
    >>> intent_due("event_count", 5, None, 0, cfg)           # never reasoned about
    True
    >>> last = IntentMark(at_ms=0, state_version=5)
    >>> intent_due("purchase", 6, last, 5_000, cfg)          # inside min_interval_s
    False
    >>> intent_due("purchase", 6, last, 20_000, cfg)
    True
    >>> intent_due("event_count", 9, last, 20_000, cfg)      # 4 events since: the same intent
    False
    >>> intent_due("event_count", 13, last, 20_000, cfg)
    True
    """
    if last is None:
        return True
    if now_ms - last.at_ms < cfg.min_interval_s * 1000:
        return False
    return trigger in INTENT_CHANGING or state_version - last.state_version >= cfg.every_n_events
