"""The Feast pusher under concurrent cycles (the ingest agent and the 0.1 s timer both call
`cycle`): every token handed in comes back exactly once, after the push that carried it."""

from __future__ import annotations

import asyncio

from features.pusher import FeaturePusher
from features.state import UserState


def test_concurrent_cycles_never_drop_a_push(scoped):
    pusher = FeaturePusher(scoped)
    pusher.warm_up()
    handed: list[str] = []
    returned: list[str] = []

    async def run() -> None:
        for n in range(20):
            for token in (f"a{n}", f"b{n}"):
                pusher.add([UserState(f"{scoped.key_prefix}{token}").feature_row()], [], [0], [token])
                handed.append(token)
                if token.startswith("a"):  # a's push is in flight, b's rows wait for the next one
                    returned.extend((await pusher.cycle())[0])
            # Two callers waiting on the same push in flight: the one that finishes second must
            # neither return its tokens again nor discard the push the first one just submitted.
            for tokens, _, _ in await asyncio.gather(pusher.cycle(wait=True), pusher.cycle(wait=True)):
                returned.extend(tokens)
        tokens, _, _ = await pusher.drain()
        returned.extend(tokens)

    try:
        asyncio.run(run())
    finally:
        pusher.close()
    assert sorted(returned) == sorted(handed)
