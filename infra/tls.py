"""TLS certificates of the embedded services: a self-signed CA and one server certificate for
127.0.0.1 and localhost, made with the `openssl` CLI when missing (for running and testing TLS
locally; in production put the real ca.pem, server.pem and server.key in services.tls_dir).

Kafka reads them as PEM key stores (`ssl.keystore.type=PEM`), Redis as its --tls-* files, and
clients verify the servers with ca.pem (kafka.ssl_cafile, redis.ssl_ca_certs).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

from contracts.settings import Settings
from infra.errors import MissingTool, ServiceError


class TLSFiles(NamedTuple):
    ca: Path
    """The CA certificate clients trust."""
    cert: Path
    """The server certificate (signed by the CA; SAN 127.0.0.1, ::1, localhost)."""
    key: Path
    """The server's private key (PKCS#8, unencrypted, mode 0600)."""
    keystore: Path
    """key + cert in one PEM file (what Kafka's PEM key store reads)."""


def tls_dir(settings: Settings) -> Path:
    return (settings.services.tls_dir or settings.state_dir / "tls").expanduser()


def dev_certificates(directory: Path, days: int = 825) -> TLSFiles:
    """The certificates in `directory`, created there first when missing."""
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                     directory / "server-keystore.pem")
    if all(f.exists() for f in files):
        return files
    if shutil.which("openssl") is None:
        raise MissingTool("openssl", "install it (Debian: apt-get install openssl) or put ca.pem, server.pem "
                                     f"and server.key in {directory}")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = directory / "ca.key"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    steps = [
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(files.ca),
         "-days", str(days), "-subj", "/CN=intentstream local CA"],
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(files.key), "-out", str(directory / "server.csr"),
         "-subj", "/CN=localhost"],
        ["openssl", "x509", "-req", "-in", str(directory / "server.csr"), "-CA", str(files.ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(files.cert), "-days", str(days), "-extfile", str(ext)],
    ]
    for cmd in steps:
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ServiceError(f"{' '.join(cmd[:2])} failed:\n{result.stderr[-2000:]}")
    for secret in (ca_key, files.key):
        secret.chmod(0o600)
    files.keystore.write_text(files.key.read_text() + files.cert.read_text())
    files.keystore.chmod(0o600)
    return files
