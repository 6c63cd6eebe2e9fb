"""Ingest benchmark: events through Kafka and running workers into Feast/Redis.

    intentstream bench ingest --events 200000 --json

Phases, each on fresh topics, consumer groups and Redis key prefixes:
1. fill: N synthetic events are written to a topic with aiokafka. Traffic is session-shaped:
   `--active` shoppers are active at any moment, each event comes from one of them, a session
   lasts a geometric number of events (mean 10) and is then replaced by a session of a random
   user out of `--users`; items are Zipf-distributed over a 50k catalog;
2. ceiling: a plain aiokafka consumer drains that topic (`getmany`, no processing), which bounds
   what any consumer on this machine can do;
3. throughput: `--workers` (1,2 by default) workers (`intentstream worker` child processes) of
   one new consumer group per count consume the same topic; events/s is worker-side (first batch
   start to last batch end, from their metrics), with each worker's CPU share; no refresh is
   shed (worker.shed_lag_s 0: draining a backlog, the worker is always behind);
4. freshness: with a caught-up worker, events are offered at a fixed rate and the worker
   records, per event, the time from the broker timestamp (producer send) to the end of the
   Feast push that made its user's features readable, and to the write of its user's refreshed
   recommendations (refreshes the event triggered at once; a refresh debounced by
   trigger.min_interval_s is reported apart, as its delay past its due time); a sample of users
   is also read back from the online store;
5. feast write: rows/s of one 2,000-row batch by `push()` and by `write_to_online_store()`
   (benchmarks/feast_write.py).
"""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import time
import uuid
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from contracts.settings import Settings
from contracts.topics import worker_topics
from benchmarks.feast_write import feast_write_rates
from features.redis_client import connect, delete_matching
from infra.worker_process import WorkerProcess
from stream.producer import delete_topics, ensure_topics

CATEGORIES = [f"dept{d}.cat{c}" for d in range(20) for c in range(10)]


def machine() -> dict[str, Any]:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_gib, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def commit() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def session_users(n: int, users: int, active: int, rng: np.random.Generator) -> np.ndarray:
    """User of each of n events when `active` sessions (mean 10 events) run at once."""
    current = rng.integers(0, users, active)
    left = rng.geometric(0.1, active)
    picks = rng.integers(0, active, n)
    out = np.empty(n, dtype=np.int64)
    for i, slot in enumerate(picks):
        out[i] = current[slot]
        left[slot] -= 1
        if left[slot] <= 0:
            current[slot] = rng.integers(0, users)
            left[slot] = rng.geometric(0.1)
    return out


def synthetic_events(n: int, users: int, items: int, seed: int, run: str, ts_now: bool,
                     active: int = 1000, first_id: int = 0) -> list[tuple[bytes, bytes]]:
    """n events of `users` users (ids `{run}u{k}`), event ids `{run}{first_id + i}`."""
    rng = np.random.default_rng(seed)
    user_ids = session_users(n, users, min(active, users), rng)
    item_ids = np.minimum(rng.zipf(1.3, n), items) - 1
    kinds = rng.choice(["view", "click", "cart", "fav", "purchase"], n, p=[0.85, 0.05, 0.05, 0.03, 0.02])
    base = int(time.time() * 1000)
    out = []
    for i in range(n):
        user = f"{run}u{user_ids[i]}"
        item = int(item_ids[i])
        event = {"event_id": f"{run}{first_id + i}", "user_id": user, "item_id": str(item), "type": str(kinds[i]),
                 "ts": base if ts_now else base + i,
                 "context": {"category": CATEGORIES[item % len(CATEGORIES)]}}
        out.append((user.encode(), orjson.dumps(event)))
    return out


async def _fill(bootstrap: str, topic: str, payloads: list[tuple[bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=512 * 1024)
    await producer.start()
    started = time.perf_counter()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in payloads]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def _offer(bootstrap: str, topic: str, payloads: list[tuple[bytes, bytes]], rate: float) -> float:
    """Send at `rate` events/s in 10 ms ticks; event ts is the send time."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    started = time.perf_counter()
    per_tick = max(1, int(rate / 100))
    try:
        for i in range(0, len(payloads), per_tick):
            for k, v in payloads[i:i + per_tick]:
                await producer.send(topic, value=v, key=k)
            ahead = (i + per_tick) / rate - (time.perf_counter() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def _drain(bootstrap: str, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"ceiling-{uuid.uuid4().hex[:8]}",
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    await consumer.start()
    seen, started = 0, None
    try:
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batch.values():
                if started is None:
                    started = time.perf_counter()
                for record in records:
                    orjson.loads(record.value)  # a consumer that does nothing at all is no ceiling
                seen += len(records)
    finally:
        await consumer.stop()
    return time.perf_counter() - (started or time.perf_counter())


def _say(console, text: str) -> None:
    if console is not None:
        console.print(text)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (the pusher child)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    tree, total, frontier = {pid}, 0.0, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _) in stats.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    for p in tree:
        total += stats.get(p, (0, 0.0))[1]
    return total


def _throughput(settings: Settings, topic: str, run: str, events: int, n_workers: int, log_dir,
                cleanup: list[str]) -> dict[str, Any]:
    """`n_workers` workers of one new group drain `topic`; events/s from the first batch start to
    the last batch end of any of them, and each worker's CPU share of that window."""
    scoped = settings.isolated(topic, key_prefix=f"bench:{run}:")
    # shed_lag_s 0: a backlog is always behind; the throughput is that of the worker doing all
    # its work (the figure before shedding existed; `bench overload` measures shedding).
    scoped = scoped.model_copy(update={"worker": scoped.worker.model_copy(update={"app_id": f"{topic}-{run}",
                                                                                    "shed_lag_s": 0.0})})
    cleanup += worker_topics(scoped)
    started = [WorkerProcess(scoped, log_dir / f"worker-{run}-{i}.log") for i in range(n_workers)]
    for worker in started:
        worker.start()
    try:
        if not started[0].wait_processed(events, timeout_s=max(120.0, events / 500)):
            raise RuntimeError(f"workers did not finish in time:\n{started[0].log_tail()}")
        cpu = [cpu_seconds(w.proc.pid) for w in started]
        metrics = started[0].metrics()
    finally:
        for worker in started:
            worker.stop()
    seconds = (metrics["last_batch_ms"] - metrics["first_batch_ms"]) / 1000
    return {"workers": n_workers, "seconds": round(seconds, 3),
            "events_per_s": round(events / seconds) if seconds > 0 else 0,
            "batches": metrics.get("batches"), "refreshes": metrics.get("refreshes"),
            # CPU seconds of each worker (and its pusher child) since its start, over the window:
            # start-up included, so a share above what the window alone used.
            "cpu_share_per_worker": [round(c / seconds, 2) if seconds > 0 else None for c in cpu]}


def run_ingest_benchmark(settings: Settings, events: int, users: int, offered_rate: float,
                         freshness_seconds: float, active: int = 1000, workers: tuple[int, ...] = (1, 2),
                         console=None) -> dict[str, Any]:
    from features.feast_store import FeastFeatures

    # The stream path alone: with a trained intent model in the cache the workers would also send
    # intent requests (reasoning has its own benchmarks, `bench reasoner` and `bench intent`).
    settings = settings.model_copy(update={"intent": settings.intent.model_copy(update={"enabled": False})})
    bootstrap = settings.kafka.bootstrap
    run = uuid.uuid4().hex[:6]
    topic = f"bench-{run}"
    partitions = settings.kafka.partitions
    log_dir = settings.state_dir / "bench"
    ensure_topics(settings.kafka, [topic, f"{topic}.dlq"])

    _say(console, f"fill: {events:,} events over {users:,} users into {topic}")
    payloads = synthetic_events(events, users, 50_000, seed=7, run=f"{run}:", ts_now=False, active=active)
    fill_s = asyncio.run(_fill(bootstrap, topic, payloads))

    _say(console, "ceiling: plain aiokafka consumer")
    ceiling_s = asyncio.run(_drain(bootstrap, topic, events))

    throughput, cleanup = {}, []
    for n_workers in workers:
        _say(console, f"throughput: {n_workers} worker(s) on one group")
        throughput[n_workers] = _throughput(settings, topic, f"{run}w{n_workers}", events, n_workers, log_dir,
                                            cleanup)
    one = throughput[workers[0]]

    _say(console, f"freshness: {offered_rate:.0f} events/s offered for {freshness_seconds:.0f}s")
    run2 = run + "f"
    topic2 = f"bench-{run2}"
    ensure_topics(settings.kafka, [topic2, f"{topic2}.dlq"])
    fresh_settings = settings.isolated(topic2, key_prefix=f"bench:{run2}:")
    worker2 = WorkerProcess(fresh_settings, log_dir / f"worker-{run2}.log")
    worker2.start()
    try:
        warm = synthetic_events(200, users, 50_000, seed=8, run=f"{run2}:w", ts_now=True)
        asyncio.run(_fill(bootstrap, topic2, warm))
        if not worker2.wait_processed(len(warm), timeout_s=120):
            raise RuntimeError(f"freshness worker did not start:\n{worker2.log_tail()}")
        # The warm-up events waited in Kafka while the worker started; let their samples land
        # (their push finishes a moment after they are processed, a debounced refresh up to
        # trigger.min_interval_s later), then forget them.
        time.sleep(2.0 + settings.trigger.min_interval_s)
        worker2.client.delete(*[worker2.keys.samples(n) for n in ("feature_freshness_ms", "recs_freshness_ms",
                                                                  "recs_debounce_lag_ms")])
        n_offered = int(offered_rate * freshness_seconds)
        offered = synthetic_events(n_offered, users, 50_000, seed=9, run=f"{run2}:", ts_now=True, active=active)
        offer_s = asyncio.run(_offer(bootstrap, topic2, offered, offered_rate))
        worker2.wait_processed(len(warm) + n_offered, timeout_s=60)
        fresh_metrics = worker2.metrics()
        fresh, recs_fresh = fresh_metrics["feature_freshness_ms"], fresh_metrics["recs_freshness_ms"]
        debounce_lag = fresh_metrics["recs_debounce_lag_ms"]
        sample_users = sorted({orjson.loads(v)["user_id"] for _, v in offered[-200:]})[:50]
        rows = FeastFeatures(fresh_settings).read_users(sample_users, ["event_count"])
        readable = sum(1 for r in rows if r["event_count"])
    finally:
        worker2.stop()
    delete_topics(settings.kafka, sorted(set(cleanup)) + worker_topics(fresh_settings))
    delete_matching(connect(settings.redis), f"bench:{run}*")  # this run's item models, recs and metrics
    _say(console, "feast write: push() vs write_to_online_store()")
    feast = feast_write_rates(settings)

    events_per_s = one["events_per_s"]
    ceiling = events / ceiling_s if ceiling_s > 0 else 0.0
    return {
        "command": f"intentstream bench ingest --events {events} --users {users} --active {active} "
                   f"--offered-rate {offered_rate:g} --freshness-seconds {freshness_seconds:g} "
                   f"--workers {','.join(map(str, workers))} --json",
        "commit": commit(),
        "machine": machine(),
        "events": events,
        "users": users,
        "active_sessions": active,
        "partitions": partitions,
        "batch_max": settings.worker.batch_max,
        "intent_route": False,
        "fill_events_per_s": round(events / fill_s),
        "seconds": one["seconds"],
        "events_per_s": events_per_s,
        "ceiling_events_per_s": round(ceiling),
        "ratio": round(events_per_s / ceiling, 4) if ceiling else None,
        "worker_batches": one["batches"],
        "refreshes": one["refreshes"],
        "scale_out": [throughput[n] for n in workers],
        "freshness_offered_events_per_s": offered_rate,
        "freshness_achieved_offer_events_per_s": round(n_offered / offer_s),
        "freshness_p50_ms": fresh["p50"],
        "freshness_p90_ms": fresh["p90"],
        "freshness_p99_ms": fresh["p99"],
        "freshness_samples": fresh["n"],
        "recs_freshness_p50_ms": recs_fresh["p50"],
        "recs_freshness_p90_ms": recs_fresh["p90"],
        "recs_freshness_p99_ms": recs_fresh["p99"],
        "recs_freshness_samples": recs_fresh["n"],
        "recs_debounced_lag_p50_ms": debounce_lag["p50"],
        "recs_debounced_lag_p99_ms": debounce_lag["p99"],
        "recs_debounced_samples": debounce_lag["n"],
        "freshness_readback_users_with_features": f"{readable}/{len(sample_users)}",
        **feast,
    }
