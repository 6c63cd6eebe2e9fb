"""A worker that is behind sheds refresh work, never events: the BatchProcessor on the real Redis
(the pusher in memory: tests/integration/memory_pusher.py) given batches whose events waited
longer than worker.shed_lag_s folds and hands over every event, builds only first-event and
purchase refreshes (fallback_reason `overloaded`), keeps every due refresh pending while it
stays behind, and builds them in full once a batch is on time again. And a user whose last
events gave no reason to refresh is refreshed once they have been quiet for trigger.settle_s."""

from __future__ import annotations

import asyncio
import time

import redis

from contracts.keys import RedisKeys
from contracts.recs import FallbackReason, Recommendations
from stream.metrics import read_metrics
from stream.processor import BatchProcessor, RawMessage
from tests.integration.memory_pusher import Feed, MemoryPusher


def _processor(scoped, shed_lag_s: float, settle_s: float = 0.0):
    settings = scoped.model_copy(update={
        "worker": scoped.worker.model_copy(update={"shed_lag_s": shed_lag_s}),
        "trigger": scoped.trigger.model_copy(update={"min_interval_s": 0.0, "every_n_events": 3,
                                                     "settle_s": settle_s}),
    })
    client = redis.Redis(host=scoped.redis.host, port=scoped.redis.port, db=scoped.redis.db)

    async def no_dead_letters(records) -> None:
        raise AssertionError(f"unexpected dead letters: {records}")

    pusher = MemoryPusher()
    proc = BatchProcessor(settings, {}, pusher, client, no_dead_letters, owned=lambda: {0})
    return proc, pusher, client, RedisKeys(scoped.key_prefix)


def test_a_worker_behind_sheds_refreshes_and_catches_up(scoped):
    proc, pusher, client, keys = _processor(scoped, shed_lag_s=5.0)
    feed = Feed()
    users = [f"{scoped.key_prefix}u{n}" for n in range(7)]
    old, new = users[:6], users[6]

    def served(user: str) -> Recommendations:
        return Recommendations.model_validate_json(client.get(keys.recs(user)))

    def run(batch: list[RawMessage]) -> None:
        assert len(asyncio.run(proc.process(batch, tokens=list(range(len(batch)))))) == len(batch)

    run(feed.batch([(u, f"i{n}", "view") for n, u in enumerate(old)], age_s=0))  # on time: built in full
    assert all(served(u).fallback_reason is not FallbackReason.overloaded for u in old)

    # 1. Behind (events waited 30 s): event-count refreshes are shed; a purchase and a new user's
    #    first events are built at once by the behavioural routes.
    run(feed.batch([(u, f"i{k}", "view") for u in old[:3] for k in range(3)]
                   + [(old[3], "i9", "purchase"), (new, "i1", "view")], age_s=30))
    assert [served(u).state_version for u in old[:4]] == [1, 1, 1, 2]
    assert served(old[3]).trigger == "purchase" and served(old[3]).fallback_reason is FallbackReason.overloaded
    assert served(new).fallback_reason is FallbackReason.overloaded
    metrics = read_metrics(client, keys)
    assert metrics["refreshes_shed"] == 3 and metrics["refreshes_overloaded"] == 2

    # 2. The timer right after a batch that was behind leaves every due refresh pending ...
    asyncio.run(proc.flush_pending())
    assert [served(u).state_version for u in old[:3]] == [1, 1, 1] and len(proc.pending) == 5

    # 3. ... and an on-time batch ends the shedding: they are built in full at the next tick
    #    when a full batch of events does not wait (events first).
    run(feed.batch([(old[5], "i7", "view")], age_s=0))
    proc.waiting = lambda: scoped.worker.batch_max
    asyncio.run(proc.flush_pending())
    assert len(proc.pending) == 5
    proc.waiting = lambda: 0
    proc.pending_rest_until = time.monotonic() + 60  # the last tick ran refreshes: the loop's turn now
    asyncio.run(proc.flush_pending())
    assert len(proc.pending) == 5
    proc.pending_rest_until = 0.0
    asyncio.run(proc.flush_pending())
    assert proc.pending_rest_until > 0  # it ran them: as long a rest follows
    assert [served(u).state_version for u in users] == [4, 4, 4, 2, 1, 1, 1]  # u5: 2 events < every_n_events
    assert all(served(u).fallback_reason is not FallbackReason.overloaded for u in users)
    assert {u: pusher.rows[u]["event_count"] for u in users} == dict(zip(users, [4, 4, 4, 2, 1, 2, 1]))
    assert not proc.pending


def test_shedding_off_and_stopping_build_every_refresh(scoped):
    proc, _, client, keys = _processor(scoped, shed_lag_s=0.0)
    feed = Feed()
    user = f"{scoped.key_prefix}old"
    asyncio.run(proc.process(feed.batch([(user, "i1", "view")], age_s=600), tokens=[0]))
    assert Recommendations.model_validate_json(client.get(keys.recs(user))).fallback_reason is not FallbackReason.overloaded
    assert not read_metrics(client, keys).get("refreshes_shed")

    proc, _, client, keys = _processor(scoped, shed_lag_s=1.0)  # behind, then stopped at once
    users = [f"{scoped.key_prefix}s{n}" for n in range(3)]
    asyncio.run(proc.process(feed.batch([(u, "i1", "view") for u in users], age_s=60), tokens=[0, 1, 2]))
    asyncio.run(proc.process(feed.batch([(u, f"i{k}", "view") for u in users for k in range(3)], age_s=60),
                             tokens=list(range(9))))
    assert len(proc.pending) == 3
    asyncio.run(proc.drain())
    assert not proc.pending
    assert all(Recommendations.model_validate_json(client.get(keys.recs(u))).state_version == 4 for u in users)


def test_events_that_trigger_nothing_reach_the_list_once_the_user_is_quiet(scoped):
    proc, _, client, keys = _processor(scoped, shed_lag_s=0.0, settle_s=0.8)
    feed = Feed()
    user, other = f"{scoped.key_prefix}quiet", f"{scoped.key_prefix}busy"

    def served(u: str) -> Recommendations:
        return Recommendations.model_validate_json(client.get(keys.recs(u)))

    def run(events) -> None:
        asyncio.run(proc.process(feed.batch(events, age_s=0), tokens=list(range(len(events)))))

    run([(user, "i1", "view"), (other, "i1", "view")])  # first events: refreshed at once
    run([(user, "i2", "view"), (other, "i2", "view")])  # 1 event since: no reason (every_n_events 3)
    assert served(user).state_version == 1 and proc.pending[user].settle
    gauges = read_metrics(client, keys)  # maybe owed: kept apart from the refreshes owed
    assert (gauges["refreshes_pending"], gauges["refreshes_settling"]) == (0, 2)
    time.sleep(0.5)
    run([(other, "i3", "view")])                         # other's newer event moves its settle time on
    time.sleep(0.5)
    asyncio.run(proc.flush_pending())
    assert served(user).state_version == 2 and served(user).trigger == "settled"
    assert served(other).state_version == 1 and other in proc.pending
    time.sleep(0.5)
    asyncio.run(proc.flush_pending())
    assert served(other).state_version == 3 and not proc.pending
    assert read_metrics(client, keys)["refreshes_settled"] == 2
    asyncio.run(proc.flush_pending())                     # nothing changed since: nothing more
    assert read_metrics(client, keys)["refreshes_settled"] == 2

    proc, _, client, keys = _processor(scoped, shed_lag_s=0.0, settle_s=0.0)  # off
    run([(f"{scoped.key_prefix}off", "i1", "view")])
    run([(f"{scoped.key_prefix}off", "i2", "view")])
    assert not proc.pending
