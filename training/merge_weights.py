"""Merge weights of the served list, fitted on the train events only.

The recent route (the user's own unbought items) and the behavioural route (co-visitation) are
weighted against each other by reciprocal-rank fusion; how much each deserves depends on the
shop (on Taobao shoppers revisit far more than on REES46). `fit_merge_weights` holds out the
last 10% of the train span, fits the behavioural model on the rest, and picks the pair that
maximises mean Recall@20 of the `all` and `new` lists on the held-out users. The intent
route's weight is a setting: its model has seen the held-out span in training, so it cannot be
tuned there without bias.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from contracts.recs import rec_item
from offline import metrics
from offline.methods import ItemKNN
from offline.splits import global_time
from reasoning.retrieval import merge, recent_route
from training.data import user_histories

RECENT_GRID = (0.5, 1.0, 2.0, 4.0)
BEHAVIOURAL_GRID = (0.5, 1.0, 2.0)
MIN_USERS = 50


def fit_merge_weights(train: pd.DataFrame, k: int = 20) -> dict:
    """{"weight_recent", "weight_behavioural", "validation": {...}} (defaults 1/1 if no users)."""
    split = global_time(train)
    if len(split.cases) < MIN_USERS:  # too few to choose anything: equal weights
        return {"weight_recent": 1.0, "weight_behavioural": 1.0, "validation": {"users": len(split.cases)}}
    knn = ItemKNN()
    knn.fit(split, [])
    histories = user_histories(split.train)
    lists = []
    for case in split.cases:
        recent = list(reversed(histories.get(case.user_id, [])))
        behavioural = [rec_item(i, s, "covisit", "") for i, s, _ in knn.reasoner.score(recent, case.bought, 100)]
        lists.append((case, recent_route(recent, set(case.bought), 100), behavioural))
    best = None
    for w_recent, w_behav in itertools.product(RECENT_GRID, BEHAVIOURAL_GRID):
        r_all, r_new = [], []
        for case, recent, behavioural in lists:
            ranked = [e["item_id"] for e in merge([(w_recent, recent), (w_behav, behavioural)], set(case.bought), 150)]
            r_all.append(metrics.recall_at(ranked, case.targets, k))
            if case.new_targets:
                r_new.append(metrics.recall_at([i for i in ranked if i not in case.seen], case.new_targets, k))
        score = (np.mean(r_all) + (np.mean(r_new) if r_new else 0.0)) / 2
        if best is None or score > best[0]:
            best = (score, w_recent, w_behav, float(np.mean(r_all)), float(np.mean(r_new)) if r_new else 0.0)
    _, w_recent, w_behav, r_all, r_new = best
    return {"weight_recent": w_recent, "weight_behavioural": w_behav,
            "validation": {"users": len(split.cases), f"recall@{k}_all": r_all, f"recall@{k}_new": r_new}}
