"""Replay a dataset into Kafka: the bulk fast path of the producer SDK.

Rows are serialised straight to contract JSON (no per-row model validation: the adapters already
produced valid fields, and the worker validates every event anyway). Event ids are
`{dataset}:{row}`, so replaying the same dataset twice is deduplicated per user by the worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import orjson
import pandas as pd

from stream.datasets import Dataset
from stream.producer import EventProducer


def event_payloads(events: pd.DataFrame, user_prefix: str = "", id_prefix: str = "") -> Iterator[tuple[bytes, bytes]]:
    """(key, value) per row in order; `user_prefix` namespaces user ids (tests, benchmarks)."""
    columns = {c: events[c].to_numpy(dtype=object) for c in events.columns}
    n = len(events)
    for i in range(n):
        user = user_prefix + columns["user_id"][i]
        event = {
            "event_id": id_prefix + columns["event_id"][i], "user_id": user,
            "item_id": columns["item_id"][i], "type": columns["type"][i], "ts": int(columns["ts"][i]),
        }
        price = columns["price"][i]
        if price is not None and not (isinstance(price, float) and np.isnan(price)):
            event["price"] = float(price)
        session = columns["session_id"][i]
        if isinstance(session, str):
            event["session_id"] = session
        context = {}
        for field in ("category", "brand"):
            value = columns[field][i]
            if isinstance(value, str) and value:
                context[field] = value
        if context:
            event["context"] = context
        yield user.encode(), orjson.dumps(event)


def replay(
    dataset: Dataset,
    producer: EventProducer,
    rate: float = 0.0,
    user_prefix: str = "",
    id_prefix: str = "",
    on_progress: Callable[[int], None] | None = None,
) -> tuple[int, float]:
    """Send every event of `dataset`; `rate` > 0 paces to that many events/s. Returns (sent, seconds)."""
    started = time.perf_counter()
    sent = 0
    for key, value in event_payloads(dataset.events, user_prefix, id_prefix):
        producer.send_raw(key, value)
        sent += 1
        if rate > 0 and sent % 100 == 0:
            ahead = sent / rate - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
        if on_progress is not None and sent % 1000 == 0:
            on_progress(1000)
    producer.flush()
    if on_progress is not None:
        on_progress(sent % 1000)
    return sent, time.perf_counter() - started
