"""The one way the project opens a Redis client: bounded timeouts and retries from settings.

A call that times out or loses its connection is retried `redis.retries` times (backoff 0.1 s,
doubling), then raises `redis.TimeoutError` / `redis.ConnectionError`, which the worker treats
as an outage (stream/failures.py: the batch is retried, then the worker stops loudly and is
restarted). A retried call may have run once already: writes through it are idempotent (recs,
Feast rows) or fenced (the item model's script refuses a second application), except metric
counters, which can over-count by one batch.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from contracts.settings import RedisSettings


def connect(settings: RedisSettings) -> redis.Redis:
    return redis.Redis(
        host=settings.host, port=settings.port, db=settings.db,
        socket_timeout=settings.timeout_s, socket_connect_timeout=settings.timeout_s,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), settings.retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        **settings.client_options(),
    )


def delete_matching(client: redis.Redis, pattern: str, chunk: int = 1000) -> int:
    """Delete every key matching `pattern` (SCAN, then DEL in chunks); returns how many."""
    deleted, batch = 0, []
    for key in client.scan_iter(match=pattern, count=chunk):
        batch.append(key)
        if len(batch) >= chunk:
            deleted += client.delete(*batch)
            batch = []
    if batch:
        deleted += client.delete(*batch)
    return deleted
