"""Small process-control pieces shared by the embedded services: pid files, waiting, stopping."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from infra.errors import ServiceError


def read_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file` when that process is alive, else None. A child of this process that
    exited (a zombie until reaped: the broker started by a test's fixture) is reaped and dead."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return None
    except ChildProcessError:  # not our child: its parent reaps it
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, log_file: Path | None) -> None:
    """Poll `check` until it is true or raise ServiceError naming `what` and its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    hint = f"; see {log_file}" if log_file else ""
    raise ServiceError(f"{what} did not become healthy within {timeout_s:.0f}s{hint}", retryable=True)


def stop_pid(pid_file: Path, timeout_s: float = 30.0) -> bool:
    """SIGTERM the process in `pid_file`, wait, SIGKILL if needed. True when one was stopped."""
    pid = read_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and read_pid(pid_file) is not None:
        time.sleep(0.2)
    if read_pid(pid_file) is not None:
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True
