"""Shared fixtures. Integration tests use the real Kafka, Redis and Feast, started once per session
by `services` (the same code as `intentstream up`); each test gets its own topics, consumer group
and Redis key prefix. Without the services a test skips with a how-to, unless
INTENTSTREAM_REQUIRE_SERVICES=1 (CI), where it fails."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.settings import Settings

HOW_TO = ("needs Kafka, Redis and Feast: run `make test` (or `intentstream up`), "
          "or set INTENTSTREAM_REQUIRE_SERVICES=1 to make this a failure")


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    base = Settings()
    # A Feast project of its own, so tests never touch the demo's online store keys; the intent
    # and sequential routes only where a test asks for them (with its own small model).
    # No Prometheus endpoints unless a test asks (tests/integration/test_prometheus.py): the
    # defaults would be taken by the first of many workers.
    return base.model_copy(update={"feast": base.feast.model_copy(update={"project": "intentstream_test"}),
                                   "intent": base.intent.model_copy(update={"enabled": False}),
                                   "sequential": base.sequential.model_copy(update={"enabled": False}),
                                   "metrics": base.metrics.model_copy(update={"worker_port": 0, "reasoner_port": 0,
                                                                              "trainer_port": 0})})


@pytest.fixture(scope="session")
def services(base_settings: Settings) -> Settings:
    from features.errors import FeatureStoreError
    from infra import services as svc
    from infra.errors import ServiceError

    try:
        svc.up(base_settings)
    except (ServiceError, FeatureStoreError, OSError) as exc:
        if base_settings.require_services:
            pytest.fail(f"services could not be started: {exc}")
        pytest.skip(f"{HOW_TO} ({exc})")
    return base_settings


@pytest.fixture
def scoped(services: Settings) -> Iterator[Settings]:
    """Settings with a fresh events topic, dead-letter topic, consumer group and key prefix;
    the test's topics and Redis keys are removed afterwards."""
    from contracts.topics import worker_topics
    from features.redis_client import connect, delete_matching
    from stream.producer import delete_topics

    run = uuid.uuid4().hex[:8]
    s = services.isolated(f"test-{run}", key_prefix=f"test:{run}:")
    s = s.model_copy(update={
        "worker": s.worker.model_copy(update={"session_timeout_s": 6.0, "popular_interval_s": 1.0}),
        "trigger": s.trigger.model_copy(update={"min_interval_s": 0.5}),
    })
    yield s
    delete_topics(s.kafka, worker_topics(s))
    delete_matching(connect(s.redis), f"{s.key_prefix}*")


@pytest.fixture
def worker_factory(scoped: Settings, tmp_path: Path) -> Iterator:
    from infra.worker_process import WorkerProcess

    started: list[WorkerProcess] = []

    def start(settings: Settings | None = None) -> WorkerProcess:
        w = WorkerProcess(settings or scoped, tmp_path / f"worker-{len(started)}.log")
        w.start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop(kill=True)


@pytest.fixture
def reasoner_factory(scoped: Settings, tmp_path: Path) -> Iterator:
    """Start `intentstream reasoner` processes (stream/reasoner_service.py); by default wait
    until the model is loaded. Killed at the end of the test."""
    from infra.worker_process import ReasonerProcess

    started: list[ReasonerProcess] = []

    def start(settings: Settings | None = None, wait: bool = True) -> ReasonerProcess:
        r = ReasonerProcess(settings or scoped, tmp_path / f"reasoner-{len(started)}.log")
        r.start()
        started.append(r)
        if wait:
            r.wait_ready()
        return r

    yield start
    for r in started:
        r.stop(kill=True)


@pytest.fixture(scope="session")
def data_dir(base_settings: Settings) -> Path:
    if not (base_settings.data_dir / "rees46-ecommerce-2019oct-head").exists():
        pytest.fail(f"the shared datasets are missing under {base_settings.data_dir}")
    return base_settings.data_dir


@pytest.fixture(scope="session")
def tiny_intent_model(base_settings: Settings, data_dir: Path, tmp_path_factory) -> Path:
    """An intent model trained in under a minute on the first 4,000 REES46 events (tiny LM):
    real tokenizer, LM, adaptor, MiniLM atoms and tags, not a useful recommender."""
    from offline import datasets
    from reasoning.intent_model import LMConfig
    from training.sft import SFTConfig, train_model

    data = datasets.load("rees46", data_dir).head(4000)
    out = tmp_path_factory.mktemp("intent") / "model"
    # Big enough to answer in its own format (a server hosting it says "electronics smartphone
    # shopper", not noise), small enough to train in well under a minute.
    cfg = SFTConfig(lm=LMConfig(hidden=48, layers=2, heads=2, intermediate=96, vocab_size=600),
                    lm_steps=200, adaptor_steps=20, episodes_per_user=4, batch_size=16)
    train_model(data, out, base_settings.cache_dir, cfg)
    return out


@pytest.fixture(scope="session")
def smollm2_intent_model(base_settings: Settings, data_dir: Path, tmp_path_factory) -> Path:
    """An intent model fine-tuned from SmolLM2-135M-Instruct (training/backbone.py) for 2 + 2
    steps on the first 1,500 REES46 events: the real pretrained weights with LoRA merged, its
    tokenizer and chat template, a fresh adaptor; the plumbing, not a useful recommender."""
    from offline import datasets
    from training.sft import SFTConfig, train_model

    data = datasets.load("rees46", data_dir).head(1500)
    out = tmp_path_factory.mktemp("intent-smollm2") / "model"
    cfg = SFTConfig.for_base("smollm2", lm_steps=2, adaptor_steps=2, episodes_per_user=2, batch_size=2,
                             intent_weight_users=0)  # the fit's code path is the tiny model's
    train_model(data, out, base_settings.cache_dir, cfg)
    return out
