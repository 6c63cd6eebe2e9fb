"""One user whose list cannot be built does not take the batch down: the BatchProcessor, on the
real Redis, serves that user the popularity list with fallback_reason refresh_failed, counts the
error, and refreshes everybody else as usual. The fault is injected into the real behavioural
reasoner for one user id (nothing else is replaced); the pusher is an in-memory implementation of
the processor's Pusher interface (tests/integration/memory_pusher.py; Feast pushes are tested elsewhere)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import orjson
import redis

from contracts.keys import RedisKeys
from contracts.recs import Recommendations
from reasoning.reasoner import UserView
from stream.metrics import read_metrics
from stream.processor import BatchProcessor, RawMessage
from tests.integration.memory_pusher import MemoryPusher

BAD = "user-whose-list-raises"


def test_a_failing_user_refresh_falls_back_alone(scoped):
    client = redis.Redis(host=scoped.redis.host, port=scoped.redis.port, db=scoped.redis.db)
    keys = RedisKeys(scoped.key_prefix)
    letters: list = []

    async def send_dead_letters(records) -> None:
        letters.extend(records)

    pusher = MemoryPusher()
    proc = BatchProcessor(scoped, {}, pusher, client, send_dead_letters)
    real_recommend = proc.behavioural.recommend

    def faulty(users: Sequence[UserView], top_k: int):  # fault injection for one user id
        if any(u.user_id == BAD for u in users):
            raise RuntimeError("injected fault")
        return real_recommend(users, top_k)

    proc.reasoner.recommend = faulty
    now = int(time.time() * 1000)
    users = [f"{scoped.key_prefix}u{n}" for n in range(5)] + [BAD]
    batch = [RawMessage(user.encode(), orjson.dumps({"event_id": f"e{i}-{user}", "user_id": user,
                                                     "item_id": f"i{(i * 3 + n) % 11}", "type": "view", "ts": now}),
                        "events", 0, 10 * n + i, now)
             for n, user in enumerate(users) for i in range(3)]
    ready = asyncio.run(proc.process(batch, tokens=list(range(len(batch)))))

    assert sorted(ready) == list(range(len(batch))) and not letters
    served = {u: Recommendations.model_validate_json(client.get(keys.recs(u))) for u in users}
    assert served[BAD].fallback_reason == "refresh_failed" and served[BAD].items
    assert served[BAD].state_version == 3
    assert all(served[u].fallback_reason != "refresh_failed" for u in users if u != BAD)
    assert read_metrics(client, keys)["refresh_errors"] == 1
    assert set(pusher.rows) == set(users)  # every user's features went to the pusher


def test_a_debounced_refresh_of_a_revoked_partition_is_not_written(scoped):
    """A worker that lost a user's partition in a rebalance must not run that user's debounced
    refresh: it would write its own copy of the state to the table (changelog) after the new
    owner's newer one. The refresh of a user on a partition it still owns runs as usual."""
    client = redis.Redis(host=scoped.redis.host, port=scoped.redis.port, db=scoped.redis.db)
    keys = RedisKeys(scoped.key_prefix)

    async def send_dead_letters(records) -> None:
        raise AssertionError(f"no dead letters expected: {records}")

    owned = {0, 1}
    table: dict[bytes, dict] = {}
    proc = BatchProcessor(scoped, table, MemoryPusher(), client, send_dead_letters, owned=lambda: set(owned))
    revoked, kept = f"{scoped.key_prefix}revoked", f"{scoped.key_prefix}kept"

    def batch(offset: int, kind: str) -> list[RawMessage]:
        now = int(time.time() * 1000)
        return [RawMessage(user.encode(), orjson.dumps({"event_id": f"e{offset}-{user}", "user_id": user,
                                                        "item_id": f"i{offset}", "type": kind, "ts": now}),
                           "events", partition, offset, now)
                for partition, user in enumerate((revoked, kept))]

    asyncio.run(proc.process(batch(0, "view")))  # first events: refreshed at once
    asyncio.run(proc.process(batch(1, "purchase")))  # a purchase within min_interval_s: debounced
    assert set(proc.pending) == {revoked, kept}

    owned.discard(0)  # the rebalance: partition 0 went to another worker, which writes newer states
    newer = {**table[revoked.encode()], "marker": "the new owner's state"}
    table[revoked.encode()] = newer
    time.sleep(scoped.trigger.min_interval_s + 0.2)
    asyncio.run(proc.flush_pending())

    assert table[revoked.encode()] is newer  # not overwritten
    served = {u: Recommendations.model_validate_json(client.get(keys.recs(u))) for u in (revoked, kept)}
    assert served[revoked].state_version == 1 and served[kept].state_version == 2
    assert read_metrics(client, keys)["refreshes_revoked"] == 1 and not proc.pending


def test_no_debounced_refresh_runs_while_the_table_is_restored(scoped):
    """During a rebalance faust replays the changelog over the table, also for the partitions a
    worker keeps (from its last restored offset: its own writes since then, oldest first), so a
    state read meanwhile can be older than the newest. A debounced refresh run then would write
    that older state back, last in the changelog, where the partition's next owner restores it
    and never counts the events between it and the committed offset. It waits for the restore to
    end, and then builds from the restored state."""
    client = redis.Redis(host=scoped.redis.host, port=scoped.redis.port, db=scoped.redis.db)
    keys = RedisKeys(scoped.key_prefix)

    async def send_dead_letters(records) -> None:
        raise AssertionError(f"no dead letters expected: {records}")

    table: dict[bytes, dict] = {}
    recovering = {"on": False}
    proc = BatchProcessor(scoped, table, MemoryPusher(), client, send_dead_letters, owned=lambda: {0},
                          recovering=lambda: recovering["on"])
    user = f"{scoped.key_prefix}kept"

    def batch(offset: int, kind: str) -> list[RawMessage]:
        now = int(time.time() * 1000)
        return [RawMessage(user.encode(), orjson.dumps({"event_id": f"e{offset}", "user_id": user,
                                                        "item_id": f"i{offset}", "type": kind, "ts": now}),
                           "events", 0, offset, now)]

    asyncio.run(proc.process(batch(0, "view")))  # first event: refreshed at once
    asyncio.run(proc.process(batch(1, "purchase")))  # within min_interval_s: debounced
    newest = table[user.encode()]
    assert set(proc.pending) == {user} and newest["event_count"] == 2

    recovering["on"] = True  # the replay has reached an older record of the user
    older = {**newest, "event_count": 1, "state_version": 1}  # an older changelog record
    table[user.encode()] = older
    time.sleep(scoped.trigger.min_interval_s + 0.2)
    asyncio.run(proc.flush_pending())
    asyncio.run(proc.drain())  # not even a stop writes it
    assert table[user.encode()] is older and set(proc.pending) == {user}
    assert Recommendations.model_validate_json(client.get(keys.recs(user))).state_version == 1

    recovering["on"] = False  # the replay ended at the newest record
    table[user.encode()] = newest
    asyncio.run(proc.flush_pending())
    assert not proc.pending and table[user.encode()]["event_count"] == 2
    assert Recommendations.model_validate_json(client.get(keys.recs(user))).state_version == 2
