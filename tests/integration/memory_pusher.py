"""The processor's Pusher interface (stream/processor.py) in memory, for tests that drive a
BatchProcessor on the real Redis directly (Feast pushes are tested with the real store elsewhere)."""

from __future__ import annotations

import time


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
