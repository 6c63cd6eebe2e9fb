"""The intent route in the worker: a child process that reasons about users in batches, beside
the stream loop.

The stream loop never waits for the language model. A refresh writes the behavioural list at
once (fallback_reason `intent_pending`) and queues the user here; the child (spawned, one batch
in flight, like the Feast pusher) runs planner -> experts -> arbiter -> retrieval ->
explanations for up to `intent.batch_size` queued users, merges the intent items with the recent
and behavioural routes, writes recs:{user_id} (fallback_reason null, model_version
`<behavioural>+<intent model>`) and pushes the compressed context it read to Feast
(`intent_context`). A user queued again before the child took it is coalesced (newest state
wins). The parent remembers each user's last intent result and merges it into their later
behavioural refreshes, so a refresh never drops the intent items. A refreshed user is queued again
only when their intent may have changed (stream/trigger.py `intent_due`: at least
`intent.min_interval_s` after the last run, and a purchase, a new dominant category, or
`intent.every_n_events` events since the state that run read); the share of refreshes queued is
counted (`intent_queued` vs `intent_recent_reused`).

When the queue holds `intent.queue_max` users, a refresh keeps its behavioural list with
fallback_reason `intent_queue_full`; a user waiting longer than `intent.max_wait_s` gets
`intent_timeout` (the newest queued users go first); a failed batch gets `intent_failed` (the
error is logged and counted; the worker goes on); a batch still running after
`intent.batch_timeout_s` gets `intent_timeout` and its child is killed and replaced, as is a
child that died. A result is written only if Redis does not already hold a newer
state_version for that user.

Hot swap: before a batch, at most every `intent.registry_poll_s`, the child reads the model
registry's serving pointer (reasoning/registry.py) and loads a newly promoted or rolled-back version between batches; the
stream loop goes on meanwhile, so no event waits or is lost. Each result carries the version
that produced it (model_version `<behavioural>+<intent version>`).

Delivery: recommendations are derived data. Events are acknowledged by the stream loop
independently of this route; a crash loses queued intent refreshes, and the user's next trigger
runs the route again.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import orjson

from contracts.recs import FallbackReason, RecsPayload
from contracts.settings import Settings
from reasoning.reasoner import UserView
from stream.trigger import IntentMark, intent_due

log = logging.getLogger(__name__)

# Set recs:{user} unless it holds a newer state_version (the behavioural write of a later state).
_SET_IF_NOT_NEWER = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, old = pcall(cjson.decode, cur)
  if ok and old['state_version'] and tonumber(old['state_version']) > tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

_child: dict[str, Any] = {}


def _init_child(settings_json: str, parent_pid: int) -> None:
    from contracts.keys import RedisKeys
    from features.feast_store import FeastFeatures
    from features.pusher import _exit_with_parent
    from features.redis_client import connect
    from reasoning.engine import IntentEngine
    from reasoning.registry import ModelRegistry

    settings = Settings.model_validate_json(settings_json)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    r = settings.redis
    client = connect(r)
    registry = ModelRegistry.from_settings(settings, client)
    model_dir = registry.serving_dir(settings.intent.resolved_model_dir(settings.cache_dir))
    _child.update(
        settings=settings, client=client, keys=RedisKeys(settings.key_prefix), registry=registry,
        engine=IntentEngine(model_dir, settings.intent, settings.cache_dir), model_dir=model_dir,
        polled_at=time.monotonic(), feast=FeastFeatures(settings), script=client.register_script(_SET_IF_NOT_NEWER),
    )


def _maybe_swap() -> None:
    """Load the registry's serving version if it changed (between batches: the batch in flight
    finished on the old one, the stream loop never waited). A version that fails to load is
    logged and the current one keeps serving."""
    from reasoning.engine import IntentEngine

    now = time.monotonic()
    settings: Settings = _child["settings"]
    if now - _child["polled_at"] < settings.intent.registry_poll_s:
        return
    _child["polled_at"] = now
    model_dir = _child["registry"].serving_dir(settings.intent.resolved_model_dir(settings.cache_dir))
    if model_dir == _child["model_dir"]:
        return
    try:
        engine = IntentEngine(model_dir, settings.intent, settings.cache_dir)
    except Exception:
        log.exception("could not load the registry's serving model at %s; keeping %s", model_dir, _child["model_dir"])
        return
    log.info("intent model swapped: %s -> %s", _child["engine"].version, engine.version)
    _child.update(engine=engine, model_dir=model_dir)


def _reason_in_child(jobs: list[dict]) -> dict:
    """Run the pipeline for `jobs`, write merged recommendations and contexts; return stats."""
    from reasoning.pipeline import IntentInput, reason
    from reasoning.retrieval import merge, recent_route

    started = time.perf_counter()
    _maybe_swap()
    settings: Settings = _child["settings"]
    engine = _child["engine"]
    cfg = settings.intent
    popularity = _popularity()
    inputs = [IntentInput(j["user_id"], j["recent"], frozenset(j["bought"]),
                          {e["item_id"]: e["score"] for e in j["payload"]["items"] if e["route"] == "covisit"})
              for j in jobs]
    results, stats = reason(engine, inputs, popularity, settings.recs.top_k)
    pipe = _child["client"].pipeline(transaction=False)
    keys = _child["keys"]
    contexts = []
    written_ms = int(time.time() * 1000)
    w_recent, w_behavioural, w_intent = cfg.merge_weights(engine.model.meta)
    for job, result in zip(jobs, results):
        payload = job["payload"]
        bought = set(job["bought"])
        merged = merge([(w_recent, recent_route(job["recent"], bought, settings.recs.top_k)),
                        (w_behavioural, payload["items"]), (w_intent, result.items)],
                       bought, settings.recs.top_k)
        ctx = result.context
        out = {**payload, "items": merged, "intents": result.intents, "fallback_reason": None, "tags": result.tags,
               "context_items": [i for i, _ in ctx.items], "context_actions": [a for _, a in ctx.items],
               "model_version": f"{payload['model_version']}+{engine.version}",
               "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "+00:00"}
        _child["script"](keys=[keys.recs(job["user_id"])], args=[orjson.dumps(out), job["state_version"]], client=pipe)
        pipe.xadd(keys.updates, {"user_id": job["user_id"], "state_version": job["state_version"],
                                 "trigger": f"{payload['trigger']}+intent", "generated_at": out["generated_at"]},
                  maxlen=settings.recs.updates_stream_maxlen, approximate=True)
        contexts.append({
            "user_id": job["user_id"], "context_items": [i for i, _ in ctx.items],
            "context_actions": [a for _, a in ctx.items],
            "context_text": f"situation: {ctx.situation}; profile: {ctx.profile}", "context_mode": cfg.mode,
            "context_format": 1, "embedder": engine.model.meta.get("embedder", ""),
            "model_version": engine.version, "state_version": job["state_version"],
        })
    pipe.execute()
    _child["feast"].push_contexts(contexts)
    return {"users": len(jobs), "seconds": time.perf_counter() - started, "tokens": stats.tokens,
            "results": {r.user_id: {"items": r.items, "intents": r.intents, "version": engine.version, "tags": r.tags,
                                    "context_items": [i for i, _ in r.context.items],
                                    "context_actions": [a for _, a in r.context.items],
                                    "state_version": job["state_version"]} for job, r in zip(jobs, results)},
            "context_tokens": stats.context_tokens, "written_ms": written_ms,
            "latency_ms": [written_ms - j["queued_ms"] for j in jobs],
            "freshness_ms": [written_ms - j["last_produced_ms"] for j in jobs if j["last_produced_ms"]]}


def _popularity() -> dict[str, float]:
    """Item popularity for retrieval: the shared item model's scores, re-read every 10 s."""
    from features.item_model import SharedItemModel

    now = time.monotonic()
    if now - _child.get("popularity_at", -1e9) > 10.0:
        model = SharedItemModel.from_settings(_child["settings"], _child["client"])
        _child["popularity"] = model.popularity_scores()
        _child["popularity_at"] = now
    return _child["popularity"]


def _warm() -> tuple[str, dict]:
    _maybe_swap()
    return _child["engine"].version, _child["engine"].model.meta


@dataclass
class _Job:
    job: dict
    payload: RecsPayload


class IntentRoute:
    """Parent side: queue, coalesce, submit one batch at a time, collect stats and fallbacks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.intent
        self._pool = self._new_pool()
        self._queue: dict[str, _Job] = {}
        self.last: OrderedDict[str, dict] = OrderedDict()
        """user_id -> the user's last intent result (items, intents, version, tags, context_items,
        context_actions, at_ms): merged into their behavioural refreshes until the next run
        (LRU, remember_users)."""
        self._inflight: tuple[Future, list[_Job]] | None = None
        self._inflight_since = 0.0
        self.version = ""
        self.weights = self.cfg.merge_weights({})

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_child, initargs=(self.settings.model_dump_json(), os.getpid()),
        )

    def _replace_child(self) -> None:
        """Kill the child (hung or dead) and start a new one; its model loads on the next batch."""
        for process in list(getattr(self._pool, "_processes", {}).values()):
            process.kill()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()

    def warm_up(self) -> str:
        """Load the model in the child now; raises what loading raises (e.g. ModelNotFound)."""
        self.version, meta = self._pool.submit(_warm).result()
        self.weights = self.cfg.merge_weights(meta)
        return self.version

    def submit(self, views: list[UserView], payloads: list[RecsPayload], last_produced_ms: list[int]) -> list[FallbackReason | None]:
        """Queue users for the intent route and merge each payload with the user's last intent
        result, if any (in place). Returns the fallback_reason each payload is written with:
        `intent_pending` (queued), `intent_queue_full`, or None when the user's intent is not due
        again (stream/trigger.py `intent_due`): the last intent result is merged instead."""
        now = int(time.time() * 1000)
        reasons: list[FallbackReason | None] = []
        for view, payload, produced in zip(views, payloads, last_produced_ms):
            behavioural = {**payload, "items": list(payload["items"]), "fallback_reason": None}
            last = self.last.get(view.user_id)
            if last is not None:
                self._merge(payload, view, last)
                mark = IntentMark(last["at_ms"], last["state_version"])
                if not intent_due(view.trigger, view.state_version, mark, now, self.cfg):
                    reasons.append(None)
                    continue
            if view.user_id not in self._queue and len(self._queue) >= self.cfg.queue_max:
                reasons.append(FallbackReason.intent_queue_full)
                continue
            previous = self._queue.pop(view.user_id, None)  # re-queued users move to the back
            job = {"user_id": view.user_id, "recent": [list(e) for e in view.recent[: self.cfg.max_items]],
                   "bought": sorted(view.bought), "state_version": view.state_version,
                   "queued_ms": previous.job["queued_ms"] if previous else now, "last_produced_ms": produced,
                   "payload": behavioural}
            self._queue[view.user_id] = _Job(job, payload)
            reasons.append(FallbackReason.intent_pending)
        return reasons

    def _merge(self, payload: RecsPayload, view: UserView, last: dict) -> None:
        from reasoning.retrieval import merge, recent_route

        bought = set(view.bought)
        k = self.settings.recs.top_k
        w_recent, w_behavioural, w_intent = self.weights
        payload["items"] = merge([(w_recent, recent_route(view.recent, bought, k)),
                                  (w_behavioural, payload["items"]), (w_intent, last["items"])], bought, k)
        payload["intents"] = last["intents"]
        payload["model_version"] = f"{payload['model_version']}+{last['version']}"
        for key in ("tags", "context_items", "context_actions"):
            payload[key] = last[key]

    def _remember(self, results: dict) -> None:
        now = int(time.time() * 1000)
        for user_id, result in results.items():
            self.last[user_id] = {**result, "at_ms": now}
            self.last.move_to_end(user_id)
        while len(self.last) > self.cfg.remember_users:
            self.last.popitem(last=False)

    def cycle(self) -> tuple[dict | None, list[RecsPayload], dict[str, int]]:
        """Collect a finished batch, start the next. Returns (stats of the finished batch or None,
        fallback payloads to write, counters)."""
        stats, fallbacks, counters = None, [], {}
        if self._inflight is not None:
            future, jobs = self._inflight
            if not future.done():
                if time.monotonic() - self._inflight_since <= self.cfg.batch_timeout_s:
                    return None, [], {}
                log.error("intent batch of %d users still running after %.0f s: replacing the child",
                          len(jobs), self.cfg.batch_timeout_s)
                self._inflight = None
                self._replace_child()
                fallbacks += [{**j.payload, "fallback_reason": FallbackReason.intent_timeout} for j in jobs]
                counters["intent_timeouts"] = len(jobs)
                counters["intent_errors"] = 1
            else:
                self._inflight = None
                try:
                    stats = future.result()
                    self._remember(stats.pop("results"))
                except Exception:  # the route fails, the stream goes on (behavioural serves)
                    log.exception("intent batch of %d users failed", len(jobs))
                    counters["intent_errors"] = 1
                    fallbacks += [{**j.payload, "fallback_reason": FallbackReason.intent_failed} for j in jobs]
                    if isinstance(future.exception(), BrokenProcessPool):
                        self._replace_child()
        if self._queue:
            now = int(time.time() * 1000)
            for user_id in [u for u, j in self._queue.items() if now - j.job["queued_ms"] > self.cfg.max_wait_s * 1000]:
                job = self._queue.pop(user_id)
                fallbacks.append({**job.payload, "fallback_reason": FallbackReason.intent_timeout})
                counters["intent_timeouts"] = counters.get("intent_timeouts", 0) + 1
            # Newest first: the users active right now gain most from a fresh intent; the
            # oldest waiting ones are those that run out of max_wait_s.
            batch = [self._queue.pop(u) for u in list(reversed(self._queue))[: self.cfg.batch_size]]
            if batch:
                try:
                    future = self._pool.submit(_reason_in_child, [j.job for j in batch])
                except Exception:  # a dead child (BrokenProcessPool): replace it, these users fall back
                    log.exception("could not hand %d users to the intent child: replacing it", len(batch))
                    self._replace_child()
                    counters["intent_errors"] = counters.get("intent_errors", 0) + 1
                    fallbacks += [{**j.payload, "fallback_reason": FallbackReason.intent_failed} for j in batch]
                else:
                    self._inflight = (future, batch)
                    self._inflight_since = time.monotonic()
        return stats, fallbacks, counters

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def backlog(self) -> int:
        """Users queued or in the batch in flight."""
        return len(self._queue) + (len(self._inflight[1]) if self._inflight else 0)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
