"""Per-user state folded from events: bounded, JSON-serialisable, versioned.

The worker keeps one `UserState` per user in a changelog-backed Faust table (as the dict of
`to_record`) and folds each micro-batch into it with `apply`. Redelivered events (Kafka input is
at-least-once) are dropped by their position: a user's events all come from one partition in
offset order, so an event at or before the user's last applied offset was folded already (exact
however far a replay after a crash reaches back). An event sent twice by the producer (a new
offset, an `event_id` seen before) is dropped by `event_id` within a bounded window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from contracts.events import Event

# How much an interaction of each type says about the user's interest (affinities, co-visitation).
TYPE_WEIGHT = {"view": 1.0, "click": 1.0, "fav": 2.0, "cart": 3.0, "purchase": 4.0}
BOUGHT_KEPT = 200


@dataclass
class UserState:
    user_id: str
    event_count: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    recent: list[list[Any]] = field(default_factory=list)
    """[item_id, type, ts_ms, category or None], most recent first."""
    categories: dict[str, float] = field(default_factory=dict)
    """Decayed category affinity."""
    brands: dict[str, float] = field(default_factory=dict)
    bought: list[str] = field(default_factory=list)
    """Items bought, most recent first; never recommended again."""
    last_purchase_item: str | None = None
    last_purchase_ts: int | None = None
    last_event_ts: int = 0
    """Event time (ms) of the newest event applied."""
    last_produced_ms: int = 0
    """Broker timestamp (ms) of the newest event applied; freshness is measured from it."""
    event_ids: list[str] = field(default_factory=list)
    partition: int = -1
    """Events partition of the newest message folded (-1: none yet)."""
    last_offset: int = -1
    """Offset of the newest message folded on `partition`: a message at or before it is redelivered."""
    state_version: int = 0
    # Refresh bookkeeping (read by stream.trigger).
    last_refresh_ms: int = 0
    """Wall-clock ms of the last refresh; 0 when never refreshed."""
    refreshed_version: int = 0
    events_since_refresh: int = 0
    purchase_since_refresh: bool = False
    dominant_at_refresh: str | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "UserState":
        """A state of its own: folding into it leaves `record` (the table's) as it was, so a batch
        try that fails after folding cannot leave its event ids in the table without its counts
        (the retry would then drop the events as duplicates)."""
        return cls(**_copied(record))

    def to_record(self) -> dict[str, Any]:
        # Copies: the table keeps this dict while the worker goes on mutating the state.
        return _copied(self.__dict__)

    @property
    def dominant_category(self) -> str | None:
        if not self.categories:
            return None
        return max(self.categories.items(), key=lambda kv: kv[1])[0]

    def recent_item_ids(self) -> list[str]:
        return [entry[0] for entry in self.recent]

    def top(self, affinities: dict[str, float], n: int) -> list[str]:
        return [k for k, _ in sorted(affinities.items(), key=lambda kv: -kv[1])[:n]]

    def feature_row(self) -> dict[str, Any]:
        """The row pushed to Feast's `user_state` view."""
        c = self.counts
        seen: set[str] = set()
        recent_distinct = [i for i in self.recent_item_ids() if not (i in seen or seen.add(i))]
        return {
            "user_id": self.user_id,
            "event_count": self.event_count,
            "view_count": c.get("view", 0),
            "click_count": c.get("click", 0),
            "cart_count": c.get("cart", 0),
            "fav_count": c.get("fav", 0),
            "purchase_count": c.get("purchase", 0),
            "recent_items": recent_distinct[:20],
            "top_categories": self.top(self.categories, 5),
            "top_brands": self.top(self.brands, 5),
            "last_purchase_item": self.last_purchase_item or "",
            "last_purchase_ts": self.last_purchase_ts or 0,
            "last_event_ts": self.last_event_ts,
            "state_version": self.state_version,
        }


def _copied(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with its containers copied (one level: `apply` inserts `recent` entries, it never
    changes one)."""
    out = dict(record)
    for name in ("counts", "categories", "brands"):
        out[name] = dict(out[name])
    for name in ("recent", "bought", "event_ids"):
        out[name] = list(out[name])
    return out


@dataclass(frozen=True)
class StateLimits:
    recent_items: int = 50
    dedupe_window: int = 256
    top_affinities: int = 20
    affinity_half_life_events: float = 20.0

    @property
    def decay(self) -> float:
        return 0.5 ** (1.0 / self.affinity_half_life_events)


def _bump(affinities: dict[str, float], key: str, weight: float, decay: float, keep: int) -> None:
    for k in affinities:
        affinities[k] *= decay
    affinities[key] = affinities.get(key, 0.0) + weight
    if len(affinities) > keep:
        for k, _ in sorted(affinities.items(), key=lambda kv: kv[1])[: len(affinities) - keep]:
            del affinities[k]


class Fold(Enum):
    """What `apply` did with a message."""

    applied = "applied"
    duplicate = "duplicate"
    """A new message carrying an event_id already applied (the producer sent it twice)."""
    redelivered = "redelivered"
    """A message at or before the user's last folded offset (Kafka delivered it again)."""


def apply(state: UserState, event: Event, produced_ms: int, limits: StateLimits,
          partition: int = -1, offset: int = -1) -> Fold:
    """Fold the event at (`partition`, `offset`) into `state` (-1: position unknown, event_id only).

    >>> from contracts.events import Event
    >>> s = UserState("u1")
    >>> e = Event(event_id="e1", user_id="u1", item_id="i9", type="purchase", ts=5,
    ...           context={"category": "kids.toys"})
    >>> [apply(s, e, 6, StateLimits(), 0, 10).value, apply(s, e, 6, StateLimits(), 0, 10).value,
    ...  apply(s, e, 6, StateLimits(), 0, 11).value]
    ['applied', 'redelivered', 'duplicate']
    >>> s.event_count, s.bought, s.dominant_category, s.state_version, s.last_offset
    (1, ['i9'], 'kids.toys', 1, 11)
    """
    if offset >= 0:
        if partition == state.partition and offset <= state.last_offset:
            return Fold.redelivered
        state.partition, state.last_offset = partition, offset
    if event.event_id in state.event_ids:
        return Fold.duplicate
    state.event_ids.append(event.event_id)
    if len(state.event_ids) > limits.dedupe_window:
        del state.event_ids[: len(state.event_ids) - limits.dedupe_window]

    kind = event.type.value
    weight = TYPE_WEIGHT[kind]
    state.event_count += 1
    state.counts[kind] = state.counts.get(kind, 0) + 1
    category = event.category
    state.recent.insert(0, [event.item_id, kind, event.ts, category])
    if len(state.recent) > limits.recent_items:
        del state.recent[limits.recent_items:]
    if category:
        _bump(state.categories, category, weight, limits.decay, limits.top_affinities)
    if event.brand:
        _bump(state.brands, event.brand, weight, limits.decay, limits.top_affinities)
    if kind == "purchase":
        state.last_purchase_item = event.item_id
        state.last_purchase_ts = event.ts
        state.purchase_since_refresh = True
        if event.item_id not in state.bought:
            state.bought.insert(0, event.item_id)
            del state.bought[BOUGHT_KEPT:]
    state.last_event_ts = max(state.last_event_ts, event.ts)
    state.last_produced_ms = max(state.last_produced_ms, produced_ms)
    state.events_since_refresh += 1
    state.state_version += 1
    return Fold.applied
