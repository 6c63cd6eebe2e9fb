"""`intentstream bench rl`: the paper's RL ablation on one dataset, as one JSON object.

On the evaluation split of issue 4 (global-time; the held-out users are the split's test users,
their contexts the train events, their targets the categories of their test events):

1. The SFT model of `intentstream bench intent` (trained on the train events, cached).
2. Agent-as-a-Judge grades of the SFT policy's sampled expert outputs on train contexts; the
   reward model distilled with the listwise and the pointwise loss; their agreement with the
   judge on held-out judged groups.
3. GRPO from the SFT model on train episodes (context + categories of the next 5 events: what a
   feedback episode holds, training/trainer.py::episodes_from_log), four runs with the same
   steps: summed rewards (listwise RM), CRS (listwise RM), CRS (pointwise RM), and CRS
   (listwise RM) with a plan's R_acc counted over the tags its experts emit (`RUNS`; `--runs`
   keeps some of them), each with `--seeds` seeds, `--steps` and `--lr` (GRPOConfig's when
   not given; `--eval-every` also measures the validation users as the policy trains). With
   `--fresh-share`, SFT sees only the earlier train events and GRPO's episodes come from the
   rest; with `--validation-share`, the last part of the train events is kept from both and
   its users are validation users (`run_rl_benchmark`).
4. Category HR@30 of the arbiter's tags on the held-out (and validation) users for SFT and each
   run, with where a user's categories were lost: the share whose categories the planner's
   personas hold, the experts' tags, the arbiter's 30 (offline/tags.py `StageHits`: each
   stage keeps at most what the one before holds); per-step violation rates (first vs last
   tenth of the steps), zero-advantage groups, seconds per step and contexts/s.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from benchmarks.ingest import commit, machine
from contracts.settings import Settings
from evaluation.intent_method import split_intent_model
from features.catalog import Catalog
from offline import datasets
from offline.splits import Split, make_split
from offline.tags import stage_hit_rates
from reasoning.context import UserContext, build_context
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


def selected_runs(names: Sequence[str] | None) -> list[tuple]:
    """The entries of `RUNS` named (all when None), in `RUNS`' order; a name it lacks is an error.

    >>> [name for name, *_ in selected_runs(["grpo_crs_experts_acc", "grpo_crs"])]
    ['grpo_crs', 'grpo_crs_experts_acc']
    >>> len(selected_runs(None)) == len(RUNS)
    True
    >>> selected_runs(["grpo_crs", "grpo_typo"])
    Traceback (most recent call last):
    ...
    ValueError: runs must be a non-empty subset of ['grpo_sum', 'grpo_crs', 'grpo_crs_pointwise_rm', 'grpo_crs_experts_acc'], not ['grpo_crs', 'grpo_typo']
    """
    known = [name for name, *_ in RUNS]
    if names is not None and (not names or set(names) - set(known)):
        raise ValueError(f"runs must be a non-empty subset of {known}, not {list(names)}")
    return [run for run in RUNS if names is None or run[0] in names]


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([h[key] for h in rows])) if rows else 0.0


class HeldOut(NamedTuple):
    """Users whose category HR@30 a run is measured on: their contexts and wanted categories."""

    contexts: list[UserContext]
    wanted: list[set[str]]

    def hits(self, engine) -> dict[str, float]:
        return stage_hit_rates(engine, self.contexts, self.wanted)._asdict()

    def novel_share(self, catalog: Catalog) -> float:
        """The share of users who want some category, none of them one of their context's items':
        what a planner reading the context can only reach by guessing.

        >>> from features.catalog import CatalogItem
        >>> catalog = Catalog([CatalogItem("x", "shoes", "", ""), CatalogItem("y", "hats", "", "")], has_text=True)
        >>> ctx = UserContext("u", (("x", "view"),), "", "")
        >>> HeldOut([ctx, ctx, ctx], [{"shoes", "hats"}, {"hats"}, set()]).novel_share(catalog)
        0.3333333333333333
        """
        seen = [{catalog.get(item).category for item, _ in c.items} for c in self.contexts]
        return float(np.mean([bool(want) and not (want & had) for want, had in zip(self.wanted, seen)])) if seen else 0.0

    def uncategorised_share(self) -> float:
        """The share of users none of whose wanted items has a category: no stage can hit them."""
        return float(np.mean([not want for want in self.wanted])) if self.wanted else 0.0


def held_out(catalog: Catalog, before: pd.DataFrame, later: Mapping[str, Iterable[str]], max_items: int) -> HeldOut:
    """Each user of `later` with a context from their `before` events and, as wanted categories,
    those of their `later` items."""
    histories = user_histories(before)
    return HeldOut([build_context(u, list(reversed(histories.get(u, []))), catalog, max_items) for u in later],
                   [{catalog.get(i).category for i in items if catalog.get(i).category} for items in later.values()])


def validation_users(train: pd.DataFrame, cut_ts: int, min_history: int = 3) -> dict[str, set]:
    """The items at or after `cut_ts` of each user with `min_history` train events before it.

    >>> t = pd.DataFrame({"user_id": list("aaaabbbb"), "item_id": list("wxyzwxyz"), "ts": [1, 2, 3, 9, 1, 2, 3, 4]})
    >>> validation_users(t, 5)
    {'a': {'z'}}
    """
    early = train[train.ts < cut_ts].groupby("user_id").size()
    late = train[train.ts >= cut_ts].groupby("user_id").item_id.agg(set)
    return {u: late[u] for u in sorted(early[early >= min_history].index) if u in late.index}


def run_rl_benchmark(settings: Settings, dataset: str, steps: int | None = None, progress=None,
                     fresh_share: float = 0.0, validation_share: float = 0.0, seeds: int = 1,
                     lr: float | None = None, runs: Sequence[str] | None = None,
                     eval_every: int = 0) -> dict[str, Any]:
    """With `fresh_share` > 0 the SFT model sees only the train events before the last
    `fresh_share` of them (in time order), and GRPO's episodes come from that last part: RL on
    feedback the SFT model never saw, as in the deployed loop (with 0, both use all train events).
    With `validation_share` > 0 (less than `fresh_share`, which must be set) the last that share
    of the train events is kept from GRPO too: the users with events on both sides of it are
    validation users, their contexts from before it, their wanted categories those after it,
    shaped like the test users and seen by no model, so an RL setting can be chosen there. Each
    run trains `seeds` times (GRPOConfig.seed 0..seeds-1); its HR@30 is the mean. `runs` names
    the runs of `RUNS` to train (all when None); `steps` and `lr` override GRPOConfig's. With
    `eval_every` > 0 (and validation users) each seed's policy is measured on the validation users
    every that many steps too (`curve`: how the validation figures move with the RL budget)."""
    say = progress or (lambda message: None)
    chosen = selected_runs(runs)
    if eval_every and not validation_share:
        raise ValueError("eval_every measures the validation users: set validation_share")
    if validation_share and not 0 < validation_share < fresh_share:
        raise ValueError("validation_share must be in (0, fresh_share): the validation users' later events "
                         "must come after everything the SFT model and GRPO learn from")
    if seeds < 1:
        raise ValueError("seeds must be >= 1")
    data = datasets.load(dataset, settings.data_dir)
    split = make_split(data.events, "global-time")
    catalog = Catalog.from_frames(data.items, data.events)
    max_items = settings.intent.max_items
    fresh_from = None
    sft_split = split
    if fresh_share > 0:
        # By events, not by time: REES46's traffic is concentrated at the end of its slice.
        fresh_from = int(split.train.ts.quantile(1 - fresh_share))
        sft_split = Split(split.name, split.train[split.train.ts < fresh_from], split.test, split.cases,
                          {**split.protocol, "sft_before_ts": fresh_from})
    model_dir, _ = split_intent_model(settings, data, sft_split, SFTConfig(), progress=say, catalog=catalog)
    sft = engine_for(model_dir, settings.cache_dir, settings.intent)
    test = held_out(catalog, split.train, {c.user_id: c.targets for c in split.cases}, max_items)
    rl_events, validation, validation_from = split.train, None, None
    if validation_share > 0:  # by events, as the fresh part
        validation_from = int(split.train.ts.quantile(1 - validation_share))
        rl_events = split.train[split.train.ts < validation_from]
        validation = held_out(catalog, rl_events, validation_users(split.train, validation_from), max_items)
    train_eps = episodes(rl_events, catalog, sft.model.vocab, max_items, 5, 12, seed=1, from_ts=fresh_from)
    grpo = GRPOConfig(**{k: v for k, v in (("steps", steps), ("lr", lr)) if v is not None})
    cfg = RLConfig(grpo=grpo)
    judge_log = JudgeLog()
    started = time.perf_counter()
    rms, judge, rm_stats = build_reward_model(sft, train_eps, cfg, judge_log, losses=["listwise", "pointwise"])
    rm_stats["seconds"] = round(time.perf_counter() - started, 1)
    say(f"judge + reward models: {rm_stats}")
    result: dict[str, Any] = {
        "command": f"intentstream bench rl --dataset {dataset}" + (f" --steps {steps}" if steps else "")
        + (f" --lr {lr:g}" if lr is not None else "") + (f" --runs {','.join(runs)}" if runs is not None else "")
        + (f" --eval-every {eval_every}" if eval_every else "")
        + (f" --fresh-share {fresh_share}" if fresh_share else "")
        + (f" --validation-share {validation_share}" if validation_share else "")
        + (f" --seeds {seeds}" if seeds > 1 else ""),
        "fresh_share": fresh_share, "sft_train_events": len(sft_split.train),
        "validation_share": validation_share, "validation_from_ts": validation_from,
        "validation_users": len(validation.contexts) if validation else 0,
        "seeds": seeds,
        "machine": machine(), "commit": commit(), "dataset": dataset, "split": "global-time",
        "held_out_users": len(split.cases), "train_episodes": len(train_eps), "sft_model": sft.version,
        "grpo_config": grpo.as_dict(), "judge_config": cfg.judge.__dict__, "reward_models": rm_stats,
        "judge_dimension_scores": _dimension_counts(judge_log),
        "category_hr@30": {"sft": test.hits(sft)["final"]},
        "stages": {"sft": {"test": test.hits(sft), **({"validation": validation.hits(sft)} if validation else {})}},
        "context_novel": {"test": test.novel_share(catalog),
                          **({"validation": validation.novel_share(catalog)} if validation else {})},
        "uncategorised": {"test": test.uncategorised_share(),
                          **({"validation": validation.uncategorised_share()} if validation else {})},
    }
    say(f"SFT: {result['stages']['sft']}")
    trained_runs = {}
    for name, reward, loss, plan_accuracy in chosen:
        per_seed = []
        for seed in range(seeds):
            run_cfg = RLConfig(grpo=GRPOConfig(**{**grpo.as_dict(), "reward": reward, "plan_accuracy": plan_accuracy,
                                                  "seed": seed}), rm_loss=loss)
            suffix = (f"-fresh{fresh_share}" if fresh_share else "") + (f"-seed{seed}" if seed else "")
            out = settings.cache_dir / "bench" / f"rl-{dataset}-{name}{suffix}"
            shutil.rmtree(out, ignore_errors=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            curve: list[dict] = []

            def measure(step: int, path) -> None:
                curve.append({"step": step, **validation.hits(engine_for(path, settings.cache_dir, settings.intent))})
                say(f"{name} seed {seed} step {step}: validation {curve[-1]}")

            trained = run_grpo(model_dir, sft, rms[loss], judge, train_eps, out, run_cfg, f"bench-{name}", progress=say,
                               checkpoint_every=eval_every, on_checkpoint=measure)
            engine = engine_for(out, settings.cache_dir, settings.intent)
            per_seed.append({"seed": seed, "seconds": round(trained["seconds"], 1), "history": trained["history"],
                             "test": test.hits(engine), **({"validation": validation.hits(engine)} if validation else {})})
            if eval_every:
                per_seed[-1]["curve"] = curve + [{"step": grpo.steps, **per_seed[-1]["validation"]}]
            say(f"{name} seed {seed}: {({k: v for k, v in per_seed[-1].items() if k != 'history'})}")
        # Every seed's steps together; the first and last tenth of each seed's steps.
        history = [h for run in per_seed for h in run["history"]]
        tenth = max(1, len(per_seed[0]["history"]) // 10)
        first = [h for run in per_seed for h in run["history"][:tenth]]
        last = [h for run in per_seed for h in run["history"][-tenth:]]
        trained_runs[name] = {
            "reward": reward, "rm_loss": loss, "plan_accuracy": str(plan_accuracy),
            "category_hr@30": float(np.mean([run["test"]["final"] for run in per_seed])),
            "seconds": round(float(np.mean([run["seconds"] for run in per_seed])), 1),
            "seconds_per_step": float(np.mean([h["seconds"] for h in history])),
            "contexts_per_s": float(np.mean([h["contexts_per_s"] for h in history])),
            "samples_per_s": float(np.mean([h["samples_per_s"] for h in history])),
            "zero_advantage_groups": int(sum(h["zero_advantage_groups"] for h in history)),
            "groups": int(sum(h["groups"] for h in history)),
            "violation_rate_first_tenth": {k: _mean(first, f"violation_{k}") for k in ("align", "div", "len")},
            "violation_rate_last_tenth": {k: _mean(last, f"violation_{k}") for k in ("align", "div", "len")},
            "acc_first_tenth": _mean(first, "acc"), "acc_last_tenth": _mean(last, "acc"),
            "kl_last_tenth": _mean(last, "kl") if all("kl" in h for h in last) else None,
            "seeds": [{**{k: v for k, v in run.items() if k != "history"},
                       "history": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()}
                                   for h in run["history"]]} for run in per_seed],
        }
        result["category_hr@30"][name] = trained_runs[name]["category_hr@30"]
        say(f"{name}: HR@30 {trained_runs[name]['category_hr@30']:.4f}")
    base = result["category_hr@30"]["sft"]
    result["runs"] = trained_runs
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
