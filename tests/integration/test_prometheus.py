"""Each process's Prometheus endpoint, scraped for real over HTTP and parsed with
prometheus-client's own text parser: a worker and a reasoner on a REES46 slice with poison mixed
in, and a trainer run. The figures agree with what the processes counted in Redis (one
`WorkerMetrics` feeds both), the latency histograms hold the per-stage samples, and names follow
Prometheus conventions."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from contracts.keys import RedisKeys
from offline import datasets
from offline.replay import replay
from stream.metrics import intent_backlog
from stream.producer import EventProducer
from tests.integration.kafka_io import wait_for

pytestmark = pytest.mark.integration
POISON = [b"not json", b'{"event_id": "x"}', b"[]"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """name -> {sorted label items: value} of every sample the endpoint serves."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def one(samples: dict, name: str, **labels) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def test_worker_reasoner_and_trainer_endpoints(scoped, worker_factory, reasoner_factory, tiny_intent_model: Path,
                                               data_dir: Path, tmp_path: Path) -> None:
    from training.trainer import run_every

    ports = {name: _free_port() for name in ("worker", "reasoner", "trainer")}
    settings = scoped.model_copy(update={
        "intent": scoped.intent.model_copy(update={"enabled": True, "model_dir": tiny_intent_model, "batch_size": 16}),
        "metrics": scoped.metrics.model_copy(update={f"{name}_port": port for name, port in ports.items()}),
        "trainer": scoped.trainer.model_copy(update={"versions_dir": tmp_path / "versions"}),
    })
    data = datasets.load("rees46", data_dir).head(600)
    worker = worker_factory(settings)
    reasoner = reasoner_factory(settings)
    with EventProducer.from_settings(settings) as producer:
        replay(data, producer, user_prefix=settings.key_prefix)
        for raw in POISON:
            producer.send_raw(b"p", raw)
    sent = len(data.events) + len(POISON)
    wait_for(lambda: worker.processed() >= sent, 180, "the worker to process the slice", worker.log_tail)
    client = redis.Redis(host=settings.redis.host, port=settings.redis.port, db=settings.redis.db)
    keys = RedisKeys(settings.key_prefix)
    wait_for(lambda: intent_backlog(client, keys) == 0 and int(client.hget(keys.metrics, "intent_users") or 0) > 0,
             180, "the reasoner to handle every request", reasoner.log_tail)

    redis_view = worker.metrics()
    w = scrape(ports["worker"])
    assert one(w, "intentstream_events_valid_total") == redis_view["events_valid"] == len(data.events)
    assert one(w, "intentstream_events_dead_total") == redis_view["events_dead"] == len(POISON)
    assert one(w, "intentstream_batches_total") == redis_view["batches"] == one(w, "intentstream_batch_seconds_count")
    assert one(w, "intentstream_refreshes_total") == redis_view["refreshes"]
    assert one(w, "intentstream_recs_written_total") == redis_view["refreshes"]
    assert one(w, "intentstream_fallbacks_total", reason="intent_pending") == redis_view["intent_requested"] > 0
    for stage in ("feature_freshness", "recs_freshness"):  # event -> features, event -> recs
        count = one(w, f"intentstream_{stage}_seconds_count")
        assert count > 0 and one(w, f"intentstream_{stage}_seconds_bucket", le="+Inf") == count
    assert one(w, "intentstream_consumer_lag", topic=settings.kafka.events_topic) == 0  # drained
    assert one(w, "intentstream_time_fold_seconds_total") > 0  # a ms counter, in seconds

    r = scrape(ports["reasoner"])
    assert one(r, "intentstream_intent_users_total") == int(client.hget(keys.metrics, "intent_users"))
    assert one(r, "intentstream_reasoner_users_per_second") > 0
    version = next(dict(labels)["version"] for labels in r["intentstream_model_info"])
    assert one(r, "intentstream_model_info", kind="intent", version=version) == 1
    assert one(r, "intentstream_intent_freshness_seconds_count") > 0  # event -> intent recs
    assert (("topic", settings.kafka.intent_topic),) in r["intentstream_consumer_lag"]

    run_every(settings, period_s=0, runs=1)  # no feedback yet: the run waits, and says so
    t = scrape(ports["trainer"])
    assert one(t, "intentstream_trainer_runs_total", status="waiting") == 1
    assert one(t, "intentstream_trainer_promotions_total") == 0

    # The Grafana dashboard asks only for what the processes serve.
    import json
    import re

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "infra/grafana/dashboards/intentstream.json").read_text())
    asked = {m for panel in dashboard["panels"] for target in panel["targets"]
             for m in re.findall(r"\b((?:intentstream|process)_[a-z_]+)", target["expr"])}
    served = set(w) | set(r) | set(t)
    only_when_shedding = {"intentstream_intent_shed_total"}
    assert asked - served <= only_when_shedding, asked - served

    for samples in (w, r, t):  # conventions: counters end in _total, durations are in seconds
        for name in samples:
            assert name.startswith("intentstream_") or name.startswith(("python_", "process_")), name
            assert not name.endswith("_ms"), name
