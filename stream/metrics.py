"""Worker and reasoner metrics kept in Redis, so the CLI, the demo and the benchmarks can read them live.

Counters live in the hash `metrics`; latency samples in capped lists `metrics:{name}`; the set of
refreshed users in a HyperLogLog. The worker flushes what a batch added in the same pipeline as
its results (no extra round trip).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson

import numpy as np
import redis

from contracts.keys import RedisKeys
from stream.prometheus import Exporter, process_exporter

# Marks merge across the workers of a group: `first_*` keeps the earliest, `last_*` the latest,
# so first_batch_ms..last_batch_ms spans all of them whatever order their pipelines land in.
_MERGE_MARK = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old == false or (ARGV[3] == 'min' and tonumber(ARGV[2]) < tonumber(old))
   or (ARGV[3] == 'max' and tonumber(ARGV[2]) > tonumber(old)) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
"""

SAMPLES_KEPT = 20_000
SAMPLES_PER_BATCH = 200
SAMPLED = ("feature_freshness_ms", "recs_freshness_ms", "recs_debounce_lag_ms", "intent_latency_ms",
           "intent_freshness_ms", "batch_ms", "event_age_ms")
"""Latency samples the worker keeps: event -> features, event -> recs (refreshes run with the
batch that folded the event), due -> recs (debounced refreshes: the delay past
trigger.min_interval_s), queued -> intent recs written, event -> intent recs written, one
batch's processing time, how long a batch's oldest event waited for it (worker.shed_lag_s)."""


class WorkerMetrics:
    """What one process counts, twice: in Redis (queued onto the caller's pipeline, merged over
    the processes of a group) and in this process's Prometheus exporter (stream/prometheus.py),
    at once and unsampled."""

    def __init__(self, keys: RedisKeys, exporter: Exporter | None = None) -> None:
        self.keys = keys
        self.exporter = exporter or process_exporter()
        self.counters: Counter[str] = Counter()
        self.samples: dict[str, list[float]] = {}
        self.refreshed_users: list[str] = []
        self.marks: dict[str, int] = {}

    def add(self, name: str, value: int = 1) -> None:
        self.counters[name] += value
        self.exporter.count(name, value)

    def sample(self, name: str, values: list[float]) -> None:
        self.exporter.observe_ms(name, values)
        if len(values) > SAMPLES_PER_BATCH:
            values = random.sample(values, SAMPLES_PER_BATCH)
        self.samples.setdefault(name, []).extend(values)

    def mark(self, name: str, value_ms: int) -> None:
        """A field in the hash: `first_*` and `last_*` timestamps merge over the workers of a group
        (earliest, latest); any other mark is this process's."""
        self.marks[name] = value_ms
        self.exporter.mark(name, value_ms)

    def level(self, name: str, value: int) -> None:
        """A gauge: this process's current value (a field in the hash, overwritten)."""
        self.marks[name] = value
        self.exporter.level(name, value)

    def written(self, payloads: Sequence[dict]) -> None:
        """Lists written to recs:{user_id}: counted, and by fallback reason."""
        self.exporter.recs_written.inc(len(payloads))
        for payload in payloads:
            reason = payload.get("fallback_reason")
            if reason is not None:
                self.exporter.fallbacks.labels(str(reason)).inc()

    def queue(self, pipe: redis.client.Pipeline) -> None:
        """Queue everything accumulated since the last call onto `pipe` and reset."""
        for name, value in self.counters.items():
            pipe.hincrby(self.keys.metrics, name, value)
        for name, value in self.marks.items():
            if name.startswith(("first_", "last_")):
                pipe.eval(_MERGE_MARK, 1, self.keys.metrics, name, value, "min" if name.startswith("first_") else "max")
            else:
                pipe.hset(self.keys.metrics, name, value)
        for name, values in self.samples.items():
            key = self.keys.samples(name)
            pipe.lpush(key, *[round(v, 2) for v in values])
            pipe.ltrim(key, 0, SAMPLES_KEPT - 1)
        if self.refreshed_users:
            pipe.pfadd(self.keys.samples("users_refreshed"), *self.refreshed_users)
        self.counters.clear()
        self.samples.clear()
        self.marks.clear()
        self.refreshed_users = []


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "n": 0}
    arr = np.asarray(values, dtype=float)
    return {"p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)), "n": int(arr.size)}


def read_metrics(client: redis.Redis, keys: RedisKeys) -> dict[str, Any]:
    """Counters, marks and latency percentiles the worker has written."""
    raw = client.hgetall(keys.metrics)
    out: dict[str, Any] = {k.decode(): int(v) for k, v in raw.items()}
    for name in SAMPLED:
        values = [float(v) for v in client.lrange(keys.samples(name), 0, -1)]
        out[name] = percentiles(values)
    out["users_refreshed"] = client.pfcount(keys.samples("users_refreshed"))
    out["intent_backlog"] = max(0, out.get("intent_requested", 0) - out.get("intent_handled", 0))
    return out


def intent_backlog(client: redis.Redis, keys: RedisKeys) -> int | None:
    """Requests the workers sent that no reasoner has handled yet (None: none sent so far)."""
    requested, handled = client.hmget(keys.metrics, "intent_requested", "intent_handled")
    if requested is None:
        return None
    return max(0, int(requested) - int(handled or 0))


def reset_metrics(client: redis.Redis, keys: RedisKeys) -> None:
    client.delete(keys.metrics, *[keys.samples(name) for name in SAMPLED], keys.samples("users_refreshed"))


def intent_coverage(client: redis.Redis, keys: RedisKeys, users: Sequence[str], max_behind: int) -> dict[str, Any]:
    """Of `users` that hold a served list: how many carry intent results (the list was merged
    with an intent result) from a state at most `max_behind` events older than the state the
    list was built from. With the route on, every refreshed user is sent to reasoning at their
    first refresh, so these are the triggered users.

    A list carries the result whose version its model_version ends with (`<behavioural>+<intent
    version>`; the behavioural part may hold a `+` of its own: the sequential route's version).

    Returns users (with a list), covered, share, merged_stale (merged, but further behind, or
    carrying another version's result than the user's last) and never (no intent result yet)."""
    users = list(users)
    covered = stale = never = served = 0
    for start in range(0, len(users), 1000):
        chunk = users[start:start + 1000]
        recs = client.mget([keys.recs(u) for u in chunk])
        results = client.mget([keys.intent(u) for u in chunk])
        for raw_recs, raw_result in zip(recs, results):
            if raw_recs is None:
                continue
            served += 1
            if raw_result is None:
                never += 1
                continue
            listed, result = orjson.loads(raw_recs), orjson.loads(raw_result)
            carried = listed["model_version"].endswith(f"+{result['version']}")
            if carried and listed["state_version"] - result["state_version"] <= max_behind:
                covered += 1
            else:
                stale += 1
    return {"users": served, "covered": covered, "share": covered / served if served else None,
            "merged_stale": stale, "never": never, "max_events_behind": max_behind}
