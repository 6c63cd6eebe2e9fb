"""`intentstream bench loop`: the whole feedback loop on real services, as one JSON object.

1. **Before**: the replay method (evaluation/replay_method.py) with the intent route on, serving
   the SFT model of `bench intent` (trained on the split's train events): the train events go
   through Kafka -> worker -> Redis, the second half with simulated feedback that the worker
   logs (an impression at a user's every 2nd event); Recall@20 of what Redis serves at the end, on the split's test users.
2. **Trainer**: one `train --once` run on that feedback (at least 50 episodes) (judge -> reward model -> GRPO ->
   held-out gate -> promotion through the registry), exactly the trainer's code.
3. **After**: the replay method again, serving the trainer's candidate.

The trainer's report says whether the gate promoted the candidate; the after-figure is measured
either way, and labelled.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.ingest import commit, machine
from contracts.settings import Settings
from evaluation.harness import score_method
from evaluation.intent_method import split_intent_model
from evaluation.replay_method import ReplayMethod
from features.catalog import Catalog
from offline import datasets
from offline.methods import category_lookup
from offline.splits import make_split
from training.sft import SFTConfig
from training.trainer import run_once


def run_loop_benchmark(settings: Settings, dataset: str, progress=None) -> dict[str, Any]:
    say = progress or (lambda message: None)
    data = datasets.load(dataset, settings.data_dir)
    split = make_split(data.events, "global-time")
    catalog = Catalog.from_frames(data.items, data.events)
    model_dir, _ = split_intent_model(settings, data, split, SFTConfig(), progress=say, catalog=catalog)
    run = time.strftime("%Y%m%d-%H%M%S")
    base = settings.model_copy(update={
        "intent": settings.intent.model_copy(update={"enabled": True, "model_dir": model_dir, "max_wait_s": 3600.0}),
        # A REES46 train period gives a few hundred impressions: every 2nd event shows the list,
        # and one run trains on what that yields.
        "feedback": settings.feedback.model_copy(update={"impression_every": 2}),
        "trainer": settings.trainer.model_copy(update={
            "versions_dir": settings.cache_dir / "bench" / f"loop-{dataset}-{run}" / "versions", "min_episodes": 50}),
    })
    ids = data.items.item_id.astype(str).tolist()
    category_of = category_lookup(data.items, data.events)
    started = time.perf_counter()
    before = ReplayMethod(base, timeout_s=3600, feedback=True, intent_model=model_dir)
    before_scores = score_method(before, split, ids, (20,), category_of)
    say(f"before: {before_scores['all']}")
    before_seconds = time.perf_counter() - started
    trainer_settings = before.settings.model_copy(update={"trainer": base.trainer})
    started = time.perf_counter()
    report = run_once(trainer_settings, say)
    trainer_seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "command": f"intentstream bench loop --dataset {dataset}", "machine": machine(), "commit": commit(),
        "dataset": dataset, "split": "global-time", "users": len(split.cases),
        "before": {"model": str(model_dir), "all": before_scores["all"], "new": before_scores["new"],
                   "worker": {k: before.stats.get(k) for k in ("events_valid", "feedback_logged", "feedback_sent",
                                                              "intent_users", "intent_timeouts")},
                   "seconds": round(before_seconds, 1)},
        "trainer": {**report, "seconds": round(trainer_seconds, 1)},
    }
    if report.get("status") in ("promoted", "rejected"):
        after_settings = base.model_copy(update={"intent": base.intent.model_copy(
            update={"model_dir": Path(report["path"])})})
        started = time.perf_counter()
        after = ReplayMethod(after_settings, timeout_s=3600, wait_intent=True, intent_model=Path(report["path"]))
        after_scores = score_method(after, split, ids, (20,), category_of)
        result["after"] = {"model": report["candidate"], "promoted": report["status"] == "promoted",
                           "all": after_scores["all"], "new": after_scores["new"],
                           "seconds": round(time.perf_counter() - started, 1)}
        say(f"after ({report['status']}): {after_scores['all']}")
    return result
