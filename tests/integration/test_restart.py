"""Cold start, warm restart onto partitions that have no committed offset yet, SIGKILL mid-stream:
no valid event is lost, none is counted twice, the state built before is recovered from the
changelog, and the group's committed offsets reach the end of every partition each time.

faust 0.15.3 resumed the stream partitions before seeking them to their committed offsets and
dropped what the fetcher delivered meanwhile (stream/fast_consumer.py SeekFirstRecovery). On a
partition without a commit nothing moves the fetch position back: those events were lost and the
partition's commit froze. The warm phase builds exactly that case (the first worker only ever saw
partitions 0 and 1), and the seek is widened to 1.5 s so the old order would lose events every
time, not by luck (checked: with the old order this test fails)."""

from __future__ import annotations

import time

import orjson
from kafka.partitioner.default import DefaultPartitioner

from features.feast_store import FeastFeatures
from stream.producer import EventProducer
from tests.integration.kafka_io import wait_committed_to_end, wait_for

USERS_PER_PARTITION = 10


def _users(prefix: str, partitions: int) -> dict[int, list[str]]:
    """User ids by the events partition their key lands on (the producer's default partitioner)."""
    partitioner, all_partitions = DefaultPartitioner(), list(range(partitions))
    by_partition: dict[int, list[str]] = {p: [] for p in all_partitions}
    n = 0
    while any(len(users) < USERS_PER_PARTITION for users in by_partition.values()):
        user = f"{prefix}u{n}"
        users = by_partition[partitioner(user.encode(), all_partitions, all_partitions)]
        if len(users) < USERS_PER_PARTITION:
            users.append(user)
        n += 1
    return by_partition


def _send(scoped, users: list[str], start: int, n: int, counts: dict[str, int]) -> None:
    with EventProducer.from_settings(scoped) as producer:
        for i in range(start, start + n):
            user = users[i % len(users)]
            producer.send_raw(user.encode(), orjson.dumps({
                "event_id": f"e{i}", "user_id": user, "item_id": f"i{(i * 7) % 101}",
                "type": "purchase" if i % 50 == 0 else "view", "ts": int(time.time() * 1000)}))
            counts[user] = counts.get(user, 0) + 1


def test_restart_loses_nothing_and_recovers_state(scoped, worker_factory):
    scoped = scoped.model_copy(update={"worker": scoped.worker.model_copy(update={"recovery_seek_delay_s": 1.5})})
    by_partition = _users(scoped.key_prefix, scoped.kafka.partitions)
    everyone = [u for users in by_partition.values() for u in users]
    features = FeastFeatures(scoped)
    counts: dict[str, int] = {}

    def all_counted() -> bool:
        rows = features.read_users(sorted(counts), ["event_count"])
        return all(r["event_count"] == counts[r["user_id"]] for r in rows)

    # Cold: a new group, events waiting on partitions 0 and 1 only, no committed offset anywhere.
    _send(scoped, by_partition[0] + by_partition[1], 0, 2000, counts)
    first = worker_factory(scoped)
    wait_for(all_counted, 120, "every event of the cold start to be counted", first.log_tail)
    wait_committed_to_end(scoped, 60, first.log_tail)
    first.stop(kill=True)

    # Warm: the changelog has state (so recovery runs the fetcher), partitions 2 and 3 have events
    # but no committed offset, and a backlog of several batches (so the fetcher fills the agent's
    # queue faster than the agent drains it during the widened seek).
    _send(scoped, everyone, 2000, 12_000, counts)
    second = worker_factory(scoped)
    wait_for(all_counted, 120, "every event of the warm restart to be counted", second.log_tail)
    wait_committed_to_end(scoped, 60, second.log_tail)

    # Crash mid-stream: SIGKILL, no clean shutdown, while a backlog is being processed; restart.
    before = second.processed()
    _send(scoped, everyone, 14_000, 4000, counts)
    wait_for(lambda: second.processed() >= before + 1000, 120, "the worker to make progress", second.log_tail)
    second.stop(kill=True)
    third = worker_factory(scoped)
    wait_for(all_counted, 120, "every event to be counted once after the crash", third.log_tail)
    wait_committed_to_end(scoped, 60, third.log_tail)
    time.sleep(2)  # anything still redelivered must not be counted again
    rows = features.read_users(sorted(counts), ["event_count"])
    assert {r["user_id"]: r["event_count"] for r in rows} == counts
    assert sum(counts.values()) == 18_000
    assert third.alive(), third.log_tail()
