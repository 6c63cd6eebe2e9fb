"""The sequential route in a running worker (real Kafka, Redis, Feast, onnxruntime, faiss): a
SASRec model trained and exported here is promoted in the sequential registry; the worker merges
its items (route `sequential`) into the refreshed lists; a second promoted version and a rollback
reach the running worker without a restart (its pid unchanged)."""

from __future__ import annotations

import time

import orjson
import redis

from contracts.keys import RedisKeys
from contracts.recs import Recommendations
from reasoning.registry import ModelRegistry
from reasoning.sequential import SequentialShape, export
from stream.producer import EventProducer
from tests.integration.kafka_io import wait_for
from tests.unit.test_sequential import cyclic_log
from training.sequential import SequentialConfig, train_sequential


def test_worker_serves_promoted_sequential_versions_and_rolls_back(scoped, worker_factory, tmp_path):
    shape = SequentialShape(hidden=16, maxlen=10)
    trained = train_sequential(cyclic_log(), cfg=SequentialConfig(shape=shape, batch_size=16, max_epochs=15,
                                                                  patience=15, threads=1))
    dirs = {}
    for version in ("seq-a", "seq-b"):
        dirs[version] = export(trained.model, trained.item_ids, shape, tmp_path / version,
                               {"version": version, "merge_weight": 1.0})
    settings = scoped.model_copy(update={
        "sequential": scoped.sequential.model_copy(update={"enabled": True, "registry_poll_s": 0.5,
                                                            "model_dir": tmp_path / "none"}),
        # The registry serves only its versions directory: the worker's is where the test puts them.
        "trainer": scoped.trainer.model_copy(update={"versions_dir": tmp_path})})
    client = redis.Redis(host=settings.redis.host, port=settings.redis.port, db=settings.redis.db)
    keys = RedisKeys(settings.key_prefix)
    registry = ModelRegistry(client, keys, tmp_path, kind="sequential")
    registry.promote("seq-a", dirs["seq-a"])
    worker = worker_factory(settings)
    worker.wait_ready()
    pid = worker.proc.pid
    user = f"{settings.key_prefix}walker"
    sent = 0

    def walk(n: int) -> None:  # the user walks the catalog i0, i1, ... (what the model learned)
        nonlocal sent
        with EventProducer.from_settings(settings) as producer:
            for _ in range(n):
                producer.send_raw(user.encode(), orjson.dumps({
                    "event_id": f"w{sent}", "user_id": user, "item_id": f"i{sent % 30}",
                    "type": "purchase", "ts": int(time.time() * 1000)}))
                sent += 1
                time.sleep(0.6)  # past the debounce: every purchase refreshes

    def served() -> Recommendations | None:
        raw = client.get(keys.recs(user))
        return Recommendations.model_validate_json(raw) if raw else None

    def serving(version: str):
        def check() -> bool:
            recs = served()
            return recs is not None and recs.state_version == sent and recs.model_version.endswith(f"+{version}")
        return check

    walk(4)
    wait_for(serving("seq-a"), 30, "recs merged with seq-a", lambda: worker.log_tail(30))
    recs = served()
    routes = {item.route for item in recs.items}
    assert "sequential" in routes, routes
    # The model learned "next is +1": the next item of the walk is in the list, from the route.
    nxt = next(item for item in recs.items if item.item_id == f"i{sent % 30}")
    assert nxt.route in {"sequential", "covisit"}
    assert all(item.item_id not in {f"i{n}" for n in range(sent)} for item in recs.items)  # bought: never shown

    registry.promote("seq-b", dirs["seq-b"])
    walk(2)
    wait_for(serving("seq-b"), 30, "recs merged with the promoted seq-b", lambda: worker.log_tail(30))
    registry.rollback()
    walk(2)
    wait_for(serving("seq-a"), 30, "recs merged with seq-a after the rollback", lambda: worker.log_tail(30))
    assert worker.alive() and worker.proc.pid == pid
