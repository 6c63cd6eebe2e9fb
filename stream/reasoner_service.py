"""The reasoner service (`intentstream reasoner`): intent reasoning as its own tier, on Kafka.

The stream worker never runs a language model. A refresh whose intent may have changed is sent
as an `IntentRequest` (contracts/intent.py) on the intent topic, keyed by user_id; any number of
reasoner processes share one consumer group (`Settings.reasoner_group`) and split its
partitions. `ReasonerService.run` takes what is waiting for it (polls until it holds what its
partitions held when it looked, at most `intent.take_max` requests) and `handle`s the take:

1. Decode each request; an invalid one goes to the dead-letter topic with its reason
   (counted `intent_requests_invalid`); the rest go on.
2. Coalesce per user: the newest state_version wins, the older requests are skipped (counted
   `intent_superseded`; a user's requests arrive in order on one partition, so one reasoner sees
   them all).
3. Order newest first (by the user's newest event): the users active right now gain most.
4. Keep what this reasoner can serve within the SLO: a budget of `max(batch_size, users/s x
   intent.max_wait_s)` users (users/s measured on its own batches; before the first batch, no
   limit), less the requests still waiting behind the take on its partitions (the lag: they
   are newer than the whole take and come next); of the take, the newest that fit are served,
   the older rest are shed at once (the behavioural list serves with fallback_reason
   `intent_timeout`, counted `intent_shed`). Under overload the backlog drains at Kafka speed
   and the served users are the freshest, not those that waited longest.
5. For each batch of `intent.batch_size`: shed what has meanwhile waited past
   `intent.max_wait_s` (as in 4); run planner -> experts -> arbiter -> retrieval ->
   explanations for the rest in the LM child process; store each result at `intent:{user_id}`,
   merge it with the request's behavioural list and write `recs:{user_id}` only where Redis holds
   no newer state_version; where it does (the worker refreshed the user meanwhile, merging the
   intent result it held then), replace that newer list's intent items with the new result's
   (`merge_into_newer`, counted `intent_remerged`); push the compressed contexts to Feast. A batch still running after
   `intent.batch_timeout_s` (a hung backend) is abandoned: the child is killed and replaced, its
   users get `intent_timeout`; a batch that raises gives `intent_failed` (logged, counted
   `intent_errors`), unless what it raised is an outage (below).
6. Count what was handled (`intent_handled`; the backlog is `intent_requested` minus it,
   stream/metrics.py), then commit the take's offsets.

Delivery: offsets are committed after the writes, so a reasoner killed with SIGKILL loses no
request: the take comes again to whoever owns the partition next and is reasoned about again
(the writes are idempotent per user and state_version). SIGTERM finishes the take in hand,
commits and exits.

Outages: a take that raises because Redis, Kafka or Feast is unreachable (stream/failures.py
`is_retryable`, in this process or the LM child) is handled again from step 1 after a backoff,
as the worker's batches are (`through_outage`, worker.retry_backoff_s and worker.outage_wait_s):
a restarted or stalled Redis is waited out, nothing is committed meanwhile, requests that waited
past intent.max_wait_s by then are shed with `intent_timeout`, and what the failed try wrote
already is written again (idempotent per user and state_version; counters may count it twice).
An outage longer than outage_wait_s stops the reasoner loudly (`WorkerStopped`) for its restart,
which takes the uncommitted take again. A SIGTERM during an outage takes effect after the take
(handled once Redis is back, or the stop above): within outage_wait_s.

Hot swap: before a batch, at most every `intent.registry_poll_s`, the child reads the model
registry's serving pointer (reasoning/registry.py) and loads a newly promoted or rolled-back
version between batches; a version that fails to load is logged and the current one goes on.
Each result carries the version that produced it (model_version `<behavioural>+<version>`).

Why a child process: a hung local model or server call cannot be interrupted in-thread; a child
can be killed, and the consumer loop (heartbeats, commits) never waits on torch. The child lowers
its own priority (`intent.nice`, 19 by default; Linux's SCHED_IDLE class with `intent.sched_idle`,
off by default: measured worse on both sides, contracts/settings.py), so a reasoner that shares
cores with a stream worker reasons on the CPU the stream leaves (benchmarks/reasoner.py, isolation).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import orjson
import redis
from kafka import KafkaConsumer
from kafka.errors import CommitFailedError, KafkaError
from pydantic import ValidationError

from contracts.events import DeadLetter
from contracts.intent import IntentRequest
from contracts.keys import RedisKeys
from contracts.recs import FallbackReason, RecsPayload
from contracts.settings import IntentSettings, Settings
from features.redis_client import connect
from reasoning.retrieval import merge_with_intent, recent_route, remerge_intent
from stream.failures import is_retryable, through_outage
from stream.metrics import WorkerMetrics
from stream.producer import EventProducer, ensure_topics

log = logging.getLogger(__name__)

_TAKE_MORE_S = 2.0
"""How long a take polls for the requests that were waiting when it began (`ReasonerService._take`)."""

# Set recs:{user} (KEYS[1]) unless it holds a newer state_version (the behavioural write of a
# later state), and announce the write on the update stream (KEYS[2]). ARGV: the payload, its
# state_version, its expiry in seconds (0: none), the stream's approximate maxlen, the user_id,
# the announced trigger and generated_at. Returns 1 (written) or 0 (refused: nothing announced).
_SET_IF_NOT_NEWER = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, old = pcall(cjson.decode, cur)
  if ok and old['state_version'] and tonumber(old['state_version']) > tonumber(ARGV[2]) then return 0 end
end
if tonumber(ARGV[3]) > 0 then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
else redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'user_id', ARGV[5], 'state_version', ARGV[2],
           'trigger', ARGV[6], 'generated_at', ARGV[7])
return 1
"""


def write_guarded(client: redis.Redis | redis.client.Pipeline, keys: RedisKeys, payloads: list[RecsPayload],
                  stream_maxlen: int, ttl_s: int | None) -> None:
    """Queue, per payload, one script (on `client`, a pipeline the caller executes) that sets
    recs:{user_id} (expiring after `ttl_s`, None: never) unless Redis holds a newer state_version
    there, and then announces it on the update stream. Each script replies 1 (written) or 0
    (refused), in the payloads' order."""
    for p in payloads:
        client.eval(_SET_IF_NOT_NEWER, 2, keys.recs(p["user_id"]), keys.updates, orjson.dumps(p),
                    p["state_version"], ttl_s or 0, stream_maxlen, p["user_id"], f"{p['trigger']}+intent",
                    p["generated_at"])


def merge_into_newer(client: redis.Redis, keys: RedisKeys, refused: list[tuple[dict, dict, str | None]], k: int,
                     stream_maxlen: int, ttl_s: int | None) -> int:
    """Bring intent results whose list write was refused into the served list anyway. Each of
    `refused` is (request, stored result, the version of the result it replaced at intent:{user}).
    Refused means the worker refreshed the user while the request waited and wrote a list of a
    newer state, merged with the intent result it held then; without this step the new result
    would reach the served list at the user's next refresh only, never if their session had
    ended. Each such list gets its intent items replaced by the new result's
    (reasoning/retrieval.py `remerge_intent`), written under the same guard at its own
    state_version. A list the worker replaced once more meanwhile is left: that refresh read
    intent:{user}, which holds the new result since before this step began (unless the worker
    read it in the few ms before). Returns how many lists were rewritten."""
    if not refused:
        return 0
    raws = client.mget([keys.recs(request["user_id"]) for request, _, _ in refused])
    payloads = []
    for (request, stored, previous), raw in zip(refused, raws):
        if raw is None:  # expired or deleted meanwhile: the next refresh merges the stored result
            continue
        out = remerge_intent(orjson.loads(raw), previous, set(request["bought"]), stored, k)
        payloads.append({**out, "generated_at": _utc_now()})
    pipe = client.pipeline(transaction=False)
    write_guarded(pipe, keys, payloads, stream_maxlen, ttl_s)
    return sum(pipe.execute())


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "+00:00"


# -- the LM child ---------------------------------------------------------------------------------
_child: dict[str, Any] = {}


def _lower_priority(cfg: IntentSettings) -> None:
    """The stream first where both share cores: niceness, and SCHED_IDLE when configured
    (IntentSettings.nice, .sched_idle). Torch's threads, started later, inherit both."""
    os.nice(cfg.nice)
    if not cfg.sched_idle:
        return
    if not hasattr(os, "SCHED_IDLE"):
        log.warning("intent.sched_idle is set but this OS has no SCHED_IDLE: the LM child runs at nice %d only",
                    cfg.nice)
        return
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _init_child(settings_json: str, parent_pid: int) -> None:
    from features.feast_store import FeastFeatures
    from features.pusher import _exit_with_parent
    from reasoning.engine import IntentEngine
    from reasoning.registry import ModelRegistry, RegistryError

    settings = Settings.model_validate_json(settings_json)
    _lower_priority(settings.intent)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    client = connect(settings.redis)
    registry = ModelRegistry.from_settings(settings, client)
    default_dir = settings.intent.resolved_model_dir(settings.cache_dir)
    try:
        model_dir = registry.serving_dir(default_dir)
    except RegistryError:
        log.exception("the registry's serving pointer is refused; serving %s", default_dir)
        model_dir = default_dir
    _child.update(
        settings=settings, client=client, keys=RedisKeys(settings.key_prefix), registry=registry,
        engine=IntentEngine(model_dir, settings.intent, settings.cache_dir), model_dir=model_dir,
        polled_at=time.monotonic(), feast=FeastFeatures(settings),
    )


def _maybe_swap() -> None:
    """Load the registry's serving version if it changed (between batches). A version that fails
    to load, or a pointer outside the versions directory, is logged and the current one keeps
    serving."""
    from reasoning.engine import IntentEngine
    from reasoning.registry import RegistryError

    now = time.monotonic()
    settings: Settings = _child["settings"]
    if now - _child["polled_at"] < settings.intent.registry_poll_s:
        return
    _child["polled_at"] = now
    try:
        model_dir = _child["registry"].serving_dir(settings.intent.resolved_model_dir(settings.cache_dir))
    except RegistryError:
        log.exception("the registry's serving pointer is refused; keeping %s", _child["model_dir"])
        return
    if model_dir == _child["model_dir"]:
        return
    try:
        engine = IntentEngine(model_dir, settings.intent, settings.cache_dir)
    except Exception:
        log.exception("could not load the registry's serving model at %s; keeping %s", model_dir, _child["model_dir"])
        return
    log.info("intent model swapped: %s -> %s", _child["engine"].version, engine.version)
    _child.update(engine=engine, model_dir=model_dir)


def _popularity() -> dict[str, float]:
    """Item popularity for retrieval: the shared item model's scores, re-read every 10 s."""
    from features.item_model import SharedItemModel

    now = time.monotonic()
    if now - _child.get("popularity_at", -1e9) > 10.0:
        model = SharedItemModel.from_settings(_child["settings"], _child["client"])
        _child["popularity"] = model.popularity_scores()
        _child["popularity_at"] = now
    return _child["popularity"]


def _unfused_recent(request: dict) -> list:
    """The recent entries `merge_with_intent` fuses: none when the worker's list holds them
    already (`recent_fused`: the sequential model's fusion decided their weight).

    >>> _unfused_recent({"recent": [["a", "view"]], "recent_fused": True}), _unfused_recent({"recent": [["a", "view"]]})
    ([], [['a', 'view']])
    """
    return [] if request.get("recent_fused") else request["recent"]


def _intent_inputs(requests: list[dict], complement_top: int) -> list:
    """The pipeline's inputs (reasoning/pipeline.py `IntentInput`) for IntentRequest dicts: the
    co-visitation scores of the worker's list rank a tag's items, and the first `complement_top`
    items of the lists the result is merged with (the worker's list, the recent items it does not
    hold) are left out of the route (intent.complement_top).

    >>> r = {"user_id": "u", "recent": [["r1", "view"], ["r2", "view"]], "bought": ["b"], "recent_fused": False,
    ...      "behavioural": {"items": [{"item_id": "c1", "score": 0.5, "route": "covisit"},
    ...                                {"item_id": "s1", "score": 0.4, "route": "sequential"}]}}
    >>> (one,) = _intent_inputs([r], 1)
    >>> dict(one.affinity), sorted(one.shown), one.bought
    ({'c1': 0.5}, ['c1', 'r1'], frozenset({'b'}))
    >>> _intent_inputs([r], 0)[0].shown
    frozenset()
    """
    from reasoning.pipeline import IntentInput, shown_items

    return [IntentInput(r["user_id"], r["recent"], frozenset(r["bought"]),
                        {e["item_id"]: e["score"] for e in r["behavioural"]["items"] if e["route"] == "covisit"},
                        shown_items(r["behavioural"]["items"],
                                    recent_route(_unfused_recent(r), set(r["bought"]), complement_top), complement_top))
            for r in requests]


def _personal(requests: list[dict]):
    """The sequential model's view of the batch's users (reasoning/retrieval.py `PersonalScores`),
    so a tag's items are ranked for each user; None while no sequential model serves (the same
    registry lookup and hot swap as the worker's route)."""
    from reasoning.sequential import SequentialServing

    settings: Settings = _child["settings"]
    if not settings.sequential.enabled:
        return None
    serving = _child.get("sequential")
    if serving is None:
        serving = _child["sequential"] = SequentialServing(settings, _child["client"])
    route = serving.current()
    if route is None:
        return None
    return route.personal([[str(e[0]) for e in reversed(r["recent"])] for r in requests])


def _warm() -> str:
    _maybe_swap()
    return _child["engine"].version


def _reason_in_child(requests: list[dict]) -> dict:
    """Reason about `requests` (IntentRequest dicts), store the results, write the merged lists
    and the contexts; return the batch's stats."""
    from reasoning.pipeline import reason

    started = time.perf_counter()
    _maybe_swap()
    settings: Settings = _child["settings"]
    engine = _child["engine"]
    cfg, k = settings.intent, settings.recs.top_k
    personal = _personal(requests)
    results, stats = reason(engine, _intent_inputs(requests, cfg.complement_top), _popularity(), k, personal=personal)
    keys = _child["keys"]
    pipe = _child["client"].pipeline(transaction=False)
    written_ms = int(time.time() * 1000)
    weights = cfg.merge_weights(engine.model.meta)
    merged, contexts, stored_results = [], [], []
    for request, result in zip(requests, results):
        ctx = result.context
        stored = {"user_id": request["user_id"], "state_version": request["state_version"], "at_ms": written_ms,
                  "version": engine.version, "items": result.items, "intents": result.intents, "tags": result.tags,
                  "context_items": [i for i, _ in ctx.items], "context_actions": [a for _, a in ctx.items],
                  "weights": weights}
        stored_results.append(stored)
        pipe.set(keys.intent(request["user_id"]), orjson.dumps(stored), ex=settings.retention.user_ttl_s, get=True)
        out = merge_with_intent(request["behavioural"], _unfused_recent(request), set(request["bought"]), stored, k)
        merged.append({**out, "fallback_reason": None, "generated_at": _utc_now()})
        contexts.append({
            "user_id": request["user_id"], "context_items": stored["context_items"],
            "context_actions": stored["context_actions"],
            "context_text": f"situation: {ctx.situation}; profile: {ctx.profile}", "context_mode": cfg.mode,
            "context_format": 1, "embedder": engine.model.meta.get("embedder", ""),
            "model_version": engine.version, "state_version": request["state_version"],
        })
    write_guarded(pipe, keys, merged, settings.recs.updates_stream_maxlen, settings.retention.user_ttl_s)
    replies = pipe.execute()
    previous, written = replies[:len(requests)], replies[len(requests):]
    refused = [(request, result, orjson.loads(old).get("version") if old else None)
               for request, result, old, ok in zip(requests, stored_results, previous, written) if not ok]
    remerged = merge_into_newer(_child["client"], keys, refused, k, settings.recs.updates_stream_maxlen,
                                settings.retention.user_ttl_s)
    _child["feast"].push_contexts(contexts)
    return {"users": len(requests), "seconds": time.perf_counter() - started, "tokens": stats.tokens,
            "context_tokens": stats.context_tokens, "version": engine.version,
            "written": sum(written) + remerged, "remerged": remerged,
            "ranked_by_sequential": len(requests) if personal is not None else 0,
            "latency_ms": [written_ms - r["requested_ms"] for r in requests],
            "freshness_ms": [written_ms - r["last_produced_ms"] for r in requests if r["last_produced_ms"]]}


class ReasoningChild:
    """The LM child process of a reasoner: one batch at a time, killed and replaced when hung."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_child, initargs=(self.settings.transport_json(), os.getpid()))

    def warm_up(self) -> str:
        """Load the model in the child now; raises what loading raises (e.g. ModelNotFound)."""
        return self._pool.submit(_warm).result()

    def run(self, requests: list[dict]) -> dict:
        """Reason about one batch; raises FutureTimeout after intent.batch_timeout_s (the child
        is replaced) or what the batch raised (a dead child is replaced)."""
        future = self._pool.submit(_reason_in_child, requests)
        try:
            return future.result(timeout=self.settings.intent.batch_timeout_s)
        except (FutureTimeout, BrokenProcessPool):  # hung, or the child died
            self.replace()
            raise

    def replace(self) -> None:
        for process in list(getattr(self._pool, "_processes", {}).values()):
            process.kill()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# -- the consumer loop ----------------------------------------------------------------------------
class ReasonerService:
    def __init__(self, settings: Settings, child: ReasoningChild | None = None) -> None:
        self.settings = settings
        cfg, k = settings.intent, settings.kafka
        self.cfg = cfg
        self.client = connect(settings.redis)
        self.keys = RedisKeys(settings.key_prefix)
        self.metrics = WorkerMetrics(self.keys)
        ensure_topics(k, [k.intent_topic, k.dead_letter_topic])
        self.child = child or ReasoningChild(settings)
        self.dead_letters = EventProducer(k, k.dead_letter_topic)
        # A take may hold take_max / batch_size batches, each up to batch_timeout_s: the group must
        # not evict the consumer meanwhile.
        # An outage is waited out within the take too (worker.outage_wait_s).
        poll_interval_ms = int(((cfg.take_max // cfg.batch_size + 1) * cfg.batch_timeout_s + 60
                                + settings.worker.outage_wait_s) * 1000)
        self.consumer = KafkaConsumer(
            k.intent_topic, **k.client_options(), group_id=settings.reasoner_group,
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=min(cfg.take_max, 500),
            max_poll_interval_ms=poll_interval_ms, session_timeout_ms=10_000, heartbeat_interval_ms=3_000,
        )
        self.stop = threading.Event()
        self.users_per_s: float | None = None
        """This reasoner's measured throughput (moving average over its batches)."""

    def run(self) -> None:
        """Take, handle, commit until `stop` is set (SIGTERM)."""
        version = self.child.warm_up()
        log.info("reasoner: model %s (%s backend), group %s, topic %s", version, self.cfg.backend,
                 self.settings.reasoner_group, self.settings.kafka.intent_topic)
        self.client.hset(self.keys.metrics, "reasoner_started_ms", int(time.time() * 1000))
        try:
            while not self.stop.is_set():
                records, lag = self._take()
                self.metrics.exporter.lag.labels(self.settings.kafka.intent_topic).set(lag + len(records))
                if not records:
                    continue
                self.handle_through_outage(records, lag)
                try:
                    self.consumer.commit()
                except (CommitFailedError, KafkaError) as exc:  # a rebalance took the partitions
                    log.warning("commit failed (%r): the new owner reasons about this take again", exc)
        finally:
            self.consumer.close(autocommit=False)
            self.dead_letters.close()
            self.child.close()

    def _take(self) -> tuple[list, int]:
        """What is waiting, and how many requests wait behind it: poll (0.5 s for the first
        records), read the partitions' end offsets, then poll until the take reaches them or holds
        take_max records (at most `_TAKE_MORE_S`); behind: the end offsets less the positions.

        Why the end offsets: kafka-python fetches ahead (once a poll hands out records it sends
        the next fetch), and while the reasoner reasons that fetch comes back with what had
        arrived by then: a take that stopped at the first empty poll held those few requests and
        left the rest, there all along, to the next take, after another batch. Measured at x10
        on REES46 (`bench reasoner`'s coverage run, 2-core VM): batches alternated between 1 and
        17 users, and event -> intent recs p99 was 2.58 s."""
        limit = self.cfg.take_max
        taken = self.consumer.poll(timeout_ms=500, max_records=limit)
        records = [r for batch in taken.values() for r in batch]
        if not records:
            return records, 0
        try:
            ends = self.consumer.end_offsets(list(self.consumer.assignment()))
        except KafkaError as exc:  # the broker did not answer in time: what is in hand is the take
            log.warning("could not read the intent topic's end offsets (%r): taking the %d requests in hand",
                        exc, len(records))
            return records, 0

        def behind() -> int:
            held = self.consumer.assignment()
            return sum(max(0, end - self.consumer.position(tp)) for tp, end in ends.items() if tp in held)

        deadline = time.monotonic() + _TAKE_MORE_S
        while len(records) < limit and behind() and time.monotonic() < deadline:
            more = self.consumer.poll(timeout_ms=100, max_records=limit - len(records))
            records += [r for batch in more.values() for r in batch]
        return records, behind()

    def budget(self) -> int | None:
        """Users this reasoner can serve within intent.max_wait_s (step 4); None (no limit) until
        it has measured itself."""
        if self.users_per_s is None:
            return None
        return max(self.cfg.batch_size, int(self.users_per_s * self.cfg.max_wait_s))

    def handle_through_outage(self, records: list, lag: int = 0) -> None:
        """`handle`, the take handled again while Redis, Kafka or Feast is unreachable (module
        docstring, Outages); raises WorkerStopped when the outage outlasts worker.outage_wait_s."""
        w = self.settings.worker
        through_outage(lambda: self.handle(records, lag), w.retry_backoff_s, w.outage_wait_s)

    def handle(self, records: list, lag: int = 0) -> None:
        """Steps 1-6 of the module docstring for one take (records: kafka-python ConsumerRecords;
        `lag`: requests waiting behind them)."""
        m = self.metrics
        now = int(time.time() * 1000)
        newest: dict[str, dict] = {}
        invalid = []
        for rec in records:
            try:
                request = IntentRequest.model_validate_json(rec.value).model_dump()
            except (ValidationError, ValueError, TypeError) as exc:
                reason = f"invalid_intent_request: {str(exc).splitlines()[0][:200]}"
                invalid.append((rec.key, DeadLetter.of(reason, rec.topic, rec.partition, rec.offset, rec.key,
                                                       rec.value, now)))
                continue
            held = newest.get(request["user_id"])
            if held is None or (request["state_version"], request["requested_ms"]) >= (held["state_version"],
                                                                                       held["requested_ms"]):
                newest[request["user_id"]] = request
        for key, letter in invalid:
            self.dead_letters.send_raw(key, letter.model_dump_json().encode())
        if invalid:
            self.dead_letters.flush()
        m.add("intent_requests_invalid", len(invalid))
        m.add("intent_superseded", len(records) - len(invalid) - len(newest))
        queue = sorted(newest.values(), key=lambda r: r["last_produced_ms"], reverse=True)
        budget = self.budget()
        budget = len(queue) if budget is None else max(0, budget - lag)
        if len(queue) > budget:  # more than can be served within the SLO: the oldest are shed now
            self._fall_back(queue[budget:], FallbackReason.intent_timeout)
            m.add("intent_shed", len(queue) - budget)
            queue = queue[:budget]
        for start in range(0, len(queue), self.cfg.batch_size):
            self._serve(queue[start:start + self.cfg.batch_size])
        m.add("intent_handled", len(records))
        self._flush_metrics()

    def _serve(self, batch: list[dict]) -> None:
        m = self.metrics
        now = int(time.time() * 1000)
        limit = self.cfg.max_wait_s * 1000
        stale = [r for r in batch if now - r["requested_ms"] > limit]
        fresh = [r for r in batch if now - r["requested_ms"] <= limit]
        if stale:
            self._fall_back(stale, FallbackReason.intent_timeout)
            m.add("intent_shed", len(stale))
        if not fresh:
            return
        try:
            stats = self.child.run(fresh)
        except FutureTimeout:
            log.error("intent batch of %d users still running after %.0f s: replaced the LM child",
                      len(fresh), self.cfg.batch_timeout_s)
            m.add("intent_errors")
            m.add("intent_timeouts", len(fresh))
            self._fall_back(fresh, FallbackReason.intent_timeout)
            return
        except Exception as exc:  # the batch fails, the reasoner goes on (the behavioural list serves)
            if is_retryable(exc):
                raise  # an outage, not this batch's fault: the take is handled again (Outages)
            log.exception("intent batch of %d users failed", len(fresh))
            m.add("intent_errors")
            self._fall_back(fresh, FallbackReason.intent_failed)
            return
        rate = stats["users"] / max(stats["seconds"], 1e-3)
        self.users_per_s = rate if self.users_per_s is None else 0.8 * self.users_per_s + 0.2 * rate
        m.exporter.users_per_s.set(self.users_per_s)
        m.exporter.recs_written.inc(stats["written"])  # by the child, guarded by state_version
        m.exporter.serving("intent", stats["version"])
        m.add("intent_users", stats["users"])
        m.add("intent_batches")
        m.add("intent_time_ms", int(stats["seconds"] * 1000))
        m.add("intent_tokens", stats["tokens"])
        m.add("intent_context_tokens", stats["context_tokens"])
        m.add("intent_ranked_by_sequential", stats["ranked_by_sequential"])  # tags' items ranked for the user
        m.add("intent_remerged", stats["remerged"])  # merged into a newer list (`merge_into_newer`)
        m.sample("intent_latency_ms", stats["latency_ms"])
        m.sample("intent_freshness_ms", stats["freshness_ms"])
        self._flush_metrics()

    def _fall_back(self, requests: list[dict], reason: FallbackReason) -> None:
        """Write each user's behavioural list (merged with their last intent result, if any) with
        `reason`, unless Redis holds a newer state."""
        k = self.settings.recs.top_k
        raws = self.client.mget([self.keys.intent(r["user_id"]) for r in requests])
        payloads = []
        for request, raw in zip(requests, raws):
            out = request["behavioural"]
            if raw:
                out = merge_with_intent(out, _unfused_recent(request), set(request["bought"]), orjson.loads(raw), k)
            payloads.append({**out, "fallback_reason": reason, "generated_at": _utc_now()})
        pipe = self.client.pipeline(transaction=False)
        write_guarded(pipe, self.keys, payloads, self.settings.recs.updates_stream_maxlen,
                      self.settings.retention.user_ttl_s)
        pipe.execute()
        self.metrics.written(payloads)

    def _flush_metrics(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        self.metrics.queue(pipe)
        pipe.execute()


def run_reasoner(settings: Settings) -> None:
    """`intentstream reasoner`: serve the intent topic until SIGTERM/SIGINT."""
    import signal

    service = ReasonerService(settings)
    service.metrics.exporter.serve(settings.metrics.host, settings.metrics.reasoner_port)

    def stop(signum, frame) -> None:  # finish the take in hand, commit, exit
        log.info("reasoner: signal %d, stopping after the take in hand", signum)
        service.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    service.run()
