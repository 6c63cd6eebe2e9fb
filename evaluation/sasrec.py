"""SASRec as an evaluated method: the sequential route's model (reasoning/sequential.py), trained
by the same code that trains it for serving (training/sequential.py `train_sequential`): causal
self-attention, full softmax cross-entropy over the catalog, early stopping on a per-user holdout
(the split's validation items under leave-one-out, else each train user's last train event).
The baseline and the served route are one model, so a figure of one is a figure of the other.
Ranking reads each user's whole history (`Split.inputs`) with the torch weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from offline.splits import Split, UserCase
from training.sequential import SequentialConfig, TrainedSequential, scores, train_sequential


class SASRecMethod:
    name = "sasrec"

    def __init__(self, cfg: SequentialConfig | None = None, progress=None) -> None:
        self.cfg = cfg or SequentialConfig()
        self.progress = progress
        self.log: list[dict] = []

    def fit(self, split: Split, catalog: Sequence[str]) -> None:
        self.trained: TrainedSequential = train_sequential(split.train, split.validation or None, self.cfg,
                                                           self.progress)
        self.index = self.trained.index
        self.items = np.asarray([""] + self.trained.item_ids, dtype=object)
        self.log = self.trained.log
        self.best_val = self.trained.best_val

    def rank(self, case: UserCase, n: int) -> list[str]:
        return self.rank_many([case], [n])[0]

    def rank_many(self, cases: Sequence[UserCase], ns: Sequence[int], chunk: int = 256) -> list[list[str]]:
        """`rank` for many users, `chunk` histories per forward pass (similar lengths together)."""
        order = sorted(range(len(cases)), key=lambda i: len(cases[i].history))
        out: list[list[str]] = [[] for _ in cases]
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            n = min(max(ns[i] for i in part), len(self.items) - 1)
            logits = scores(self.trained.model, self.index, [cases[i].history for i in part],
                            self.trained.shape.maxlen)
            top = logits.topk(n, dim=1).indices.numpy()
            for row, i in zip(top, part):
                out[i] = self.items[row[:ns[i]]].tolist()
        return out
