"""The embedded Redis server (Debian's `redis-server`), run with `infra/redis/redis.conf`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import redis

from contracts.settings import Settings
from infra.errors import MissingTool, ServiceError
from infra.process import port_open, read_pid, stop_pid, wait_until
from infra.tls import dev_certificates, tls_dir

CONFIG = Path(__file__).resolve().parent / "redis" / "redis.conf"


def ensure_redis_server(allow_install: bool) -> str:
    """Path of redis-server; installs Debian's package when missing and allowed."""
    path = shutil.which("redis-server")
    if path:
        return path
    if allow_install and shutil.which("apt-get") and os.geteuid() == 0:
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
            result = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            )
            if result.returncode != 0:
                raise ServiceError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}", retryable=True)
        path = shutil.which("redis-server")
        if path:
            return path
    raise MissingTool("redis-server", "install it (Debian: apt-get install redis-server)")


class EmbeddedRedis:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.redis
        self.home = settings.state_dir / "redis"
        self.pid_file = self.home / "redis.pid"
        self.log_file = self.home / "redis.log"

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.cfg.host, port=self.cfg.port, db=self.cfg.db, socket_timeout=2,
                           **self.cfg.client_options())

    def healthy(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def running(self) -> bool:
        return read_pid(self.pid_file) is not None

    def start(self) -> str:
        if self.healthy():
            return "already running" if self.running() else f"a Redis already answers on port {self.cfg.port}; using it"
        if port_open(self.cfg.host, self.cfg.port):
            raise ServiceError(f"port {self.cfg.port} is taken by something that is not Redis")
        binary = ensure_redis_server(self.settings.services.install_system_packages)
        self.home.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [binary, str(CONFIG), "--dir", str(self.home), "--pidfile", str(self.pid_file),
             "--logfile", str(self.log_file), *self._listen_args()],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise ServiceError(f"redis-server failed to start:\n{result.stdout}{result.stderr}")
        wait_until(self.healthy, self.settings.services.start_timeout_s, "Redis", self.log_file)
        return f"started on {self.cfg.host}:{self.cfg.port}"

    def _listen_args(self) -> list[str]:
        """Port, TLS (only: the plain port is closed) and the ACL file, from the settings."""
        services = self.settings.services
        args = ["--port", str(self.cfg.port)]
        if self.cfg.tls:
            tls = dev_certificates(tls_dir(self.settings))
            args = ["--port", "0", "--tls-port", str(self.cfg.port), "--tls-cert-file", str(tls.cert),
                    "--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "no"]
        if services.redis_acl_file is not None:
            if not services.redis_acl_file.exists():
                raise ServiceError(f"no ACL file at {services.redis_acl_file}: write one with `intentstream acl`")
            args += ["--aclfile", str(services.redis_acl_file.resolve())]
        return args

    def stop(self) -> bool:
        return stop_pid(self.pid_file)
