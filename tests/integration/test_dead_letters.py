"""Malformed input goes to the dead-letter topic with its reason; valid events are all processed;
the worker stays up."""

from __future__ import annotations

import time

import orjson

from features.feast_store import FeastFeatures
from stream.producer import EventProducer
from tests.integration.kafka_io import read_topic, wait_for


def _valid(i: int, user: str) -> bytes:
    return orjson.dumps({"event_id": f"ok-{i}", "user_id": user, "item_id": f"item-{i % 7}",
                         "type": ["view", "cart", "purchase"][i % 3], "ts": int(time.time() * 1000)})


def test_malformed_events_are_dead_lettered(scoped, worker_factory):
    p = scoped.key_prefix
    users = [f"{p}u{n}" for n in range(5)]
    malformed = {
        b"{not json": "bad_json",
        b"[1, 2, 3]": "not_an_object",
        orjson.dumps({"event_id": "m1", "user_id": users[0], "type": "view", "ts": 1}): "item_id",
        orjson.dumps({"event_id": "m2", "user_id": users[0], "item_id": "x", "type": "teleport", "ts": 1}): "type",
        orjson.dumps({"event_id": "m3", "user_id": users[0], "item_id": "x", "type": "view", "ts": "yesterday"}): "ts",
        orjson.dumps({"event_id": "m4", "user_id": ["a"], "item_id": "x", "type": "view", "ts": 1}): "user_id",
        orjson.dumps({"event_id": "m5", "user_id": users[0], "item_id": "x", "type": "view", "ts": 1,
                      "context": {"blob": "x" * (scoped.worker.max_event_bytes + 10)}}): "oversized",
    }
    worker = worker_factory()
    expected_counts = {u: 0 for u in users}
    with EventProducer.from_settings(scoped) as producer:
        bad = iter(malformed)
        for i in range(60):
            user = users[i % len(users)]
            producer.send_raw(user.encode(), _valid(i, user))
            expected_counts[user] += 1
            if i % 8 == 0:
                raw = next(bad, None)
                if raw is not None:
                    producer.send_raw(users[0].encode(), raw)
    total = 60 + len(malformed)

    wait_for(lambda: worker.processed() >= total, 120, "the worker to consume everything", worker.log_tail)
    metrics = worker.metrics()
    assert metrics["events_valid"] == 60
    assert metrics["events_dead"] == len(malformed)

    letters = read_topic(scoped, scoped.kafka.dead_letter_topic, len(malformed))
    assert len(letters) == len(malformed)
    by_value = {}
    for letter in letters:
        assert letter["reason"] and letter["topic"] == scoped.kafka.events_topic and letter["offset"] >= 0
        by_value[letter["value"]] = letter
    for raw, hint in malformed.items():
        match = [letter for letter in letters if letter["value"] == raw[:4096].decode()]
        assert match, f"no dead letter for {raw[:60]!r}"
        assert hint in match[0]["reason"], (hint, match[0]["reason"])

    rows = FeastFeatures(scoped).read_users(users, ["event_count"])
    assert {r["user_id"]: r["event_count"] for r in rows} == expected_counts
    assert worker.alive(), worker.log_tail()
