"""A program that runs a worker (`infra/worker_process.py`: eval's replay, the demo, the benches)
takes it down when it is told to stop with SIGTERM: the worker lives in a session of its own, so
only the parent's `finally` can stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from contracts.settings import Settings
from infra.worker_process import settings_env

PARENT = """
import sys, time
from pathlib import Path
from contracts.settings import Settings
from infra.worker_process import WorkerProcess

worker = WorkerProcess(Settings(), Path(sys.argv[1]))
worker.start()
try:
    worker.wait_ready()
    print(worker.proc.pid, flush=True)
    time.sleep(600)
finally:
    worker.stop()
"""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_to_the_parent_stops_its_worker(scoped: Settings, tmp_path: Path) -> None:
    env = {**os.environ, **settings_env(scoped)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "worker.log")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker_pid = None
    try:
        line = parent.stdout.readline()  # the worker's pid once it consumes
        assert line.strip().isdigit(), f"the parent did not start its worker: {line!r} {parent.stderr.read()}"
        worker_pid = int(line)
        assert _running(worker_pid)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM, parent.stderr.read()
        deadline = time.monotonic() + 10
        while _running(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(worker_pid), "the worker outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        if worker_pid is not None and _running(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)
