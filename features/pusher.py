"""Feast pushes off the worker's core: a child process, pipelined with the stream, coalescing.

Feast converts every value to a protobuf in Python (~0.05-0.1 ms per 13-feature user row here,
13-18k rows/s in benchmarks/feast_write.py), which on the worker's core would cost more than
anything else it does. The pusher runs the Feast writes (`FeastFeatures.push_users`,
`push_items`) in a spawned child process that keeps one `FeastFeatures` alive, so they use the
machine's other core. At most one push is in flight; rows that change meanwhile coalesce
(one row per user, the newest), so under load a push carries several batches at once.

Delivery: the caller hands in, with the rows, the Kafka events whose effects they carry, and gets
them back only when the push that carried them has finished; the worker acknowledges (and so
commits) offsets only then. A crash before that re-delivers the events (at-least-once). A push
that fails is queued again under the rows that changed since (newer rows win) and its tokens stay
with it: `cycle` raises a retryable `FeatureStoreError`, and the next cycle pushes it again.
`cycle` may be called from several tasks (the ingest loop and the timer): a lock makes each
collect and submit one step, so no caller can drop a push another just submitted.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from contracts.settings import Settings
from features.errors import FeatureStoreError

log = logging.getLogger(__name__)

PUSH_ATTEMPTS = 5
_features = None  # the child's FeastFeatures


def _init_child(settings_json: str, parent_pid: int) -> None:
    global _features
    from features.feast_store import FeastFeatures

    _features = FeastFeatures(Settings.model_validate_json(settings_json))
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    # A worker killed with SIGKILL cannot shut its pool down; without this the child would
    # outlive it (it blocks on its task queue), one orphan per crash.
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(0)


def _push_in_child(user_rows: list[dict[str, Any]], item_rows: list[dict[str, Any]]) -> None:
    import redis

    if _features is None:
        raise RuntimeError("pusher child not initialised")
    for attempt in range(PUSH_ATTEMPTS):
        try:
            _features.push_users(user_rows)
            _features.push_items(item_rows)
            return
        except (redis.RedisError, OSError):
            if attempt == PUSH_ATTEMPTS - 1:
                raise  # the worker stops loudly; unacknowledged events come again after restart
            time.sleep(0.2 * 2**attempt)


@dataclass
class _Pending:
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    produced_ms: list[int] = field(default_factory=list)
    tokens: list[Any] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.users or self.items or self.tokens)


class FeaturePusher:
    def __init__(self, settings: Settings) -> None:
        self._settings_json = settings.transport_json()
        self._pool = self._new_pool()
        self._next = _Pending()
        self._inflight: tuple[Future, _Pending] | None = None
        self._finished: list[tuple[_Pending, int]] = []
        """Pushes that finished (with the wall-clock ms they were seen done), not yet returned."""
        self._lock = asyncio.Lock()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),  # the worker has threads: never fork it
            initializer=_init_child,
            initargs=(self._settings_json, os.getpid()),
        )

    def warm_up(self) -> None:
        """Start the child and load Feast now, not on the first batch."""
        self._pool.submit(_push_in_child, [], []).result()

    def add(self, users: list[dict[str, Any]], items: list[dict[str, Any]], produced_ms: list[int],
            tokens: list[Any]) -> None:
        """Queue rows (newest wins per entity) and the tokens (events) they carry."""
        for row in users:
            self._next.users[row["user_id"]] = row
        for row in items:
            self._next.items[row["item_id"]] = row
        self._next.produced_ms.extend(produced_ms)
        self._next.tokens.extend(tokens)

    async def cycle(self, wait: bool = False) -> tuple[list[Any], list[int], int]:
        """Collect a finished push and start the next one.

        Returns (tokens now safe to acknowledge, broker timestamps of their events, wall-clock ms
        when their push finished). With `wait`, waits for the push in flight. A failed push raises
        `FeatureStoreError` (retryable) here and is queued again with its tokens, so its events
        are acknowledged only after a later push carried them; a child that died is replaced.
        """
        async with self._lock:
            if self._inflight is not None:
                future, pending = self._inflight
                if wait or future.done():
                    try:
                        await asyncio.wrap_future(future)
                    except Exception as exc:
                        if self._owns(future):
                            self._inflight = None
                            self._requeue(pending)
                        if isinstance(exc, BrokenProcessPool):  # the child died (OOM, kill): a new one
                            self._replace_pool()
                        raise FeatureStoreError(f"Feast push of {len(pending.users)} users failed: {exc!r}") from exc
                    if self._owns(future):  # else `start` reaped it meanwhile
                        self._reap(pending)
            self._start()
            finished, self._finished = self._finished, []
            tokens = [t for pending, _ in finished for t in pending.tokens]
            produced = [p for pending, _ in finished for p in pending.produced_ms]
            return tokens, produced, max((at for _, at in finished), default=0)

    def start(self) -> None:
        """Reap a push that finished well and start a push of what is queued if none is in
        flight: never waits, never raises (a failed push stays in flight, a push that cannot be
        started stays queued, for `cycle` to raise). The worker calls it as soon as a batch's rows
        are queued, so the child is never idle while the stream loop works."""
        try:
            self._start()
        except FeatureStoreError as exc:
            log.warning("%s; the next cycle tries again", exc)

    def _start(self) -> None:
        if self._inflight is not None:
            future, pending = self._inflight
            if future.done() and not future.cancelled() and future.exception() is None:
                self._reap(pending)
        if self._inflight is None and not self._next.empty():
            pending, self._next = self._next, _Pending()
            args = (list(pending.users.values()), list(pending.items.values()))
            try:
                try:
                    future = self._pool.submit(_push_in_child, *args)
                except BrokenProcessPool:  # the child died while idle: a new one
                    self._replace_pool()
                    future = self._pool.submit(_push_in_child, *args)
            except Exception as exc:
                self._requeue(pending)  # its rows and tokens wait for the next try
                raise FeatureStoreError(f"could not start a Feast push: {exc!r}") from exc
            self._inflight = (future, pending)

    def _replace_pool(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()

    def _owns(self, future: Future) -> bool:
        return self._inflight is not None and self._inflight[0] is future

    def _reap(self, pending: _Pending) -> None:
        self._inflight = None
        self._finished.append((pending, int(time.time() * 1000)))

    def _requeue(self, failed: _Pending) -> None:
        """Put a failed push back in front of what was queued since (queued rows are newer)."""
        queued, self._next = self._next, failed
        self._next.users.update(queued.users)
        self._next.items.update(queued.items)
        self._next.produced_ms.extend(queued.produced_ms)
        self._next.tokens.extend(queued.tokens)

    async def drain(self) -> tuple[list[Any], list[int], int]:
        """Push everything queued and wait for it (shutdown, tests)."""
        tokens, produced, finished = await self.cycle(wait=True)
        more_tokens, more_produced, more_finished = await self.cycle(wait=True)
        return tokens + more_tokens, produced + more_produced, max(finished, more_finished)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
