"""`intentstream up / down / status`: the embedded Kafka, Redis and the Feast registry together."""

from __future__ import annotations

from dataclasses import dataclass

from contracts.settings import Settings
from features import feast_store
from infra.broker import EmbeddedKafka
from infra.redis_server import EmbeddedRedis


@dataclass
class ServiceStatus:
    name: str
    healthy: bool
    detail: str


def up(settings: Settings) -> list[ServiceStatus]:
    """Start Redis and Kafka unless they run, then `feast apply`. Safe to call again."""
    redis_detail = EmbeddedRedis(settings).start()
    kafka_detail = EmbeddedKafka(settings).start()
    feast_detail = feast_store.apply(settings)
    return [
        ServiceStatus("redis", True, redis_detail),
        ServiceStatus("kafka", True, kafka_detail),
        ServiceStatus("feast", True, feast_detail),
    ]


def down(settings: Settings) -> list[ServiceStatus]:
    """Stop the services `up` started (data stays in the state dir)."""
    kafka_stopped = EmbeddedKafka(settings).stop()
    redis_stopped = EmbeddedRedis(settings).stop()
    return [
        ServiceStatus("kafka", False, "stopped" if kafka_stopped else "was not running"),
        ServiceStatus("redis", False, "stopped" if redis_stopped else "was not running"),
    ]


def status(settings: Settings) -> list[ServiceStatus]:
    kafka, redis = EmbeddedKafka(settings), EmbeddedRedis(settings)
    kafka_ok, redis_ok = kafka.healthy(), redis.healthy()
    return [
        ServiceStatus("redis", redis_ok, f"{settings.redis.host}:{settings.redis.port}"
                      + ("" if redis_ok else " (down)")),
        ServiceStatus("kafka", kafka_ok, settings.kafka.bootstrap + ("" if kafka_ok else " (down)")),
        ServiceStatus("feast", feast_store.is_applied(settings),
                      f"project {settings.feast.project}, registry {settings.feast_registry_path}"),
    ]
