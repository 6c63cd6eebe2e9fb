"""Reader SDK for the shop: fresh recommendations from Redis.

    from stream.reader import RecommendationReader
    reader = RecommendationReader.from_settings(Settings())
    recs = reader.get_recommendations("12345")   # a Recommendations record
"""

from __future__ import annotations

import orjson
import redis

from contracts.keys import RedisKeys
from contracts.recs import FallbackReason, Recommendations
from contracts.settings import Settings
from features.redis_client import connect


class RecommendationReader:
    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    @classmethod
    def from_settings(cls, settings: Settings) -> "RecommendationReader":
        r = settings.redis
        return cls(connect(r), RedisKeys(settings.key_prefix))

    def get_recommendations(self, user_id: str) -> Recommendations | None:
        """The user's recommendations; for an unknown user the popularity fallback (with
        `fallback_reason="unknown_user"`), or None when the worker has written nothing yet."""
        raw, popular = self.client.mget(self.keys.recs(user_id), self.keys.popular)
        if raw is not None:
            return Recommendations.model_validate(orjson.loads(raw))
        if popular is None:
            return None
        fallback = Recommendations.model_validate(orjson.loads(popular))
        return fallback.model_copy(update={"user_id": user_id, "fallback_reason": FallbackReason.unknown_user})


def get_recommendations(user_id: str, settings: Settings | None = None) -> Recommendations | None:
    """One-off convenience; keep a RecommendationReader for repeated reads."""
    return RecommendationReader.from_settings(settings or Settings()).get_recommendations(user_id)
