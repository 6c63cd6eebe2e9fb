"""Small real-Kafka and polling pieces the integration tests share."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from kafka import KafkaConsumer
from kafka.partitioner.default import DefaultPartitioner

from contracts.settings import Settings


def users_by_partition(prefix: str, partitions: int, per_partition: int) -> dict[int, list[str]]:
    """`per_partition` user ids for each events partition (the producer's default partitioner)."""
    partitioner, all_partitions = DefaultPartitioner(), list(range(partitions))
    by_partition: dict[int, list[str]] = {p: [] for p in all_partitions}
    n = 0
    while any(len(users) < per_partition for users in by_partition.values()):
        user = f"{prefix}u{n}"
        users = by_partition[partitioner(user.encode(), all_partitions, all_partitions)]
        if len(users) < per_partition:
            users.append(user)
        n += 1
    return by_partition


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, on_fail: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{on_fail()}")


def read_topic(settings: Settings, topic: str, expected: int, timeout_s: float = 30) -> list[dict]:
    """Every record of `topic` (JSON values), waiting until `expected` arrived or the timeout."""
    consumer = KafkaConsumer(topic, **settings.kafka.client_options(), auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=1000)
    records: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for message in consumer:
                records.append(orjson.loads(message.value))
    finally:
        consumer.close()
    return records


def committed_and_end(settings: Settings, topic: str, group: str | None = None) -> tuple[dict[int, int], dict[int, int]]:
    """(the committed offset of `group` (default: the worker group), the log end offset) per
    partition of `topic`; a partition without a commit is missing from the first."""
    from kafka import KafkaAdminClient, TopicPartition

    admin = KafkaAdminClient(**settings.kafka.client_options())
    consumer = KafkaConsumer(**settings.kafka.client_options())
    try:
        committed = {tp.partition: meta.offset
                     for tp, meta in admin.list_consumer_group_offsets(group or settings.worker.app_id).items()
                     if tp.topic == topic and meta.offset >= 0}
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        end = {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        admin.close()
        consumer.close()
    return committed, end


def wait_committed_to_end(settings: Settings, timeout_s: float, on_fail: Callable[[], str] = lambda: "") -> None:
    """Wait until the worker group has committed every partition of the events topic up to its end:
    nothing dropped unacknowledged, no commit frozen at a gap."""
    topic = settings.kafka.events_topic
    state: dict[str, tuple] = {}

    def done() -> bool:
        state["last"] = committed_and_end(settings, topic)
        committed, end = state["last"]
        return all(committed.get(p, 0) == offset for p, offset in end.items())

    wait_for(done, timeout_s, "committed offsets to reach the end of every events partition",
             lambda: f"(committed, end) = {state.get('last')}\n{on_fail()}")


def group_assignment(settings: Settings) -> list[frozenset[int]]:
    """The events partitions each member of the worker group holds now (one set per member);
    none while the group's coordinator is not available yet (a broker's first group: the offsets
    topic is still being created), so a `wait_for` on it polls again."""
    from kafka import KafkaAdminClient
    from kafka.errors import CoordinatorNotAvailableError

    admin = KafkaAdminClient(**settings.kafka.client_options())
    try:
        [group] = admin.describe_consumer_groups([settings.worker.app_id])
    except CoordinatorNotAvailableError:
        return []
    finally:
        admin.close()
    out = []
    for member in group.members:
        assignment = getattr(member.member_assignment, "assignment", None) or []
        out.append(frozenset(p for topic, partitions in assignment if topic == settings.kafka.events_topic
                             for p in partitions))
    return out


def changelog_states(settings: Settings, users: list[str], timeout_s: float = 10) -> dict[str, list[tuple]]:
    """For a failure message: each of `users`' records on the user-state changelog, in order, as
    (changelog partition, changelog offset, event_count, events partition, last_offset), or None
    for a tombstone."""
    topic = f"{settings.worker.app_id}-user_state-changelog"
    wanted = {u.encode() for u in users}
    consumer = KafkaConsumer(topic, **settings.kafka.client_options(), auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=2000)
    out: dict[str, list[tuple]] = {u: [] for u in users}
    deadline = time.monotonic() + timeout_s
    try:
        for message in consumer:
            if message.key in wanted:
                record = orjson.loads(message.value) if message.value else None
                out[message.key.decode()].append(None if record is None else (
                    message.partition, message.offset, record.get("event_count"),
                    record.get("partition"), record.get("last_offset")))
            if time.monotonic() > deadline:
                break
    finally:
        consumer.close()
    return out
