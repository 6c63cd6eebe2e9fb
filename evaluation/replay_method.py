"""The system itself as a method: the train events go through the real pipeline (Kafka → worker
→ Feast/Redis), and what Redis serves at the end of the train period is scored.

It runs on fresh topics, a fresh consumer group and a fresh Redis/Feast namespace, with the
same worker code and settings that serve users (only the names differ). Every model it serves
is trained on the split's train events only, never taken from the cache's serving model (which
may have learned another dataset, or this one's test events): with the sequential route on, its
SASRec (training/sequential.py `cached_model`: reused when the same events, validation cases and
config trained one before, e.g. by the `sasrec` baseline of the same run), served by the
workers; with the intent route on, the intent model (evaluation/intent_method.py
`split_intent_model`, the `intent` method's rule and cache), served by a reasoner beside them,
and the replay waits for the intent route to drain before scoring. It replays once every process
consumes (the reasoner with its model loaded: one still loading would shed every request that
waited past intent.max_wait_s meanwhile, so no intent result would be scored). It also waits for the
refreshes a worker that fell behind still owes (`refreshes_pending`) and those of users' last
events (`refreshes_settling`), and gives the workers the
time left to the deadline to stop (stopping builds their last debounced refreshes). `stats`
names the models that served (`sequential_model`, `intent_model`) and counts what the scored
lists were made of (`served`: fallback reasons, and the routes of the top items and hits).
`intent_model` overrides the intent model (`bench loop`'s trained candidate). `replay2` runs two workers on the group (static members),
which must serve what one worker serves (the shared item model, features/item_model.py). With
`feedback` the first half of the train events is replayed, the intent route drained, and the
second half replayed with simulated feedback (offline/replay.py `FeedbackSimulator`), which the
worker logs under this run's feedback topic (`self.settings.feedback_dir`): what the periodic
trainer then learns from.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from pathlib import Path


from contracts.keys import RedisKeys
from contracts.recs import FallbackReason, Recommendations
from contracts.settings import Settings
from contracts.topics import worker_topics
from evaluation.intent_method import split_intent_model
from features.redis_client import connect, delete_matching
from infra.worker_process import ReasonerProcess, WorkerProcess
from offline.datasets import Dataset
from offline.replay import replay
from offline.splits import Split, UserCase
from reasoning.registry import served_model_dir
from stream.metrics import intent_backlog
from stream.producer import EventProducer, delete_topics, ensure_topics
from stream.reader import RecommendationReader
from training.sft import SFTConfig


SERVED_K = 10
"""The top of each scored list whose routes `stats["served"]` counts (the published cut-off)."""


class ReplayMethod:
    name = "replay"

    def __init__(self, settings: Settings, timeout_s: float = 1800, wait_intent: bool = False,
                 feedback: bool = False, workers: int = 1, *, dataset: Dataset | None = None,
                 intent_model: Path | None = None, sft: SFTConfig | None = None, progress=None) -> None:
        """`dataset` (its items' text) is what the intent model is trained from when the intent
        route is on and no `intent_model` is given; `sft` its training config (default SFTConfig())."""
        run = uuid.uuid4().hex[:8]
        self.prefix = f"eval-{run}:"
        self.settings = settings.isolated(f"intentstream.eval.{run}", key_prefix=self.prefix)
        self.timeout_s = timeout_s
        self.wait_intent = wait_intent or feedback
        self.feedback = feedback
        self.workers = workers
        self.dataset = dataset
        self.intent_model = intent_model
        self.sft = sft or SFTConfig()
        self.progress = progress
        self.stats: dict = {}

    def _models(self, split: Split) -> None:
        """Point the settings at models trained on `split`'s train events (module docstring)."""
        s = self.settings
        if s.intent.enabled and self.intent_model is None and self.dataset is None:
            raise ValueError("the replay method trains the intent model it serves on the split's train events: "
                             "give it the dataset (or an intent_model, or turn the intent route off)")
        sequential_dir = None
        if s.sequential.enabled:  # the sequential route as deployed, trained on this split's train part
            from training.sequential import cached_model

            sequential_dir = cached_model(split.train, s.cache_dir, split.validation or None, label="replay",
                                          progress=self.progress)
            s = s.model_copy(update={"sequential": s.sequential.model_copy(update={"model_dir": sequential_dir})})
            self.stats["sequential_model"] = sequential_dir.name
        if s.intent.enabled:
            intent_dir = self.intent_model
            if intent_dir is None:  # as the `intent` method trains it: against the sequential route's fusion
                from reasoning.sequential import SequentialRoute

                route = SequentialRoute(sequential_dir) if sequential_dir else None
                intent_dir, _ = split_intent_model(s, self.dataset, split, self.sft, route, self.progress)
            s = s.model_copy(update={"intent": s.intent.model_copy(update={"model_dir": intent_dir})})
            self.stats["intent_model"] = intent_dir.name
        self.settings = s

    def fit(self, split: Split, catalog: Sequence[str]) -> None:
        self._models(split)
        s = self.settings
        k = s.kafka
        ensure_topics(k, [k.events_topic, k.dead_letter_topic, k.feedback_topic, k.intent_topic])
        workers = [WorkerProcess(self._member(i), s.state_dir / "logs" / f"{s.worker.app_id}-{i}.log")
                   for i in range(self.workers)]
        # With an intent model the system reasons as deployed: a reasoner beside the workers.
        if served_model_dir(s) is not None:
            workers.append(ReasonerProcess(s, s.state_dir / "logs" / f"{s.worker.app_id}-reasoner.log"))
            self.wait_intent = True  # score what the system serves once reasoning has caught up
        for w in workers:
            w.start()
        worker = workers[0]  # metrics are shared by the group: any member reads them all
        settled = False
        try:
            deadline = time.monotonic() + self.timeout_s
            # The system evaluated is the one running: a reasoner still loading its model when the
            # replay began found every request older than intent.max_wait_s and shed them all (a
            # CI run served no intent result; reproduced with a reasoner started 15 s late).
            for w in workers:
                w.wait_ready(max(1.0, deadline - time.monotonic()))
            events = split.inputs  # train (leave-one-out: and the validation events, the test users' input)
            halves = [events.iloc[: len(events) // 2], events.iloc[len(events) // 2:]] if self.feedback else [events]
            sent = 0
            for part, with_feedback in zip(halves, [False, True] if self.feedback else [False]):
                train = Dataset("train", part, part[["item_id"]].drop_duplicates())
                simulator = self._simulator() if with_feedback else None
                with EventProducer.from_settings(s) as producer:
                    n, _ = replay(train, producer, user_prefix=self.prefix, id_prefix=self.prefix, feedback=simulator)
                sent += n
                if simulator is not None:
                    simulator.producer.close()
                    self.stats["feedback_sent"] = simulator.impressions + simulator.actions
                self._wait(workers, lambda: worker.processed() >= sent, deadline, "process the replay")
                time.sleep(max(s.trigger.min_interval_s, s.trigger.settle_s) + 1.0)  # debounced refreshes come due
                # A worker that fell behind served degraded lists and owes their full refreshes
                # (stream/processor.py `_shed`), and users' last events wait for trigger.settle_s:
                # score what it serves once it has built them (before the intent route drains, as
                # they may send requests). The gauges are the last writer's with several workers:
                # the stop below covers the rest.
                self._wait(workers, lambda: self._metric("refreshes_pending") == 0
                           and self._metric("refreshes_settling") == 0, deadline, "build the refreshes it owes")
                if self.wait_intent:
                    self._wait(workers, self._intent_idle, deadline, "drain the intent route")
            if self.feedback:
                self._wait(workers, lambda: int(self._metric("feedback_logged")) >= self.stats["feedback_sent"],
                           deadline, "log the feedback")
            self.stats = {**worker.metrics(), **self.stats, "workers": self.workers}
            settled = True
        finally:
            for w in workers:  # stopping builds what is due: given the time left when all went well
                w.stop(timeout_s=max(30.0, deadline - time.monotonic()) if settled else 30.0)
            delete_topics(k, worker_topics(s))
        self.client = connect(s.redis)
        self.reader = RecommendationReader(self.client, RedisKeys(s.key_prefix))

    def _metric(self, name: str) -> float:
        s = self.settings
        client = connect(s.redis)
        return float(client.hget(RedisKeys(s.key_prefix).metrics, name) or 0)

    def _intent_idle(self) -> bool:
        s = self.settings
        return not intent_backlog(connect(s.redis), RedisKeys(s.key_prefix))

    def _member(self, i: int) -> Settings:
        """Worker i's settings: with several workers each is a static member of the group."""
        s = self.settings
        if self.workers == 1:
            return s
        return s.model_copy(update={"worker": s.worker.model_copy(update={"instance_id": f"{s.worker.app_id}-{i}"})})

    @staticmethod
    def _wait(workers: list[WorkerProcess], check, deadline: float, what: str) -> None:
        while not check():
            dead = [w for w in workers if not w.alive()]
            if time.monotonic() > deadline or dead:
                raise RuntimeError(f"the worker did not {what}:\n{(dead or workers)[0].log_tail()}")
            time.sleep(0.5)

    def _simulator(self):
        from offline.replay import FeedbackSimulator

        s = self.settings
        client = connect(s.redis)
        return FeedbackSimulator(EventProducer.from_settings(s, s.kafka.feedback_topic), client, RedisKeys(s.key_prefix),
                                 s.feedback.window_s, s.feedback.impression_every)

    def rank(self, case: UserCase, n: int) -> list[str]:
        recs = self.reader.get_recommendations(self.prefix + case.user_id)
        self._count_served(case, recs)
        if recs is None or recs.fallback_reason is FallbackReason.unknown_user:
            return []
        return [item.item_id for item in recs.items]

    def _count_served(self, case: UserCase, recs: Recommendations | None) -> None:
        """What the scored lists were made of (`stats["served"]`): lists by fallback reason
        ("none": every route ran), and per route the items of the top SERVED_K (the user's
        bought items out, as the `all` list is scored) and the test hits among them."""
        served = self.stats.setdefault("served", {"k": SERVED_K, "lists": {}, "items": {}, "hits": {}})
        reason = "missing" if recs is None else (recs.fallback_reason.value if recs.fallback_reason else "none")
        served["lists"][reason] = served["lists"].get(reason, 0) + 1
        top = [item for item in (recs.items if recs else []) if item.item_id not in case.bought][:SERVED_K]
        for item in top:
            served["items"][item.route] = served["items"].get(item.route, 0) + 1
            if item.item_id in case.targets:
                served["hits"][item.route] = served["hits"].get(item.route, 0) + 1

    def close(self) -> None:
        """Remove this run's Redis keys (recommendations, metrics, the item model)."""
        delete_matching(self.client, f"{self.prefix}*")
