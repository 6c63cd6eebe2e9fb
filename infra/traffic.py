"""What a correct worker must have counted from the events sent, and what it did count: per user
(Feast `user_state.event_count`) and per item (the shared item model's counts by type). The
scale-out, restart and chaos checks (tests/integration, benchmarks/chaos.py) share it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from contracts.keys import RedisKeys
from contracts.settings import Settings
from features.feast_store import FeastFeatures
from features.item_model import COUNTED_AS, STAT_COUNTS, SharedItemModel
from features.redis_client import connect


class ExpectedCounts:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.users: Counter[str] = Counter()
        self.items: dict[str, Counter[str]] = {}
        self.features = FeastFeatures(settings)
        self.model = SharedItemModel(connect(settings.redis), RedisKeys(settings.key_prefix),
                                     settings.kafka.events_topic, settings.kafka.partitions, 5, 100, 3600.0)

    def add(self, user_id: str, item_id: str, kind: str) -> None:
        """One valid event sent (and acknowledged by the broker)."""
        self.users[user_id] += 1
        column = COUNTED_AS.get(kind)
        if column is not None:
            self.items.setdefault(item_id, Counter())[column] += 1

    def user_counts(self, chunk: int = 2000) -> dict[str, int]:
        users = sorted(self.users)
        out: dict[str, int] = {}
        for start in range(0, len(users), chunk):
            rows = self.features.read_users(users[start:start + chunk], ["event_count"])
            out.update({r["user_id"]: r["event_count"] or 0 for r in rows})
        return out

    def item_counts(self) -> dict[str, dict[str, int]]:
        """item -> {views, carts, purchases} as the shared item model holds them (non-zero only)."""
        rows = self.model.stats_rows(sorted(self.items))
        return {r["item_id"]: {c: r[c] for c in STAT_COUNTS if r[c]} for r in rows}

    def expected_items(self) -> dict[str, dict[str, int]]:
        return {item: {c: n for c, n in counts.items() if n} for item, counts in self.items.items()}

    def counted(self) -> bool:
        return self.user_counts() == dict(self.users) and self.item_counts() == self.expected_items()

    def report(self) -> dict[str, Any]:
        """Events lost and double counted, per user (Feast) and per item (the item model)."""
        got = self.user_counts()
        user_lost = sum(max(0, n - (got.get(u) or 0)) for u, n in self.users.items())
        user_double = sum(max(0, (got.get(u) or 0) - n) for u, n in self.users.items())
        items_got, items_sent = self.item_counts(), self.expected_items()
        item_lost = item_double = 0
        for item, counts in items_sent.items():
            held = items_got.get(item, {})
            for column, n in counts.items():
                item_lost += max(0, n - held.get(column, 0))
                item_double += max(0, held.get(column, 0) - n)
        return {"users": len(self.users), "events": sum(self.users.values()), "items": len(items_sent),
                "user_events_lost": user_lost, "user_events_double_counted": user_double,
                "item_counts_lost": item_lost, "item_counts_double_counted": item_double,
                "users_off": _off(got, self.users), "items_off": sum(items_got.get(i, {}) != c
                                                                     for i, c in items_sent.items())}


def _off(got: Mapping[str, int], sent: Mapping[str, int]) -> int:
    return sum(1 for u, n in sent.items() if got.get(u) != n)
