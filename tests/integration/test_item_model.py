"""The shared item model on the real Redis: N writers learn what one writer learns from the same
events, a batch that comes again adds nothing, a writer with a stale fence is refused."""

from __future__ import annotations

import random

import pytest
import redis

from contracts.events import Event
from contracts.keys import RedisKeys
from features.item_model import ItemDeltas, ItemModelFenced, SharedItemModel
from features.state import Fold, StateLimits, UserState, apply
from reasoning.behavioural import BehaviouralModel

PARTITIONS = 4
WINDOW = 5
HALF_LIFE_S = 60.0  # events span 100 half-lives: the popularity scores are rescaled on the way


def _stream(n: int = 4000, seed: int = 7) -> list[tuple[int, int, Event]]:
    """(partition, offset, event): 60 users, each on one partition, Zipf-ish items."""
    rng = random.Random(seed)
    offsets = [0] * PARTITIONS
    out = []
    for i in range(n):
        user = f"u{rng.randrange(60)}"
        partition = int(user[1:]) % PARTITIONS
        item = f"i{min(int(rng.paretovariate(1.2)), 300)}"
        kind = rng.choices(["view", "cart", "purchase"], [0.9, 0.07, 0.03])[0]
        event = Event(event_id=f"e{i}", user_id=user, item_id=item, type=kind, ts=1_600_000_000_000 + i * 1500,
                      context={"category": f"c{int(item[1:]) % 7}", "brand": f"b{int(item[1:]) % 5}",
                               "price": float(int(item[1:]) % 50)})
        out.append((partition, offsets[partition], event))
        offsets[partition] += 1
    return out


class Writer:
    """What a worker does with the item model per batch (stream/processor.py, steps 2-3)."""

    def __init__(self, client: redis.Redis, prefix: str, states: dict[str, UserState]) -> None:
        self.model = SharedItemModel(client, RedisKeys(prefix), "events", PARTITIONS, WINDOW, 1000, HALF_LIFE_S)
        self.states = states

    def batch(self, messages: list[tuple[int, int, Event]]) -> None:
        deltas = self.model.fences(p for p, _, _ in messages)
        folded = {u: UserState.from_record(s.to_record()) for u, s in self.states.items()}  # copies
        for partition, offset, event in messages:
            delta = deltas[partition]
            delta.advance(offset)
            state = folded.setdefault(event.user_id, UserState(event.user_id))
            previous = [entry[0] for entry in state.recent[:WINDOW]]
            if apply(state, event, 0, StateLimits(), partition, offset) is Fold.applied and not delta.skips(offset):
                delta.observe(event, previous, WINDOW)
        self.model.apply(deltas.values())
        self.states.update(folded)  # the durable point comes after the item model, as in the worker


def _contents(client: redis.Redis, prefix: str, items: list[str]) -> tuple[dict, dict, list]:
    model = SharedItemModel(client, RedisKeys(prefix), "events", PARTITIONS, WINDOW, 1000, HALF_LIFE_S)
    model.prefetch(items)
    covisit = {i: model.similar(i) for i in items}
    stats = {row["item_id"]: row for row in model.stats_rows(items)}
    return covisit, stats, model.top_popular(50)


def _close(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-9) for k in a)


def test_two_writers_learn_what_one_learns_and_redelivery_adds_nothing(services):
    r = services.redis
    client = redis.Redis(host=r.host, port=r.port, db=r.db)
    run = random.Random().randrange(1 << 30)
    one, two = f"test:item-model:{run}:one:", f"test:item-model:{run}:two:"
    events = _stream()
    try:
        # One writer, batches of 250 messages across all partitions.
        single = Writer(client, one, {})
        for start in range(0, len(events), 250):
            single.batch(events[start:start + 250])

        # Two writers, partitions 0-1 and 2-3, other batch sizes, interleaved; each user state lives
        # with its partition's writer.
        a, b = Writer(client, two, {}), Writer(client, two, {})
        mine_a = [m for m in events if m[0] < 2]
        mine_b = [m for m in events if m[0] >= 2]
        for i in range(max(len(mine_a), len(mine_b)) // 170 + 1):
            a.batch(mine_a[i * 170:(i + 1) * 170])
            b.batch(mine_b[i * 90:(i + 1) * 90])
            if i == 3:
                # b crashes after its item-model write and before its state write: the batch comes
                # again, folded from the older states; the fence keeps it from counting twice.
                before = {u: UserState.from_record(s.to_record()) for u, s in b.states.items()}
                b.batch(mine_b[(i + 1) * 90:(i + 2) * 90])
                b.states.clear()
                b.states.update(before)
        b.batch(mine_b[(i + 1) * 90:])

        items = sorted({e.item_id for _, _, e in events})
        covisit_1, stats_1, popular_1 = _contents(client, one, items)
        covisit_2, stats_2, popular_2 = _contents(client, two, items)
        assert all(_close(covisit_1[i], covisit_2[i]) for i in items)
        assert stats_1 == stats_2
        assert [i for i, _ in popular_1] == [i for i, _ in popular_2]
        assert all(s1 == pytest.approx(s2, rel=1e-9) for (_, s1), (_, s2) in zip(popular_1, popular_2))

        # The same sums as the in-memory model the evaluation harness scores with.
        memory = BehaviouralModel(WINDOW, 1000, HALF_LIFE_S)
        states: dict[str, UserState] = {}
        for partition, offset, e in events:
            state = states.setdefault(e.user_id, UserState(e.user_id))
            previous = [entry[0] for entry in state.recent[:WINDOW]]
            apply(state, e, 0, StateLimits(), partition, offset)
            memory.observe(e.item_id, e.type.value, e.ts, previous, e.category, e.brand)
        assert all(_close(covisit_1[i], memory.similar(i)) for i in items)
        assert [i for i, _ in popular_1] == [i for i, _ in memory.top_popular(50)]
        counted = {i: sum(1 for _, _, e in events if e.item_id == i and e.type.value == "purchase") for i in items}
        assert {i: stats_1[i]["purchases"] for i in items} == counted
        assert sum(row["views"] + row["carts"] + row["purchases"] for row in stats_1.values()) == len(events)

        # A writer whose fence is stale (it still holds a partition another writer took over) is
        # refused and adds nothing.
        stale = ItemDeltas(partition=0, fence=10)
        stale.advance(20)
        stale.observe(events[0][2], [], WINDOW)
        with pytest.raises(ItemModelFenced):
            a.model.apply([stale])
        assert _contents(client, two, items)[1] == stats_2

        # Every changed item is dirty in its slot, once.
        rows = a.model.take_dirty(range(PARTITIONS))
        assert sorted(row["item_id"] for row in rows) == items
        assert a.model.take_dirty(range(PARTITIONS)) == []
    finally:
        for prefix in (one, two):
            SharedItemModel(client, RedisKeys(prefix), "events", PARTITIONS, WINDOW, 1000, HALF_LIFE_S).reset()


def test_rows_past_twice_the_neighbour_cap_are_pruned_to_the_strongest(services):
    r = services.redis
    client = redis.Redis(host=r.host, port=r.port, db=r.db)
    prefix = f"test:item-model:{random.Random().randrange(1 << 30)}:"
    model = SharedItemModel(client, RedisKeys(prefix), "events", 1, 50, 5, HALF_LIFE_S)
    try:
        history = [f"n{k}" for k in range(11)]  # newest first: n0 is the strongest neighbour
        delta = model.fences([0])[0]
        delta.advance(0)
        delta.observe(Event(event_id="e", user_id="u", item_id="hub", type="view", ts=1_600_000_000_000),
                      history, 50)
        model.apply([delta])
        model.prefetch(["hub"])
        assert sorted(model.similar("hub"), key=lambda k: int(k[1:])) == ["n0", "n1", "n2", "n3", "n4"]
    finally:
        model.reset()
