"""`intentstream bench rl`: the paper's RL ablation on one dataset, as one JSON object.

On the evaluation split of issue 4 (global-time; the held-out users are the split's test users,
their contexts the train events, their targets the categories of their test events):

1. The SFT model of `intentstream bench intent` (trained on the train events, cached).
2. Agent-as-a-Judge grades of the SFT policy's sampled expert outputs on train contexts; the
   reward model distilled with the listwise and the pointwise loss; their agreement with the
   judge on held-out judged groups.
3. GRPO from the SFT model on train episodes (context + categories of the next 5 events: what a
   feedback episode holds, training/trainer.py::episodes_from_log), four runs with the same
   seed and steps: summed rewards (listwise RM), CRS (listwise RM), CRS (pointwise RM), and CRS
   (listwise RM) with a plan's R_acc counted over the tags its experts emit (`RUNS`). With
   `--fresh-share`, SFT sees only the earlier train events and GRPO's episodes come from the rest.
4. Category HR@30 of the arbiter's tags on the held-out users for SFT and each run; per-step
   violation rates (first vs last tenth of the steps), zero-advantage groups, seconds per step
   and contexts/s.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import numpy as np

from benchmarks.ingest import commit, machine
from contracts.settings import Settings
from evaluation.intent_method import split_intent_model
from features.catalog import Catalog
from offline import datasets
from offline.splits import Split, make_split
from offline.tags import category_hit_rate
from reasoning.context import build_context
from training.data import episodes, user_histories
from training.grpo import GRPOConfig, PlanAccuracy
from training.judge import JudgeLog
from training.rl import RLConfig, build_reward_model, engine_for, run_grpo
from training.sft import SFTConfig

RUNS = (("grpo_sum", "sum", "listwise", PlanAccuracy.PERSONAS), ("grpo_crs", "crs", "listwise", PlanAccuracy.PERSONAS),
        ("grpo_crs_pointwise_rm", "crs", "pointwise", PlanAccuracy.PERSONAS),
        ("grpo_crs_experts_acc", "crs", "listwise", PlanAccuracy.EXPERTS))
"""(name, reward, reward-model loss, what a plan's R_acc counts): the last is the CRS run with a
plan's accuracy counted over what its experts emit, the ablation of `PlanAccuracy`."""


def _phase(history: list[dict], key: str, part: slice) -> float:
    rows = history[part]
    return float(np.mean([h[key] for h in rows])) if rows else 0.0


def run_rl_benchmark(settings: Settings, dataset: str, steps: int | None = None, progress=None,
                     fresh_share: float = 0.0) -> dict[str, Any]:
    """With `fresh_share` > 0 the SFT model sees only the train events before the last
    `fresh_share` of them (in time order), and GRPO's episodes come from that last part: RL on
    feedback the SFT model never saw, as in the deployed loop (with 0, both use all train events)."""
    say = progress or (lambda message: None)
    data = datasets.load(dataset, settings.data_dir)
    split = make_split(data.events, "global-time")
    catalog = Catalog.from_frames(data.items, data.events)
    fresh_from = None
    sft_split = split
    if fresh_share > 0:
        # By events, not by time: REES46's traffic is concentrated at the end of its slice.
        fresh_from = int(split.train.ts.quantile(1 - fresh_share))
        sft_split = Split(split.name, split.train[split.train.ts < fresh_from], split.test, split.cases,
                          {**split.protocol, "sft_before_ts": fresh_from})
    model_dir, _ = split_intent_model(settings, data, sft_split, SFTConfig(), progress=say, catalog=catalog)
    sft = engine_for(model_dir, settings.cache_dir, settings.intent)
    histories = user_histories(split.train)
    contexts = [build_context(c.user_id, list(reversed(histories.get(c.user_id, []))), catalog, settings.intent.max_items)
                for c in split.cases]
    wanted = [{catalog.get(t).category for t in c.targets if catalog.get(t).category} for c in split.cases]
    train_eps = episodes(split.train, catalog, sft.model.vocab, settings.intent.max_items, 5, 12, seed=1,
                         from_ts=fresh_from)
    grpo = GRPOConfig() if steps is None else GRPOConfig(steps=steps)
    cfg = RLConfig(grpo=grpo)
    judge_log = JudgeLog()
    started = time.perf_counter()
    rms, judge, rm_stats = build_reward_model(sft, train_eps, cfg, judge_log, losses=["listwise", "pointwise"])
    rm_stats["seconds"] = round(time.perf_counter() - started, 1)
    say(f"judge + reward models: {rm_stats}")
    result: dict[str, Any] = {
        "command": f"intentstream bench rl --dataset {dataset}" + (f" --steps {steps}" if steps else "")
        + (f" --fresh-share {fresh_share}" if fresh_share else ""),
        "fresh_share": fresh_share, "sft_train_events": len(sft_split.train),
        "machine": machine(), "commit": commit(), "dataset": dataset, "split": "global-time",
        "held_out_users": len(split.cases), "train_episodes": len(train_eps), "sft_model": sft.version,
        "grpo_config": grpo.as_dict(), "judge_config": cfg.judge.__dict__, "reward_models": rm_stats,
        "judge_dimension_scores": _dimension_counts(judge_log),
        "category_hr@30": {"sft": category_hit_rate(sft, contexts, wanted)},
    }
    say(f"SFT HR@30 {result['category_hr@30']['sft']:.4f}")
    runs = {}
    for name, reward, loss, plan_accuracy in RUNS:
        run_cfg = RLConfig(grpo=GRPOConfig(**{**grpo.as_dict(), "reward": reward, "plan_accuracy": plan_accuracy}),
                           rm_loss=loss)
        suffix = f"-fresh{fresh_share}" if fresh_share else ""
        out = settings.cache_dir / "bench" / f"rl-{dataset}-{name}{suffix}"
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        trained = run_grpo(model_dir, sft, rms[loss], judge, train_eps, out, run_cfg, f"bench-{name}", progress=say)
        hr = category_hit_rate(engine_for(out, settings.cache_dir, settings.intent), contexts, wanted)
        history = trained["history"]
        tenth = max(1, len(history) // 10)
        first, last = slice(0, tenth), slice(len(history) - tenth, len(history))
        runs[name] = {
            "reward": reward, "rm_loss": loss, "plan_accuracy": str(plan_accuracy), "category_hr@30": hr, "seconds": round(trained["seconds"], 1),
            "seconds_per_step": float(np.mean([h["seconds"] for h in history])),
            "contexts_per_s": float(np.mean([h["contexts_per_s"] for h in history])),
            "samples_per_s": float(np.mean([h["samples_per_s"] for h in history])),
            "zero_advantage_groups": int(sum(h["zero_advantage_groups"] for h in history)),
            "groups": int(sum(h["groups"] for h in history)),
            "violation_rate_first_tenth": {k: _phase(history, f"violation_{k}", first) for k in ("align", "div", "len")},
            "violation_rate_last_tenth": {k: _phase(history, f"violation_{k}", last) for k in ("align", "div", "len")},
            "acc_first_tenth": _phase(history, "acc", first), "acc_last_tenth": _phase(history, "acc", last),
            "kl_last_tenth": _phase(history, "kl", last) if all("kl" in h for h in history[last]) else None,
            "history": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()} for h in history],
        }
        result["category_hr@30"][name] = hr
        say(f"{name}: HR@30 {hr:.4f} ({runs[name]['seconds']} s)")
    base = result["category_hr@30"]["sft"]
    result["runs"] = runs
    result["relative_to_sft"] = {k: (v - base) / base if base else None for k, v in result["category_hr@30"].items()}
    return result


def _dimension_counts(judge_log: JudgeLog) -> dict:
    out: dict[str, dict[str, int]] = {}
    for row in judge_log.rows:
        for dim in ("relevance", "consistency", "specificity", "validity"):
            if dim in row:
                out.setdefault(dim, {}).setdefault(str(row[dim]), 0)
                out[dim][str(row[dim])] += 1
    return out
