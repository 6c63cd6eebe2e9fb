"""State that grows with users and items is bounded (retention settings) on the real Redis and
Feast: the worker forgets users idle past retention.user_idle_s (their table entry goes, only on
partitions it owns, not while its table is being restored), a forgotten user who comes back starts
anew, recs and intent keys expire, the shared item model's rows expire and its popularity set is
capped, and Feast's online rows get the store's TTL."""

from __future__ import annotations

import asyncio

import redis

from contracts.keys import RedisKeys
from features.feast_store import FeastFeatures, repo_config
from features.item_model import ItemDeltas, SharedItemModel
from features.state import UserState
from stream.metrics import read_metrics
from stream.processor import BatchProcessor
from tests.integration.memory_pusher import Feed, MemoryPusher


def _processor(scoped, user_idle_s: float, owned: set[int], recovering: dict):
    settings = scoped.model_copy(update={
        "worker": scoped.worker.model_copy(update={"shed_lag_s": 0.0}),
        "retention": scoped.retention.model_copy(update={"user_idle_s": user_idle_s}),
    })
    client = redis.Redis(host=scoped.redis.host, port=scoped.redis.port, db=scoped.redis.db)

    async def no_dead_letters(records) -> None:
        raise AssertionError(f"unexpected dead letters: {records}")

    table: dict[bytes, dict] = {}
    proc = BatchProcessor(settings, table, MemoryPusher(), client, no_dead_letters, owned=lambda: owned,
                          recovering=lambda: recovering["on"])
    return proc, table, client, RedisKeys(scoped.key_prefix)


def test_idle_users_are_forgotten_in_stream_time_on_owned_partitions_only(scoped):
    owned, recovering = {0, 1}, {"on": False}
    proc, table, client, keys = _processor(scoped, user_idle_s=600.0, owned=owned, recovering=recovering)
    p0, p1 = Feed(0), Feed(1)
    idle, other, active, late = (f"{scoped.key_prefix}{name}" for name in ("idle", "other", "active", "late"))

    def run(batch) -> None:
        asyncio.run(proc.process(batch, tokens=list(range(len(batch)))))

    def expired() -> int:
        return read_metrics(client, keys)["users_expired"]

    run(p0.batch([(idle, "i1", "view"), (idle, "i2", "view")], age_s=900))  # newest event 15 min ago
    run(p1.batch([(other, "i1", "view")], age_s=900))
    run(p0.batch([(active, "i3", "view")], age_s=0))
    assert client.ttl(keys.recs(active)) > 590  # the list expires user_idle_s after its write

    # While the table is being restored nothing is swept.
    recovering["on"] = True
    asyncio.run(proc.flush_pending())
    assert len(table) == 3
    # Then partition 0's stream is 15 min past `idle`: forgotten. Partition 1's newest event is
    # `other`'s own (a lagging or quiet partition): nobody there is forgotten.
    recovering["on"] = False
    asyncio.run(proc.flush_pending())
    assert sorted(table) == sorted(u.encode() for u in (other, active)) and expired() == 1

    # Partition 1's stream moves on, but the partition went to another worker: its users are that
    # worker's to forget.
    run(p1.batch([(late, "i5", "view")], age_s=0))
    owned.discard(1)
    asyncio.run(proc.flush_pending())
    assert other.encode() in table and expired() == 1

    # A forgotten user who comes back starts from an empty state (the events before are gone with it).
    run(p0.batch([(idle, "i4", "view")], age_s=0))
    state = UserState.from_record(table[idle.encode()])
    assert (state.event_count, state.recent_item_ids()) == (1, ["i4"])

    # Partition 1 comes back (a rebalance): the index is rebuilt from the table, and its idle user goes.
    owned.add(1)
    asyncio.run(proc.flush_pending())
    assert sorted(table) == sorted(u.encode() for u in (active, late, idle)) and expired() == 2


def test_user_idle_zero_keeps_everyone_and_sets_no_expiry(scoped):
    proc, table, client, keys = _processor(scoped, user_idle_s=0.0, owned={0}, recovering={"on": False})
    user = f"{scoped.key_prefix}kept"
    asyncio.run(proc.process(Feed(0).batch([(user, "i1", "view")], age_s=10 * 86_400), tokens=[0]))
    asyncio.run(proc.flush_pending())
    assert list(table) == [user.encode()]
    assert client.ttl(keys.recs(user)) == -1  # no expiry


def test_item_rows_expire_and_the_popularity_set_is_capped(scoped):
    client = redis.Redis(host=scoped.redis.host, port=scoped.redis.port, db=scoped.redis.db)
    keys = RedisKeys(scoped.key_prefix)
    model = SharedItemModel(client, keys, "events", 1, 5, 100, 3600.0, item_ttl_s=300, popular_max=10)
    deltas = ItemDeltas(0, -1)
    for n in range(30):  # item n seen n + 1 times: the 10 most popular are items 20..29
        for k in range(n + 1):
            deltas.advance(len(deltas.popularity) * 100 + k)
            deltas.popularity.setdefault(f"it{n}", []).append((1_000_000, 1.0))
        deltas.stats[f"it{n}"] = {"views": n + 1, "carts": 0, "purchases": 0, "category": "c", "brand": "",
                                  "price": None, "last_event_ts": 1_000_000}
    deltas.covisit[("it1", "it2")] = 1.0
    model.apply([deltas])
    assert sorted(i for i, _ in model.top_popular(100)) == sorted(f"it{n}" for n in range(20, 30))
    for key in (keys.item_covisit("it1"), keys.item_covisit("it2"), keys.item_stats_row("it7")):
        assert 290 < client.ttl(key) <= 300, key
    model.reset()


def test_feast_rows_get_the_online_store_ttl(scoped):
    settings = scoped.model_copy(update={"retention": scoped.retention.model_copy(
        update={"user_idle_s": 600.0, "item_idle_s": 1200.0})})
    assert repo_config(settings).online_store.key_ttl_seconds == 1200
    forever = scoped.model_copy(update={"retention": scoped.retention.model_copy(update={"item_idle_s": 0.0})})
    assert not repo_config(forever).online_store.key_ttl_seconds
    user = f"{scoped.key_prefix}feast-ttl-user"
    FeastFeatures(settings).push_users([{**UserState(user).feature_row(), "event_count": 3}])
    client = redis.Redis(host=scoped.redis.host, port=scoped.redis.port, db=scoped.redis.db)
    [key] = list(client.scan_iter(match=f"*{user}*".encode(), count=10_000))
    assert 1190 < client.ttl(key) <= 1200
    assert FeastFeatures(settings).read_users([user], ["event_count"])[0]["event_count"] == 3
    client.delete(key)
