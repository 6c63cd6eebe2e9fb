"""Judge-as-a-Reward (RecGPT-V2 section 2.6): a small scalar reward model distilled from the
judge's S / A / B grades; its sigmoid output is R_align.

Input: one tag proposed for a user and a persona, as features of the tag embedding, the persona's
centre and the user's history tags (the judge's own view, without its thresholds). Output: a
logit; `score` = sigmoid(logit) in [0, 1].

Two losses over groups of candidates that share a context and persona:

- **listwise** (the paper's): for every S and A candidate y_g,
  -log( e^f(y_g) / (e^f(y_g) + sum over lower-grade y' of e^f(y')) );
- **pointwise** (for comparison): binary cross-entropy towards S = 1, A = 0.5, B = 0.

`calibrate` shifts the logit so that a score of 0.5 separates the judge's B from A and S (the
CRS gate on R_align needs a fixed point; listwise scores are only ranks). `agreement` is the share of same-group pairs with different grades that the model orders like
the judge (pairwise accuracy; ties count half).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.judge import TagJudge

LOSSES = ("listwise", "pointwise")


@dataclass
class Group:
    """Candidates for one (context, persona): feature rows and the judge's grades (0 B, 1 A, 2 S)."""

    features: np.ndarray
    grades: np.ndarray


def tag_features(judge: TagJudge, history: list[int], persona: str, tags: Sequence[int]) -> np.ndarray:
    v = judge.vectors[list(tags)]
    p = judge.persona_centres[judge.persona_index[persona]] if persona in judge.persona_index else np.zeros(v.shape[1])
    if history:
        h = judge.vectors[history]
        sims = v @ h.T
        hmax, hmean = sims.max(1), sims.mean(1)
        centre = h.mean(0)
    else:
        hmax = hmean = np.zeros(len(v))
        centre = np.zeros(v.shape[1])
    counts = np.log1p(judge.item_counts[list(tags)]) / np.log1p(max(len(judge.catalog), 1))
    extra = np.stack([hmax, hmean, v @ p, counts,
                      np.array([bool(judge.vocab.brand[t]) for t in tags], dtype=np.float32),
                      np.array([judge.vocab.persona_of[t] == judge.persona_index.get(persona, -1) for t in tags],
                               dtype=np.float32)], axis=1)
    return np.concatenate([v * centre, v * p, extra], axis=1).astype(np.float32)


class RewardModel(nn.Module):
    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.register_buffer("offset", torch.zeros(()))
        """Subtracted from the logit (`calibrate`): a score of 0.5 is the judge's B boundary."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1) - self.offset

    @torch.no_grad()
    def score(self, features: np.ndarray) -> np.ndarray:
        return torch.sigmoid(self(torch.from_numpy(features))).numpy()


def listwise_loss(logits: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
    """The paper's listwise loss for one group (0 when no candidate has a lower-graded rival).

    >>> round(float(listwise_loss(torch.tensor([2.0, 0.0]), torch.tensor([2, 0]))), 4)
    0.1269
    """
    terms = []
    for g in (2, 1):
        better = grades == g
        worse = grades < g
        if not better.any() or not worse.any():
            continue
        rivals = torch.logsumexp(logits[worse], 0)
        mine = logits[better]
        terms.append(-(mine - torch.logaddexp(mine, rivals)))
    return torch.cat(terms).sum() if terms else logits.sum() * 0.0


def pointwise_loss(logits: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
    targets = grades.float() / 2.0
    return nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum")


def train_reward_model(groups: Sequence[Group], loss: str = "listwise", epochs: int = 30, lr: float = 3e-3,
                       seed: int = 0) -> RewardModel:
    if loss not in LOSSES:
        raise ValueError(f"unknown reward-model loss {loss!r}; choose from {LOSSES}")
    if not groups:
        raise ValueError("no judged groups to train the reward model on")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = RewardModel(groups[0].features.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    fn = listwise_loss if loss == "listwise" else pointwise_loss
    data = [(torch.from_numpy(g.features), torch.from_numpy(g.grades.astype(np.int64))) for g in groups]
    for _ in range(epochs):
        rng.shuffle(data)
        for start in range(0, len(data), 16):
            total = sum(fn(model(x), y) for x, y in data[start:start + 16])
            n = sum(len(y) for _, y in data[start:start + 16])
            opt.zero_grad(set_to_none=True)
            (total / n).backward()
            opt.step()
    model.eval()
    calibrate(model, groups)
    return model


@torch.no_grad()
def calibrate(model: RewardModel, groups: Sequence[Group]) -> float:
    """Shift the logit so that 0.5 best separates Bad from the rest on `groups` (balanced
    accuracy): a listwise model is trained on ranks only, and the CRS gate needs a fixed point.
    Returns the balanced accuracy at the chosen offset."""
    model.offset.zero_()
    logits = np.concatenate([model(torch.from_numpy(g.features)).numpy() for g in groups])
    bad = np.concatenate([g.grades == 0 for g in groups])
    if bad.all() or not bad.any():
        return 0.5
    best, best_acc = 0.0, -1.0
    for cut in np.quantile(logits, np.linspace(0.02, 0.98, 97)):
        acc = 0.5 * ((logits[bad] < cut).mean() + (logits[~bad] >= cut).mean())
        if acc > best_acc:
            best, best_acc = float(cut), float(acc)
    model.offset.fill_(best)
    return best_acc


def agreement(model: RewardModel, groups: Sequence[Group]) -> float | None:
    """Share of same-group pairs with different judge grades that the model orders the same way."""
    right = total = 0.0
    for g in groups:
        s = model.score(g.features)
        for i in range(len(s)):
            for j in range(len(s)):
                if g.grades[i] > g.grades[j]:
                    total += 1
                    right += 1.0 if s[i] > s[j] else (0.5 if s[i] == s[j] else 0.0)
    return right / total if total else None


def bad_accuracy(model: RewardModel, groups: Sequence[Group]) -> float | None:
    """Balanced accuracy of telling the judge's Bad from the rest at a score of 0.5 (the CRS
    gate's point, after `calibrate`)."""
    scores = np.concatenate([model.score(g.features) for g in groups]) if groups else np.zeros(0)
    bad = np.concatenate([g.grades == 0 for g in groups]) if groups else np.zeros(0, bool)
    if bad.all() or not bad.any():
        return None
    return float(0.5 * ((scores[bad] < 0.5).mean() + (scores[~bad] >= 0.5).mean()))
