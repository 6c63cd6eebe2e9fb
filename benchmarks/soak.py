"""`intentstream bench soak`: a million users and half a million items through one worker; does
its memory, Redis's and the changelog's size level off?

1. Events (synthetic, stated in the JSON): sessions of new users in arrival order (user k starts
   after user k - 1), `revisit` of the sessions by a random earlier user (who may have been
   forgotten: they start anew), session lengths geometric with mean `mean_session`; items half
   uniform over `items` ids, half Zipf(1.3) over them (a popular head and a long tail that
   reaches the whole catalog); types as in benchmarks/ingest.py.
2. One worker (behavioural route; intent and sequential routes off: the soak measures state,
   and the reasoners bound theirs by intent.remember_users) on fresh topics and key prefix, with
   short retention so that forgetting happens within the run: users idle `user_idle_s`, items
   idle `item_idle_s`, a changelog segment of `segment_mb` (stated; the defaults are 30 days
   and 64 MiB: contracts/settings.py RetentionSettings).
3. Offered at `rate` events/s until every event is sent, then `idle_after_s` without events:
   the keys with a wall-clock TTL (lists, Feast rows, item rows) expire; the worker forgets in
   stream time (stream/retention.py), so without events its table keeps who it holds.
4. Sampled every 5 s: the worker's RSS (its process tree: the Feast pusher child included),
   Redis used memory and key count (the whole server: run it alone), the changelog topic's
   bytes on the broker's disk (all partitions), the worker's resident and forgotten users, the
   popularity set's size, events sent and handled.
5. Plateau, per series, decided before the run: the largest value in the last quarter of the
   sending phase is at most 10% above the largest in its second quarter. Each quarter's median
   is reported beside it (added after the first full run, where one spike of Redis memory
   decided the verdict; it does not change the rule).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import numpy as np
import orjson

from benchmarks.chaos import _wait, isolated_run
from benchmarks.ingest import CATEGORIES, commit, machine
from benchmarks.overload import Offer, _say, tree_rss
from contracts.keys import RedisKeys
from contracts.settings import Settings
from contracts.topics import worker_topics
from features.redis_client import connect, delete_matching
from infra.worker_process import WorkerProcess
from stream.producer import delete_topics

PLATEAU_TOLERANCE = 0.10
SERIES = ("worker_rss_mb", "redis_used_mb", "redis_keys", "changelog_mb", "users_resident", "popular_items")


def soak_events(users: int, items: int, mean_session: float, revisit: float, seed: int,
                run: str) -> list[tuple[bytes, bytes]]:
    """Sessions until `users` distinct users arrived (module docstring, step 1)."""
    rng = np.random.default_rng(seed)
    session_users: list[int] = []
    lengths: list[int] = []
    arrived = 0
    while arrived < users:
        if arrived and rng.random() < revisit:
            session_users.append(int(rng.integers(0, arrived)))
        else:
            session_users.append(arrived)
            arrived += 1
        lengths.append(int(rng.geometric(1.0 / mean_session)))
    user_of = np.repeat(np.asarray(session_users, np.int64), lengths)
    n = len(user_of)
    item_of = np.where(rng.random(n) < 0.5, rng.integers(0, items, n), np.minimum(rng.zipf(1.3, n), items) - 1)
    kinds = rng.choice(["view", "click", "cart", "fav", "purchase"], n, p=[0.85, 0.05, 0.05, 0.03, 0.02])
    base = int(time.time() * 1000)
    out = []
    for i in range(n):
        user, item = f"{run}u{user_of[i]}", int(item_of[i])
        event = {"event_id": f"{run}{i}", "user_id": user, "item_id": str(item), "type": str(kinds[i]),
                 "ts": base + i, "context": {"category": CATEGORIES[item % len(CATEGORIES)]}}
        out.append((user.encode(), orjson.dumps(event)))
    return out


def changelog_bytes(settings: Settings) -> int:
    """Bytes on the embedded broker's disk of the worker's state-table changelog (every partition)."""
    topic = next(t for t in worker_topics(settings) if t.endswith("-user_state-changelog"))
    data = settings.state_dir / "kafka" / "data"
    total = 0
    for part in data.glob(f"{topic}-*"):
        if part.name.rsplit("-", 1)[-1].isdigit():
            total += sum(f.stat().st_size for f in part.iterdir() if f.is_file())
    return total


def plateau(samples: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Step 5: the sending phase's second and last quarters' largest values and the verdict."""
    sending = [s for s in samples if s["phase"] == "sending"]
    if len(sending) < 8:
        return {"plateaued": None, "why": "fewer than 8 samples"}
    t0, t1 = sending[0]["t_s"], sending[-1]["t_s"]
    span = t1 - t0

    def quarter(lo: float, hi: float) -> list[float]:
        return [s[name] for s in sending if t0 + lo * span <= s["t_s"] <= t0 + hi * span]

    q2, q4 = quarter(0.25, 0.5), quarter(0.75, 1.0)
    return {"second_quarter_max": max(q2), "last_quarter_max": max(q4),
            "growth": round(max(q4) / max(q2) - 1, 3) if max(q2) else None,
            "plateaued": bool(max(q2)) and max(q4) <= (1 + PLATEAU_TOLERANCE) * max(q2),
            # context, not the verdict (added after the first full run: one spike decided a verdict)
            "second_quarter_median": float(np.median(q2)), "last_quarter_median": float(np.median(q4))}


def run_soak(base: Settings, users: int = 1_000_000, items: int = 500_000, rate: float = 1300.0,
             mean_session: float = 1.25, revisit: float = 0.1, user_idle_s: float = 60.0,
             item_idle_s: float = 120.0, segment_mb: int = 4, idle_after_s: float = 90.0,
             progress=None) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]
    settings, _, logs = isolated_run(base, "soak", run)
    settings = settings.model_copy(update={
        "intent": settings.intent.model_copy(update={"enabled": False}),
        "sequential": settings.sequential.model_copy(update={"enabled": False}),
        "retention": settings.retention.model_copy(update={
            "user_idle_s": user_idle_s, "item_idle_s": item_idle_s,
            "changelog_segment_bytes": segment_mb * 2**20}),
    })
    k, keys = settings.kafka, RedisKeys(settings.key_prefix)
    client = connect(settings.redis)
    _say(progress, f"generating the sessions of {users:,} users")
    payloads = soak_events(users, items, mean_session, revisit, 11, f"s{run}")
    _say(progress, f"{len(payloads):,} events; starting the worker")
    worker = WorkerProcess(settings, logs / "worker.log")
    worker.start()
    try:
        _wait(worker.wait_ready, 180)
        result = _measure(settings, worker, client, keys, payloads, rate, idle_after_s, progress)
    finally:
        worker.stop()
    delete_topics(k, worker_topics(settings))
    delete_matching(client, f"{settings.key_prefix}*")
    return {
        "command": f"intentstream bench soak --users {users} --items {items} --rate {rate:g}",
        "machine": machine(), "commit": commit(),
        "traffic": (f"synthetic: {users:,} users arriving in order, {revisit:.0%} of sessions by an earlier user, "
                    f"sessions of mean {mean_session:g} events, items half uniform / half Zipf(1.3) over "
                    f"{items:,} ids: {len(payloads):,} events"),
        "retention": {"user_idle_s": user_idle_s, "item_idle_s": item_idle_s, "changelog_segment_mb": segment_mb,
                      "popular_max": settings.retention.popular_max},
        "routes": "behavioural only (intent and sequential off)", "logs": str(logs), **result,
    }


def _measure(settings: Settings, worker: WorkerProcess, client, keys: RedisKeys, payloads, rate: float,
             idle_after_s: float, progress) -> dict[str, Any]:
    offer = Offer(settings.kafka, settings.kafka.events_topic, payloads, None, "soak", 0)
    samples: list[dict[str, Any]] = []
    phase = {"name": "sending"}
    t0 = time.monotonic()
    seen_items: set[bytes] = set()

    def sample() -> None:
        m = worker.metrics()
        memory = client.info("memory")
        samples.append({
            "t_s": round(time.monotonic() - t0, 1), "phase": phase["name"], "sent": offer.sent,
            "handled": worker.processed(),
            "worker_rss_mb": round(tree_rss(worker.proc.pid) / 2**20, 1),
            "redis_used_mb": round(int(memory["used_memory"]) / 2**20, 1), "redis_keys": client.dbsize(),
            "changelog_mb": round(changelog_bytes(settings) / 2**20, 1),
            "users_resident": int(m.get("users_resident", 0)), "users_expired": int(m.get("users_expired", 0)),
            "popular_items": client.zcard(keys.item_popularity),
        })

    running = {"on": True}

    def sampler() -> None:
        while running["on"]:
            sample()
            time.sleep(5.0)

    threading.Thread(target=sampler, daemon=True).start()
    offer.rate = rate
    offer.thread.start()
    last_say = time.monotonic()
    while offer.thread.is_alive():
        time.sleep(1)
        if time.monotonic() - last_say > 60 and samples:
            last_say = time.monotonic()
            s = samples[-1]
            _say(progress, f"sent {s['sent']:,}, handled {s['handled']:,}, RSS {s['worker_rss_mb']} MB, Redis "
                           f"{s['redis_used_mb']} MB, changelog {s['changelog_mb']} MB, resident {s['users_resident']:,}")
    offer.stop()
    sent_s = time.monotonic() - t0
    phase["name"] = "draining"
    drained = worker.wait_processed(offer.sent, timeout_s=900)
    drain_s = time.monotonic() - t0 - sent_s
    phase["name"] = "idle"
    time.sleep(idle_after_s)
    running["on"] = False
    time.sleep(0.1)
    sample()
    for raw in client.scan_iter(match=keys.item_stats_row("*"), count=10_000):
        seen_items.add(raw)
    m = worker.metrics()
    return {
        "events_sent": offer.sent, "send_errors": len(offer.errors), "drained": drained,
        "sending_s": round(sent_s, 1), "drain_after_sending_s": round(drain_s, 1),
        "events_valid": int(m.get("events_valid", 0)), "users_expired": int(m.get("users_expired", 0)),
        "item_stats_keys_at_end": len(seen_items),
        "plateau": {name: plateau(samples, name) for name in SERIES},
        "at_end": samples[-1], "samples": samples,
    }
