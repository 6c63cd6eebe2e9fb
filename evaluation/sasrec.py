"""SASRec as an evaluated method: the sequential route's model (reasoning/sequential.py), trained
by the same code that trains it for serving (training/sequential.py `train_sequential`): causal
self-attention, full softmax cross-entropy over the catalog, early stopping on a per-user holdout
(the split's validation items under leave-one-out, else each train user's last train event).
The baseline and the served route are one model, so a figure of one is a figure of the other.
Ranking reads each user's whole history (`Split.inputs`) with the torch weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from offline.splits import Split, UserCase
from training.sequential import SequentialConfig, cached_model, load_trained, scores, train_sequential


class SASRecMethod:
    name = "sasrec"

    def __init__(self, cfg: SequentialConfig | None = None, progress=None, cache_dir: Path | None = None) -> None:
        self.cfg = cfg or SequentialConfig()
        self.progress = progress
        self.cache_dir = cache_dir
        """Where trained models are kept (keyed by events, validation and config; the replay
        method serves the same one); None: train in memory."""
        self.log: list[dict] = []

    def fit(self, split: Split, catalog: Sequence[str]) -> None:
        validation = split.validation or None
        if self.cache_dir is None:
            trained = train_sequential(split.train, validation, self.cfg, self.progress)
            self.model, item_ids, self.shape = trained.model, trained.item_ids, trained.shape
            self.log, self.best_val = trained.log, trained.best_val
        else:
            model_dir = cached_model(split.train, self.cache_dir, validation, self.cfg, progress=self.progress)
            self.model, item_ids, self.shape, meta = load_trained(model_dir)
            self.log, self.best_val = meta["log"], meta[f"best_val_ndcg@{self.cfg.val_k}"]
            self.stats = {"model_dir": str(model_dir), "version": meta["version"],
                          "fusion": {"recent": meta.get("weight_recent"), "sequential": meta["merge_weight"]},
                          "fusion_grid": meta["grid"]}
        self.index = {item: i + 1 for i, item in enumerate(item_ids)}
        self.items = np.asarray([""] + item_ids, dtype=object)

    def rank(self, case: UserCase, n: int) -> list[str]:
        return self.rank_many([case], [n])[0]

    def rank_many(self, cases: Sequence[UserCase], ns: Sequence[int], chunk: int = 256) -> list[list[str]]:
        """`rank` for many users, `chunk` histories per forward pass (similar lengths together)."""
        order = sorted(range(len(cases)), key=lambda i: len(cases[i].history))
        out: list[list[str]] = [[] for _ in cases]
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            n = min(max(ns[i] for i in part), len(self.items) - 1)
            logits = scores(self.model, self.index, [cases[i].history for i in part], self.shape.maxlen)
            top = logits.topk(n, dim=1).indices.numpy()
            for row, i in zip(top, part):
                out[i] = self.items[row[:ns[i]]].tolist()
        return out
