"""`intentstream bench chaos`: faults while events flow, then what was lost or counted twice.

1. Events: the Taobao samples (89,123 events, 1,195 users) looped `loops` times (default 3:
   267,369 events), each loop's users and event ids remapped (`c{n}:`), sent at `rate` events/s
   by one producer thread; one malformed message every 2,000 events (their dead letters are
   counted). The item ids repeat across loops, so item counts add up over loops.
2. Processes: one worker (static instance id) and, when an intent model is served, one reasoner,
   as `intentstream worker` / `reasoner` child processes on fresh topics and key prefix.
3. Faults, while the producer runs: the worker SIGKILLed `kill_every_s` (10) seconds after each
   time it became ready and restarted at once, while events are sent and until it has handled
   them all (its messages-handled count, at least once: redeliveries count again). A process
   that exits by itself (e.g. the worker after an outage longer than worker.outage_wait_s) is
   restarted as compose's `restart: unless-stopped` would, and counted (`exits_restarted`). At fixed
   times (from the start of sending) the reasoner SIGKILLed and restarted (15 s), the broker
   restarted (30 s: `intentstream down`'s stop, then start), Redis restarted (70 s) and Redis
   stalled with SIGSTOP for 20 s (110 s). Recovery time of each: from the end of the fault (the
   service back, the process restarted) until the worker's handled count moves again (the
   reasoner's handled requests for the reasoner's kill).
4. After sending: the faults stop, the worker drains; then every user's Feast `event_count` and
   every item's counts in the shared item model are compared with what was sent
   (infra/traffic.py `ExpectedCounts`): events lost and double counted (targets: 0 and 0); dead
   letters vs malformed messages sent; users whose served list is at their last state.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis
from kafka import KafkaConsumer

from benchmarks.ingest import commit, machine
from contracts.keys import RedisKeys
from contracts.settings import Settings
from contracts.topics import worker_topics
from features.redis_client import connect, delete_matching
from infra.broker import EmbeddedKafka
from infra.process import read_pid
from infra.redis_server import EmbeddedRedis
from infra.traffic import ExpectedCounts
from infra.worker_process import ReasonerProcess, WorkerProcess
from offline import datasets
from offline.replay import event_payloads
from reasoning.registry import served_model_dir
from stream.producer import EventProducer, delete_topics, ensure_topics

POISON_EVERY = 2000
POISON = b'{"event_id": "poison", "user_id": "p"}'


def _say(progress, text: str) -> None:
    if progress is not None:
        progress(f"[{time.strftime('%H:%M:%S')}] {text}")


class Watch:
    """The worker's processed count, read with a client of its own that survives Redis faults."""

    def __init__(self, settings: Settings) -> None:
        r = settings.redis
        self.client = redis.Redis(host=r.host, port=r.port, db=r.db, socket_timeout=1, **r.client_options())
        self.keys = RedisKeys(settings.key_prefix)

    WORKER = ("events_valid", "events_dead", "duplicates", "redelivered")
    REASONER = ("intent_handled",)

    def processed(self, fields: tuple[str, ...] = WORKER) -> int | None:
        try:  # redis-py reconnects at the next call after a failed one
            raw = self.client.hmget(self.keys.metrics, *fields)
            return sum(int(v) for v in raw if v is not None)
        except redis.RedisError:
            return None

    def recovery_s(self, since: float, timeout_s: float = 300, fields: tuple[str, ...] = WORKER) -> float | None:
        """Seconds from `since` until the count (the worker's messages handled, or the reasoner's
        requests) moves past its value then."""
        start = None
        while time.monotonic() - since < timeout_s:
            now = self.processed(fields)
            if now is not None:
                if start is None:
                    start = now
                elif now > start:
                    return round(time.monotonic() - since, 2)
            time.sleep(0.2)
        return None


def isolated_run(base: Settings, name: str, run: str, **worker: Any) -> tuple[Settings, bool, Path]:
    """Settings of one benchmark run on topics, a group and a key prefix of its own (created
    here), with `worker` settings changed and no metrics endpoint; whether an intent model is
    served (else the intent route is off); the run's log folder."""
    settings = base.isolated(f"{name}-{run}", key_prefix=f"{name}:{run}:")
    settings = settings.model_copy(update={
        "worker": settings.worker.model_copy(update=worker),
        "metrics": settings.metrics.model_copy(update={"worker_port": 0, "reasoner_port": 0}),
    })
    with_reasoner = served_model_dir(settings) is not None
    if not with_reasoner:
        settings = settings.model_copy(update={"intent": settings.intent.model_copy(update={"enabled": False})})
    k = settings.kafka
    ensure_topics(k, [k.events_topic, k.dead_letter_topic, k.feedback_topic, k.intent_topic])
    return settings, with_reasoner, settings.state_dir / "bench" / f"{name}-{run}"


def _dead_letters(settings: Settings) -> dict[str, Any]:
    """Dead letters written, the distinct messages they stand for (a message dead-lettered and
    then redelivered by a restart before its commit is written again), and their reasons."""
    consumer = KafkaConsumer(settings.kafka.dead_letter_topic, **settings.kafka.client_options(),
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    letters, origins, reasons = 0, set(), {}
    try:
        for message in consumer:
            letter = orjson.loads(message.value)
            letters += 1
            origins.add((letter["partition"], letter["offset"]))
            reason = letter["reason"].split(":")[0]
            reasons[reason] = reasons.get(reason, 0) + 1
    finally:
        consumer.close()
    return {"written": letters, "distinct_messages": len(origins), "reasons": reasons}


def run_chaos(base: Settings, loops: int = 3, rate: float = 2000.0, kill_every_s: float = 10.0,
              progress=None) -> dict[str, Any]:
    data = datasets.load("taobao", base.data_dir)
    run = uuid.uuid4().hex[:6]
    settings, with_reasoner, logs = isolated_run(base, "chaos", run, instance_id=f"chaos-{run}-w",
                                                 session_timeout_s=10.0)
    k = settings.kafka
    expected = ExpectedCounts(settings)
    watch = Watch(settings)
    events = data.events.sort_values("ts", kind="stable")
    total = loops * len(events)
    sent = {"valid": 0, "poison": 0, "done": False, "error": None}
    faults: list[dict[str, Any]] = []
    kills: list[dict[str, Any]] = []

    worker = WorkerProcess(settings, logs / "worker.log")
    reasoner = ReasonerProcess(settings, logs / "reasoner.log") if with_reasoner else None
    worker.start()
    if reasoner is not None:
        reasoner.start()
    _wait(worker.wait_ready, 180)

    def produce() -> None:
        began = time.monotonic()
        try:
            with EventProducer(k, k.events_topic) as producer:
                n = 0
                for loop in range(loops):
                    for key, value in event_payloads(events, user_prefix=f"c{loop}:", id_prefix=f"c{loop}:"):
                        if (ahead := n / rate - (time.monotonic() - began)) > 0:
                            time.sleep(ahead)
                        producer.send_raw(key, value)
                        event = orjson.loads(value)
                        expected.add(event["user_id"], event["item_id"], event["type"])
                        n += 1
                        sent["valid"] = n
                        if n % POISON_EVERY == 0:
                            producer.send_raw(b"p", POISON)
                            sent["poison"] += 1
        except Exception as exc:  # reported: the figures then cover what was acknowledged
            sent["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            sent["done"] = True

    lock = threading.Lock()
    exits = {"worker": 0, "reasoner": 0}
    running = {"supervise": True}

    def supervise() -> None:
        """What compose's `restart: unless-stopped` does: a process that exited is started again."""
        while running["supervise"]:
            for name, proc in (("worker", worker), ("reasoner", reasoner)):
                with lock:
                    if proc is not None and not proc.alive():
                        exits[name] += 1
                        _say(progress, f"{name} exited ({proc.proc.returncode}): restarting it")
                        proc.start()
            time.sleep(0.5)

    def measure(entry: dict[str, Any], since: float) -> None:
        entry["recovery_s"] = watch.recovery_s(since)

    def drained() -> bool:
        return sent["done"] and (watch.processed() or 0) >= sent["valid"] + sent["poison"]

    def kill_loop() -> None:
        """Kills while events are sent and until the worker has handled every one of them."""
        while not drained():
            try:
                _wait(worker.wait_ready, 180)
            except RuntimeError:  # it exited by itself: the supervisor restarts it
                time.sleep(1)
                continue
            ready_at = time.monotonic()
            while time.monotonic() - ready_at < kill_every_s and not drained():
                time.sleep(0.2)
            if drained():
                return
            with lock:
                worker.stop(kill=True)
                restarted = time.monotonic()
                worker.start()
            entry = {"at_s": round(restarted - t0, 1), "recovery_s": None}
            kills.append(entry)
            threading.Thread(target=measure, args=(entry, restarted), daemon=True).start()

    def fault(name: str, at_s: float, act, fields: tuple[str, ...] = Watch.WORKER) -> None:
        while time.monotonic() - t0 < at_s:
            time.sleep(0.2)
        _say(progress, f"fault: {name}")
        started = time.monotonic()
        act()
        ended = time.monotonic()
        faults.append({"fault": name, "at_s": round(started - t0, 1), "lasted_s": round(ended - started, 1),
                       "recovery_s": watch.recovery_s(ended, fields=fields),
                       "recovered": "reasoner requests handled" if fields == Watch.REASONER else "worker messages handled"})

    def restart_reasoner() -> None:
        with lock:
            reasoner.stop(kill=True)
            reasoner.start()

    def restart_broker() -> None:
        broker = EmbeddedKafka(settings)
        broker.stop()
        broker.start()

    def restart_redis() -> None:
        server = EmbeddedRedis(settings)
        server.stop()
        server.start()

    def stall_redis() -> None:
        pid = read_pid(EmbeddedRedis(settings).pid_file)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(20)
        os.kill(pid, signal.SIGCONT)

    t0 = time.monotonic()
    producer_thread = threading.Thread(target=produce, daemon=True)
    producer_thread.start()
    killer = threading.Thread(target=kill_loop, daemon=True)
    killer.start()
    supervisor = threading.Thread(target=supervise, daemon=True)
    supervisor.start()
    schedule = ([("reasoner SIGKILL + restart", 15, restart_reasoner, Watch.REASONER)] if reasoner is not None else []) + [
        ("broker restart", 30, restart_broker), ("Redis restart", 70, restart_redis),
        ("Redis SIGSTOP 20 s", 110, stall_redis)]
    for name, at_s, act, *fields in schedule:
        fault(name, at_s, act, *fields)
    producer_thread.join()
    sending_s = time.monotonic() - t0
    _say(progress, f"sent {sent['valid']:,} events and {sent['poison']} malformed in {sending_s:.0f} s; "
                   "killing the worker until it has handled them")
    killer.join()
    _say(progress, f"{len(kills)} worker kills; draining")
    drained_at = time.monotonic()
    deadline = drained_at + 900
    while time.monotonic() < deadline:
        if (watch.processed() or 0) >= sent["valid"] + sent["poison"] and expected.counted():
            break
        time.sleep(2)
    drain_s = time.monotonic() - drained_at
    running["supervise"] = False
    supervisor.join()
    report = expected.report()
    recs = _recs_at_last_state(settings, expected)
    dead = _dead_letters(settings)
    result = {
        "command": f"intentstream bench chaos --loops {loops} --rate {rate:g}", "machine": machine(),
        "commit": commit(), "dataset": f"taobao samples x{loops}, users and event ids remapped per loop",
        "events_sent": sent["valid"], "malformed_sent": sent["poison"], "producer_error": sent["error"],
        "sending_s": round(sending_s, 1), "drain_s": round(drain_s, 1), "counted_exactly": report["users_off"] == 0
        and report["items_off"] == 0, **report, "dead_letters": dead,
        "dead_letters_only_malformed": dead["distinct_messages"] == sent["poison"] and set(dead["reasons"]) <= {"invalid"},
        "recs": recs, "worker_kills": len(kills), "worker_recovery_s": _spread([x["recovery_s"] for x in kills]),
        "exits_restarted": exits, "faults": faults,
        "reasoner": with_reasoner, "logs": str(logs),
    }
    worker.stop()
    if reasoner is not None:
        reasoner.stop()
    delete_topics(k, worker_topics(settings))
    delete_matching(connect(settings.redis), f"{settings.key_prefix}*")
    return result


def _wait(ready, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ready(timeout_s=max(1.0, deadline - time.monotonic()))
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _spread(values: list[float | None]) -> dict[str, Any]:
    got = sorted(v for v in values if v is not None)
    if not got:
        return {"n": 0, "never_recovered": len(values)}
    return {"n": len(got), "p50": got[len(got) // 2], "max": got[-1], "never_recovered": len(values) - len(got)}


def _recs_at_last_state(settings: Settings, expected: ExpectedCounts) -> dict[str, Any]:
    """Of the users sent events: how many hold a list, and how many a list built from their last
    state (the list's state_version equals their event count: the trigger refreshes on what
    changes enough, so a last event that changed little leaves an older list)."""
    client = connect(settings.redis)
    keys = RedisKeys(settings.key_prefix)
    users = sorted(expected.users)
    held = at_last = ahead = 0
    for start in range(0, len(users), 1000):
        chunk = users[start:start + 1000]
        for user, raw in zip(chunk, client.mget([keys.recs(u) for u in chunk])):
            if raw is None:
                continue
            held += 1
            version = orjson.loads(raw)["state_version"]
            at_last += version == expected.users[user]
            ahead += version > expected.users[user]  # would mean a list from a state never reached
    return {"users": len(users), "with_list": held, "at_last_state": at_last, "ahead_of_state": ahead}
