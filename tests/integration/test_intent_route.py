"""The intent route for real: the worker sending refreshes to a reasoner (stream/reasoner_service.py)
over Kafka with a trained checkpoint; the reasoner's coalescing, shedding, dead letters, hung
batches and SIGKILL; and the OpenAI-compatible backend against `transformers serve` hosting the
same checkpoint."""

from __future__ import annotations

import json
import os
import socket
from collections import namedtuple
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pandas as pd
import pytest
import redis

from contracts.intent import IntentRequest, IntentResult
from contracts.keys import RedisKeys
from contracts.recs import Recommendations
from features.feast_store import FeastFeatures
from offline import datasets
from offline.replay import replay
from stream.producer import EventProducer
from stream.metrics import intent_backlog, intent_coverage, read_metrics
from tests.integration.kafka_io import committed_and_end, read_topic, wait_for

pytestmark = pytest.mark.integration


def _children(pid: int) -> dict[int, str]:
    """pid -> command line of the multiprocessing children of `pid` (Linux /proc; not its
    resource tracker)."""
    kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    lines = {k: Path(f"/proc/{k}/cmdline").read_bytes().replace(b"\0", b" ").decode() for k in kids}
    return {k: line for k, line in lines.items() if "spawn_main" in line}


def _wait_reasoned(client, keys, processes, timeout_s: float = 180) -> None:
    """Until every request the worker sent has been handled and some were reasoned about."""
    def idle() -> bool:
        return intent_backlog(client, keys) == 0 and int(client.hget(keys.metrics, "intent_users") or 0) > 0

    wait_for(idle, timeout_s, "the reasoner to handle every request",
             lambda: "\n".join(p.log_tail() for p in processes))


def test_worker_sends_refreshes_to_the_reasoner_which_serves_merged_lists_and_pushes_the_context(
        scoped, worker_factory, reasoner_factory, tiny_intent_model: Path, data_dir: Path, tmp_path: Path) -> None:
    from training.sequential import SequentialConfig, train_and_export

    data = datasets.load("rees46", data_dir).head(1500)
    # With a sequential model too: the worker merges its route, the reasoner ranks tags' items by it.
    sequential_dir = tmp_path / "sequential"
    train_and_export(data.events, sequential_dir, "seq-test", SequentialConfig(max_epochs=3, dropout_grid=None,
                                                                               threads=1))
    # Three epochs on 1,500 events may fit the route's weight to 0; this test is about the wiring.
    meta = json.loads((sequential_dir / "sequential.json").read_text())
    (sequential_dir / "sequential.json").write_text(json.dumps({**meta, "merge_weight": 1.0, "weight_recent": 1.0}))
    settings = scoped.model_copy(update={
        "intent": scoped.intent.model_copy(update={"enabled": True, "model_dir": tiny_intent_model,
                                                   "batch_size": 16,
                                                   # the fixture's fitted weight may be 0 (a useless
                                                   # model); this test is about the wiring
                                                   "weight_intent": 1.0}),
        "sequential": scoped.sequential.model_copy(update={"enabled": True, "model_dir": sequential_dir})})
    prefix = settings.key_prefix  # namespaces user ids in the shared Feast project
    worker = worker_factory(settings)
    reasoner = reasoner_factory(settings)
    with EventProducer.from_settings(settings) as producer:
        replay(data, producer, user_prefix=prefix)
    wait_for(lambda: worker.processed() >= len(data.events), 180, "the worker to process the slice", worker.log_tail)
    client = redis.Redis(host=settings.redis.host, port=settings.redis.port, db=settings.redis.db)
    keys = RedisKeys(settings.key_prefix)
    _wait_reasoned(client, keys, [worker, reasoner])

    # Reasoning is its own tier: the worker's only child is the Feast pusher, the LM runs in the
    # reasoner's child.
    assert len(_children(worker.proc.pid)) == 1, _children(worker.proc.pid)
    assert len(_children(reasoner.proc.pid)) == 1, _children(reasoner.proc.pid)
    # ... at a lower priority: where they share cores the stream runs first (intent.nice,
    # intent.sched_idle).
    (lm_child,) = _children(reasoner.proc.pid)
    niceness = os.getpriority(os.PRIO_PROCESS, lm_child) - os.getpriority(os.PRIO_PROCESS, reasoner.proc.pid)
    assert niceness == settings.intent.nice == 19  # the default: the lowest normal priority
    assert os.sched_getscheduler(lm_child) == (os.SCHED_IDLE if settings.intent.sched_idle else os.SCHED_OTHER)
    assert os.sched_getscheduler(reasoner.proc.pid) == os.sched_getscheduler(worker.proc.pid) == os.SCHED_OTHER
    users = [prefix + u for u in data.events.user_id.unique()]
    served = [Recommendations.model_validate_json(raw) for raw in client.mget([keys.recs(u) for u in users]) if raw]
    # behavioural-1+seq-test from the worker alone; behavioural-1+seq-test+<intent version> once merged
    merged = [r for r in served if r.fallback_reason is None and not r.model_version.endswith("+seq-test")]
    assert merged, {r.fallback_reason for r in served}
    assert all(r.fallback_reason in (None, "intent_timeout") for r in served), {r.fallback_reason for r in served}
    purchases = data.events[data.events.type == "purchase"]
    bought = purchases.assign(user_id=prefix + purchases.user_id).groupby("user_id").item_id.agg(set).to_dict()
    with_intent = [r for r in merged if any(i.route == "intent" for i in r.items)]
    assert with_intent, "no merged list holds an intent item"
    assert all("+seq-test" in r.model_version for r in served if r.state_version), {r.model_version for r in served}
    assert any(i.route == "sequential" for r in served for i in r.items)
    m = read_metrics(client, keys)
    assert m["intent_ranked_by_sequential"] == m["intent_users"] > 0  # every batch ranked tags' items by it
    for r in merged:
        assert r.intents and all(i.tags for i in r.intents)
        assert not bought.get(r.user_id, set()) & {i.item_id for i in r.items}
        for item in r.items:
            if item.route == "intent":
                assert item.tag and item.explanation
    # The stored result of each merged user is what the next refresh merges (contracts/intent.py).
    for r in merged[:20]:
        stored = IntentResult.model_validate_json(client.get(keys.intent(r.user_id)))
        assert stored.state_version <= r.state_version and r.model_version.endswith("+" + stored.version)
    contexts = FeastFeatures(settings).read_contexts([r.user_id for r in merged[:5]])
    for row, r in zip(contexts, merged[:5]):
        assert row["context_items"] and row["model_version"] == r.model_version.rsplit("+", 1)[1]
        assert row["context_mode"] == "hybrid" and row["embedder"].startswith("all-MiniLM-L6-v2")
    m = worker.metrics()
    assert m["intent_requested"] > 0 and m["intent_handled"] >= m["intent_requested"]
    assert m["intent_requested"] + m.get("intent_recent_reused", 0) + m.get("intent_queue_full", 0) == m["refreshes"]


def test_worker_sends_a_refresh_only_when_the_intent_may_have_changed(scoped) -> None:
    # The worker's side of the route for real (Redis for the last results, Kafka for requests),
    # driven by hand: which refreshes go to reasoning (stream/trigger.py intent_due).
    from contracts.recs import FallbackReason, rec_item
    from reasoning.reasoner import UserView
    from stream.intent_route import IntentRoute

    settings = scoped.model_copy(update={"intent": scoped.intent.model_copy(
        update={"min_interval_s": 10.0, "every_n_events": 8})})
    client = redis.Redis(host=settings.redis.host, port=settings.redis.port, db=settings.redis.db)
    keys = RedisKeys(settings.key_prefix)
    route = IntentRoute(settings, client)
    try:
        now = int(time.time() * 1000)
        last = {"items": [rec_item("x", 1.0, "intent", "because")], "intents": [], "version": "v1", "tags": ["t"],
                "context_items": [], "context_actions": [], "weights": [1.0, 1.0, 0.3]}
        client.set(keys.intent("recent"), orjson.dumps({**last, "user_id": "recent", "at_ms": now, "state_version": 5}))
        client.set(keys.intent("old"), orjson.dumps({**last, "user_id": "old", "at_ms": now - 60_000, "state_version": 5}))

        def submit(user: str, trigger: str, version: int) -> FallbackReason | None:
            view = UserView(user, [["i1", "view", now, "c"]], frozenset(), ["c"], version, trigger)
            payload = {"user_id": user, "items": [rec_item("b", 1.0, "covisit", "e")], "model_version": "b-1"}
            reason = route.submit([view], [payload], [now])[0]
            if user != "new":  # the last intent result is merged into the fresh list, sent or not
                assert payload["model_version"] == "b-1+v1" and payload["tags"] == ["t"]
                assert {"b", "x"} <= {e["item_id"] for e in payload["items"]}
            return reason

        assert submit("new", "event_count", 3) is FallbackReason.intent_pending
        assert submit("new", "purchase", 4) is None                         # just sent: on its way
        assert submit("recent", "purchase", 6) is None                      # inside min_interval_s
        assert submit("old", "event_count", 9) is None                      # 4 events since: same intent
        assert submit("old", "event_count", 13) is FallbackReason.intent_pending
        route.flush()
    finally:
        route.close()
    sent = read_topic(settings, settings.kafka.intent_topic, 2)
    assert sorted((r["user_id"], r["state_version"]) for r in sent) == [("new", 3), ("old", 13)]
    request = IntentRequest.model_validate(next(r for r in sent if r["user_id"] == "old"))
    assert request.behavioural["model_version"] == "b-1" and request.behavioural["fallback_reason"] is None


def _request(user: str, version: int, requested_ms: int, item: str) -> bytes:
    payload = {"user_id": user, "items": [], "intents": [], "generated_at": "2026-12-01T00:00:00+00:00",
               "state_version": version, "trigger": "first_events", "model_version": "behavioural-1",
               "fallback_reason": None}
    return orjson.dumps(IntentRequest(user_id=user, state_version=version, trigger="first_events",
                                      recent=[[item, "view", 1_570_000_000_000]], bought=[], behavioural=payload,
                                      requested_ms=requested_ms, last_produced_ms=requested_ms).model_dump())


def test_reasoner_coalesces_per_user_sheds_stale_requests_and_dead_letters_invalid_ones(
        scoped, reasoner_factory, tiny_intent_model: Path) -> None:
    settings = scoped.model_copy(update={"intent": scoped.intent.model_copy(
        update={"enabled": True, "model_dir": tiny_intent_model, "batch_size": 8, "max_wait_s": 60.0})})
    items = sorted(pd.read_parquet(tiny_intent_model / "catalog.parquet").item_id.astype(str))[:3]
    p = settings.key_prefix
    now = int(time.time() * 1000)
    with EventProducer.from_settings(settings, settings.kafka.intent_topic) as producer:
        producer.send_raw(f"{p}a".encode(), _request(f"{p}a", 3, now, items[0]))
        producer.send_raw(f"{p}a".encode(), _request(f"{p}a", 5, now, items[1]))  # newer: wins
        producer.send_raw(f"{p}b".encode(), _request(f"{p}b", 2, now - 120_000, items[2]))  # waited 2 min
        producer.send_raw(f"{p}c".encode(), b'{"user_id": "c"}')  # not a request
    reasoner = reasoner_factory(settings)
    client = redis.Redis(host=settings.redis.host, port=settings.redis.port, db=settings.redis.db)
    keys = RedisKeys(p)
    wait_for(lambda: int(client.hget(keys.metrics, "intent_handled") or 0) >= 4, 60, "the four requests",
             reasoner.log_tail)
    m = reasoner.metrics()
    assert (m["intent_superseded"], m["intent_shed"], m["intent_requests_invalid"], m["intent_users"]) == (1, 1, 1, 1)
    assert IntentResult.model_validate_json(client.get(keys.intent(f"{p}a"))).state_version == 5
    a = Recommendations.model_validate_json(client.get(keys.recs(f"{p}a")))
    assert a.state_version == 5 and a.fallback_reason is None and a.intents
    b = Recommendations.model_validate_json(client.get(keys.recs(f"{p}b")))
    assert b.fallback_reason == "intent_timeout" and client.get(keys.intent(f"{p}b")) is None
    letters = read_topic(settings, settings.kafka.dead_letter_topic, 1)
    assert [letter["reason"].split(":")[0] for letter in letters] == ["invalid_intent_request"]
    # SIGTERM: it commits what it handled and exits by itself; nothing comes again to the next one.
    assert reasoner.stop(timeout_s=30), reasoner.log_tail()
    committed, end = committed_and_end(settings, settings.kafka.intent_topic, settings.reasoner_group)
    assert all(committed.get(part, 0) == n for part, n in end.items()), (committed, end)


def test_a_result_whose_user_was_refreshed_meanwhile_replaces_the_intent_items_of_the_newer_list(
        scoped, reasoner_factory, tiny_intent_model: Path) -> None:
    # The worker refreshed the user (state 9) while their request (state 5) waited, merging the
    # intent result it held then ("m-old"): the new result must not overwrite that newer list,
    # nor wait for a next refresh that may never come (the session ended).
    settings = scoped.model_copy(update={"intent": scoped.intent.model_copy(
        update={"enabled": True, "model_dir": tiny_intent_model, "batch_size": 8, "max_wait_s": 60.0})})
    items = sorted(pd.read_parquet(tiny_intent_model / "catalog.parquet").item_id.astype(str))[:2]
    version = json.loads((tiny_intent_model / "intent.json").read_text())["version"]
    p = settings.key_prefix
    user = f"{p}a"
    client = redis.Redis(host=settings.redis.host, port=settings.redis.port, db=settings.redis.db)
    keys = RedisKeys(p)
    newer = {"user_id": user, "generated_at": "2026-12-01T00:00:00+00:00", "state_version": 9,
             "trigger": "event_count", "model_version": "behavioural-1+m-old", "fallback_reason": None,
             "intents": [{"persona": "old persona", "tags": ["old tag"]}], "tags": ["old tag"],
             "items": [{"item_id": items[1], "score": 0.1, "route": "covisit", "tag": None, "explanation": "x"},
                       {"item_id": "old-intent-item", "score": 0.05, "route": "intent", "tag": "old tag",
                        "explanation": "y"}]}
    client.set(keys.recs(user), orjson.dumps(newer))
    client.set(keys.intent(user), orjson.dumps({"user_id": user, "state_version": 4, "version": "m-old"}))
    with EventProducer.from_settings(settings, settings.kafka.intent_topic) as producer:
        producer.send_raw(user.encode(), _request(user, 5, int(time.time() * 1000), items[0]))
    reasoner = reasoner_factory(settings)
    wait_for(lambda: int(client.hget(keys.metrics, "intent_handled") or 0) >= 1, 60, "the request",
             reasoner.log_tail)
    assert reasoner.metrics()["intent_remerged"] == 1
    assert IntentResult.model_validate_json(client.get(keys.intent(user))).state_version == 5
    served = Recommendations.model_validate_json(client.get(keys.recs(user)))
    assert (served.state_version, served.trigger, served.model_version) == (9, "event_count", f"behavioural-1+{version}")
    ids = [e.item_id for e in served.items]
    assert items[1] in ids and "old-intent-item" not in ids
    assert any(e.route == "intent" for e in served.items) and "old tag" not in served.tags
    # One announcement, of the list written (state 9), none of the refused write (state 5).
    announced = [(f[b"user_id"].decode(), int(f[b"state_version"])) for _, f in client.xrange(keys.updates)]
    assert announced == [(user, 9)]
    # The coverage figure reads the same: a list carries the result its model version ends with,
    # not any `+` (here a sequential route's version, with no intent merged).
    other = f"{p}b"
    client.set(keys.recs(other), orjson.dumps({**newer, "user_id": other, "model_version": "behavioural-1+seq-2"}))
    client.set(keys.intent(other), orjson.dumps({"user_id": other, "state_version": 8, "version": version}))
    coverage = intent_coverage(client, keys, [user, other, f"{p}c"], max_behind=10)
    assert (coverage["users"], coverage["covered"], coverage["merged_stale"], coverage["never"]) == (2, 1, 1, 0)


def test_a_take_holds_every_request_that_was_waiting_and_counts_those_behind_it(scoped) -> None:
    # kafka-python fetches ahead: after a take, its next fetch comes back with the requests that
    # arrived first (here: one) while the reasoner is busy; the next take must not stop there.
    from stream.reasoner_service import ReasonerService

    p = scoped.key_prefix
    service = ReasonerService(scoped)

    def send(users: range) -> None:
        with EventProducer.from_settings(scoped, scoped.kafka.intent_topic) as producer:
            for i in users:
                producer.send_raw(f"{p}u{i}".encode(), _request(f"{p}u{i}", 1, int(time.time() * 1000), "i1"))

    try:
        send(range(1))
        deadline = time.monotonic() + 60
        while not (first := service._take())[0] and time.monotonic() < deadline:  # joins the group first
            pass
        assert [len(first[0]), first[1]] == [1, 0]
        send(range(1, 2))
        time.sleep(1.0)  # the fetch sent ahead returns with this one
        send(range(2, 10))
        time.sleep(1.0)
        records, behind = service._take()
        assert (sorted(r.key.decode() for r in records), behind) == ([f"{p}u{i}" for i in range(1, 10)], 0)
        send(range(10, 16))
        time.sleep(1.0)
        service.cfg = service.cfg.model_copy(update={"take_max": 4})
        assert [(len(t[0]), t[1]) for t in (service._take(), service._take())] == [(4, 2), (2, 0)]
    finally:
        service.consumer.close()
        service.child.close()


def test_a_reasoner_takes_a_backlog_larger_than_a_megabyte_a_partition_without_a_frame_error(
        scoped, caplog) -> None:
    # One fetch brings up to 1 MiB from each assigned partition in one network frame; kafka-python
    # 2.3.3's default frame limit (1,000,000 bytes) dropped the connection on it and reconnected
    # (contracts/settings.py KafkaSettings.client_options).
    import logging

    from stream.reasoner_service import ReasonerService

    p, n = scoped.key_prefix, 120 * scoped.kafka.partitions
    service = ReasonerService(scoped)
    service.cfg = service.cfg.model_copy(update={"take_max": n})
    try:
        with EventProducer.from_settings(scoped, scoped.kafka.intent_topic) as producer:
            for i in range(n):  # ~12 KB each: ~1.4 MB on each partition
                producer.send_raw(f"{p}u{i}".encode(), _request(f"{p}u{i}", 1, int(time.time() * 1000), "i" * 12_000))
        _, end = committed_and_end(scoped, scoped.kafka.intent_topic, scoped.reasoner_group)
        assert len(end) == scoped.kafka.partitions and min(end.values()) * 12_000 > 1024 * 1024, end
        got: set[str] = set()
        deadline = time.monotonic() + 60
        with caplog.at_level(logging.WARNING, logger="kafka"):
            while len(got) < n and time.monotonic() < deadline:
                got |= {r.key.decode() for r in service._take()[0]}
        assert len(got) == n
        assert not [r.getMessage() for r in caplog.records if "frame length" in r.getMessage()]
    finally:
        service.consumer.close()
        service.child.close()


def test_under_overload_a_reasoner_serves_the_newest_users_and_sheds_the_rest_at_once(
        scoped, tiny_intent_model: Path) -> None:
    # stream/reasoner_service.py step 4, in this process: a reasoner that measured 0.1 users/s
    # can serve max(batch_size, 0.1 x max_wait_s) = 2 users within the SLO, so of five waiting
    # users the two with the newest events are reasoned about and three get intent_timeout now.
    from stream.reasoner_service import ReasonerService

    settings = scoped.model_copy(update={"intent": scoped.intent.model_copy(
        update={"enabled": True, "model_dir": tiny_intent_model, "batch_size": 2, "max_wait_s": 10.0})})
    items = sorted(pd.read_parquet(tiny_intent_model / "catalog.parquet").item_id.astype(str))[:5]
    p = settings.key_prefix
    Record = namedtuple("Record", "key value topic partition offset")
    service = ReasonerService(settings)
    try:
        service.child.warm_up()
        now = int(time.time() * 1000)  # after the model load: none of them waited past max_wait_s
        records = [Record(f"{p}u{i}".encode(), _request(f"{p}u{i}", 1, now - 1000 + i, items[i]), "t", 0, i)
                   for i in range(5)]
        assert service.budget() is None  # not measured yet: no limit
        service.users_per_s = 0.1
        assert service.budget() == 2
        service.handle(records)
        measured = service.users_per_s
        # Requests waiting behind a take are newer than all of it and take the budget first: with
        # 5 of them behind, these two are shed unreasoned.
        service.users_per_s = 0.1
        now = int(time.time() * 1000)
        service.handle([Record(f"{p}v{i}".encode(), _request(f"{p}v{i}", 1, now, items[i]), "t", 0, 10 + i)
                        for i in range(2)], lag=5)
    finally:
        service.consumer.close()
        service.child.close()
    client = redis.Redis(host=settings.redis.host, port=settings.redis.port, db=settings.redis.db)
    keys = RedisKeys(p)
    served = {i: Recommendations.model_validate_json(client.get(keys.recs(f"{p}u{i}"))) for i in range(5)}
    assert [i for i in range(5) if served[i].fallback_reason is None] == [3, 4], {i: r.fallback_reason for i, r in served.items()}
    assert all(served[i].fallback_reason == "intent_timeout" for i in range(3))
    m = read_metrics(client, keys)
    assert (m["intent_shed"], m["intent_users"], m["intent_handled"]) == (3 + 2, 2, 5 + 2)
    assert measured > 0.1  # the batch it ran measured it again
    assert all(Recommendations.model_validate_json(client.get(keys.recs(f"{p}v{i}"))).fallback_reason
               == "intent_timeout" for i in range(2))


def test_a_reasoner_waits_a_redis_restart_out_and_stops_loudly_when_it_lasts_too_long(
        scoped, tiny_intent_model: Path) -> None:
    # stream/reasoner_service.py, Outages, in this process against the session's real Redis: a
    # take that meets Redis down (the parent's and the LM child's clients) is handled again once
    # it is back, not failed; an outage past worker.outage_wait_s raises WorkerStopped, nothing
    # written and nothing for the caller to commit.
    import threading

    from infra.redis_server import EmbeddedRedis
    from stream.failures import WorkerStopped
    from stream.reasoner_service import ReasonerService

    settings = scoped.model_copy(update={
        "intent": scoped.intent.model_copy(update={"enabled": True, "model_dir": tiny_intent_model, "batch_size": 4,
                                                   "max_wait_s": 600.0}),
        "worker": scoped.worker.model_copy(update={"retry_backoff_s": 0.5, "outage_wait_s": 30.0})})
    items = sorted(pd.read_parquet(tiny_intent_model / "catalog.parquet").item_id.astype(str))[:4]
    p = settings.key_prefix
    Record = namedtuple("Record", "key value topic partition offset")
    server = EmbeddedRedis(settings)
    client = redis.Redis(host=settings.redis.host, port=settings.redis.port, db=settings.redis.db)
    keys = RedisKeys(p)
    service = ReasonerService(settings)
    try:
        service.child.warm_up()
        now = int(time.time() * 1000)
        records = [Record(f"{p}u{i}".encode(), _request(f"{p}u{i}", 1, now, items[i]), "t", 0, i) for i in range(2)]
        assert server.stop()
        restart = threading.Timer(4.0, server.start)
        restart.start()
        started = time.monotonic()
        service.handle_through_outage(records)
        took = time.monotonic() - started
        restart.join()
        assert took >= 4.0, took  # it waited for Redis (it did not write into the void or skip)
        for i in range(2):
            served = Recommendations.model_validate_json(client.get(keys.recs(f"{p}u{i}")))
            assert served.fallback_reason is None and served.intents, served  # reasoned, not intent_failed
            assert IntentResult.model_validate_json(client.get(keys.intent(f"{p}u{i}"))).state_version == 1
        m = read_metrics(client, keys)
        assert m.get("intent_errors", 0) == 0 and m["intent_handled"] == 2, m

        # Longer than the budget: stop loudly.
        service.settings = settings.model_copy(update={"worker": settings.worker.model_copy(
            update={"outage_wait_s": 1.0})})
        later = [Record(f"{p}v{i}".encode(), _request(f"{p}v{i}", 1, now, items[2 + i]), "t", 0, 10 + i)
                 for i in range(2)]
        assert server.stop()
        try:
            with pytest.raises(WorkerStopped, match="over 1.5 s"):
                service.handle_through_outage(later)
        finally:
            server.start()
        assert client.get(keys.recs(f"{p}v0")) is None and client.get(keys.recs(f"{p}v1")) is None
    finally:
        server.start()
        service.consumer.close()
        service.child.close()


def test_a_reasoner_killed_mid_take_loses_no_request(
        scoped, worker_factory, reasoner_factory, tiny_intent_model: Path, data_dir: Path) -> None:
    settings = scoped.model_copy(update={"intent": scoped.intent.model_copy(
        update={"enabled": True, "model_dir": tiny_intent_model, "batch_size": 8, "take_max": 64,
                "min_interval_s": 0.0, "every_n_events": 1, "max_wait_s": 600.0})})
    data = datasets.load("rees46", data_dir).head(1500)
    prefix = settings.key_prefix
    worker = worker_factory(settings)
    first = reasoner_factory(settings)
    client = redis.Redis(host=settings.redis.host, port=settings.redis.port, db=settings.redis.db)
    keys = RedisKeys(settings.key_prefix)
    with EventProducer.from_settings(settings) as producer:
        replay(data, producer, user_prefix=prefix)
    wait_for(lambda: int(client.hget(keys.metrics, "intent_users") or 0) >= 16, 180, "the first batches",
             first.log_tail)
    first.stop(kill=True)  # SIGKILL: its take in hand is not committed
    assert intent_backlog(client, keys), "nothing left for the second reasoner: the kill came too late"
    wait_for(lambda: worker.processed() >= len(data.events), 180, "the worker to process the slice", worker.log_tail)
    second = reasoner_factory(settings)
    sent = int(client.hget(keys.metrics, "intent_requested"))
    requests = read_topic(settings, settings.kafka.intent_topic, sent, timeout_s=60)
    assert len(requests) == sent
    newest: dict[str, int] = {}
    for r in requests:
        newest[r["user_id"]] = max(newest.get(r["user_id"], 0), r["state_version"])

    def missing() -> list[str]:
        raws = client.mget([keys.intent(u) for u in newest])
        return [u for u, raw in zip(newest, raws) if raw is None or orjson.loads(raw)["state_version"] != newest[u]]

    wait_for(lambda: not missing(), 240, "every user's newest request to be reasoned about",
             lambda: f"{len(missing())} of {len(newest)} users missing\n{second.log_tail()}")
    assert second.alive(), second.log_tail()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def served_model(request) -> Path:
    """Each backbone's intent model: the tiny one and the one fine-tuned from SmolLM2."""
    return request.getfixturevalue("tiny_intent_model" if request.param == "tiny" else "smollm2_intent_model")


@pytest.fixture(scope="module")
def transformers_server(served_model: Path, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    exe = Path(sys.executable).with_name("transformers")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "serve", str(served_model), "--port", str(port), "--device", "cpu"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    else:
        proc.kill()
        pytest.fail(f"transformers serve did not come up:\n{log.read_text()[-3000:]}")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def test_openai_backend_against_transformers_serve(transformers_server: str, served_model: Path,
                                                   base_settings) -> None:
    from reasoning.engine import IntentEngine
    from reasoning.pipeline import IntentInput, reason

    cfg = base_settings.intent.model_copy(update={"backend": "openai", "openai_url": transformers_server,
                                                  "personas": 2, "tags_per_persona": 3, "final_tags": 6,
                                                  "llm_explanations": 2})
    engine = IntentEngine(served_model, cfg, base_settings.cache_dir)
    items = sorted(engine.catalog.items)[:10]
    users = [IntentInput(f"u{u}", [[items[u + j], "view", 1_570_000_000_000] for j in range(4)], frozenset())
             for u in range(3)]
    results, stats = reason(engine, users, {}, 20)
    vocab = engine.model.vocab
    assert stats.tokens > 0  # the server's usage was counted
    for result in results:
        assert all(i["persona"] in vocab.personas for i in result.intents)
        assert set(result.tags) <= set(vocab.tags)  # whatever the server says, nothing invented
        assert all(e["tag"] in result.tags for e in result.items)
    assert all(e["explanation"] for result in results for e in result.items)
    if json.loads((served_model / "intent.json").read_text()).get("base") == "smollm2":
        # Fine-tuned for 2 steps, SmolLM2 still answers as the instruct model it was: free text,
        # whose phrases are outside the vocabulary and dropped. Its explanations (the instruct
        # model writing one sentence from the grounded facts) go through the same gate.
        from reasoning.explanations import Facts

        assert engine.backend.answers > 0  # the server answered (text, not the vocabulary's phrases)
        catalog = engine.catalog
        item, other = (catalog.get(i) for i in items[:2])
        facts = Facts(item, None, None, other, "evening, wednesday, autumn")
        text = engine.backend.write_explanation("history", facts)
        assert text and "<|" not in text, text
        style, served, faithful = engine.explainer.explain(facts, "u0", engine.backend.write_explanation)
        assert served and faithful  # the LLM's sentence if it passed the gate, else the grounded one
        return
    # The first two intent items of each user asked the server for an explanation; the gate
    # decided which to serve (a tiny model mostly writes text that names nothing grounded).
    assert engine.explainer.llm_attempts >= 2
    # The server really answered, in the checkpoint's own format: personas came back from it.
    assert engine.backend.answers > 0
    assert any(result.intents and result.intents[0]["tags"] for result in results)


def test_openai_backend_reports_a_down_server_as_retryable(tiny_intent_model: Path, base_settings) -> None:
    from reasoning.engine import IntentEngine
    from reasoning.errors import BackendError
    from reasoning.pipeline import IntentInput, reason

    cfg = base_settings.intent.model_copy(update={"backend": "openai", "openai_url": f"http://127.0.0.1:{_free_port()}"})
    engine = IntentEngine(tiny_intent_model, cfg, base_settings.cache_dir)
    item = sorted(engine.catalog.items)[0]
    with pytest.raises(BackendError) as info:
        reason(engine, [IntentInput("u", [[item, "view", 0]], frozenset())], {}, 10)
    assert info.value.retryable


def test_a_hung_reasoning_batch_is_abandoned_and_its_users_fall_back(
        scoped, worker_factory, reasoner_factory, tiny_intent_model: Path, data_dir: Path) -> None:
    # A batch timeout far below what a batch takes: every batch counts as hung, so every LM child
    # is killed and replaced; the reasoner and the stream must go on and every sent user must get
    # its fallback.
    settings = scoped.model_copy(update={"intent": scoped.intent.model_copy(
        update={"enabled": True, "model_dir": tiny_intent_model, "batch_size": 16, "batch_timeout_s": 0.05})})
    data = datasets.load("rees46", data_dir).head(600)
    prefix = settings.key_prefix
    worker = worker_factory(settings)
    reasoner = reasoner_factory(settings)
    pid, reasoner_pid = worker.proc.pid, reasoner.proc.pid
    with EventProducer.from_settings(settings) as producer:
        replay(data, producer, user_prefix=prefix)
    wait_for(lambda: worker.processed() >= len(data.events), 180, "the worker to process the slice", worker.log_tail)
    client = redis.Redis(host=settings.redis.host, port=settings.redis.port, db=settings.redis.db)
    keys = RedisKeys(settings.key_prefix)
    wait_for(lambda: int(client.hget(keys.metrics, "intent_errors") or 0) >= 2, 60,
             "two hung batches to be abandoned", reasoner.log_tail)
    users = [prefix + u for u in data.events.user_id.unique()]

    def timed_out() -> list[Recommendations]:
        served = [Recommendations.model_validate_json(raw) for raw in client.mget([keys.recs(u) for u in users]) if raw]
        return [r for r in served if r.fallback_reason == "intent_timeout"]

    wait_for(lambda: len(timed_out()) > 0, 60, "users of an abandoned batch to get intent_timeout", reasoner.log_tail)
    assert all(r.items for r in timed_out())  # the behavioural list still serves them
    assert worker.alive() and worker.proc.pid == pid, worker.log_tail()
    assert reasoner.alive() and reasoner.proc.pid == reasoner_pid, reasoner.log_tail()
    assert "replaced the LM child" in reasoner.log_tail(200)
