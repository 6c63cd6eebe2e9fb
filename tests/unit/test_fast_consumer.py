"""The producer buffer that must be empty before faust commits offsets, and the read offsets a
delivery that outlasts a rebalance must not overwrite (stream/fast_consumer.py)."""

import asyncio
from types import SimpleNamespace

from faust.transport.producer import ProducerBuffer

from stream.fast_consumer import DrainingProducerBuffer


class SlowChannel:
    """Hands a record over in 0.25 s (a busy core, a metadata refresh): longer than the 0.1 s
    faust's flush waits for progress."""

    def __init__(self) -> None:
        self.published: list[int] = []

    async def publish_message(self, fut, wait: bool = False) -> None:
        await asyncio.sleep(0.25)
        self.published.append(fut.n)


async def _flush_with_queued(buffer_class) -> tuple[int, list[int]]:
    buffer = buffer_class()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
    channel = SlowChannel()
    await buffer.start()
    try:
        for n in range(3):
            buffer.put(SimpleNamespace(n=n, message=SimpleNamespace(channel=channel)))
        await buffer.flush()
        return buffer.size + getattr(buffer, "_handing_over", 0), list(channel.published)
    finally:
        while buffer.size:  # faust's buffer refuses to stop with records queued
            await asyncio.sleep(0.05)
        await buffer.stop()


def test_flush_returns_only_when_every_changelog_record_was_handed_over():
    left, published = asyncio.run(_flush_with_queued(DrainingProducerBuffer))
    assert left == 0 and published == [0, 1, 2]


def test_faust_flush_returns_with_records_still_queued():
    """The upstream behaviour the workaround exists for; when this fails, faust fixed it and
    DrainingProducerBuffer can go."""
    left, published = asyncio.run(_flush_with_queued(ProducerBuffer))
    assert left > 0 and len(published) < 3


def _delivery_through_a_rebalance(with_rebalance: bool) -> int | None:
    """faust's fetch loop around one delivery (`Consumer._drain_messages`: `await
    self.wait_first(callback(message), self.suspend_flow.wait())`, then `set_read_offset(tp,
    offset)`), on a real (not started) FastDrainConsumer, for a message at offset 4200 fetched
    before a rebalance whose seek moves the partition back to its committed offset 3500 while
    the delivery waits (the inbox full). Returns the read offset the next fetch is checked against."""
    from faust.types import TP

    from stream.fast_consumer import FastApp

    async def run() -> int | None:
        app = FastApp("t-read-offsets", broker="kafka://127.0.0.1:1", store="memory://")
        consumer, tp = app.consumer, TP("events", 0)
        consumer._read_offset[tp] = 4199
        space = asyncio.Event()

        async def deliver() -> None:  # BatchInbox.deliver waiting for room
            await space.wait()

        async def rebalance() -> None:
            if with_rebalance:
                app.consumer_generation_id += 1
                consumer._read_offset.update({tp: 3500})  # what perform_seek writes
            space.set()

        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(rebalance()))
        await consumer.wait_first(deliver(), consumer.suspend_flow.wait())
        consumer._read_offset[tp] = 4200  # faust: set_read_offset(tp, offset)
        await asyncio.sleep(0)  # faust's loop yields before its next fetch
        return consumer._read_offset[tp]

    return asyncio.run(run())


def test_a_delivery_that_outlasts_a_rebalance_keeps_the_seeks_read_offset():
    """faust drops a fetched record whose offset is below the read offset: with 4200 left there,
    the records 3500..4199 fetched again after the seek would never be processed."""
    assert _delivery_through_a_rebalance(with_rebalance=True) == 3500
    assert _delivery_through_a_rebalance(with_rebalance=False) == 4200
