"""Small real-Kafka and polling pieces the integration tests share."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from kafka import KafkaConsumer

from contracts.settings import Settings


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, on_fail: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{on_fail()}")


def read_topic(settings: Settings, topic: str, expected: int, timeout_s: float = 30) -> list[dict]:
    """Every record of `topic` (JSON values), waiting until `expected` arrived or the timeout."""
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka.bootstrap, auto_offset_reset="earliest",
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


def committed_and_end(settings: Settings, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """(the worker group's committed offset, the log end offset) per partition of `topic`;
    a partition without a commit is missing from the first."""
    from kafka import KafkaAdminClient, TopicPartition

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap)
    try:
        committed = {tp.partition: meta.offset
                     for tp, meta in admin.list_consumer_group_offsets(settings.worker.app_id).items()
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
