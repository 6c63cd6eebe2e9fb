"""The embedded Apache Kafka broker: fetch its jars with Maven, format KRaft storage once, run it.

Jars come from Maven Central (`org.apache.kafka:kafka_2.13`, see `infra/kafka/pom.xml`) into
`{cache_dir}/kafka-{version}/libs`; the broker's data lives in `{state_dir}/kafka`. Everything is
idempotent: a second `start` finds the running broker and returns.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from contracts.settings import Settings
from infra.errors import MissingTool, ServiceError
from infra.process import port_open, read_pid, stop_pid, wait_until
from infra.tls import dev_certificates, tls_dir

CONFIG_DIR = Path(__file__).resolve().parent / "kafka"


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding, never starting with
    "-" (as Kafka's own `Uuid.randomUuid`): kafka-storage's argument parser reads such an id as an
    option ("argument --cluster-id/-t: expected one argument"), one format in 64 before this rule.

    >>> ids = [new_cluster_id() for _ in range(2000)]
    >>> all(len(i) == 22 and not i.startswith("-") for i in ids)
    True
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


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

    def _security(self) -> str:
        """The broker's SASL/SCRAM and TLS properties for kafka.security_protocol (empty for
        PLAINTEXT). The broker authenticates to its own listener as kafka.username."""
        k = self.cfg
        lines = []
        if k.sasl:
            if not k.username or k.password is None:
                raise ServiceError(f"kafka.security_protocol {k.security_protocol} needs kafka.username and kafka.password")
            jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{k.username}" '
                    f'password="{k.password.get_secret_value()}";')
            lines += [f"sasl.enabled.mechanisms={k.sasl_mechanism}",
                      f"sasl.mechanism.inter.broker.protocol={k.sasl_mechanism}",
                      f"listener.name.{k.security_protocol.lower()}.{k.sasl_mechanism.lower()}.sasl.jaas.config={jaas}"]
        if k.tls:
            tls = dev_certificates(tls_dir(self.settings))
            lines += ["ssl.keystore.type=PEM", f"ssl.keystore.location={tls.keystore}",
                      "ssl.truststore.type=PEM", f"ssl.truststore.location={tls.ca}"]
        return "\n".join(lines)

    def _write_config(self) -> Path:
        template = (CONFIG_DIR / "server.properties").read_text()
        text = template.format(
            host=self.cfg.host,
            port=self.cfg.port,
            controller_port=self.cfg.controller_port,
            log_dir=self.log_dir,
            partitions=self.cfg.partitions,
            protocol=self.cfg.security_protocol,
            security=self._security(),
        )
        path = self.home / "server.properties"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold the SCRAM password
        with os.fdopen(fd, "w") as f:
            f.write(text)
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
        scram = []
        if self.cfg.sasl:  # KRaft stores SCRAM users in its metadata: they are created with it
            scram = ["--add-scram", f"{self.cfg.sasl_mechanism}=[name={self.cfg.username},"
                                    f"password={self.cfg.password.get_secret_value()}]"]
        result = subprocess.run(
            self._java_cmd("kafka.tools.StorageTool", "format", f"--cluster-id={new_cluster_id()}",
                           "-c", str(config), *scram),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise ServiceError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")
        if scram:
            (self.home / "scram-user").write_text(f"{self.cfg.sasl_mechanism} {self.cfg.username}\n")

    def _check_scram_user(self) -> None:
        """Storage formatted without this SCRAM user (e.g. first run on PLAINTEXT) cannot admit it."""
        if not self.cfg.sasl:
            return
        marker = self.home / "scram-user"
        wanted = f"{self.cfg.sasl_mechanism} {self.cfg.username}"
        have = marker.read_text().strip() if marker.exists() else None
        if have != wanted:
            raise ServiceError(f"the broker's storage at {self.log_dir} was formatted "
                               f"{'with SCRAM user ' + repr(have) if have else 'without SCRAM users'}, not {wanted!r}: "
                               "use another state_dir for the secured broker (or remove that one's kafka/ folder)")

    # -- lifecycle ------------------------------------------------------------------------
    def running(self) -> bool:
        return read_pid(self.pid_file) is not None

    def healthy(self) -> bool:
        return port_open(self.cfg.host, self.cfg.port) and self._metadata_ok()

    def _metadata_ok(self) -> bool:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(**self.cfg.client_options(), request_timeout_ms=3000)
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
        self._check_scram_user()
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
