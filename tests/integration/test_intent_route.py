"""The intent route for real: the worker with a trained checkpoint, and the OpenAI-compatible
backend against `transformers serve` hosting the same checkpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from contracts.keys import RedisKeys
from contracts.recs import Recommendations
from features.feast_store import FeastFeatures
from offline import datasets
from offline.replay import replay
from stream.producer import EventProducer
from tests.integration.kafka_io import wait_for

pytestmark = pytest.mark.integration


def test_worker_serves_merged_intent_recommendations_and_pushes_the_context(
        scoped, worker_factory, tiny_intent_model: Path, data_dir: Path) -> None:
    settings = scoped.model_copy(update={"intent": scoped.intent.model_copy(
        update={"enabled": True, "model_dir": tiny_intent_model, "batch_size": 16})})
    data = datasets.load("rees46", data_dir).head(1500)
    prefix = settings.key_prefix  # namespaces user ids in the shared Feast project
    worker = worker_factory(settings)
    with EventProducer.from_settings(settings) as producer:
        replay(data, producer, user_prefix=prefix)
    wait_for(lambda: worker.processed() >= len(data.events), 180, "the worker to process the slice", worker.log_tail)
    client = redis.Redis(host=settings.redis.host, port=settings.redis.port, db=settings.redis.db)
    keys = RedisKeys(settings.key_prefix)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        backlog = client.hget(keys.metrics, "intent_backlog")
        users = int(client.hget(keys.metrics, "intent_users") or 0)
        if backlog is not None and int(backlog) == 0 and users:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the intent route did not finish:\n{worker.log_tail()}")

    users = [prefix + u for u in data.events.user_id.unique()]
    served = [Recommendations.model_validate_json(raw) for raw in client.mget([keys.recs(u) for u in users]) if raw]
    merged = [r for r in served if r.fallback_reason is None and "+" in r.model_version]
    assert merged, {r.fallback_reason for r in served}
    assert all(r.fallback_reason in (None, "intent_timeout", "intent_queue_full") for r in served)
    purchases = data.events[data.events.type == "purchase"]
    bought = purchases.assign(user_id=prefix + purchases.user_id).groupby("user_id").item_id.agg(set).to_dict()
    with_intent = [r for r in merged if any(i.route == "intent" for i in r.items)]
    assert with_intent, "no merged list holds an intent item"
    for r in merged:
        assert r.intents and all(i.tags for i in r.intents)
        assert not bought.get(r.user_id, set()) & {i.item_id for i in r.items}
        for item in r.items:
            if item.route == "intent":
                assert item.tag and item.explanation
    contexts = FeastFeatures(settings).read_contexts([r.user_id for r in merged[:5]])
    for row, r in zip(contexts, merged[:5]):
        assert row["context_items"] and row["model_version"] == r.model_version.split("+", 1)[1]
        assert row["context_mode"] == "hybrid" and row["embedder"].startswith("all-MiniLM-L6-v2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def transformers_server(tiny_intent_model: Path, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    exe = Path(sys.executable).with_name("transformers")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "serve", str(tiny_intent_model), "--port", str(port), "--device", "cpu"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    else:
        proc.kill()
        pytest.fail(f"transformers serve did not come up:\n{log.read_text()[-3000:]}")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def test_openai_backend_against_transformers_serve(transformers_server: str, tiny_intent_model: Path,
                                                   base_settings) -> None:
    from reasoning.engine import IntentEngine
    from reasoning.pipeline import IntentInput, reason

    cfg = base_settings.intent.model_copy(update={"backend": "openai", "openai_url": transformers_server,
                                                  "personas": 2, "tags_per_persona": 3, "final_tags": 6,
                                                  "llm_explanations": 2})
    engine = IntentEngine(tiny_intent_model, cfg, base_settings.cache_dir)
    items = sorted(engine.catalog.items)[:10]
    users = [IntentInput(f"u{u}", [[items[u + j], "view", 1_570_000_000_000] for j in range(4)], frozenset())
             for u in range(3)]
    results, stats = reason(engine, users, {}, 20)
    vocab = engine.model.vocab
    assert stats.tokens > 0  # the server's usage was counted
    for result in results:
        assert all(i["persona"] in vocab.personas for i in result.intents)
        assert set(result.tags) <= set(vocab.tags)  # whatever the server says, nothing invented
        assert all(e["tag"] in result.tags for e in result.items)
    # The first two intent items of each user asked the server for an explanation; the gate
    # decided which to serve (a tiny model mostly writes text that names nothing grounded).
    assert engine.explainer.llm_attempts >= 2
    assert all(e["explanation"] for result in results for e in result.items)
    # The server really answered, in the checkpoint's own format: personas came back from it.
    assert engine.backend.answers > 0
    assert any(result.intents and result.intents[0]["tags"] for result in results)


def test_openai_backend_reports_a_down_server_as_retryable(tiny_intent_model: Path, base_settings) -> None:
    from reasoning.engine import IntentEngine
    from reasoning.errors import BackendError
    from reasoning.pipeline import IntentInput, reason

    cfg = base_settings.intent.model_copy(update={"backend": "openai", "openai_url": f"http://127.0.0.1:{_free_port()}"})
    engine = IntentEngine(tiny_intent_model, cfg, base_settings.cache_dir)
    item = sorted(engine.catalog.items)[0]
    with pytest.raises(BackendError) as info:
        reason(engine, [IntentInput("u", [[item, "view", 0]], frozenset())], {}, 10)
    assert info.value.retryable


def test_a_hung_intent_child_is_replaced_and_its_users_fall_back(
        scoped, worker_factory, tiny_intent_model: Path, data_dir: Path) -> None:
    # A batch timeout far below what a batch takes: every batch counts as hung, so every child is
    # killed and replaced; the stream must go on and every queued user must get its fallback.
    settings = scoped.model_copy(update={"intent": scoped.intent.model_copy(
        update={"enabled": True, "model_dir": tiny_intent_model, "batch_size": 16, "batch_timeout_s": 0.05})})
    data = datasets.load("rees46", data_dir).head(600)
    prefix = settings.key_prefix
    worker = worker_factory(settings)
    pid = worker.proc.pid
    with EventProducer.from_settings(settings) as producer:
        replay(data, producer, user_prefix=prefix)
    wait_for(lambda: worker.processed() >= len(data.events), 180, "the worker to process the slice", worker.log_tail)
    client = redis.Redis(host=settings.redis.host, port=settings.redis.port, db=settings.redis.db)
    keys = RedisKeys(settings.key_prefix)
    wait_for(lambda: int(client.hget(keys.metrics, "intent_errors") or 0) >= 2, 60,
             "two hung batches to be abandoned", worker.log_tail)
    users = [prefix + u for u in data.events.user_id.unique()]

    def timed_out() -> list[Recommendations]:
        served = [Recommendations.model_validate_json(raw) for raw in client.mget([keys.recs(u) for u in users]) if raw]
        return [r for r in served if r.fallback_reason == "intent_timeout"]

    wait_for(lambda: len(timed_out()) > 0, 60, "users of an abandoned batch to get intent_timeout", worker.log_tail)
    assert all(r.items for r in timed_out())  # the behavioural list still serves them
    assert worker.alive() and worker.proc.pid == pid, worker.log_tail()
