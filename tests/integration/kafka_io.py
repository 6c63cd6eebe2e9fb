"""Small real-Kafka and polling pieces the integration tests share."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from kafka import KafkaConsumer

from intentstream.settings import Settings


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
