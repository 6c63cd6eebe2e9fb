"""The system itself as a method: the train events go through the real pipeline (Kafka → worker
→ Feast/Redis), and what Redis serves at the end of the train period is scored.

It runs on fresh topics, a fresh consumer group and a fresh Redis/Feast namespace, with the
same worker code and settings that serve users (only the names differ).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import redis

from evaluation.splits import Split, UserCase
from intentstream.settings import Settings
from intentstream.worker_process import WorkerProcess
from stream.datasets import Dataset
from stream.keys import RedisKeys
from stream.producer import EventProducer, delete_topics, ensure_topics
from stream.reader import RecommendationReader
from stream.replay import replay
from stream.topics import worker_topics


class ReplayMethod:
    name = "replay"

    def __init__(self, settings: Settings, timeout_s: float = 1800) -> None:
        run = uuid.uuid4().hex[:8]
        self.prefix = f"eval-{run}:"
        self.settings = settings.isolated(f"intentstream.eval.{run}", key_prefix=self.prefix)
        self.timeout_s = timeout_s
        self.stats: dict = {}

    def fit(self, split: Split, catalog: Sequence[str]) -> None:
        s = self.settings
        k = s.kafka
        ensure_topics(k.bootstrap, [k.events_topic, k.dead_letter_topic], k.partitions)
        worker = WorkerProcess(s, s.state_dir / "logs" / f"{s.worker.app_id}.log")
        worker.start()
        try:
            train = Dataset("train", split.train, split.train[["item_id"]].drop_duplicates())
            with EventProducer.from_settings(s) as producer:
                sent, _ = replay(train, producer, user_prefix=self.prefix, id_prefix=self.prefix)
            deadline = time.monotonic() + self.timeout_s
            while worker.processed() < sent:
                if time.monotonic() > deadline or not worker.alive():
                    raise RuntimeError(f"the worker did not process the replay:\n{worker.log_tail()}")
                time.sleep(0.5)
            time.sleep(s.trigger.min_interval_s + 1.0)  # debounced refreshes come due
            self.stats = worker.metrics()
        finally:
            worker.stop()
            delete_topics(k.bootstrap, worker_topics(s))
        self.client = redis.Redis(host=s.redis.host, port=s.redis.port, db=s.redis.db)
        self.reader = RecommendationReader(self.client, RedisKeys(s.key_prefix))

    def rank(self, case: UserCase, n: int) -> list[str]:
        recs = self.reader.get_recommendations(self.prefix + case.user_id)
        if recs is None or recs.fallback_reason == "unknown_user":
            return []
        return [item.item_id for item in recs.items]

    def close(self) -> None:
        """Remove this run's Redis keys (recommendations, metrics, model checkpoint)."""
        for key in self.client.scan_iter(match=f"{self.prefix}*", count=1000):
            self.client.delete(key)
