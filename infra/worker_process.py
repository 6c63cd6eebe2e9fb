"""Run `intentstream worker` (or `intentstream reasoner`) as a child process with given settings
(demo, benchmarks, evaluation, tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pydantic import BaseModel

from contracts.keys import RedisKeys
from contracts.settings import Settings, reveal
from features.redis_client import connect
from stream.metrics import read_metrics


def settings_env(settings: Settings) -> dict[str, str]:
    """The INTENTSTREAM_* variables that rebuild `settings` in a child process."""
    env: dict[str, str] = {}
    for name, value in settings:
        if isinstance(value, BaseModel):
            for sub, sub_value in value:
                if sub_value is not None:  # None is every optional field's default
                    env[f"INTENTSTREAM_{name.upper()}__{sub.upper()}"] = str(reveal(sub_value))
        else:
            env[f"INTENTSTREAM_{name.upper()}"] = str(value)
    return env


def _exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def stop_children_on_sigterm() -> None:
    """Make a SIGTERM to this program raise SystemExit, so the `finally` blocks that stop its
    child processes run. The children live in sessions of their own (a Ctrl-C in the terminal
    must not reach them before their parent has decided to stop them); under SIGTERM's default
    action the parent died at once and they kept running (seen: a `pkill -f "intentstream demo"`
    left the worker and reasoner running, a SIGTERM to `intentstream eval` left its replay worker
    running for an hour). Only from the main thread, and only where nobody chose a handler."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


class WorkerProcess:
    """`intentstream worker` as a child process. Starting one makes a SIGTERM to this program
    raise SystemExit (`stop_children_on_sigterm`): stop it in a `finally`, and it goes down with
    its parent. (A SIGKILL to the parent still leaves it running: a parent-death signal would
    cover that, but Linux sends it when the *thread* that started the child exits, and the chaos
    bench restarts workers from threads that end before the workers should.)"""

    command = "worker"
    ready_mark = "worker_ready_ms"
    """The metrics field the process writes once it consumes (joined, recovered)."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        r = settings.redis
        self.client = connect(r)
        self.keys = RedisKeys(settings.key_prefix)

    def start(self) -> None:
        stop_children_on_sigterm()
        self.started_ms = int(time.time() * 1000)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "intentstream.cli", self.command],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, kill: bool = False, timeout_s: float = 30) -> bool:
        """SIGTERM (or SIGKILL) the worker and wait for it; a worker still there after
        `timeout_s` is killed. True when it exited by itself (or was not running)."""
        if not self.alive():
            return True
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return False

    def wait_ready(self, timeout_s: float = 180) -> None:
        """Wait until the process consumes (its `ready_mark` written since this start: events sent
        before would wait for the group join); raises if it exits or takes too long."""
        deadline = time.monotonic() + timeout_s
        while int(self.client.hget(self.keys.metrics, self.ready_mark) or 0) < self.started_ms:
            if not self.alive():
                raise RuntimeError(f"`intentstream {self.command}` exited ({self.proc.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"`intentstream {self.command}` was not ready within {timeout_s:.0f} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.2)

    def metrics(self) -> dict:
        return read_metrics(self.client, self.keys)

    def processed(self) -> int:
        raw = self.client.hmget(self.keys.metrics, "events_valid", "events_dead", "duplicates")
        return sum(int(v) for v in raw if v is not None)

    def wait_processed(self, n: int, timeout_s: float) -> bool:
        """Wait until the worker has consumed at least `n` messages (valid, dead or duplicate)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.processed() >= n:
                return True
            if not self.alive():
                raise RuntimeError(f"the worker exited ({self.proc.returncode}); see {self.log_path}")
            time.sleep(0.1)
        return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class ReasonerProcess(WorkerProcess):
    """`intentstream reasoner` (stream/reasoner_service.py) with the same settings as the workers."""

    command = "reasoner"
    ready_mark = "reasoner_started_ms"
    """Written once its model is loaded and it consumes."""
