"""What the worker does when processing a batch raises: retry, then narrow it down, never skip.

`process_resilient` wraps `BatchProcessor.process` for the ingest loop (stream/app.py):

1. Try the whole batch up to `attempts` times, waiting `backoff_s`, then twice as long, ...
   between tries. Nothing of a failed try is acknowledged (the processor hands tokens to the
   pusher only after the durable state write), so a retry cannot leave an offset gap, and the
   events a failed try already folded are duplicates the retry drops by event_id.
2. If the last error is retryable (Redis, Kafka or Feast unreachable: `is_retryable`), raise
   `WorkerStopped`: the worker stops loudly and, restarted, resumes from its committed offsets.
   Dead-lettering valid events because a service was down would lose them.
3. Otherwise one message of the batch breaks the code: process the messages one by one; each that
   raises alone goes to the dead-letter topic with reason `processing_failed: <error>` and is
   acknowledged, the others go on as usual. The worker keeps going.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

from contracts.errors import IntentstreamError
from stream.errors import StreamError

log = logging.getLogger(__name__)

Process = Callable[[Sequence[Any], Sequence[Any]], Awaitable[list[Any]]]
DeadLetterOne = Callable[[Any, str], Awaitable[None]]


class WorkerStopped(StreamError):
    """A retryable failure outlasted the batch's tries: the worker must stop (and be restarted)."""


def is_retryable(exc: BaseException) -> bool:
    """Whether waiting can help: a service that is down or slow, not a bug or bad data.

    >>> is_retryable(redis.ConnectionError("refused")), is_retryable(KeyError("x"))
    (True, False)
    """
    if isinstance(exc, IntentstreamError):
        return exc.retryable
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError, KafkaConnectionError, KafkaTimeoutError,
                            ConnectionError, TimeoutError))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


async def process_resilient(process: Process, messages: Sequence[Any], tokens: Sequence[Any],
                            dead_letter: DeadLetterOne, attempts: int, backoff_s: float,
                            sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> list[Any]:
    """Process `messages` (with their acknowledgement `tokens`) as the module docstring says;
    returns the tokens that may now be acknowledged."""
    error: BaseException | None = None
    for attempt in range(attempts):
        if attempt:
            await sleep(backoff_s * 2 ** (attempt - 1))
        try:
            return await process(messages, tokens)
        except Exception as exc:
            error = exc
            log.warning("batch of %d messages failed (try %d of %d): %s", len(messages), attempt + 1, attempts,
                        _describe(exc), exc_info=not is_retryable(exc))
    assert error is not None
    if is_retryable(error):
        raise WorkerStopped(f"batch failed {attempts} times: {_describe(error)}") from error
    ready: list[Any] = []
    for message, token in zip(messages, tokens, strict=True):
        try:
            ready += await process([message], [token])
        except Exception as exc:
            if is_retryable(exc):
                raise WorkerStopped(f"message failed: {_describe(exc)}") from exc
            log.exception("message dead-lettered: processing it raised")
            await dead_letter(message, f"processing_failed: {_describe(exc)}")
            ready.append(token)
    return ready
