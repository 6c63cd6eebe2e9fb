"""What the worker does when a batch raises (stream/failures.py): retry, stop for an outage,
narrow a poison message down to a dead letter, never skip or acknowledge early."""

from __future__ import annotations

import asyncio

import pytest
import redis

from stream.failures import WorkerStopped, process_resilient, through_outage


class Processor:
    """Processes messages (ints) like BatchProcessor.process: returns the tokens to acknowledge;
    raises `error` for any batch that holds `poison` (or for its first `fail_times` calls)."""

    def __init__(self, poison: int | None = None, error: Exception | None = None, fail_times: int = 0) -> None:
        self.poison, self.error, self.fail_times = poison, error or ValueError("boom"), fail_times
        self.calls: list[list[int]] = []
        self.processed: list[int] = []

    async def __call__(self, messages, tokens):
        self.calls.append(list(messages))
        if len(self.calls) <= self.fail_times or self.poison in messages:
            raise self.error
        self.processed += list(messages)
        return list(tokens)


def run(proc, messages, attempts=3, outage_s=0.0):
    letters: list[tuple[int, str]] = []
    waits: list[float] = []

    async def dead_letter(message, reason):
        letters.append((message, reason))

    async def sleep(seconds):
        waits.append(seconds)

    tokens = [f"t{m}" for m in messages]
    ready = asyncio.run(process_resilient(proc, messages, tokens, dead_letter, attempts, 0.5, sleep, outage_s))
    return ready, letters, waits


def test_a_passing_batch_is_processed_once():
    proc = Processor()
    ready, letters, waits = run(proc, [1, 2, 3])
    assert ready == ["t1", "t2", "t3"] and proc.calls == [[1, 2, 3]] and not letters and not waits


def test_a_passing_retry_loses_nothing_and_backs_off():
    proc = Processor(fail_times=2)
    ready, letters, waits = run(proc, [1, 2, 3])
    assert ready == ["t1", "t2", "t3"] and proc.processed == [1, 2, 3] and not letters
    assert waits == [0.5, 1.0]


def test_a_poison_message_is_dead_lettered_and_the_rest_goes_on():
    proc = Processor(poison=2)
    ready, letters, _ = run(proc, [1, 2, 3])
    assert proc.processed == [1, 3]
    assert sorted(ready) == ["t1", "t2", "t3"]  # the poison one is acknowledged: it is in the dead-letter topic
    assert letters == [(2, "processing_failed: ValueError: boom")]


def test_an_outage_stops_the_worker_and_acknowledges_nothing():
    proc = Processor(poison=2, error=redis.ConnectionError("connection refused"))
    with pytest.raises(WorkerStopped, match="ConnectionError"):
        run(proc, [1, 2, 3])
    assert proc.processed == [] and len(proc.calls) == 3


def test_an_outage_shorter_than_the_outage_budget_is_waited_out():
    proc = Processor(fail_times=8, error=redis.ConnectionError("connection refused"))
    ready, letters, waits = run(proc, [1, 2, 3], outage_s=60.0)
    assert ready == ["t1", "t2", "t3"] and proc.processed == [1, 2, 3] and not letters
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]  # doubling, capped


def test_an_outage_longer_than_the_budget_stops_the_worker():
    proc = Processor(fail_times=100, error=redis.ConnectionError("connection refused"))
    with pytest.raises(WorkerStopped, match="over 22.5 s"):
        run(proc, [1, 2, 3], outage_s=20.0)
    assert proc.processed == []


def test_bad_data_is_not_waited_for():
    proc = Processor(poison=2)
    _, letters, waits = run(proc, [1, 2, 3], outage_s=60.0)
    assert waits == [0.5, 1.0] and letters == [(2, "processing_failed: ValueError: boom")]


class Call:
    """A synchronous call (the reasoner's take) that raises `error` for its first `fail_times` calls."""

    def __init__(self, error: Exception, fail_times: int) -> None:
        self.error, self.fail_times, self.calls = error, fail_times, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.fail_times:
            raise self.error
        return "handled"


def test_a_synchronous_call_waits_an_outage_out_with_the_same_backoff():
    call, waits = Call(redis.TimeoutError("stalled"), 6), []
    assert through_outage(call, 0.5, 60.0, waits.append) == "handled"
    assert call.calls == 7 and waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_synchronous_call_stops_when_the_outage_outlasts_the_budget():
    call, waits = Call(redis.ConnectionError("connection refused"), 100), []
    with pytest.raises(WorkerStopped, match="over 22.5 s: ConnectionError"):
        through_outage(call, 0.5, 20.0, waits.append)
    assert sum(waits) == 22.5 and call.calls == 8


def test_a_synchronous_call_that_is_not_an_outage_raises_at_once():
    call, waits = Call(ValueError("a bug"), 1), []
    with pytest.raises(ValueError, match="a bug"):
        through_outage(call, 0.5, 60.0, waits.append)
    assert call.calls == 1 and not waits


def test_inside_the_event_loop_an_outage_is_waited_out_without_blocking_it():
    import asyncio

    from stream.failures import through_outage_async

    call, waits = Call(redis.ConnectionError("connection refused"), 3), []

    async def sleep(seconds):
        waits.append(seconds)

    assert asyncio.run(through_outage_async(call, 0.5, 60.0, sleep)) == "handled"
    assert call.calls == 4 and waits == [0.5, 1.0, 2.0]
    with pytest.raises(WorkerStopped, match="over 1.5 s"):
        asyncio.run(through_outage_async(Call(redis.TimeoutError("stalled"), 100), 0.5, 1.0, sleep))
