"""`intentstream bench overload`: 5x the sustained rate for 60 s, then back to a normal load.

1. Events: session-shaped synthetic traffic (benchmarks/ingest.py `synthetic_events`: `users`
   users, 1,000 shopping at once, items Zipf over a 50k catalog), one stream cut into phases.
2. One worker (and, when an intent model is served, one reasoner) as child processes on fresh
   topics and key prefix, per mode: `shed` (worker.shed_lag_s as configured) and, with
   `compare`, `no-shed` (shed_lag_s 0) first, on its own topics, in the same run.
3. Phases: (a) sustained rate: `backlog` events written at once, the worker's events/s draining
   them (first batch to last) in the first mode is the sustained rate S (with `compare`, the
   worker doing all its work: no refresh shed), which fixes the offered rates of every mode; (b) a normal
   load of `normal` x S for 20 s; (c) overload: `factor` x S offered for `seconds`; (d) the normal
   load again until the worker has handled everything sent by the end of (c) (the recovery
   time) and until no debounced or shed refresh waits in the worker (its `refreshes_pending`
   gauge: every list built in full again), then until all is handled. The producer is librdkafka (confluent-kafka): kafka-python
   tops out at about 12.6k events/s on one core here, below a 5x load.
4. Sampled every second: the worker's RSS (its process tree: the Feast pusher child included),
   the Redis server's used memory (all of it, not only this run's keys), events sent and handled
   (lag), refreshes built, shed and built degraded.
5. Afterwards: every user's Feast `event_count` and every item's counts against what was sent
   (infra/traffic.py `ExpectedCounts`: lost and double counted, targets 0 and 0), fallback
   reasons of the served lists (at the end of the overload and at the end), and the users whose
   served list is at their last state.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import orjson
import psutil
from confluent_kafka import Producer

from benchmarks.chaos import _recs_at_last_state, _wait, isolated_run
from benchmarks.ingest import commit, machine, synthetic_events
from contracts.keys import RedisKeys
from contracts.settings import KafkaSettings, Settings
from contracts.topics import worker_topics
from features.redis_client import connect, delete_matching
from infra.traffic import ExpectedCounts
from infra.worker_process import ReasonerProcess, WorkerProcess
from stream.producer import delete_topics

COUNTERS = ("events_valid", "refreshes", "refreshes_shed", "refreshes_overloaded", "refreshes_debounced",
            "intent_requested", "intent_queue_full", "intent_shed", "intent_handled", "batches")
NORMAL_WARMUP_S = 20


def librdkafka_config(kafka: KafkaSettings) -> dict[str, Any]:
    """confluent-kafka producer settings for `kafka`: idempotent, acks all, and Java's murmur2
    partitioner (kafka-python's too), so a user's events land on the partition the other
    producers would choose."""
    out: dict[str, Any] = {"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True, "acks": "all",
                           "linger.ms": 5, "partitioner": "murmur2_random",
                           "queue.buffering.max.messages": 1_000_000,
                           "security.protocol": kafka.security_protocol.lower()}
    if kafka.sasl:
        out.update({"sasl.mechanism": kafka.sasl_mechanism, "sasl.username": kafka.username,
                    "sasl.password": kafka.password.get_secret_value() if kafka.password else ""})
    if kafka.tls and kafka.ssl_cafile:
        out["ssl.ca.location"] = str(kafka.ssl_cafile)
    return out


def _say(progress, text: str) -> None:
    if progress is not None:
        progress(f"[{time.strftime('%H:%M:%S')}] {text}")


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class Offer:
    """Sends payloads at a rate that can change, in 10 ms ticks, from a thread; every message sent
    is recorded in `expected` (when given) once the broker acknowledged it."""

    def __init__(self, kafka: KafkaSettings, topic: str, payloads, expected: ExpectedCounts | None, run: str,
                 users: int) -> None:
        self.producer = Producer(librdkafka_config(kafka))
        self.users = users
        self.topic, self.payloads, self.expected, self.run = topic, payloads, expected, run
        self.sent = 0
        self.errors: list[str] = []
        self.rate = 0.0
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self.errors.append(str(err))
        elif self.expected is not None:
            event = orjson.loads(msg.value())
            self.expected.add(event["user_id"], event["item_id"], event["type"])

    def send_now(self, n: int) -> None:
        for key, value in self.payloads[self.sent:self.sent + n]:
            while True:
                try:
                    self.producer.produce(self.topic, value, key, on_delivery=self._delivered)
                    break
                except BufferError:
                    self.producer.poll(0.01)
            self.producer.poll(0)
        self.sent = min(len(self.payloads), self.sent + n)

    def _run(self) -> None:
        owed, last = 0.0, time.monotonic()
        while not self.stopped and self.sent < len(self.payloads):
            now = time.monotonic()
            owed += self.rate * (now - last)
            last = now
            if owed >= 1:
                self.send_now(int(owed))
                owed -= int(owed)
            self.producer.poll(0)
            time.sleep(0.01)

    def stop(self) -> None:
        self.stopped = True
        self.thread.join()
        self.producer.flush(60)


def served_fallbacks(settings: Settings, users: list[str]) -> dict[str, int]:
    """The served lists of `users` by fallback_reason ("none": the full product of every route;
    "no list": nothing served yet)."""
    client, keys = connect(settings.redis), RedisKeys(settings.key_prefix)
    out: dict[str, int] = {}
    for start in range(0, len(users), 1000):
        for raw in client.mget([keys.recs(u) for u in users[start:start + 1000]]):
            reason = "no list" if raw is None else (orjson.loads(raw).get("fallback_reason") or "none")
            out[reason] = out.get(reason, 0) + 1
    return dict(sorted(out.items()))


def _mode(base: Settings, mode: str, shed_lag_s: float, factor: float, seconds: float, users: int,
          backlog: int, normal: float, sustained: float | None, progress) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]
    settings, with_reasoner, logs = isolated_run(base, "overload", run, shed_lag_s=shed_lag_s)
    k = settings.kafka
    expected = ExpectedCounts(settings)
    redis_client = connect(settings.redis)
    worker = WorkerProcess(settings, logs / "worker.log")
    reasoner = ReasonerProcess(settings, logs / "reasoner.log") if with_reasoner else None
    payloads = synthetic_events(backlog, users, 50_000, 7, f"o{run}", ts_now=True)
    worker.start()
    if reasoner is not None:
        reasoner.start()
    _wait(worker.wait_ready, 180)
    offer = Offer(k, k.events_topic, payloads, expected, f"o{run}", users)
    try:
        result = _phases(settings, mode, worker, offer, redis_client, factor, seconds, backlog, normal, sustained,
                         progress)
    finally:
        if offer.thread.is_alive():
            offer.stop()
        worker.stop()
        if reasoner is not None:
            reasoner.stop()
    result.update(reasoner=with_reasoner, logs=str(logs))
    delete_topics(k, worker_topics(settings))
    delete_matching(redis_client, f"{settings.key_prefix}*")
    return result


def _phases(settings: Settings, mode: str, worker: WorkerProcess, offer: Offer, redis_client, factor: float,
            seconds: float, backlog: int, normal: float, sustained: float | None, progress) -> dict[str, Any]:
    t0 = time.monotonic()
    samples: list[dict[str, Any]] = []
    phase = {"name": "sustained"}

    def metrics() -> dict[str, int]:
        got = worker.metrics()
        return {name: int(got.get(name, 0)) for name in COUNTERS} | {
            "handled": worker.processed(), "first_batch_ms": int(got.get("first_batch_ms", 0)),
            "last_batch_ms": int(got.get("last_batch_ms", 0))}

    def sample() -> dict[str, Any]:
        m = metrics()
        entry = {"t_s": round(time.monotonic() - t0, 1), "phase": phase["name"], "sent": offer.sent,
                 "handled": m["handled"], "lag": offer.sent - m["handled"],
                 "worker_rss_mb": round(tree_rss(worker.proc.pid) / 2**20, 1),
                 "redis_used_mb": round(int(redis_client.info("memory")["used_memory"]) / 2**20, 1),
                 **{name: m[name] for name in ("refreshes", "refreshes_shed", "refreshes_overloaded")}}
        samples.append(entry)
        return entry

    running = {"on": True}

    def sampler() -> None:
        while running["on"]:
            sample()
            time.sleep(1.0)

    # (a) the sustained rate: a backlog drained as fast as the worker can.
    offer.send_now(backlog)
    offer.producer.flush(60)
    if not worker.wait_processed(backlog, timeout_s=600):
        raise RuntimeError(f"the worker did not drain the backlog:\n{worker.log_tail()}")
    m = metrics()
    drain_rate = m["events_valid"] / max(1e-3, (m["last_batch_ms"] - m["first_batch_ms"]) / 1000)
    sustained = sustained or drain_rate
    _say(progress, f"{mode}: backlog drained at {drain_rate:,.0f} events/s; sustained rate {sustained:,.0f}")
    # The rest of the stream, enough for every later phase (recovery at the normal load: 600 s).
    rest = int(sustained * (normal * NORMAL_WARMUP_S + factor * seconds + normal * 600))
    offer.payloads += synthetic_events(rest, offer.users, 50_000, 8, offer.run, ts_now=True, first_id=backlog)
    threading.Thread(target=sampler, daemon=True).start()
    offer.thread.start()

    def hold(name: str, rate: float, duration_s: float) -> dict[str, Any]:
        phase["name"] = name
        offer.rate = rate
        start_sent, start = offer.sent, time.monotonic()
        time.sleep(duration_s)
        return {"offered_rate": round(rate), "achieved_rate": round((offer.sent - start_sent) / (time.monotonic() - start)),
                "seconds": round(time.monotonic() - start, 1)}

    phases = {"normal_before": hold("normal", normal * sustained, NORMAL_WARMUP_S)}
    before = metrics()
    _say(progress, f"{mode}: overload {factor:g}x = {factor * sustained:,.0f} events/s for {seconds:g} s")
    phases["overload"] = hold("overload", factor * sustained, seconds)
    at_end = metrics()
    overload_sent = offer.sent
    lists_at_end = served_fallbacks(settings, list(offer.expected.users))
    phase["name"] = "recovery"
    offer.rate = normal * sustained
    ended = time.monotonic()
    recovery_s = None
    while time.monotonic() - ended < 600:
        if worker.processed() >= overload_sent:
            recovery_s = round(time.monotonic() - ended, 1)
            break
        if offer.sent >= len(offer.payloads):
            break
        time.sleep(0.5)
    _say(progress, f"{mode}: backlog of the overload handled after {recovery_s} s")
    full_again_s = None  # the normal load goes on until no debounced or shed refresh waits
    while time.monotonic() - ended < 600:
        if recovery_s is not None and int(worker.metrics().get("refreshes_pending", 1)) == 0:
            full_again_s = round(time.monotonic() - ended, 1)
            break
        time.sleep(1)
    _say(progress, f"{mode}: no refresh pending after {full_again_s} s")
    phases["recovery"] = {"offered_rate": round(normal * sustained), "backlog_at_end": overload_sent - at_end["handled"],
                          "recovery_s": recovery_s, "full_lists_again_s": full_again_s}
    offer.stop()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (worker.processed() >= offer.sent and offer.expected.counted()):
        time.sleep(2)
    running["on"] = False
    after = metrics()
    overload_samples = [s for s in samples if s["phase"] == "overload"]
    rss = [s["worker_rss_mb"] for s in samples]
    half = len(overload_samples) // 2
    report = offer.expected.report()
    return {
        "mode": mode, "shed_lag_s": settings.worker.shed_lag_s, "sustained_events_per_s": round(sustained),
        "backlog_drain_events_per_s": round(drain_rate),
        "backlog_events": backlog, "phases": phases, "events_sent": offer.sent, "send_errors": len(offer.errors),
        "counted_exactly": report["users_off"] == 0 and report["items_off"] == 0, **report,
        "during_overload": {name: at_end[name] - before[name] for name in COUNTERS},
        "whole_run": {name: after[name] for name in COUNTERS},
        "worker_rss_mb": {"after_sustained": rss[0] if rss else None, "max": max(rss, default=None),
                          "overload_first_half_max": max((s["worker_rss_mb"] for s in overload_samples[:half]), default=None),
                          "overload_second_half_max": max((s["worker_rss_mb"] for s in overload_samples[half:]), default=None),
                          "end": rss[-1] if rss else None},
        "redis_used_mb": {"max": max((s["redis_used_mb"] for s in samples), default=None)},
        "max_lag": max((s["lag"] for s in samples), default=None),
        "fallbacks_at_overload_end": lists_at_end, "fallbacks_at_end": served_fallbacks(settings, list(offer.expected.users)),
        "recs": _recs_at_last_state(settings, offer.expected), "samples": samples,
    }


def run_overload(base: Settings, factor: float = 5.0, seconds: float = 60.0, users: int = 20_000,
                 backlog: int = 40_000, normal: float = 0.25, compare: bool = True, progress=None) -> dict[str, Any]:
    modes = ([("no-shed", 0.0)] if compare else []) + [("shed", base.worker.shed_lag_s or 5.0)]
    results: list[dict[str, Any]] = []
    for mode, lag in modes:  # the first mode's backlog drain fixes the offered rates of all
        sustained = results[0]["sustained_events_per_s"] if results else None
        results.append(_mode(base, mode, lag, factor, seconds, users, backlog, normal, sustained, progress))
    out = {"command": f"intentstream bench overload --factor {factor:g} --seconds {seconds:g} --users {users}"
                      f"{'' if compare else ' --no-compare'}",
           "machine": machine(), "commit": commit(),
           "traffic": f"synthetic sessions: {users:,} users (1,000 at once), items Zipf over 50,000",
           "factor": factor, "seconds": seconds, "normal_share": normal, "modes": results}
    if compare:
        off, on = results
        if off["phases"]["recovery"]["recovery_s"] and on["phases"]["recovery"]["recovery_s"]:
            out["recovery_ratio_no_shed_to_shed"] = round(
                off["phases"]["recovery"]["recovery_s"] / on["phases"]["recovery"]["recovery_s"], 2)
    return out
