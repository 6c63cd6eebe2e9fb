"""One micro-batch of the worker, top to bottom: validate → fold state → queue features for
Feast → decide refreshes → recommend → write results. The ingest loop (stream/app.py) feeds it.

Delivery guarantee (at-least-once in, effectively-once on state): `process` returns the events
that are safe to acknowledge: those whose batch is folded and written to the state table, and
whose features a finished Feast push carried (features/pusher.py). Faust flushes the
state-table changelog before it commits acknowledged offsets. The table is written before any
event is handed over for acknowledgement, so a batch that raises is never acknowledged; it comes
again (stream/failures.py retries it; after a crash Kafka redelivers it), `features.state.apply`
drops the events already folded (by offset) and the touched users' features are pushed again.
The shared item model (features/item_model.py) is changed before the table write, fenced by
offset per partition, so a batch that comes again adds nothing to it twice, with one worker or N.
Recommendations are derived data: a refresh built but not written when a batch raised is redone
at the user's next trigger. Invalid events go to the dead-letter topic with their reason and
never stop the batch.

With a sequential model served (reasoning/sequential.py), every refresh fuses the user's recent
items and the SASRec route (onnxruntime + faiss, one call per batch of refreshes) with the
behavioural list, at the weights fitted with the model.
With the intent route on (stream/intent_route.py), a refresh merges the user's last intent result
into the behavioural list and, when the user's intent is due, sends the user to the reasoner
service (stream/reasoner_service.py), which writes the merged list when it is done.
Recommendations are derived data: no offset waits for reasoning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import redis

from contracts.errors import InvalidEvent
from contracts.events import DeadLetter, decode_event
from contracts.keys import RedisKeys
from contracts.recs import FallbackReason, RecsPayload
from contracts.settings import Settings
from features.item_model import SharedItemModel
from features.state import Fold, StateLimits, UserState, apply
from reasoning.behavioural import BehaviouralReasoner
from reasoning.reasoner import Reasoner, UserView
from reasoning.sequential import SequentialServing
from stream.intent_route import IntentRoute
from stream.metrics import WorkerMetrics
from stream.retention import IdleIndex
from stream.sink import RedisResultSink
from stream.trigger import due_at_ms, mark_refreshed, refresh_reason

URGENT = frozenset({"first_events", "purchase"})
"""Refresh reasons a worker that is behind still builds: a new user has no list yet, and a
purchase makes the served list wrong (it may show what was just bought)."""

PENDING_CHUNK = 25
PENDING_BUDGET_S = 0.25
"""Debounced refreshes run between batches in chunks of PENDING_CHUNK users, for about
PENDING_BUDGET_S per timer tick, and after a tick that ran some for T seconds none run for the
next T (at most half of the event loop's time: it is the fetcher's and the ingest loop's too).
Measured (`bench overload`): before the budget, 2,000 full refreshes in one tick took 8 to 15 s
on this 2-core box; with the budget but no rest, chunks of 100 took 0.4-1 s a tick and the ticks
ran back to back for about 100 s after the recovery, while ~20k shed refreshes were rebuilt: the
fetcher got so little of the loop that no event was handled meanwhile (lag 700 -> 24k events,
the partition watch saw every partition starved)."""

FORGET_CHUNK = 2_000
"""Most idle users forgotten per timer tick (retention.user_idle_s): each is a table delete and
a changelog tombstone; at 10 ticks a second that is 20k users a second."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawMessage:
    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    """Broker timestamp (the producer's send time): freshness is measured from it."""


class Pusher(Protocol):
    """What the processor needs from features.pusher.FeaturePusher."""

    def add(self, users: list[dict[str, Any]], items: list[dict[str, Any]], produced_ms: list[int],
            tokens: list[Any]) -> None: ...
    def start(self) -> None: ...
    async def cycle(self, wait: bool = False) -> tuple[list[Any], list[int], int]: ...


DeadLetterSender = Callable[[list[tuple[bytes | None, DeadLetter]]], Awaitable[None]]


class PendingRefresh(NamedTuple):
    """A debounced refresh: when it may run, and the events partition of the user's state."""

    at_ms: int
    partition: int
    settle: bool = False
    """Queued for trigger.settle_s (the user's latest events gave no reason to refresh): it runs
    if the state changed since the last refresh, and each newer event of the user moves it on."""


def now_ms() -> int:
    return int(time.time() * 1000)


class BatchProcessor:
    def __init__(
        self,
        settings: Settings,
        table: MutableMapping[bytes, dict],
        pusher: Pusher,
        client: redis.Redis,
        send_dead_letters: DeadLetterSender,
        reasoner: Reasoner | None = None,
        intent: IntentRoute | None = None,
        owned: Callable[[], set[int]] = lambda: set(),
        waiting: Callable[[], int] = lambda: 0,
        recovering: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self.table = table
        self.pusher = pusher
        self.client = client
        self.send_dead_letters = send_dead_letters
        self.keys = RedisKeys(settings.key_prefix)
        w, r = settings.worker, settings.recs
        self.limits = StateLimits(w.recent_items, w.dedupe_window, w.top_affinities, w.affinity_half_life_events)
        self.model = SharedItemModel.from_settings(settings, client)
        self.owned = owned
        """The events partitions this worker holds now: it pushes the derived rows of their slots
        (item features to Feast; partition 0: the popularity fallback) and forgets their idle users."""
        self.waiting = waiting
        """How many events wait for the next batch (the ingest loop's inbox): debounced refreshes
        run between batches only while fewer than batch_max wait."""
        self.recovering = recovering
        """Whether the table is being restored (a rebalance): idle users are not forgotten and no
        debounced refresh runs then (`flush_pending`)."""
        self.idle = IdleIndex()
        """This worker's users by the time of their newest event (`forget_idle`)."""
        self.stream_ms: dict[int, int] = {}
        """Per events partition, the broker time of the newest message processed: its stream time."""
        self._resident_reported = -1
        self.behavioural = BehaviouralReasoner(self.model, r.model_version)
        self.reasoner: Reasoner = reasoner or self.behavioural
        self.intent = intent
        """The intent route (stream/intent_route.py), when a model is registered."""
        self.sequential = SequentialServing(settings, client) if settings.sequential.enabled else None
        """The sequential route (reasoning/sequential.py), merged into every refresh while a model
        serves."""
        self.sink = RedisResultSink(client, self.keys, r.updates_stream_maxlen, settings.retention.user_ttl_s)
        self.metrics = WorkerMetrics(self.keys)
        self.behind = False
        """Whether the last batch found the worker behind (worker.shed_lag_s): refreshes are shed."""
        for name in ("refreshes_shed", "refreshes_overloaded", "users_expired"):  # served from the start
            self.metrics.add(name, 0)
        self.pending: dict[str, PendingRefresh] = {}
        """Users with a debounced refresh. Run only while this worker owns the user's partition:
        after a rebalance the state belongs to the new owner, and writing this worker's copy
        (a standby replica, or a state from before the revoke) to the table would put a stale
        state in the changelog after the owner's newer one (its next restore would read it)."""
        self._last_batch_end = 0
        self.pending_rest_until = 0.0
        """Monotonic time before which no debounced refresh runs (as long as the last tick ran them)."""
        self._last_item_push = float("-inf")
        """Item features are pushed at most once per item_push_interval_s."""
        self._last_popular = float("-inf")  # the first batch writes the popularity fallback

    # -- start-up -------------------------------------------------------------------------------
    def restore(self) -> None:
        """Mark the start; the item model lives in Redis (nothing to load)."""
        self.client.hset(self.keys.metrics, "worker_started_ms", now_ms())

    def mark_ready(self) -> None:
        """Mark that the worker joined its group, recovered its table and consumes
        (`worker_ready_ms`): events sent before it wait for the join, which a latency figure
        should not count."""
        self.client.hset(self.keys.metrics, "worker_ready_ms", now_ms())

    # -- one batch ------------------------------------------------------------------------------
    async def process(self, batch: Sequence[RawMessage], tokens: Sequence[Any] = ()) -> list[Any]:
        """Process one batch; returns the tokens (events) that may now be acknowledged.

        1. Decode every message; an invalid one becomes a dead letter with its reason.
        2. Fold the valid events into copies of their users' states (a message at or before the
           user's last folded offset, or an event_id already folded, is dropped) and gather what
           the newly applied events teach the item model, per partition, skipping the offsets at
           or before the partition's fence.
        3. Apply those deltas to the shared item model (one atomic, fenced script per partition).
        4. Hand the touched users' feature rows (and, when due, the changed items of the slots
           this worker owns) to the pusher and start a push if none is in flight: features do not
           wait for the refreshes.
        5. Decide refreshes and build them, each user isolated: a user whose list raises gets the
           popularity list with fallback_reason `refresh_failed` (counted as `refresh_errors`).
           When the batch's oldest event waited longer than worker.shed_lag_s, the worker is
           behind and sheds (`_shed`): only first events and purchases are built now, by the
           behavioural routes alone (fallback_reason `overloaded`); every due refresh waits as a
           debounced one for its full build until a batch is on time again. A user whose
           state changed with no reason to refresh waits as a debounced one for
           trigger.settle_s of quiet (`PendingRefresh.settle`, trigger `settled`).
        6. Write every touched user's state to the table (its changelog is the durable point).
        7. Send the dead letters, then hand the batch's tokens to the pusher. Only now can an
           event be acknowledged (after a push that started after this point finished), so a
           batch that raises before it is never acknowledged and comes again whole: its events
           are then redeliveries of the written state (step 2 drops them; the fence keeps the
           item model from counting them twice) and its users' rows are pushed again.
        8. Write recommendations, metrics and (when due) the popularity fallback in one
           pipeline, then collect a finished push (a failed one raises here, after the durable
           point).
        """
        started = now_ms()
        w = self.settings.worker
        age_ms = started - min((msg.timestamp_ms for msg in batch), default=started)
        self.behind = w.shed_lag_s > 0 and age_ms > w.shed_lag_s * 1000
        dead: list[tuple[bytes | None, DeadLetter]] = []
        touched: dict[str, UserState] = {}
        partition_of: dict[str, int] = {}
        produced: list[int] = []
        folds = {Fold.duplicate: 0, Fold.redelivered: 0}
        window = self.settings.recs.covisit_window
        deltas = self.model.fences(msg.partition for msg in batch)
        stream_ms = self.stream_ms
        for msg in batch:
            if msg.timestamp_ms > stream_ms.get(msg.partition, -1):
                stream_ms[msg.partition] = msg.timestamp_ms
            delta = deltas[msg.partition]
            delta.advance(msg.offset)
            try:
                event = decode_event(msg.value, w.max_event_bytes, started, w.max_future_s)
            except InvalidEvent as exc:
                dead.append((msg.key, self._dead_letter(msg, exc.reason, started)))
                continue
            state = touched.get(event.user_id)
            if state is None:
                state = self._load(event.user_id)
                touched[event.user_id] = state
                partition_of[event.user_id] = msg.partition
            previous = [entry[0] for entry in state.recent[:window]]
            fold = apply(state, event, msg.timestamp_ms, self.limits, msg.partition, msg.offset)
            if fold is not Fold.applied:
                folds[fold] += 1
                continue
            produced.append(msg.timestamp_ms)
            if not delta.skips(msg.offset):
                delta.observe(event, previous, window)
        self.model.apply(deltas.values())
        self.behavioural.invalidate()
        item_rows = self._take_item_rows()
        self.pusher.add([s.feature_row() for s in touched.values()], item_rows, produced, [])
        self.pusher.start()
        folded = now_ms()

        due, reasons = [], []
        settle_ms = int(self.settings.trigger.settle_s * 1000)
        for state in touched.values():
            reason = refresh_reason(state, self.settings.trigger)
            if reason is None:
                held = self.pending.get(state.user_id)
                if settle_ms and state.state_version != state.refreshed_version and (held is None or held.settle):
                    self.pending[state.user_id] = PendingRefresh(folded + settle_ms, partition_of[state.user_id],
                                                                 settle=True)
                continue
            ready_at = due_at_ms(state, self.settings.trigger)
            if ready_at <= folded:
                due.append(state)
                reasons.append(reason)
                self.pending.pop(state.user_id, None)
            else:
                self.pending[state.user_id] = PendingRefresh(ready_at, partition_of[state.user_id])
        if self.behind:
            due, reasons = self._shed(due, reasons, partition_of, folded)
        results = self._recommend(due, reasons, degraded=self.behind)
        refreshed = now_ms()
        for user_id, state in touched.items():
            self.table[user_id.encode()] = state.to_record()
            self.idle.touch(user_id, state.last_produced_ms, state.partition)
        if dead:
            await self.send_dead_letters(dead)
        self.pusher.add([], [], [], list(tokens))
        written = now_ms()

        pipe = self.client.pipeline(transaction=False)
        self._write_recs(due, results, pipe)
        m = self.metrics
        # Where a batch's time goes (ms totals; divide by `batches`).
        m.add("time_fold_ms", folded - started)  # incl. queueing a push (it runs in a child)
        m.add("time_refresh_ms", refreshed - folded)
        m.add("time_push_ms", written - refreshed)  # state-table writes, dead letters
        m.add("events_valid", len(produced))
        m.add("events_dead", len(dead))
        m.add("duplicates", folds[Fold.duplicate])
        m.add("redelivered", folds[Fold.redelivered])
        m.add("batches")
        m.mark("first_batch_ms", started)
        m.mark("last_batch_ms", now_ms())
        m.sample("batch_ms", [now_ms() - started])
        m.sample("event_age_ms", [age_ms])
        self._report_pending()
        self._maybe_write_popular(pipe)
        m.queue(pipe)
        pipe.execute()
        ready = await self._collect_pushes()
        m.add("time_write_ms", now_ms() - written)
        if self._last_batch_end:
            m.add("time_between_batches_ms", started - self._last_batch_end)
        self._last_batch_end = now_ms()
        return ready

    async def _collect_pushes(self, wait: bool = False) -> list[Any]:
        """Collect a finished Feast push (recording feature freshness) and start the next."""
        tokens, produced, finished_ms = await self.pusher.cycle(wait=wait)
        if produced:
            self.metrics.sample("feature_freshness_ms", [finished_ms - p for p in produced])
        return tokens

    async def flush_pending(self, everything: bool = False) -> list[Any]:
        """Timer work between batches: finish Feast pushes, push coalesced item features, forget
        idle users (`forget_idle`), and refresh users whose debounced refresh is due, oldest
        first, in chunks of PENDING_CHUNK for at most PENDING_BUDGET_S per call (the ingest loop
        waits meanwhile), not again for as long as the last call ran them, only while a full
        batch of events does not wait, and none while the worker is behind and busy (a batch that
        was behind ended within the last second), and none while the table is being restored
        (a rebalance), not even when stopping: the restore replays the changelog over the table,
        so a state read meanwhile can be older than the newest one, and writing it back would put
        that older state last in the changelog, where the partition's next owner restores it and
        never counts the events between it and the committed offset (the refresh is derived
        data: the user's next event triggers it again);
        `everything` (stopping): all that are due. Returns tokens safe to acknowledge."""
        item_rows = self._take_item_rows()
        if item_rows:
            self.pusher.add([], item_rows, [], [])
        acked = await self._collect_pushes()
        if not everything:
            self.forget_idle()
        pipe = self.client.pipeline(transaction=False)
        self._maybe_write_popular(pipe)
        if self.metrics.samples or self.metrics.counters or self.metrics.marks or len(pipe):
            self.metrics.queue(pipe)
            pipe.execute()
        if self.pending and self.recovering():
            return acked  # the table is being restored: its states may be older than the changelog's newest
        now = now_ms()
        busy = self.behind and now - self._last_batch_end < 1000
        if not self.pending or (busy and not everything):
            return acked  # behind and busy: the next batch first (when it is on time, these run)
        started = time.monotonic()
        if not everything and started < self.pending_rest_until:
            return acked  # the last run's time again for fetching and batches (PENDING_CHUNK)
        ready = [uid for uid, p in self.pending.items() if p.at_ms <= now]
        deadline = started + PENDING_BUDGET_S
        for start in range(0, len(ready), PENDING_CHUNK):
            if not everything and (self.waiting() >= self.settings.worker.batch_max or time.monotonic() > deadline):
                break  # events first (a full batch waits): the rest at a later tick
            self._run_pending(ready[start:start + PENDING_CHUNK])
        ended = time.monotonic()
        self.pending_rest_until = ended + (ended - started)
        return acked

    def forget_idle(self) -> int:
        """Drop the states of this worker's users without an event for retention.user_idle_s,
        measured in their partition's stream time (`stream_ms`: a lagging worker forgets nobody
        whose events wait in its backlog; stream/retention.py), at most FORGET_CHUNK a call, and
        their debounced refreshes; a user who comes back starts from an empty state. Deleting a
        table key writes a changelog tombstone (compaction then drops the user's records). Not
        while the table is being restored; after an ownership change the index is rebuilt from
        the table (the states recovered there). Returns how many were forgotten (counted
        `users_expired`; gauge `users_resident`). A replay after a crash starts at the committed
        offset, seconds behind the stream, so it cannot meet the old events of a forgotten user."""
        idle_s = self.settings.retention.user_idle_s
        if not idle_s or self.recovering():
            return 0
        owned = self.owned()
        if owned != self.idle.partitions:
            self.idle.rebuild(((key.decode(), record["last_produced_ms"], record["partition"])
                               for key, record in list(self.table.items()) if record), owned)
        idle_ms = int(idle_s * 1000)
        cutoffs = {p: ms - idle_ms for p, ms in self.stream_ms.items() if p in owned}
        gone = self.idle.expired(cutoffs, FORGET_CHUNK)
        for uid in gone:
            self.table.pop(uid.encode(), None)
            self.pending.pop(uid, None)
        if gone:
            self.metrics.add("users_expired", len(gone))
        if self._resident_reported != len(self.idle):
            self._resident_reported = len(self.idle)
            self.metrics.level("users_resident", len(self.idle))
        return len(gone)

    def _report_pending(self) -> None:
        """Gauges: `refreshes_pending`, the refreshes owed (debounced with a reason, or shed), and
        `refreshes_settling`, those waiting for trigger.settle_s of quiet (maybe owed: under a
        steady load there are always some, so they are kept out of the first)."""
        settling = sum(p.settle for p in self.pending.values())
        self.metrics.level("refreshes_pending", len(self.pending) - settling)
        self.metrics.level("refreshes_settling", settling)

    def _run_pending(self, ready: list[str]) -> None:
        """Build and write the debounced refreshes of `ready` (taken out of `pending`)."""
        owned = self.owned()
        due, reasons, due_at = [], [], []
        for uid in ready:
            at, partition, settle = self.pending.pop(uid)
            if partition not in owned:  # revoked meanwhile: the new owner refreshes at the next event
                self.metrics.add("refreshes_revoked")
                continue
            record = self.table.get(uid.encode())
            if record is None:
                continue
            state = UserState.from_record(record)
            reason = refresh_reason(state, self.settings.trigger)
            if reason is None and settle and state.state_version != state.refreshed_version:
                reason = "settled"
            if reason is not None:
                due.append(state)
                reasons.append(reason)
                due_at.append(max(at, state.last_produced_ms))
        results = self._recommend(due, reasons)
        if "settled" in reasons:
            self.metrics.add("refreshes_settled", reasons.count("settled"))
        for state in due:
            self.table[state.user_id.encode()] = state.to_record()
        pipe = self.client.pipeline(transaction=False)
        self._write_recs(due, results, pipe, due_at)
        self._report_pending()
        self.metrics.queue(pipe)
        pipe.execute()

    async def drain(self) -> list[Any]:
        """Stopping: run every debounced refresh now, push everything queued and wait for it.
        Returns the tokens safe to acknowledge (the caller may call it again for a batch that
        was still being processed)."""
        now = now_ms()
        self.pending = {uid: p._replace(at_ms=min(p.at_ms, now)) for uid, p in self.pending.items()}
        acked = await self.flush_pending(everything=True)
        tokens, produced, finished_ms = await self.pusher.drain()
        if self.intent is not None:
            self.intent.flush()
        if produced:
            self.metrics.sample("feature_freshness_ms", [finished_ms - p for p in produced])
        pipe = self.client.pipeline(transaction=False)
        self.metrics.queue(pipe)
        pipe.execute()
        return acked + tokens

    # -- pieces -----------------------------------------------------------------------------------
    def _load(self, user_id: str) -> UserState:
        record = self.table.get(user_id.encode())
        return UserState.from_record(record) if record is not None else UserState(user_id)

    def _dead_letter(self, msg: RawMessage, reason: str, at_ms: int) -> DeadLetter:
        return DeadLetter.of(reason, msg.topic, msg.partition, msg.offset, msg.key, msg.value, at_ms)

    def _shed(self, due: list[UserState], reasons: list[str], partition_of: dict[str, int],
              now: int) -> tuple[list[UserState], list[str]]:
        """The refreshes a batch that is behind still builds, degraded (URGENT reasons); all wait
        as debounced refreshes for the full one, run when a batch is on time again (the others
        are counted `refreshes_shed`)."""
        kept, kept_reasons = [], []
        for state, reason in zip(due, reasons):
            if reason in URGENT:
                kept.append(state)
                kept_reasons.append(reason)
            # every one waits for its full refresh (the URGENT ones get a degraded list meanwhile)
            self.pending[state.user_id] = PendingRefresh(now, partition_of[state.user_id])
        self.metrics.add("refreshes_shed", len(due) - len(kept))
        return kept, kept_reasons

    def _recommend(self, states: list[UserState], reasons: list[str], degraded: bool = False) -> list[RecsPayload]:
        """Build the recommendations of `states` (marking them refreshed), each user isolated:
        when the batch call raises, users are built one by one and a user whose list raises gets
        the popularity list with fallback_reason `refresh_failed` (logged, counted). `degraded`
        (the worker is behind): the behavioural routes only, fallback_reason `overloaded` (as the
        intent route's reasons do, it replaces all but `refresh_failed`), and the states are not
        marked refreshed (their full refresh waits in `pending`: see `_shed`)."""
        if not states:
            return []
        views = [
            UserView(user_id=s.user_id, recent=s.recent, bought=frozenset(s.bought),
                     top_categories=s.top(s.categories, 5), state_version=s.state_version, trigger=reason)
            for s, reason in zip(states, reasons)
        ]
        top_k = self.settings.recs.top_k
        try:
            results = self.reasoner.recommend(views, top_k)
        except Exception:
            results = [self._recommend_one(view, top_k) for view in views]
        if degraded:
            for result in results:
                if result.get("fallback_reason") is not FallbackReason.refresh_failed:
                    result["fallback_reason"] = FallbackReason.overloaded
            self.metrics.add("refreshes_overloaded", len(results))
            built = now_ms()
            for state in states:  # debounced, but the reason stays: the full refresh is still owed
                state.last_refresh_ms = built
            return results
        self._merge_routes(views, states, results, top_k)
        built = now_ms()
        for state in states:
            mark_refreshed(state, built)
        return results

    def _merge_routes(self, views: list[UserView], states: list[UserState], results: list[RecsPayload],
                      top_k: int) -> None:
        """Fuse the sequential route into the behavioural lists and merge (or request) the intent
        route's results, in place."""
        fused = False  # whether the lists hold the recent route already (at the sequential model's weight)
        if self.sequential is not None:
            try:
                fused = self.sequential.merge(views, results, top_k)
                if fused:
                    self.metrics.add("sequential_merged", len(views))
                    self.metrics.exporter.serving("sequential", self.sequential.route.version)
            except Exception:  # the route is extra: the behavioural lists serve as built
                log.exception("sequential route failed for a batch of %d users: serving the behavioural lists",
                              len(views))
                self.metrics.add("sequential_errors")
        if self.intent is not None:
            intent_reasons = self.intent.submit(views, results, [s.last_produced_ms for s in states], fused)
            for result, reason in zip(results, intent_reasons):
                if result.get("fallback_reason") is not FallbackReason.refresh_failed:
                    result["fallback_reason"] = reason
            self.metrics.add("intent_requested", sum(r is FallbackReason.intent_pending for r in intent_reasons))
            self.metrics.add("intent_queue_full", sum(r is FallbackReason.intent_queue_full for r in intent_reasons))
            self.metrics.add("intent_recent_reused", sum(r is None for r in intent_reasons))

    def _recommend_one(self, view: UserView, top_k: int) -> RecsPayload:
        try:
            return self.reasoner.recommend([view], top_k)[0]
        except Exception:
            log.exception("refresh of user %r failed: serving the popularity list", view.user_id[:64])
            self.metrics.add("refresh_errors")
            fallback = self.behavioural.popular_fallback(view.user_id, top_k, FallbackReason.refresh_failed)
            fallback.update(state_version=view.state_version, trigger=view.trigger)
            return fallback

    def _write_recs(self, states: list[UserState], results: list[RecsPayload], pipe: redis.client.Pipeline,
                    debounced_due_ms: list[int] | None = None) -> None:
        """Queue the results; samples event -> recs (`recs_freshness_ms`) for refreshes run with
        the batch that folded their event, and due -> recs (`recs_debounce_lag_ms`: what the
        timer adds past the debounce) for debounced ones."""
        if not states:
            return
        self.sink.write(results, pipe)
        written = now_ms()
        self.metrics.written(results)
        self.metrics.add("refreshes", len(states))
        self.metrics.refreshed_users.extend(s.user_id for s in states)
        if debounced_due_ms is None:
            self.metrics.sample("recs_freshness_ms", [written - s.last_produced_ms for s in states])
        else:
            self.metrics.add("refreshes_debounced", len(states))
            self.metrics.sample("recs_debounce_lag_ms", [written - at for at in debounced_due_ms])

    def _take_item_rows(self) -> list[dict]:
        """The Feast rows of items changed since their last push, for the slots this worker owns,
        at most once per item_push_interval_s."""
        if time.monotonic() - self._last_item_push < self.settings.worker.item_push_interval_s:
            return []
        self._last_item_push = time.monotonic()
        owned = self.owned()
        return self.model.take_dirty(owned) if owned else []

    def _maybe_write_popular(self, pipe: redis.client.Pipeline) -> None:
        """The owner of events partition 0 rewrites the popularity fallback every popular_interval_s."""
        if time.monotonic() - self._last_popular < self.settings.worker.popular_interval_s or 0 not in self.owned():
            return
        self._last_popular = time.monotonic()
        self.sink.write_popular(
            self.behavioural.popular_fallback("*", self.settings.recs.top_k, FallbackReason.unknown_user), pipe
        )
