"""The Faust app: the events topic, the changelog-backed user-state table, the ingest loop, and
the feedback agent (impressions and actions -> the parquet feedback log, stream/feedback.py).

Run it with `intentstream worker`. The ingest loop takes events in micro-batches of raw messages
(`BatchInbox`, stream/fast_consumer.py: no faust Event per message), hands each batch to
`stream.processor.BatchProcessor` (through `stream.failures.process_resilient`: retries, then a
stop for an outage or a dead letter for the one event that breaks the code) and acknowledges the
events the processor hands back (those whose Feast push finished); a 0.1 s timer does the same
between batches and runs debounced refreshes; at a stop (SIGTERM) a drainer runs what is pending
and acknowledges it before faust commits. See stream/processor.py for the delivery guarantee.
Table recovery seeks before it resumes (stream/fast_consumer.py).
The state table's changelog is partitioned with the producer's partitioner on the raw user_id,
like the events topic, so a user's state and events live on the same partition number.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import faust
from faust.types import TP
import redis

from contracts.errors import InvalidEvent
from contracts.events import DeadLetter
from contracts.feedback import decode_feedback
from contracts.keys import RedisKeys
from contracts.settings import KafkaSettings, Settings
from features.pusher import FeaturePusher
from features.redis_client import connect
from stream.failures import is_retryable, process_resilient, through_outage, through_outage_async
from stream.fast_consumer import BatchInbox, FastApp, fetch_state
from stream.feedback import FeedbackLog
from stream.intent_route import IntentRoute
from stream.processor import BatchProcessor, RawMessage
from stream.producer import ensure_topics
from stream.prometheus import process_exporter

log = logging.getLogger(__name__)


def broker_credentials(k: KafkaSettings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """faust's credentials for kafka.security_protocol (None for PLAINTEXT)."""
    if k.sasl:
        options = k.client_options()  # checks that the user and password are set
        return faust.SASLCredentials(username=options["sasl_plain_username"], password=options["sasl_plain_password"],
                                     mechanism=k.sasl_mechanism, ssl_context=k.ssl_context())
    if k.tls:
        return faust.SSLCredentials(k.ssl_context())
    return None


STARVED_S = 30.0
"""An assigned events partition from which nothing was handled this long is logged (a quiet
partition is logged too: once per consumer generation)."""


def _observe_lag(exporter, consumer, topic: str, last_offsets: dict, messages: list) -> None:
    """`consumer_lag{topic}`: the fetched high watermark less the next offset to handle, summed
    over this worker's partitions (faust's highwater is the last fetch's: no broker round trip)."""
    for m in messages:
        last_offsets[TP(m.topic, m.partition)] = m.offset
    try:
        assigned = consumer.assignment()
        lag = 0
        for tp in list(last_offsets):
            if tp not in assigned:
                del last_offsets[tp]
                continue
            high = consumer.highwater(tp)  # aiokafka asserts the assignment: a rebalance may race it
            if high is not None:  # None: nothing fetched from it yet
                lag += max(0, high - last_offsets[tp] - 1)
    except Exception:  # a metric never stops the stream
        log.debug("consumer lag not observed", exc_info=True)
        return
    exporter.lag.labels(topic).set(lag)


def build_app(settings: Settings) -> faust.App:
    w, k = settings.worker, settings.kafka
    datadir = settings.state_dir / "faust" / w.app_id  # not faust's `{app_id}-data` in the cwd
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = FastApp(
        w.app_id,
        seek_delay_s=w.recovery_seek_delay_s,
        recovery_stall_s=w.recovery_stall_s,
        drop_changelog=w.recovery_drop_changelog,
        drain_timeout_s=w.drain_timeout_s,
        broker=f"kafka://{k.bootstrap}",
        broker_credentials=broker_credentials(k),
        store="memory://",
        datadir=str(datadir),
        web_enabled=w.web_enabled,
        web_port=w.web_port,
        topic_partitions=k.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=w.session_timeout_s,
        consumer_group_instance_id=w.instance_id.replace("{hostname}", socket.gethostname()) if w.instance_id else None,
        broker_heartbeat_interval=max(0.5, w.session_timeout_s / 5),
        broker_max_poll_records=max(w.batch_max, 500),
        stream_buffer_maxsize=max(4 * w.batch_max, 4096),
        broker_commit_every=max(w.batch_max, 1000),
        broker_commit_interval=1.0,
        producer_linger=0.005,
    )
    events = app.topic(k.events_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw", partitions=k.partitions)
    dead_letters = app.topic(k.dead_letter_topic, key_serializer="raw", value_serializer="raw",
                             partitions=k.partitions)
    # Keys are the raw user_id bytes (as on the events topic), values the UserState record.
    # A forgotten user's state is deleted (retention.user_idle_s): a tombstone the compaction of
    # closed segments reclaims, as it reclaims superseded states.
    table = app.Table("user_state", default=None, partitions=k.partitions, key_type=bytes,
                      use_partitioner=True,
                      extra_topic_configs=settings.retention.changelog_topic_configs)

    async def send_dead_letters(records: list[tuple[bytes | None, DeadLetter]]) -> None:
        for key, letter in records:
            await dead_letters.send(key=key, value=letter.model_dump_json().encode())

    holder: dict[str, Any] = {}

    def owned_partitions() -> set[int]:
        """The events partitions assigned to this worker now."""
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == k.events_topic}

    def processor() -> BatchProcessor:
        if "p" not in holder:
            r = settings.redis
            client = connect(r)
            pusher = FeaturePusher(settings)
            pusher.warm_up()
            # Before the join a start that finds Redis or Kafka down waits it out like a batch
            # (a worker restarted into a stalled Redis exited here: bench chaos).
            intent = through_outage(lambda: _intent_route(settings, client), w.retry_backoff_s, w.outage_wait_s)
            proc = BatchProcessor(settings, table, pusher, client, send_dead_letters,
                                  intent=intent, owned=owned_partitions,
                                  waiting=lambda: len(inbox),
                                  recovering=lambda: bool(app.rebalancing or app.in_recovery))
            through_outage(proc.restore, w.retry_backoff_s, w.outage_wait_s)
            holder["p"] = proc
        return holder["p"]

    async def ack(stream: faust.StreamT, ready: list) -> None:
        for event in ready:
            await stream.ack(event)

    # The events topic arrives in batches of raw messages (stream/fast_consumer.py BatchInbox),
    # not as a faust agent's per-message Events.
    inbox = BatchInbox(app, events, w.batch_max, max(4 * w.batch_max, 4096))
    app.add_starter(processor)  # Feast, the pusher child, the intent producer: loaded before the join

    handled_at: dict[int, float] = {}
    """Events partition -> when a message of it was last handled (monotonic; `watch_partitions`)."""
    watched: dict[str, Any] = {"generation": -1, "since": 0.0, "reported": set()}

    @app.task
    async def ingest() -> None:
        """Take a batch, process it, acknowledge the events the processor hands back: only after
        the Feast push that carried their features finished (see stream/processor.py)."""
        proc = processor()
        holder["inbox"] = inbox
        last_offsets: dict = {}  # TP -> the last offset this worker handled
        try:  # app tasks start after the first recovery: the worker consumes now
            await through_outage_async(proc.mark_ready, w.retry_backoff_s, w.outage_wait_s)
        except Exception as exc:  # an outage past outage_wait_s (a restart may find Redis down)
            log.critical("stopping the worker: %s", exc)
            await app.crash(exc)
            return
        while not app.should_stop:
            batch = await inbox.take(w.batch_within_s)
            if not batch:
                continue
            messages = [RawMessage(m.key, m.value, m.topic, m.partition, m.offset, int(m.timestamp * 1000))
                        for m in batch]
            try:
                ready = await process_resilient(proc.process, messages, batch, failed_message,
                                                w.batch_attempts, w.retry_backoff_s, outage_s=w.outage_wait_s)
            except Exception as exc:  # WorkerStopped, or a bug: a dead loop would leave the worker stuck
                log.critical("stopping the worker: %s (unacknowledged events come again after a restart)", exc)
                await app.crash(exc)
                return
            inbox.ack(ready)
            _observe_lag(proc.metrics.exporter, app.consumer, k.events_topic, last_offsets, messages)
            now = time.monotonic()
            for m in messages:
                handled_at[m.partition] = now

    @app.timer(interval=10.0)
    async def watch_partitions() -> None:
        """Log, once per consumer generation, an assigned events partition from which nothing was
        handled for STARVED_S while the worker is ready, with what faust and aiokafka hold about
        its fetching (stream/fast_consumer.py fetch_state): a diagnostic for a stuck partition
        (a warning when the last fetch saw records past the read offset, else info); a partition
        whose fetched records were dropped undelivered is fetched again (`_refetch`)."""
        if "inbox" not in holder or app.rebalancing or app.in_recovery:
            return
        now, generation = time.monotonic(), app.consumer_generation_id
        if generation != watched["generation"]:
            watched.update(generation=generation, since=now, reported=set())
            return
        try:
            for tp in app.consumer.assignment():
                p = tp.partition
                if tp.topic != k.events_topic or p in watched["reported"]:
                    continue
                if now - max(handled_at.get(p, 0.0), watched["since"]) > STARVED_S:
                    watched["reported"].add(p)
                    state = fetch_state(app.consumer, tp)
                    read = state["read_offset"] if state["read_offset"] is not None else -1
                    waiting = state.get("highwater") is not None and state["highwater"] > read + 1
                    log.log(logging.WARNING if waiting else logging.INFO,
                            "events partition %d: nothing handled for %.0f s in generation %d (%s): %s", p,
                            now - max(handled_at.get(p, 0.0), watched["since"]), generation,
                            "records wait past the read offset" if waiting else "quiet, or nothing fetched", state)
                    dropped = waiting and (state.get("position") or 0) > read + 1 and not len(inbox)
                    if dropped and not (app.rebalancing or app.in_recovery):
                        await _refetch(tp, state)
        except Exception:  # a diagnostic never stops the stream
            log.debug("partition watch failed", exc_info=True)

    async def _refetch(tp: Any, state: dict[str, Any]) -> None:
        """Workaround: records aiokafka handed out (its position is past them) that faust never
        delivered (its read offset is before them), with none waiting in the inbox: faust's
        `Consumer._getmany` drops fetched records without seeking back on several paths (flow
        not active, a generation change mid-batch, a partition not in the active set when the
        batch is iterated; it logs "Seek back to committed offsets" at dev level and seeks
        nothing), and the partition then stays silent until the next rebalance. Seen in the
        scale-out test's CI runs: a taken-over partition at read offset 2630, aiokafka's position
        at its end 3500, nothing handled for minutes. Seek it back to its committed offset: what
        comes again is dropped by the user states' offsets and the item model's fence."""
        committed = app.consumer._committed_offset.get(tp)
        offset = committed if committed is not None else max(0, state["read_offset"] or 0)
        log.warning("events partition %d: fetched records were never delivered; fetching again from offset %d",
                    tp.partition, offset)
        await app.consumer.seek(tp, offset)
        holder["p"].metrics.add("partitions_refetched")
        handled_at[tp.partition] = time.monotonic()
        watched["reported"].discard(tp.partition)

    async def failed_message(msg: RawMessage, reason: str) -> None:
        letter = DeadLetter.of(reason, msg.topic, msg.partition, msg.offset, msg.key, msg.value, int(time.time() * 1000))
        await send_dead_letters([(msg.key, letter)])
        holder["p"].metrics.add("events_failed")

    feedback = app.topic(k.feedback_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw", partitions=k.partitions)
    feedback_log = FeedbackLog(settings.feedback_dir)

    @app.agent(feedback, name="feedback")
    async def log_feedback(stream: faust.StreamT) -> None:
        """Validate feedback records and append the valid ones to the parquet log; a batch is
        acknowledged only after its part is written (invalid records: dead letters)."""
        f = settings.feedback
        r = settings.redis
        client = connect(r)
        keys = RedisKeys(settings.key_prefix)
        async for batch in stream.noack_take(f.batch_max, within=f.batch_within_s):
            records, letters = [], []
            now = int(time.time() * 1000)
            for e in batch:
                m = e.message
                try:
                    records.append(decode_feedback(m.value))
                except InvalidEvent as exc:
                    letters.append((m.key, DeadLetter.of(str(exc), m.topic, m.partition, m.offset, m.key, m.value, now)))
            if records:
                await asyncio.to_thread(feedback_log.append, records)
            if letters:
                await send_dead_letters(letters)
            await asyncio.to_thread(_count_feedback, client, keys, len(records), len(letters))
            await ack(stream, batch)

    async def drain_at_stop() -> int:
        """SIGTERM: finish the pushes and refreshes in hand and acknowledge their events
        (stream/fast_consumer.py FastApp)."""
        if "inbox" not in holder:
            return 0
        ready = await holder["p"].drain()
        inbox.ack(ready)
        return len(ready)

    app.add_drainer(drain_at_stop)

    @app.timer(interval=0.1)
    async def between_batches() -> None:
        if "inbox" not in holder:
            return
        try:
            ready = await holder["p"].flush_pending()
        except Exception as exc:  # the next batch or tick tries again; a lasting outage stops the worker
            log.warning("between batches: %r", exc, exc_info=not is_retryable(exc))
            return
        inbox.ack(ready)

    return app


def _count_feedback(client: redis.Redis, keys: RedisKeys, logged: int, invalid: int) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(keys.metrics, "feedback_logged", logged)
    pipe.hincrby(keys.metrics, "feedback_invalid", invalid)
    pipe.execute()


def _intent_route(settings: Settings, client: redis.Redis) -> IntentRoute | None:
    """The intent route when enabled and a model exists for the reasoners to serve; otherwise the
    behavioural route alone."""
    from reasoning.registry import served_model_dir

    if not settings.intent.enabled:
        return None
    if served_model_dir(settings, client) is None:
        log.warning("no intent model at %s: serving the behavioural route only "
                    "(train one with `intentstream train --sft`)", settings.intent.resolved_model_dir(settings.cache_dir))
        return None
    log.info("intent route: refreshes go to reasoning on %s (run `intentstream reasoner`)",
             settings.kafka.intent_topic)
    return IntentRoute(settings, client)


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Start the worker in this process until SIGTERM/SIGINT."""
    # Subscribing to a topic that does not exist yet leaves the consumer idle until its next
    # metadata refresh (minutes), so the worker creates its input topics first.
    k, w = settings.kafka, settings.worker
    through_outage(lambda: ensure_topics(k, [k.events_topic, k.dead_letter_topic, k.feedback_topic, k.intent_topic]),
                   w.retry_backoff_s, w.outage_wait_s)  # a restart may find the broker down
    app = build_app(settings)
    process_exporter().serve(settings.metrics.host, settings.metrics.worker_port)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
