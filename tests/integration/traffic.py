"""Events sent to a test's events topic, with what a correct worker must have counted from them:
per user (Feast `user_state.event_count`) and per item (the shared item model's counts)."""

from __future__ import annotations

import time
from collections import Counter

import orjson
import redis

from contracts.keys import RedisKeys
from contracts.settings import Settings
from features.feast_store import FeastFeatures
from features.item_model import SharedItemModel
from stream.producer import EventProducer


class Traffic:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.users: Counter[str] = Counter()
        self.views: Counter[str] = Counter()
        self.purchases: Counter[str] = Counter()
        self.features = FeastFeatures(settings)
        r = settings.redis
        self.model = SharedItemModel(redis.Redis(host=r.host, port=r.port, db=r.db), RedisKeys(settings.key_prefix),
                                     settings.kafka.events_topic, settings.kafka.partitions, 5, 100, 3600.0)

    def send(self, users: list[str], start: int, n: int, per_s: float | None = None) -> None:
        """Events e{start}..e{start+n-1}, round robin over `users`, every 50th a purchase; at
        about `per_s` events a second when given (else as fast as the producer goes)."""
        began = time.monotonic()
        with EventProducer.from_settings(self.settings) as producer:
            for i in range(start, start + n):
                if per_s and (ahead := (i - start) / per_s - (time.monotonic() - began)) > 0:
                    time.sleep(ahead)
                user, item = users[i % len(users)], f"i{(i * 7) % 101}"
                kind = "purchase" if i % 50 == 0 else "view"
                producer.send_raw(user.encode(), orjson.dumps({
                    "event_id": f"e{i}", "user_id": user, "item_id": item, "type": kind,
                    "ts": int(time.time() * 1000)}))
                self.users[user] += 1
                (self.purchases if kind == "purchase" else self.views)[item] += 1

    def user_counts(self) -> dict[str, int]:
        rows = self.features.read_users(sorted(self.users), ["event_count"])
        return {r["user_id"]: r["event_count"] for r in rows}

    def user_diff(self) -> str:
        """Users whose Feast count is off (got, sent), for a failure message."""
        got, sent = self.user_counts(), dict(self.users)
        off = {u: (got.get(u), n) for u, n in sent.items() if got.get(u) != n}
        return f"{len(off)} users off (got, sent): {sorted(off.items())[:12]}"

    def users_counted(self) -> bool:
        return self.user_counts() == dict(self.users)

    def item_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(views, purchases) per item as the shared item model holds them."""
        rows = self.model.stats_rows(sorted(set(self.views) | set(self.purchases)))
        return ({r["item_id"]: r["views"] for r in rows if r["views"]},
                {r["item_id"]: r["purchases"] for r in rows if r["purchases"]})

    def items_counted(self) -> bool:
        return self.item_counts() == (dict(self.views), dict(self.purchases))
