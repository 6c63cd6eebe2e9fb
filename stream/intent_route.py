"""The intent route from the worker's side: send refreshes to reasoning, merge what came back.

Reasoning is its own tier (stream/reasoner_service.py, `intentstream reasoner`): the worker keeps
no language model. For each refresh batch the route reads the users' last intent results
(`intent:{user_id}`, one MGET) and merges each into the fresh behavioural list
(reasoning/retrieval.py `merge_with_intent`), so a refresh never drops the intent items. A user
whose intent may have changed (stream/trigger.py `intent_due`, counted from the newer of their
last result and their last request) is sent as an `IntentRequest` (contracts/intent.py) on the
intent topic, keyed by user_id, and the refresh is written with fallback_reason
`intent_pending` until the reasoner's merged list replaces it; the others keep the merged list
with no fallback (counted `intent_recent_reused`). A request the producer cannot take (its
buffer full, the broker gone past `_SEND_BLOCK_MS`) leaves the refresh with
`intent_queue_full` (counted); the stream never waits for reasoning.

Delivery: recommendations are derived data, and events are acknowledged independently of this
route. Requests are sent with acks=all and flushed when the worker drains at a stop; a worker
killed with SIGKILL can lose requests still in its producer's buffer (a few ms of them), and the
user's next due refresh sends again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

import orjson
import redis

from contracts.keys import RedisKeys
from contracts.recs import FallbackReason, RecsPayload
from contracts.settings import Settings
from reasoning.reasoner import UserView
from reasoning.retrieval import merge_with_intent
from stream.errors import BrokerUnavailable
from stream.producer import EventProducer
from stream.trigger import IntentMark, intent_due

_SEND_BLOCK_MS = 200
"""How long a send may block the stream loop (metadata unknown, buffer full) before the refresh
falls back to `intent_queue_full`."""


class IntentRoute:
    def __init__(self, settings: Settings, client: redis.Redis, producer: EventProducer | None = None) -> None:
        self.settings = settings
        self.cfg = settings.intent
        self.client = client
        self.keys = RedisKeys(settings.key_prefix)
        self.producer = producer or EventProducer.from_settings(settings, settings.kafka.intent_topic,
                                                                max_block_ms=_SEND_BLOCK_MS)
        self.requested: OrderedDict[str, IntentMark] = OrderedDict()
        """user_id -> when this worker last sent the user, on which state (LRU, remember_users)."""

    def submit(self, views: Sequence[UserView], payloads: list[RecsPayload],
               last_produced_ms: Sequence[int], recent_fused: bool = False) -> list[FallbackReason | None]:
        """Merge each payload with the user's last intent result, if any (in place), and send the
        users whose intent is due to reasoning. `recent_fused`: the payloads hold the user's recent
        items already (the sequential model's fusion), so no merge adds them again. Returns the
        fallback_reason each payload is written with: `intent_pending` (sent), `intent_queue_full`
        (could not be sent), or None (not due: the last result is merged)."""
        now = int(time.time() * 1000)
        k = self.settings.recs.top_k
        raws = self.client.mget([self.keys.intent(v.user_id) for v in views]) if views else []
        reasons: list[FallbackReason | None] = []
        for view, payload, produced, raw in zip(views, payloads, last_produced_ms, raws):
            behavioural = {**payload, "fallback_reason": None}
            mark = self.requested.get(view.user_id)
            if raw is not None:
                last = orjson.loads(raw)
                payload.update(merge_with_intent(behavioural, () if recent_fused else view.recent,
                                                 set(view.bought), last, k))
                if mark is None or last["at_ms"] > mark.at_ms:
                    mark = IntentMark(last["at_ms"], last["state_version"])
            if not intent_due(view.trigger, view.state_version, mark, now, self.cfg):
                reasons.append(None)
                continue
            request = {"format": 1, "user_id": view.user_id, "state_version": view.state_version,
                       "trigger": view.trigger, "recent": [list(e) for e in view.recent[: self.cfg.max_items]],
                       "bought": sorted(view.bought), "behavioural": behavioural, "recent_fused": recent_fused,
                       "requested_ms": now,
                       "last_produced_ms": produced}
            try:
                self.producer.send_raw(view.user_id.encode(), orjson.dumps(request))
            except BrokerUnavailable:
                reasons.append(FallbackReason.intent_queue_full)
                continue
            self.requested[view.user_id] = IntentMark(now, view.state_version)
            self.requested.move_to_end(view.user_id)
            if len(self.requested) > self.cfg.remember_users:
                self.requested.popitem(last=False)
            reasons.append(FallbackReason.intent_pending)
        return reasons

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until the requests sent so far are on the topic (at a stop)."""
        self.producer.flush(timeout_s)

    def close(self) -> None:
        self.producer.close()
