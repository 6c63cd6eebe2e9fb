"""What tests that drive a BatchProcessor on the real Redis directly need: the processor's Pusher
interface (stream/processor.py) in memory (Feast pushes are tested with the real store
elsewhere), and a feed of messages."""

from __future__ import annotations

import time

import orjson

from stream.processor import RawMessage


class MemoryPusher:
    """Pusher interface, in memory: every push finishes at once."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}
        self.tokens: list = []

    def add(self, users, items, produced_ms, tokens) -> None:
        self.rows.update({row["user_id"]: row for row in users})
        self.tokens.extend(tokens)

    def start(self) -> None:
        pass

    async def cycle(self, wait: bool = False):
        done, self.tokens = self.tokens, []
        return done, [], int(time.time() * 1000)

    async def drain(self):
        return await self.cycle(wait=True)


class Feed:
    """Messages of one events partition with increasing offsets; `age_s`: how long they waited
    (their broker timestamp that far back)."""

    def __init__(self, partition: int = 0) -> None:
        self.partition = partition
        self.offset = 0

    def batch(self, events: list[tuple[str, str, str]], age_s: float) -> list[RawMessage]:
        now = int(time.time() * 1000)
        out = []
        for user, item, kind in events:
            self.offset += 1
            event = {"event_id": f"e{self.partition}.{self.offset}", "user_id": user, "item_id": item, "type": kind,
                     "ts": now}
            out.append(RawMessage(user.encode(), orjson.dumps(event), "events", self.partition, self.offset,
                                  now - int(age_s * 1000)))
        return out
