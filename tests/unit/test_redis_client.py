"""A Redis that stops answering makes a call raise after the bounded timeouts and retries of
`features.redis_client.connect`, instead of blocking the worker's loop."""

from __future__ import annotations

import socket
import time

import pytest
import redis

from contracts.settings import RedisSettings
from features.redis_client import connect


def test_a_stalled_redis_raises_within_the_bounded_retries():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts connections (the kernel does) and never answers, like a SIGSTOPped Redis
    try:
        settings = RedisSettings(host="127.0.0.1", port=server.getsockname()[1], timeout_s=0.3, retries=2)
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            connect(settings).get("k")
        waited = time.monotonic() - started
        assert 0.9 <= waited < 0.9 + 0.3 + 1.0  # three tries of 0.3 s plus 0.1 + 0.2 s backoff, with slack
    finally:
        server.close()
