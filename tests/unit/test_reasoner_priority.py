"""The reasoner's LM child lowers its own CPU priority (stream/reasoner_service.py
`_lower_priority`): run in a fresh process, since a process cannot raise its priority back."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from contracts.settings import IntentSettings
from stream.reasoner_service import _lower_priority


def _child(cfg_json: str, out) -> None:
    _lower_priority(IntentSettings.model_validate_json(cfg_json))
    out.put((os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0)))


def _lowered(cfg: IntentSettings) -> tuple[int, int]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_child, args=(cfg.model_dump_json(), out))
    proc.start()
    result = out.get(timeout=60)
    proc.join(30)
    assert proc.exitcode == 0
    return result


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
@pytest.mark.parametrize("sched_idle", [False, True])
def test_lm_child_priority(sched_idle: bool) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    niceness, policy = _lowered(IntentSettings(nice=3, sched_idle=sched_idle))
    assert niceness == min(19, base + 3)
    assert policy == (os.SCHED_IDLE if sched_idle else os.sched_getscheduler(0))
