"""The Redis result sink: recommendations at recs:{user_id} plus an update stream.

Delivery: one pipeline (one round trip) per refresh batch. A SET overwrites the user's previous
recommendations, so rewriting after a crash is harmless (idempotent per user and state_version);
the update stream may then announce the same state_version twice. A user's list expires
`ttl_s` after its last write (retention.user_idle_s): a user who stopped coming leaves no key.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import redis

from contracts.keys import RedisKeys
from contracts.recs import RecsPayload


class RedisResultSink:
    def __init__(self, client: redis.Redis, keys: RedisKeys, stream_maxlen: int, ttl_s: int | None) -> None:
        self.client = client
        self.keys = keys
        self.stream_maxlen = stream_maxlen
        self.ttl_s = ttl_s

    def write(self, batch: Sequence[RecsPayload], pipe: redis.client.Pipeline | None = None) -> None:
        """Queue the batch on `pipe` (executed by the caller) or write it in one round trip."""
        own = pipe is None
        pipe = pipe if pipe is not None else self.client.pipeline(transaction=False)
        for recs in batch:
            pipe.set(self.keys.recs(recs["user_id"]), orjson.dumps(recs), ex=self.ttl_s)
            pipe.xadd(
                self.keys.updates,
                {"user_id": recs["user_id"], "state_version": recs["state_version"],
                 "trigger": recs["trigger"], "generated_at": recs["generated_at"]},
                maxlen=self.stream_maxlen, approximate=True,
            )
        if own:
            pipe.execute()

    def write_popular(self, recs: RecsPayload, pipe: redis.client.Pipeline) -> None:
        pipe.set(self.keys.popular, orjson.dumps(recs))
