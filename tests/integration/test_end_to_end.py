"""Replay a slice of REES46 through Kafka into a running worker: recommendations land in Redis
for the users who had events (contract-valid, bought items excluded), nothing for anyone else,
and every user's features are readable from Feast with the right counts."""

from __future__ import annotations

import orjson
import redis

from contracts.keys import RedisKeys
from contracts.recs import Recommendations
from features.feast_store import FeastFeatures
from offline import datasets
from offline.replay import replay
from stream.producer import EventProducer
from stream.reader import RecommendationReader
from tests.integration.kafka_io import wait_for

SLICE = 3000


def test_replayed_slice_yields_recommendations(scoped, worker_factory, data_dir):
    data = datasets.load("rees46", data_dir).head(SLICE)
    prefix = scoped.key_prefix  # also namespaces user ids in the shared Feast project
    worker = worker_factory()
    with EventProducer.from_settings(scoped) as producer:
        sent, _ = replay(data, producer, user_prefix=prefix)
    assert sent == SLICE

    wait_for(lambda: worker.processed() >= SLICE, 120, "the worker to process the slice", worker.log_tail)
    users = sorted(data.events.user_id.unique())
    client = redis.Redis(host=scoped.redis.host, port=scoped.redis.port)
    keys = RedisKeys(scoped.key_prefix)
    wait_for(lambda: all(client.exists(keys.recs(prefix + u)) for u in users), 30,
             "recommendations for every user with events", worker.log_tail)

    reader = RecommendationReader(client, keys)
    events = data.events
    bought_by = {u: set(events[(events.user_id == u) & (events.type == "purchase")].item_id) for u in users}

    def nothing_bought_is_recommended() -> bool:
        # A purchase refresh inside trigger.min_interval_s of the previous refresh is debounced: it
        # runs when due (the worker's timer), so the last lists may land just after the last batch.
        return all(not bought_by[u] & {i["item_id"] for i in orjson.loads(client.get(keys.recs(prefix + u)))["items"]}
                   for u in users)

    wait_for(nothing_bought_is_recommended, 30, "the debounced purchase refreshes", worker.log_tail)
    full = 0
    for user in users:
        raw = client.get(keys.recs(prefix + user))
        recs = Recommendations.model_validate(orjson.loads(raw))
        assert recs.user_id == prefix + user
        # Users refreshed at the very start of the stream see only the few items known then.
        assert 1 <= len(recs.items) <= scoped.recs.top_k
        full += len(recs.items) == scoped.recs.top_k
        assert len({i.item_id for i in recs.items}) == len(recs.items)
        assert not bought_by[user] & {i.item_id for i in recs.items}, f"user {user} was recommended what they bought"
        assert recs.state_version >= 1 and recs.model_version == scoped.recs.model_version
        assert all(i.explanation for i in recs.items)
    assert full >= 0.9 * len(users)

    # A user without events has no recommendations of their own and gets the popular fallback.
    assert not client.exists(keys.recs(prefix + "nobody"))
    fallback = reader.get_recommendations(prefix + "nobody")
    assert fallback is not None and fallback.fallback_reason == "unknown_user" and fallback.items

    # Every user with events got announced on the update stream.
    announced = {fields[b"user_id"].decode() for _, fields in client.xrange(keys.updates)}
    assert announced == {prefix + u for u in users}

    # Features in Feast: the event count of every user matches what was replayed.
    expected = events.groupby("user_id").size()
    rows = FeastFeatures(scoped).read_users([prefix + u for u in users], ["event_count", "recent_items"])
    for user, row in zip(users, rows):
        assert row["event_count"] == expected[user], user
        assert row["recent_items"], user
    assert worker.alive()
