"""What the worker does when processing a batch raises: retry, then narrow it down, never skip.

`process_resilient` wraps `BatchProcessor.process` for the ingest loop (stream/app.py):

1. Try the whole batch up to `attempts` times, waiting `backoff_s`, then twice as long, ...
   between tries. Nothing of a failed try is acknowledged (the processor hands tokens to the
   pusher only after the durable state write), so a retry cannot leave an offset gap, and the
   events a failed try already folded are duplicates the retry drops by event_id.
2. A retryable error (Redis, Kafka or Feast unreachable: `is_retryable`) is an outage, not bad
   data: the batch is tried again, the wait doubling up to `MAX_BACKOFF_S`, while the waits add
   up to less than `outage_s` (worker.outage_wait_s, 60 s: a restarted or stalled Redis is back
   within it and the worker goes on without a restart). An outage that outlasts it raises
   `WorkerStopped`: the worker stops loudly and, restarted, resumes from its committed offsets.
   Dead-lettering valid events because a service was down would lose them.
3. Otherwise one message of the batch breaks the code: process the messages one by one; each that
   raises alone goes to the dead-letter topic with reason `processing_failed: <error>` and is
   acknowledged, the others go on as usual. The worker keeps going.

`through_outage` is rule 2 for a synchronous call: the reasoner's take (stream/reasoner_service.py)
waits a Redis, Kafka or Feast outage out the same way and with the same settings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

from contracts.errors import IntentstreamError
from stream.errors import StreamError

log = logging.getLogger(__name__)

Process = Callable[[Sequence[Any], Sequence[Any]], Awaitable[list[Any]]]
DeadLetterOne = Callable[[Any, str], Awaitable[None]]


class WorkerStopped(StreamError):
    """A retryable failure outlasted the tries: the worker (or reasoner) must stop and be restarted."""


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


MAX_BACKOFF_S = 5.0
"""Longest wait between two tries of a batch during an outage."""

T = TypeVar("T")


def backoff(backoff_s: float, attempt: int) -> float:
    """The wait after the `attempt`-th failed try: `backoff_s`, doubled per try, at most MAX_BACKOFF_S.

    >>> [backoff(0.5, attempt) for attempt in (1, 2, 3, 4, 5)]
    [0.5, 1.0, 2.0, 4.0, 5.0]
    """
    return min(backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)


class OutageClock:
    """Rule 2's bookkeeping for one call: the wait before each next try while the errors are an
    outage that has not outlasted `outage_s`."""

    def __init__(self, backoff_s: float, outage_s: float) -> None:
        self.backoff_s, self.outage_s = backoff_s, outage_s
        self.attempt, self.waited = 0, 0.0

    def wait_after(self, exc: Exception) -> float:
        """Seconds to wait before trying again after `exc`; raises `exc` when it is no outage (the
        caller decides) and `WorkerStopped` when the outage outlasted `outage_s`."""
        if not is_retryable(exc):
            raise exc
        self.attempt += 1
        if self.waited >= self.outage_s:
            raise WorkerStopped(f"failed {self.attempt} times over {self.waited:.1f} s: {_describe(exc)}") from exc
        wait = backoff(self.backoff_s, self.attempt)
        log.warning("a service is unreachable (try %d, %.1f s waited, next in %.1f s): %s", self.attempt, self.waited,
                    wait, _describe(exc))
        self.waited += wait
        return wait


def through_outage(call: Callable[[], T], backoff_s: float, outage_s: float,
                   sleep: Callable[[float], Any] = time.sleep) -> T:
    """`call()`, called again after `backoff` while it raises a retryable error and the waits add up
    to less than `outage_s`; an outage that outlasts them raises `WorkerStopped`, any other error
    is raised at once (it is no outage: the caller decides)."""
    clock = OutageClock(backoff_s, outage_s)
    while True:
        try:
            return call()
        except Exception as exc:
            sleep(clock.wait_after(exc))


async def through_outage_async(call: Callable[[], T], backoff_s: float, outage_s: float,
                               sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> T:
    """`through_outage` inside the event loop: the waits do not block it (the worker's own Redis
    calls outside a batch, e.g. marking itself ready)."""
    clock = OutageClock(backoff_s, outage_s)
    while True:
        try:
            return call()
        except Exception as exc:
            await sleep(clock.wait_after(exc))


async def process_resilient(process: Process, messages: Sequence[Any], tokens: Sequence[Any],
                            dead_letter: DeadLetterOne, attempts: int, backoff_s: float,
                            sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                            outage_s: float = 0.0) -> list[Any]:
    """Process `messages` (with their acknowledgement `tokens`) as the module docstring says;
    returns the tokens that may now be acknowledged."""
    error: BaseException | None = None
    attempt, waited = 0, 0.0
    while True:
        if attempt:
            wait = backoff(backoff_s, attempt)
            await sleep(wait)
            waited += wait
        try:
            return await process(messages, tokens)
        except Exception as exc:
            error = exc
            attempt += 1
            log.warning("batch of %d messages failed (try %d, %.1f s waited): %s", len(messages), attempt, waited,
                        _describe(exc), exc_info=not is_retryable(exc))
            if attempt >= attempts and not (is_retryable(exc) and waited < outage_s):
                break
    assert error is not None
    if is_retryable(error):
        raise WorkerStopped(f"batch failed {attempt} times over {waited:.1f} s: {_describe(error)}") from error
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
