"""A Faust app whose Kafka consumer hands messages to streams without two tasks per message,
that delivers a topic in batches without an Event per message (`BatchInbox`, below), whose table
recovery seeks before it resumes and fetches a changelog partition that delivers nothing again
(`SeekFirstRecovery`), which finishes the work it holds before it waits for acknowledgements at
a stop (`FastApp`), and whose producer sends every queued changelog record before an offset is
committed (`DrainingProducerBuffer`).

Workaround. faust-streaming's fetch loop (`Consumer._drain_messages`) delivers every message as
`await self.wait_first(callback(message), self.suspend_flow.wait())`: two new tasks and an
`asyncio.wait` per message, so it can stop delivering when a rebalance suspends the flow. On
this 2-core machine that caps a do-nothing `take_events` agent at ~6k events/s, while a plain
aiokafka consumer drains ~300k/s (see robinhood/faust#563 "Message consumption is slow", and
faust-streaming/faust#229 about the same call). While the flow is not suspended we await the
callback directly; when it is, Faust's own path runs unchanged.
Measured with the same agent: ~15k events/s instead of ~6k.

What the direct await gives up, and how it is kept. A rebalance does not stop the fetcher, so a
delivery that is waiting (the inbox full, or flow control suspended) is not interrupted by it:
it can finish after the rebalance's seek, and faust then records that older message's offset as
the partition's read offset, over the one the seek set; the records below it, fetched again from
the committed offset, are dropped as already read ("DROPPED MESSAGE ROFF"), never processed
and never acknowledged, and the partition's commit stays where it was. faust's own path hands the
message up when `suspend_flow` is set, before the seek. So when the consumer generation changed
while a delivery waited, `wait_first` puts back, on the next turn of the event loop (after
faust's write, before the next fetch), the read offsets as they stood when the delivery ended
(`read_offsets_restored`, logged). The delivered message itself is of the old generation: the
inbox and faust's streams drop it, and the seek fetches it again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableSet
from typing import Any

import faust
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.transport.conductor import Conductor
from faust.transport.producer import ProducerBuffer
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, Message
from mode import Service
from mode.services import WaitResults

_EVENT_WAIT = asyncio.Event.wait.__code__
log = logging.getLogger(__name__)

Drainer = Callable[[], Awaitable[int]]
"""Finishes the work a stopping worker holds and acknowledges what it can; returns how many
events it acknowledged."""


class FastDrainConsumer(aiokafka_driver.Consumer):
    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        flow_guard = coros[1] if len(coros) == 2 else None
        if (
            timeout is None
            and inspect.iscoroutine(flow_guard)
            and flow_guard.cr_code is _EVENT_WAIT
            and inspect.iscoroutine(coros[0])
            and not self.suspend_flow.is_set()
        ):
            flow_guard.close()
            generation = self.app.consumer_generation_id
            result = await coros[0]
            if self.app.consumer_generation_id != generation:
                self._restore_read_offsets_soon()
            return WaitResults([result], [result], False)
        return await super().wait_first(*coros, timeout=timeout)

    read_offsets_restored = 0
    """How often a delivery outlasted a rebalance and the read offsets were put back."""

    def _restore_read_offsets_soon(self) -> None:
        """A delivery outlasted a rebalance (module docstring): faust is about to record that
        message's offset as read; put the read offsets back as they are now once it has."""
        snapshot = dict(self._read_offset)

        def restore() -> None:
            offsets = self._read_offset
            for tp in [tp for tp in offsets if tp not in snapshot]:
                del offsets[tp]
            offsets.update(snapshot)

        self.read_offsets_restored += 1
        log.info("a delivery outlasted a rebalance: the read offsets the seek set are kept (%s)",
                 {f"{tp.topic}:{tp.partition}": o for tp, o in snapshot.items()})
        asyncio.get_running_loop().call_soon(restore)


class BatchInbox:
    """One topic's messages handed to one consumer loop as lists: no faust Event, stream, queue
    or sensor call per message; offsets acknowledged per batch (`ack`).

    Workaround. A faust agent gets every message as an `Event` through a stream: per message the
    conductor decodes it into an Event and queues it, the stream iterator takes it, tracks it,
    calls the sensors and the processors (noack_take's buffer is one), and the agent
    acknowledges each Event. A do-nothing `noack_take` agent drains ~15k events/s here (with
    `FastDrainConsumer`), a plain aiokafka consumer ~300k/s: ~65 µs per message, about a fifth
    of the worker's time per event at ~3k events/s (py-spy). faust has no batch delivery: its
    answer to "bulk processing" is `take` (robinhood/faust#310), `noack_take` its manually
    acknowledged form (faust-streaming/faust#192), both built on the per-Event stream. So
    `BatchConductor` routes the topic's partitions to `deliver`, which appends the raw
    `ConsumerMessage`; `take` returns up to `max_n` of them, waiting at most `within_s` after
    the first. Kept from faust's path: flow control (delivery waits while faust suspends it at a
    rebalance, `clear` runs with faust's queues), the skip of messages from an older consumer
    generation or taken while flow is suspended (the seek after the rebalance fetches them
    again), tracking of every taken message as unacknowledged (faust's stop and rebalance wait
    for it, its commit moves only over acknowledged offsets), and acknowledgement by
    `Consumer.ack` itself. At most `maxsize` messages wait; a full inbox holds up the fetcher.
    Not kept: faust's per-message sensor calls (its Monitor's per-topic counters; the worker's
    own metrics count events). Measured gain (`intentstream bench ingest --events 100000
    --workers 1`, this 2-core box, two interleaved pairs): 2,769 and 2,934 events/s with the
    agent, 3,729 and 3,882 with the inbox (1.33x; benchmarks/REPORT.md "Before and after").
    """

    def __init__(self, app: faust.App, topic: faust.TopicT, max_n: int, maxsize: int) -> None:
        self.app = app
        self.topic = topic
        self.max_n = max_n
        self.maxsize = max(maxsize, max_n)
        self._messages: deque[Message] = deque()
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        app.topics.add(topic)  # subscribe (an agent's stream would do this)
        app.flow_control.manage_queue(self)  # type: ignore[arg-type]  # it only calls clear()
        conductor = app.topics
        if not isinstance(conductor, BatchConductor):
            raise TypeError("BatchInbox needs FastApp's BatchConductor")
        conductor.inboxes[topic.get_topic_name()] = self

    def __len__(self) -> int:
        """Messages waiting to be taken."""
        return len(self._messages)

    def clear(self) -> None:
        """faust's flow_control.clear() (rebalance, stop): drop what waits; it is fetched again."""
        self._messages.clear()
        self._full.clear()
        self._arrived.clear()
        self._space.set()

    async def deliver(self, message: Message) -> None:
        """The conductor's callback for the topic's partitions."""
        await self.app.flow_control.acquire()
        while len(self._messages) >= self.maxsize:
            self._space.clear()
            await self._space.wait()
        self._messages.append(message)
        self._arrived.set()
        if len(self._messages) >= self.max_n:
            self._full.set()

    async def take(self, within_s: float) -> list[Message]:
        """The next batch: up to `max_n` messages, `within_s` after the first one arrived at most;
        every message returned is tracked until `ack`. Empty when all that waited was skipped."""
        await self._arrived.wait()
        if len(self._messages) < self.max_n:
            try:
                await asyncio.wait_for(self._full.wait(), within_s)
            except TimeoutError:
                pass
        n = min(self.max_n, len(self._messages))
        taken = [self._messages.popleft() for _ in range(n)]
        if len(self._messages) < self.max_n:
            self._full.clear()
        if not self._messages:
            self._arrived.clear()
        self._space.set()
        app = self.app
        if not app.flow_control.is_active():
            return []
        generation = app.consumer_generation_id
        batch = [m for m in taken if m.generation_id == generation]
        if len(batch) < len(taken):
            log.info("skipped %d messages fetched before the rebalance (the seek fetches them again)",
                     len(taken) - len(batch))
        unacked = app.consumer._unacked_messages
        for m in batch:
            m.tracked = True
            unacked.add(m)
        return batch

    def ack(self, messages: list[Message]) -> None:
        ack = self.app.consumer.ack
        for m in messages:
            ack(m)


def fetch_state(consumer: Any, tp: TP) -> dict[str, Any]:
    """What faust and aiokafka hold about one partition's fetching (a diagnostic for a partition
    that receives nothing): faust's read offset, whether it fetches it (active, paused,
    buffered), the last fetch's high watermark, aiokafka's pause flag and fetch position."""
    out: dict[str, Any] = {"read_offset": consumer._read_offset.get(tp),
                           "active": tp in (consumer._active_partitions or ()),
                           "paused": tp in consumer._paused_partitions,
                           "buffered": tp in consumer._buffered_partitions}
    try:
        out["highwater"] = consumer.highwater(tp)
        client = consumer._thread._ensure_consumer()
        state = client._subscription.subscription.assignment.state_value(aiokafka_driver.ensure_aiokafka_TP(tp))
        out.update(aiokafka_paused=state.paused, position=state.position if state.has_valid_position else None)
    except Exception as exc:  # internals of aiokafka: a diagnostic never raises
        out["error"] = repr(exc)
    return out


class BatchConductor(Conductor):
    """faust's Conductor, with the partitions of a `BatchInbox` topic delivered to the inbox."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inboxes: dict[str, BatchInbox] = {}

    def _build_handler(self, tp: TP, channels: MutableSet[Any]) -> Any:
        inbox = self.inboxes.get(tp.topic)
        return inbox.deliver if inbox is not None else super()._build_handler(tp, channels)


class DrainingProducerBuffer(ProducerBuffer):
    """faust's producer buffer whose `flush` returns only when every queued record was handed to
    the Kafka producer.

    Workaround. A table write queues its changelog record in this buffer (`send_soon`), and a
    task hands the records to aiokafka one by one. Before it commits offsets faust awaits
    `producer.flush()` (faust-streaming/faust#273, "flushing producer before commit, to not have
    any data loss"), which flushes this buffer and then aiokafka. But faust-streaming 0.15.3's
    `ProducerBuffer.flush_atmost` (unchanged upstream) returns as soon as no record was sent
    within 0.1 s, with records still queued: on a busy core the commit then goes out before the
    changelog records of the events it covers, and a worker killed in that window restarts (or
    its successor takes over) from a changelog without those users' last states while their
    events count as processed: they are never counted (tests/unit/test_fast_consumer.py shows
    faust's flush returning with records queued). Here `flush` waits until the queue is empty
    and no record is being handed over; a producer that cannot send holds the commit back,
    which is what at-least-once needs. Cost: a commit waits for the records queued before it.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._handing_over = 0

    async def _send_pending(self, fut: Any) -> None:
        self._handing_over += 1  # in the step that took it off the queue: size + this is exact
        try:
            await super()._send_pending(fut)
        finally:
            self._handing_over -= 1

    async def flush(self) -> None:
        waited = time.monotonic()
        while self.size or self._handing_over:
            if self.state != "running":
                raise RuntimeError("Cannot flush: Producer not Running")
            self.message_sent.clear()
            try:
                await asyncio.wait_for(self.message_sent.wait(), timeout=1.0)
            except TimeoutError:
                if time.monotonic() - waited > 10.0:
                    log.warning("changelog flush waiting %.0f s with %d records queued: the commit waits",
                                time.monotonic() - waited, self.size)
                    waited = time.monotonic()


class DrainingProducer(aiokafka_driver.Producer):
    """aiokafka's faust producer with `DrainingProducerBuffer`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.app.conf.producer_threaded:
            raise ValueError("DrainingProducer supports the default (non-threaded) producer only")
        self.buffer = DrainingProducerBuffer(loop=self.loop, beacon=self.beacon)
        self.buffer.app = self.app


class FastDrainTransport(aiokafka_driver.Transport):
    Consumer = FastDrainConsumer
    Conductor = BatchConductor
    Producer = DrainingProducer


class FastApp(faust.App):
    """faust.App using `FastDrainTransport` (and `BatchConductor`) for its kafka:// broker and
    `SeekFirstRecovery` for its tables; `seek_delay_s` widens the recovery seek and
    `drop_changelog` stalls every recovery (tests only); `recovery_stall_s`: see
    `SeekFirstRecovery._refetch_stalled`.

    Workaround for a stop with events in flight. On SIGTERM faust 0.15.3 (`App._stop_consumer`)
    stops the fetcher, then waits until every event a stream took is acknowledged
    (`Consumer.wait_empty`, no time limit), and only then commits and leaves. The app's timers
    have stopped by then (`should_stop` is set first), and an agent that acknowledges an event
    only after later work (here: after the Feast push that carried it, which the timer collects)
    never acknowledges it: the worker waits forever and its supervisor has to kill it (measured
    before this: a SIGTERMed worker with events in flight never exited; `WorkerProcess.stop`
    killed it after 30 s). faust has no hook between the fetcher stop and that wait, so
    `_consumer_wait_empty` runs the registered drainers first (`add_drainer`), again until every
    taken event is acknowledged (a batch the ingest loop was still processing lands meanwhile) or
    `drain_timeout_s` passed, and then lets faust wait and commit as before. After the timeout it
    commits what was acknowledged and leaves the rest to the next owner (at-least-once: they come
    again; state and item model drop what was already applied). Acknowledgement itself is
    faust's, unchanged. A rebalance (not a stop) keeps faust's path: its timers still run.
    """

    def __init__(self, *args: Any, seek_delay_s: float = 0.0, drain_timeout_s: float = 15.0,
                 recovery_stall_s: float = 15.0, drop_changelog: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("TableManager", SeekFirstTableManager)
        super().__init__(*args, **kwargs)
        self.seek_delay_s = seek_delay_s
        self.recovery_stall_s = recovery_stall_s
        self.drop_changelog = drop_changelog
        self.drain_timeout_s = drain_timeout_s
        self._drainers: list[Drainer] = []
        self._starters: list[Callable[[], None]] = []

    def add_starter(self, starter: Callable[[], None]) -> None:
        """Run `starter` when the app starts, before its consumer joins the group (app tasks
        start only after the first recovery, where a slow start-up would stall the fetching
        loop)."""
        self._starters.append(starter)

    async def on_first_start(self) -> None:
        await super().on_first_start()
        for starter in self._starters:
            starter()

    def _new_transport(self) -> Any:
        return FastDrainTransport(self.conf.broker_consumer, self)

    def add_drainer(self, drainer: Drainer) -> None:
        self._drainers.append(drainer)

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        if self.should_stop and self._drainers:
            if not await self._drain(consumer):
                left = len(consumer._unacked_messages)
                log.warning("stopping with %d events unacknowledged after %.0f s: committing what was "
                            "acknowledged; the rest come again to the partitions' next owner", left,
                            self.drain_timeout_s)
                await consumer.commit_and_end_transactions()
                return
        await super()._consumer_wait_empty(consumer, logger)

    async def _drain(self, consumer: Any) -> bool:
        """Run the drainers until no taken event is unacknowledged; False after the timeout."""
        deadline = time.monotonic() + self.drain_timeout_s
        acked = 0
        while True:
            for drainer in self._drainers:
                try:
                    acked += await drainer()
                except Exception as exc:  # an outage while stopping: try again until the deadline
                    log.warning("draining at stop: %r", exc)
            consumer._clean_unacked_messages()
            if not consumer._unacked_messages:
                log.info("drained at stop: %d events acknowledged", acked)
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)


class SeekFirstRecovery(Recovery):
    """Table recovery that seeks the stream partitions to their committed offsets *before* it
    resumes them.

    Workaround. faust-streaming 0.15.3 (the newest on PyPI), in both `on_recovery_completed` and
    `_resume_streams`, resumes the stream partitions, then awaits `perform_seek()`, then calls
    `flow_control.resume()`, which clears the agents' queues (`clear_on_resume`). Records the
    fetcher delivers during the seek are dropped: never processed, never acknowledged. Where a
    partition has a committed offset the seek moves back over them; where it has none (a new
    group, a first start, a crash before the first commit) the fetch position stays past them:
    the events are silently missing, the partition's commit freezes at the first dropped offset,
    and the next restart replays from there (measured: 1,975 events dropped after a 168 ms seek
    on this 2-core box). The same race, without tables, is faust-streaming/faust#216 (fixed for
    that path by #217: seek first, then resume). Here both paths seek first; nothing else
    changes. `seek_delay_s` (tests only, `worker.recovery_seek_delay_s`) widens the seek so a
    test hits the old race every time.
    Measured gain: tests/integration/test_restart.py passes 3 of 3 on a fresh machine (0 of 3 before).

    Second workaround, `_refetch_stalled`: a recovery that waits for changelog records which
    never arrive waits forever (faust logs "No event received for active tp ... since recovery
    start" every 5 s and nothing else happens). Seen once in a fresh-clone CI run of
    tests/integration/test_scale_out.py: after the SIGKILL takeover the survivor's recovery of
    the two changelog partitions it had held as standbys received nothing for 2 minutes; not
    reproduced in 8 runs of that test alone. Known upstream causes of the same symptom: the
    consumer dropping fetched changelog records as already read after a partition came back to
    a worker that held it before (robinhood/faust#542), and fetched records dropped without a seek
    back (the events-partition case `stream/app.py _refetch` handles). So an active changelog
    partition with records left that delivered nothing for `recovery_stall_s` is logged with
    what faust and aiokafka hold about its fetching (`fetch_state`), resumed and sought again to
    the offset the recovery has reached; records read twice set the same table values.
    `drop_changelog` (tests only, `worker.recovery_drop_changelog`) makes each recovery drop
    its active changelog records as already read, the robinhood/faust#542 symptom, so
    tests/integration/test_restart.py can check that a stall ends.
    """

    _reading: tuple[int, float] | None = None
    """(generation, when) the latest recovery sought its active changelog partitions: it reads
    from then."""

    async def _seek_offsets(self, consumer: Any, tps: Any, offsets: Any, title: str) -> None:
        await super()._seek_offsets(consumer, tps, offsets, title)
        if title != "active":
            return
        self._reading = (self._generation_id, time.monotonic())
        if getattr(self.app, "drop_changelog", False) and tps:
            for tp in tps:  # read up to past the end: faust drops every record as already read
                consumer._read_offset[tp] = self.active_highwaters[tp] + 1
            self.log.warning("tests only: changelog records dropped as read in %s",
                             ", ".join(f"{tp.topic}:{tp.partition}" for tp in sorted(tps)))

    @Service.task
    async def _refetch_stalled(self) -> None:
        """Every second in an active recovery: seek again each active changelog partition that
        still has records to read and delivered none for `recovery_stall_s` (class docstring)."""
        stall_s = getattr(self.app, "recovery_stall_s", 15.0)
        sought: dict[TP, float] = {}
        async for _ in self.itertimer(1.0, name="Recovery.refetch_stalled"):
            generation = self._generation_id
            if (not self.in_recovery or self._reading is None or self._reading[0] != generation
                    or self.app.consumer_generation_id != generation):
                sought.clear()
                continue
            since = self._reading[1]
            now, received = time.monotonic(), self._active_events_received_at
            stalled = [tp for tp, left in self.active_remaining().items()
                       if tp in self.active_tps and left > 0
                       and now - max(since, received.get(tp, since), sought.get(tp, since)) >= stall_s]
            for tp in stalled:
                consumer = self.app.consumer
                offset = max(self.active_offsets[tp], 0)
                self.log.warning("changelog %s:%d delivered nothing for %.0f s with %d records left: fetching "
                                 "again from offset %d (%s)", tp.topic, tp.partition, stall_s,
                                 self.active_remaining()[tp], offset, fetch_state(consumer, tp))
                try:
                    consumer.resume_partitions({tp})
                    await consumer.seek_wait({tp: offset})
                except Exception as exc:  # a rebalance meanwhile: the next recovery seeks anyway
                    self.log.warning("fetching %s:%d again failed: %r", tp.topic, tp.partition, exc)
                sought[tp] = time.monotonic()

    async def _seek_then_resume(self, consumer: Any) -> None:
        assignment = consumer.assignment()
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(self._delayed_seek(consumer), timeout=self.app.conf.broker_request_timeout)
            stream = {tp for tp in assignment if not self._is_changelog_tp(tp)}
            consumer.resume_partitions(stream)
            self.log.info("Stream partitions resumed at read offsets %s",
                          {f"{tp.topic}:{tp.partition}": consumer._read_offset.get(tp) for tp in sorted(stream)})

    async def _delayed_seek(self, consumer: Any) -> None:
        delay = getattr(self.app, "seek_delay_s", 0.0)
        if delay:
            await asyncio.sleep(delay)
        await consumer.perform_seek()
        # aiokafka's seek_to_committed leaves a partition without a committed offset (or with 0)
        # where its fetcher is, so records fetched there before the seek that never reached the
        # stream are skipped for good. Measured (instrumented inbox): the restart test's warm
        # phase lost the first 2,000 events of such a partition (its first delivered offset was
        # 2000) in 5 of 23 runs with BatchInbox delivery, 0 of 5 with faust's agent in the same
        # session, 0 of 8 with this seek; where faust drops those records was not pinned down.
        # With auto_offset_reset "earliest", no commit means "from the beginning": seek there.
        # Events the group already processed there come again and are dropped (user state by
        # offset, the item model by its fence).
        if self.app.conf.consumer_auto_offset_reset == "earliest":
            uncommitted = [tp for tp in consumer.assignment()
                           if not self._is_changelog_tp(tp) and not consumer._committed_offset.get(tp)]
            for tp in uncommitted:
                await consumer.seek(tp, 0)

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        consumer = self.app.consumer
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(table.on_recovery_completed(self.actives_for_table[table],
                                                              self.standbys_for_table[table]))
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        if self.app.consumer_generation_id != generation_id:
            self.log.warning(f"Recovery rebalancing again app id {self.app.consumer_generation_id} "
                             f"param {generation_id}")
            return
        await self._seek_then_resume(consumer)
        self.completed.set()
        self.app.flow_control.resume()
        consumer.resume_flow()
        await self.app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")

    async def _resume_streams(self, generation_id: int = 0) -> None:
        consumer = self.app.consumer
        await self.app.on_rebalance_complete.send()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        await self._seek_then_resume(consumer)
        self.completed.set()
        self.app.flow_control.resume()
        consumer.resume_flow()
        await self.app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")


class SeekFirstTableManager(TableManager):
    """faust's TableManager with `SeekFirstRecovery`."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekFirstRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
