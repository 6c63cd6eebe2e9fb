"""The embedded Apache Kafka broker: fetch its jars with Maven, format KRaft storage once, run it.

Jars come from Maven Central (`org.apache.kafka:kafka_2.13`, see `infra/kafka/pom.xml`) into
`{cache_dir}/kafka-{version}/libs`; the broker's data lives in `{state_dir}/kafka`. Everything is
idempotent: a second `start` finds the running broker and returns.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from pathlib import Path

from contracts.settings import Settings
from infra.errors import MissingTool, ServiceError
from infra.process import port_open, read_pid, stop_pid, wait_until

CONFIG_DIR = Path(__file__).resolve().parent / "kafka"


class EmbeddedKafka:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.kafka
        self.home = settings.state_dir / "kafka"
        self.log_dir = self.home / "data"
        self.pid_file = self.home / "kafka.pid"
        self.log_file = self.home / "logs" / "server.log"
        self.libs = settings.cache_dir / f"kafka-{self.cfg.version}" / "libs"

    # -- set-up ---------------------------------------------------------------------------
    def fetch_jars(self) -> Path:
        """Download the broker's runtime classpath once per Kafka version."""
        marker = self.libs / ".complete"
        if marker.exists():
            return self.libs
        if shutil.which("mvn") is None:
            raise MissingTool("mvn", "install Maven (Debian: apt-get install maven)")
        self.libs.mkdir(parents=True, exist_ok=True)
        cmd = [
            "mvn", "-q", "-B", "-f", str(CONFIG_DIR / "pom.xml"),
            f"-Dmaven.repo.local={self.settings.cache_dir / 'm2'}",
            f"-Dkafka.version={self.cfg.version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={self.libs}", "-DincludeScope=runtime",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ServiceError(
                f"mvn could not fetch Kafka {self.cfg.version}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}",
                retryable=True,
            )
        marker.touch()
        return self.libs

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise MissingTool("java", "install Java 17 (Debian: apt-get install openjdk-17-jre-headless)")
        return java

    def _write_config(self) -> Path:
        template = (CONFIG_DIR / "server.properties").read_text()
        text = template.format(
            host=self.cfg.host,
            port=self.cfg.port,
            controller_port=self.cfg.controller_port,
            log_dir=self.log_dir,
            partitions=self.cfg.partitions,
        )
        path = self.home / "server.properties"
        path.write_text(text)
        return path

    def _java_cmd(self, main: str, *args: str) -> list[str]:
        return [
            self._java(),
            f"-Xmx{self.cfg.heap}", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{CONFIG_DIR / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self.log_file.parent}",
            "-cp", f"{self.libs}/*", main, *args,
        ]

    def _format_storage(self, config: Path) -> None:
        if (self.log_dir / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        result = subprocess.run(
            self._java_cmd("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise ServiceError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")

    # -- lifecycle ------------------------------------------------------------------------
    def running(self) -> bool:
        return read_pid(self.pid_file) is not None

    def healthy(self) -> bool:
        return port_open(self.cfg.host, self.cfg.port) and self._metadata_ok()

    def _metadata_ok(self) -> bool:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.cfg.bootstrap, request_timeout_ms=3000)
        except (KafkaError, OSError, ValueError):
            return False
        try:
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()

    def start(self) -> str:
        """Start the broker unless it runs; return what was done."""
        if self.running() and self.healthy():
            return "already running"
        if not self.running() and port_open(self.cfg.host, self.cfg.port):
            if self.healthy():
                return f"a Kafka broker already listens on {self.cfg.bootstrap}; using it"
            raise ServiceError(f"port {self.cfg.port} is taken by something that is not Kafka")
        self.fetch_jars()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self._format_storage(config)
        if not self.running():
            with open(self.home / "logs" / "stdout.log", "ab") as out:
                proc = subprocess.Popen(
                    self._java_cmd("kafka.Kafka", str(config)),
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            self.pid_file.write_text(str(proc.pid))
        wait_until(self.healthy, self.settings.services.start_timeout_s, "Kafka", self.log_file)
        return f"started on {self.cfg.bootstrap}"

    def stop(self) -> bool:
        return stop_pid(self.pid_file, timeout_s=60)
