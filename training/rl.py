"""The RL stage end to end, from a serving model directory and episodes to a candidate directory:

1. **Judge** the serving policy's own expert outputs (sampled at temperature 1 for training
   contexts, plus in-batch shuffled tags of other users as relevance negatives) with the
   Agent-as-a-Judge (training/judge.py); every verdict is logged.
2. **Distil** the grades into the reward model (training/reward_model.py, listwise loss by
   default), checked for agreement with the judge on held-out groups.
3. **GRPO** (training/grpo.py) from the serving model, R_align from the reward model.
4. **Write** the candidate directory: the serving directory's files (catalog, tag vectors) with
   the new weights, and in intent.json the parent version, the configs and the training history.

`episode_hit_rate` is the held-out measure the trainer gates on: category HR@30 of the
arbiter's final tags against the episodes' next categories (offline/tags.py).
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from contracts.settings import IntentSettings
from offline.tags import category_hit_rate
from reasoning.context import UserContext, task_expert
from reasoning.engine import IntentEngine
from training.data import Episode
from training.grpo import GRPOConfig, GRPOTrainer
from training.judge import GRADES, JudgeConfig, JudgeLog, TagJudge
from training.reward_model import (
    Group,
    agreement,
    bad_accuracy,
    tag_features,
    train_reward_model,
)

log = logging.getLogger(__name__)


@dataclass
class RLConfig:
    """Everything the RL stage needs beyond the episodes (`GRPOConfig` holds the GRPO part)."""

    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    rm_loss: str = "listwise"      # listwise (the paper's) or pointwise
    rm_contexts: int = 300         # training contexts whose sampled outputs the judge grades
    rm_samples: int = 4            # expert outputs sampled per judged context
    rm_epochs: int = 30
    rm_holdout: float = 0.2        # share of judged groups kept to measure judge agreement
    threads: int = 0               # torch threads (0: torch's default)


def episode_hit_rate(engine: IntentEngine, episodes: Sequence[Episode]) -> float:
    return category_hit_rate(engine, [e.context for e in episodes], [set(e.target_categories) for e in episodes])


def judge_groups(engine: IntentEngine, judge: TagJudge, episodes: Sequence[Episode], cfg: RLConfig,
                 judge_log: JudgeLog, seed: int = 0) -> list[Group]:
    """The judge's grades of the serving policy's sampled expert outputs, one group per context."""
    rng = random.Random(seed)
    chosen = rng.sample(list(episodes), min(cfg.rm_contexts, len(episodes)))
    backend = engine.backend
    vocab = engine.model.vocab
    persona_index = {p: i for i, p in enumerate(vocab.personas)}
    raw: list[tuple[Episode, str, list[int]]] = []
    for start in range(0, len(chosen), 32):
        batch = chosen[start:start + 32]
        session = backend.open([e.context for e in batch], cfg.grpo.mode)
        plans = session.plan(cfg.grpo.personas)
        owners, personas, suffixes, tries = [], [], [], []
        for b, names in enumerate(plans):
            if names:
                name = rng.choice(names)
                for _ in range(cfg.rm_samples):
                    owners.append(b)
                    personas.append(name)
                    suffixes.append(backend.suffix(task_expert(name), cfg.grpo.mode))
                    tries.append(backend.persona_tries[persona_index[name]])
        if not owners:
            continue
        lists, _ = backend.decoder.generate_lists(session.prefix, owners, suffixes, tries,
                                                  [cfg.grpo.tags_per_persona] * len(owners), temperature=1.0,
                                                  seed=seed + start)
        by_owner: dict[int, set[int]] = {}
        for owner, emitted in zip(owners, lists):
            by_owner.setdefault(owner, set()).update(t for t, _ in emitted)
        for owner, tags in by_owner.items():
            raw.append((batch[owner], personas[owners.index(owner)], sorted(tags)))
    groups = []
    for k, (ep, persona, tags) in enumerate(raw):
        # In-batch shuffling: another user's proposals are this user's relevance negatives.
        other = raw[(k + 1 + rng.randrange(max(len(raw) - 1, 1))) % len(raw)][2] if len(raw) > 1 else []
        negatives = [t for t in rng.sample(other, min(3, len(other))) if t not in tags]
        candidates = tags + negatives
        history = judge.history_tags(ep.context)
        grades = []
        for t in candidates:
            j = judge.judge(ep.context, persona, vocab.tags[t], history)
            judge_log.add("tag", {"user_id": ep.context.user_id, "persona": persona, "tag": vocab.tags[t],
                                  "negative": t in negatives}, j)
            grades.append(GRADES.index(j.grade))
        groups.append(Group(tag_features(judge, history, persona, candidates), np.array(grades)))
    return groups


def build_reward_model(engine: IntentEngine, episodes: Sequence[Episode], cfg: RLConfig, judge_log: JudgeLog,
                       losses: Sequence[str] | None = None, seed: int = 0):
    """Judge, distil; returns ({loss: reward model}, the judge, stats)."""
    tag_vectors = engine.tag_vectors
    judge = TagJudge(engine.model.vocab, tag_vectors, engine.catalog, cfg.judge)
    groups = judge_groups(engine, judge, episodes, cfg, judge_log, seed)
    rng = random.Random(seed)
    rng.shuffle(groups)
    cut = int(len(groups) * (1 - cfg.rm_holdout))
    train, held = groups[:cut], groups[cut:]
    models, stats = {}, {"groups": len(groups), "judged_tags": int(sum(len(g.grades) for g in groups)),
                         "grades": judge_log.grade_shares("tag")}
    for loss in losses or [cfg.rm_loss]:
        rm = train_reward_model(train, loss, cfg.rm_epochs, seed=seed)
        models[loss] = rm
        stats[loss] = {"pairwise_agreement": agreement(rm, held), "bad_vs_rest_accuracy": bad_accuracy(rm, held)}
    return models, judge, stats


def align_fn(rm, judge: TagJudge):
    def score(history: list[int], persona: str, tags: list[int]) -> np.ndarray:
        return rm.score(tag_features(judge, history, persona, tags))

    return score


def run_grpo(serving_dir: Path, engine: IntentEngine, rm, judge: TagJudge, episodes: Sequence[Episode],
             out_dir: Path, cfg: RLConfig, version: str, progress: Callable[[str], None] | None = None,
             extra_meta: dict | None = None, checkpoint_every: int = 0,
             on_checkpoint: Callable[[int, Path], None] | None = None) -> dict:
    """GRPO from the serving model (a fresh copy: `engine` keeps serving), written to `out_dir`.
    With `checkpoint_every` > 0, every that many steps before the last the policy so far is
    written to `out_dir` with a `-step{n}` suffix and `on_checkpoint(n, path)` called (a benchmark
    measuring the policy as it trains; the checkpoint is removed after the call)."""
    import torch

    from reasoning.intent_model import IntentModel, set_torch_threads

    set_torch_threads(cfg.threads)
    torch.manual_seed(cfg.grpo.seed)
    model = IntentModel.load(serving_dir)
    trainer = GRPOTrainer(model, engine.atoms, engine.catalog, engine.tag_vectors, align_fn(rm, judge),
                          judge.history_tags, cfg.grpo)
    aside = [0.0]  # seconds spent on checkpoints: not GRPO's time

    def checkpoint(step: int) -> None:
        if step % checkpoint_every or step == cfg.grpo.steps:
            return
        began = time.perf_counter()
        path = out_dir.with_name(f"{out_dir.name}-step{step}")
        shutil.rmtree(path, ignore_errors=True)
        write_candidate(serving_dir, model, path)
        try:
            on_checkpoint(step, path)
        finally:
            shutil.rmtree(path, ignore_errors=True)
            aside[0] += time.perf_counter() - began

    started = time.perf_counter()
    history = trainer.train(episodes, progress,
                            after_step=checkpoint if checkpoint_every > 0 and on_checkpoint is not None else None)
    seconds = time.perf_counter() - started - aside[0]
    model.meta.update({"version": version, "parent": engine.version,
                       "grpo": {"config": asdict(cfg.grpo), "rm_loss": cfg.rm_loss, "episodes": len(episodes),
                                "seconds": round(seconds, 1), "history": history, **(extra_meta or {})}})
    write_candidate(serving_dir, model, out_dir)
    return {"seconds": seconds, "history": history}


def write_candidate(serving_dir: Path, model, out_dir: Path) -> None:
    """The serving directory's files with `model`'s weights and metadata, written atomically."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(serving_dir, tmp)
    model.save(tmp)
    tmp.rename(out_dir)


def engine_for(model_dir: Path, cache_dir: Path, base: IntentSettings | None = None) -> IntentEngine:
    cfg = (base or IntentSettings()).model_copy(update={"backend": "local", "model_dir": model_dir})
    return IntentEngine(model_dir, cfg, cache_dir)
