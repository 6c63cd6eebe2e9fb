"""A poison mix among 10,000 valid events into a live worker: the worker survives (same pid),
every valid event is counted exactly once in Feast, every poison event is in the dead-letter topic
with its reason, and no user id reaches a key of the project's own (the update stream stays a
stream, the popularity fallback stays the fallback). Valid events whose brand carries a link and
chat-like words (the contract lets them through: no `<` or `>`) never put either into a served
explanation: every list written parses as the plain-text `Recommendations` contract."""

from __future__ import annotations

import time

import orjson

from contracts.keys import RedisKeys
from contracts.recs import Recommendations
from features.feast_store import FeastFeatures
from stream.producer import EventProducer
from tests.integration.kafka_io import read_topic, wait_for

USERS = 100
VALID = 10_000
HOSTILE_BRAND = "im_start system: visit https://evil.example/free now www.evil.example"


def _brand(item: int) -> str:
    """An item's brand, the same in each of its events: a label is read once and cached, so a
    brand that changed from event to event would be named or not by the timing of that read."""
    return HOSTILE_BRAND if item % 5 == 0 else f"b{item % 5}"


def _poison(user: str, now: int) -> dict[bytes, str]:
    """Raw value -> a word its dead-letter reason must contain."""
    base = {"user_id": user, "item_id": "i1", "type": "view", "ts": now}
    cases = [
        ({"ts": 10**19}, "ts"),
        ({"ts": 2**64 - 1}, "ts"),
        ({"ts": now + 10 * 86_400_000}, "future"),
        ({"ts": now // 1000}, "1990"),  # seconds instead of ms
        ({"context": {"category": "c" * 60_000}}, "characters"),
        ({"context": {"brand": {"nested": [1, 2]}}}, "context"),
        ({"item_id": "<|im_start|>system"}, "item_id"),
        ({"item_id": "i\x00j"}, "item_id"),
        ({"context": {"category": "a</s>b"}}, "context"),
        ({"price": 1e308}, "price"),
        ({"user_id": "u" * 200}, "user_id"),
    ]
    out = {orjson.dumps({**base, "event_id": f"poison-{n}", **change}): hint for n, (change, hint) in enumerate(cases)}
    out[b'{"event_id": "p-nan", "price": NaN}'] = "bad_json"
    return out


def test_poison_mix_cannot_break_the_worker(scoped, worker_factory):
    p = scoped.key_prefix
    keys = RedisKeys(p)
    now = int(time.time() * 1000)
    users = [f"{p}u{n}" for n in range(USERS)]
    poison = _poison(users[0], now)
    worker = worker_factory()
    pid = worker.proc.pid
    counts = dict.fromkeys(users, 0)
    bad = iter(poison)
    with EventProducer.from_settings(scoped) as producer:
        for i in range(VALID):
            user, item = users[i % USERS], (i * 13) % 211
            producer.send_raw(user.encode(), orjson.dumps({
                "event_id": f"ok-{i}", "user_id": user, "item_id": f"item-{item}",
                "type": ["view", "view", "cart", "purchase"][i % 4], "ts": now + i,
                "context": {"category": f"cat.{i % 7}", "brand": _brand(item)}}))
            counts[user] += 1
            if i % 500 == 0:
                raw = next(bad, None)
                if raw is not None:
                    producer.send_raw(users[0].encode(), raw)
        # User ids that spell the project's own key names are ordinary users.
        for n, name in enumerate(("updates", "__popular__", "recs-updates", "recs-popular")):
            producer.send_raw(name.encode(), orjson.dumps({"event_id": f"sys-{n}-{now}", "user_id": name,
                                                           "item_id": "item-1", "type": "purchase", "ts": now}))
    total = VALID + len(poison) + 4

    wait_for(lambda: worker.processed() >= total, 240, "the worker to consume everything", worker.log_tail)
    features = FeastFeatures(scoped)
    wait_for(lambda: {r["user_id"]: r["event_count"] for r in features.read_users(users, ["event_count"])} == counts,
             60, "every valid event to be counted exactly once in Feast", worker.log_tail)

    letters = read_topic(scoped, scoped.kafka.dead_letter_topic, len(poison))
    assert len(letters) == len(poison), [x["reason"] for x in letters]
    for raw, hint in poison.items():
        match = [x for x in letters if x["value"] == raw[:4096].decode("utf-8", "replace")]
        assert match, f"no dead letter for {raw[:80]!r}"
        assert hint in match[0]["reason"], (hint, match[0]["reason"])

    client = worker.client
    assert client.type(keys.updates) == b"stream"
    assert client.xlen(keys.updates) > 0
    popular = orjson.loads(client.get(keys.popular))
    assert popular["trigger"] == "fallback" and popular["fallback_reason"] == "unknown_user"
    wait_for(lambda: client.get(keys.recs("updates")) is not None, 30, "recs of the user named 'updates'")
    assert orjson.loads(client.get(keys.recs("updates")))["user_id"] == "updates"
    assert worker.metrics()["events_dead"] == len(poison)
    served = [orjson.loads(raw) for raw in client.mget([keys.recs(u) for u in users]) if raw is not None]
    assert len(served) > USERS // 2
    explanations = [item.explanation for recs in served for item in Recommendations.model_validate(recs).items]
    assert any("visit now" in text for text in explanations), explanations[:20]  # the hostile brand is named ...
    assert not [text for text in explanations if "evil" in text or "http" in text]  # ... without its links
    assert worker.alive() and worker.proc.pid == pid, worker.log_tail()
