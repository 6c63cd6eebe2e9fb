"""Replay a dataset into Kafka: the bulk fast path of the producer SDK.

Rows are serialised straight to contract JSON (no per-row model validation: the adapters already
produced valid fields, and the worker validates every event anyway). Event ids are
`{dataset}:{row}`, so replaying the same dataset twice is deduplicated per user by the worker.
`FeedbackSimulator` adds simulated impressions and actions (`intentstream replay --feedback`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import orjson
import pandas as pd

from offline.datasets import Dataset
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


class FeedbackSimulator:
    """Simulated shop feedback for `replay --feedback`, from the dataset's own future events.

    - Impressions: a user's every `every`-th event, the shop shows them what `recs:{user}` holds
      at that moment (read from Redis, in one pipeline per `chunk` events) and emits an
      impression with the record's items, tags, context, state_version and model_version,
      timestamped with that event's time.
    - Actions: every later event of that user within `window_s` of the impression (event time)
      becomes an action attributed to it (view and click -> click, cart -> cart, purchase ->
      purchase; fav is not an action), whether or not the item was in the impression: the
      trainer learns from the categories the user went on to, and the log marks which actions
      hit a recommended item. The user's events themselves are replayed unchanged.
    """

    ACTION_OF = {"view": "click", "click": "click", "cart": "cart", "purchase": "purchase"}

    def __init__(self, producer: EventProducer, client, keys, window_s: float, every: int, chunk: int = 200) -> None:
        self.producer = producer
        self.client = client
        self.keys = keys
        self.window_ms = window_s * 1000
        self.every = every
        self.chunk = chunk
        self.counts: dict[str, int] = {}
        self.open: dict[str, tuple[str, int]] = {}
        self.due: dict[str, tuple[int, str]] = {}
        self.impressions = self.actions = 0

    def on_event(self, event: dict) -> None:
        user, ts = event["user_id"], int(event["ts"])
        shown = self.open.get(user)
        action = self.ACTION_OF.get(event["type"])
        if shown is not None and action and 0 <= ts - shown[1] <= self.window_ms:
            self.producer.send_raw(user.encode(), orjson.dumps({
                "kind": "action", "feedback_id": f"act:{event['event_id']}", "user_id": user, "ts": ts,
                "item_id": event["item_id"], "action": action, "impression_id": shown[0]}))
            self.actions += 1
        n = self.counts.get(user, 0) + 1
        self.counts[user] = n
        if n % self.every == 0:
            self.due[user] = (ts, event["event_id"])

    def flush(self) -> None:
        """Read the due users' recommendations and emit their impressions."""
        if not self.due:
            return
        users = list(self.due)
        raws = self.client.mget([self.keys.recs(u) for u in users])
        for user, raw in zip(users, raws):
            if raw is None:
                continue
            recs = orjson.loads(raw)
            if not recs.get("items"):
                continue
            ts, event_id = self.due[user]
            impression_id = f"imp:{event_id}"
            self.producer.send_raw(user.encode(), orjson.dumps({
                "kind": "impression", "feedback_id": impression_id, "impression_id": impression_id, "user_id": user,
                "ts": ts, "items": [e["item_id"] for e in recs["items"]], "tags": recs.get("tags", []),
                "context_items": recs.get("context_items", []), "context_actions": recs.get("context_actions", []),
                "state_version": recs["state_version"], "model_version": recs["model_version"]}))
            self.open[user] = (impression_id, ts)
            self.impressions += 1
        self.due.clear()


def replay(
    dataset: Dataset,
    producer: EventProducer,
    rate: float = 0.0,
    user_prefix: str = "",
    id_prefix: str = "",
    on_progress: Callable[[int], None] | None = None,
    feedback: FeedbackSimulator | None = None,
) -> tuple[int, float]:
    """Send every event of `dataset`; `rate` > 0 paces to that many events/s (checked every
    rate/10 events, at most 100: a slow rate is sent one event at a time, not in bursts).
    Returns (sent, seconds). With `feedback`, simulated impressions and actions go to the
    feedback topic as well."""
    started = time.perf_counter()
    sent = 0
    step = max(1, min(100, int(rate / 10)))
    for key, value in event_payloads(dataset.events, user_prefix, id_prefix):
        if feedback is not None:
            feedback.on_event(orjson.loads(value))
        producer.send_raw(key, value)
        sent += 1
        if feedback is not None and sent % feedback.chunk == 0:
            feedback.flush()
        if rate > 0 and sent % step == 0:
            ahead = sent / rate - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
        if on_progress is not None and sent % 1000 == 0:
            on_progress(1000)
    if feedback is not None:
        feedback.flush()
        feedback.producer.flush()
    producer.flush()
    if on_progress is not None:
        on_progress(sent % 1000)
    return sent, time.perf_counter() - started
