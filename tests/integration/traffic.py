"""Events sent to a test's events topic, with what a correct worker must have counted from them
(infra/traffic.py `ExpectedCounts`: per user in Feast, per item in the shared item model)."""

from __future__ import annotations

import time

import orjson

from infra.traffic import ExpectedCounts
from stream.producer import EventProducer


class Traffic(ExpectedCounts):
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
                self.add(user, item, kind)

    @property
    def views(self) -> dict[str, int]:
        return {i: c["views"] for i, c in self.items.items() if c["views"]}

    @property
    def purchases(self) -> dict[str, int]:
        return {i: c["purchases"] for i, c in self.items.items() if c["purchases"]}

    def user_diff(self) -> str:
        """Users whose Feast count is off (got, sent), for a failure message."""
        got, sent = self.user_counts(), dict(self.users)
        off = {u: (got.get(u), n) for u, n in sent.items() if got.get(u) != n}
        return f"{len(off)} users off (got, sent): {sorted(off.items())[:12]}"

    def users_counted(self) -> bool:
        return self.user_counts() == dict(self.users)

    def item_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(views, purchases) per item as the shared item model holds them."""
        held = ExpectedCounts.item_counts(self)
        return ({i: c["views"] for i, c in held.items() if c.get("views")},
                {i: c["purchases"] for i, c in held.items() if c.get("purchases")})

    def items_counted(self) -> bool:
        return self.item_counts() == (self.views, self.purchases)
