"""Kafka with SASL/SCRAM over TLS and Redis with TLS and an ACL user per role, both on, started by
the same code as `intentstream up` on ports and a state dir of their own: the whole stream path
works with each process on its role's credentials (events -> worker -> Feast -> recs read by the
shop's `reader`), and everything without the right credentials is refused: no password, a wrong
one, plaintext to a TLS port, a reader that writes, a worker that repoints the model registry.
Nothing in the worker's log or `intentstream settings` shows a password."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time

import orjson
import pytest
import redis
from kafka import KafkaAdminClient
from kafka.errors import KafkaError, NoBrokersAvailable
from pydantic import SecretStr

from contracts.keys import RedisKeys
from contracts.recs import Recommendations
from contracts.settings import Settings
from features import feast_store
from features.feast_store import FeastFeatures
from features.redis_client import connect
from infra.broker import EmbeddedKafka
from infra.redis_acl import write_acl
from infra.redis_server import EmbeddedRedis
from infra.tls import dev_certificates
from infra.worker_process import WorkerProcess, settings_env
from stream.producer import EventProducer
from tests.integration.kafka_io import wait_for

pytestmark = pytest.mark.integration
USERS, EVENTS = 20, 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as(settings: Settings, role: str, passwords: dict[str, str]) -> Settings:
    return settings.model_copy(update={"redis": settings.redis.model_copy(
        update={"username": role, "password": SecretStr(passwords[role])})})


@pytest.fixture
def secured(base_settings: Settings, tmp_path):
    state = tmp_path / "state"
    tls = dev_certificates(state / "tls")
    kafka_password = secrets.token_urlsafe(16)
    base = base_settings.model_copy(update={
        "state_dir": state,
        "key_prefix": "sec:",
        "kafka": base_settings.kafka.model_copy(update={
            "port": _free_port(), "controller_port": _free_port(), "security_protocol": "SASL_SSL",
            "username": "intentstream", "password": SecretStr(kafka_password), "ssl_cafile": tls.ca}),
        "redis": base_settings.redis.model_copy(update={"port": _free_port(), "tls": True, "ssl_ca_certs": tls.ca}),
        "services": base_settings.services.model_copy(update={
            "redis_acl_file": state / "acl" / "users.acl", "tls_dir": state / "tls"}),
    }).isolated("secured-test", key_prefix="sec:")
    passwords = write_acl(state / "acl", base.key_prefix, base.feast.project)
    admin = _as(base, "admin", passwords)
    redis_server, kafka_server = EmbeddedRedis(admin), EmbeddedKafka(admin)
    try:
        redis_server.start()
        kafka_server.start()
        feast_store.apply(admin)
        yield base, passwords, kafka_password
    finally:
        kafka_server.stop()
        redis_server.stop()


def test_stream_path_runs_on_role_credentials_and_nothing_else_gets_in(secured, tmp_path):
    base, passwords, kafka_password = secured
    worker_settings = _as(base, "worker", passwords)
    keys = RedisKeys(base.key_prefix)
    r = base.redis

    # -- refused: no credentials, a wrong password, plaintext to the TLS port ----------------
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=r.host, port=r.port, ssl=True, ssl_ca_certs=str(r.ssl_ca_certs), socket_timeout=2).get("x")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=r.host, port=r.port, ssl=True, ssl_ca_certs=str(r.ssl_ca_certs), username="worker",
                    password="wrong", socket_timeout=2).ping()
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host=r.host, port=r.port, username="admin", password=passwords["admin"], socket_timeout=2,
                    retry_on_timeout=False).ping()
    k = base.kafka
    for options in ({"security_protocol": "SSL", "ssl_cafile": str(k.ssl_cafile)},  # TLS, no SASL
                    {**k.client_options(), "sasl_plain_password": "wrong"}):
        with pytest.raises((KafkaError, NoBrokersAvailable, OSError)):
            admin = KafkaAdminClient(**{**k.client_options(), **options}, request_timeout_ms=5000,
                                     api_version_auto_timeout_ms=5000)
            admin.list_topics()
    plaintext = k.model_copy(update={"security_protocol": "PLAINTEXT"})
    with pytest.raises((KafkaError, NoBrokersAvailable, OSError)):
        KafkaAdminClient(**plaintext.client_options(), request_timeout_ms=5000, api_version_auto_timeout_ms=5000)

    # -- the stream path, every process on its role -------------------------------------------
    worker = WorkerProcess(worker_settings, tmp_path / "worker.log")
    worker.start()
    try:
        worker.wait_ready()
        now = int(time.time() * 1000)
        users = [f"sec-u{n}" for n in range(USERS)]
        with EventProducer.from_settings(worker_settings) as producer:
            for i in range(EVENTS):
                user = users[i % USERS]
                producer.send_raw(user.encode(), orjson.dumps({
                    "event_id": f"e{i}", "user_id": user, "item_id": f"item-{(i * 7) % 53}",
                    "type": "purchase" if i % 9 == 0 else "view", "ts": now + i,
                    "context": {"category": f"cat.{i % 5}", "brand": "acme"}}))
        wait_for(lambda: worker.processed() >= EVENTS, 120, "the worker to consume every event", worker.log_tail)
        counts = {u: EVENTS // USERS for u in users}
        features = FeastFeatures(_as(base, "reasoner", passwords))  # the reasoner's read-only view of Feast
        wait_for(lambda: {x["user_id"]: x["event_count"] for x in features.read_users(users, ["event_count"])} == counts,
                 60, "Feast to count every event once", worker.log_tail)

        reader = connect(_as(base, "reader", passwords).redis)
        wait_for(lambda: all(reader.mget([keys.recs(u) for u in users])), 60, "recs of every user", worker.log_tail)
        for raw in reader.mget([keys.recs(u) for u in users]):
            Recommendations.model_validate_json(raw)
        assert reader.xlen(keys.updates) > 0
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.set(keys.recs(users[0]), b"{}")  # the shop reads, never writes
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.hgetall(keys.metrics)
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.config_get("*")

        worker_client = connect(worker_settings.redis)
        serving = keys.registry("intent").serving
        assert worker_client.get(serving) is None  # may read the registry ...
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker_client.set(serving, orjson.dumps({"version": "v9", "path": "/tmp/evil"}))  # ... not point it
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker_client.flushall()
        trainer = connect(_as(base, "trainer", passwords).redis)
        trainer.set(keys.model_sequence, 1)  # the trainer owns the registry
        assert worker.alive()
    finally:
        worker.stop()

    # -- secrets stay secret -------------------------------------------------------------------
    log = (tmp_path / "worker.log").read_text(errors="replace")
    shown = subprocess.run([sys.executable, "-m", "intentstream.cli", "settings"], capture_output=True, text=True,
                           env={**settings_env(worker_settings), "PATH": "/usr/bin:/bin"}).stdout
    for secret in (kafka_password, *passwords.values()):
        assert secret not in log and secret not in shown
    assert "INTENTSTREAM_REDIS__PASSWORD" in shown
