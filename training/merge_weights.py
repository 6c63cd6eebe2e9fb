"""Merge weights of the served list, fitted on the train events only.

The recent route (the user's own unbought items) and the behavioural route (co-visitation) are
weighted against each other by reciprocal-rank fusion; how much each deserves depends on the
shop (on Taobao shoppers revisit far more than on REES46). `fit_merge_weights` holds out the
last 10% of the train span, fits the behavioural model on the rest, and picks the pair that
maximises mean Recall@20 of the `all` and `new` lists on the held-out users.

The intent route's weight needs users whose next event the intent model never learned from:
SFT holds them out (training/sft.py step 0) and `fit_intent_weight`
scores the served merge on those users (steps in its docstring). `route_lists` and
`served_merge` build the lists as the worker and the reasoner do; the evaluation scores through
them too (evaluation/intent_method.py), so the fit and the figures rank the same lists.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from contracts.recs import rec_item
from offline import metrics
from offline.methods import ItemKNN
from offline.splits import Split, UserCase, global_time
from reasoning.retrieval import merge, recent_route
from training.data import user_histories

RECENT_GRID = (0.5, 1.0, 2.0, 4.0)
BEHAVIOURAL_GRID = (0.5, 1.0, 2.0)
MIN_USERS = 50
INTENT_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
"""Intent weights `fit_intent_weight` tries (against the behavioural route's fitted weight)."""
INTENT_FIT_K = 20
INTENT_FIT_RULE = "intent@ndcg20-all+new/sft-holdout"
"""Names the rule `fit_intent_weight` follows (cached models record it)."""


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


class RouteLists(NamedTuple):
    """One user's lists the served merge fuses with the intent route."""

    recent: list[dict]
    """The user's recent unbought items, newest first (reasoning/retrieval.py `recent_route`)."""
    behavioural: list[dict]
    """The behavioural route; with a sequential model, the worker's fusion of the recent,
    co-visitation and sequential routes (reasoning/sequential.py `fuse`)."""
    fused: bool
    """The behavioural list holds the recent items already (the merge gives `recent` weight 0)."""

    def shown(self, n: int) -> frozenset[str]:
        """The first `n` items of each list the served merge reads (reasoning/pipeline.py
        `shown_items`): what `intent.complement_top` = n keeps out of the intent route."""
        from reasoning.pipeline import shown_items

        return shown_items(self.behavioural, [] if self.fused else self.recent, n)


def route_lists(knn: ItemKNN, sequential, case: UserCase, recent: Sequence[Sequence], n: int) -> RouteLists:
    """`case`'s lists as the worker builds them: `recent` is its state (newest first), `knn` the
    behavioural model, `sequential` a reasoning/sequential.py `SequentialRoute` or None."""
    from reasoning.sequential import fuse

    recent_items = recent_route(recent, set(case.bought), n)
    behavioural = [rec_item(i, s, "covisit" if a else "popular", "")
                   for i, s, a in knn.reasoner.score(recent, case.bought, n)]
    if sequential is None:
        return RouteLists(recent_items, behavioural, False)
    fusion = sequential.fusion
    items = sequential.route_items([case.history], [set(case.bought)], n)[0] if fusion.sequential > 0 else []
    return RouteLists(recent_items, fuse(fusion, recent, behavioural, items, set(case.bought), n), True)


def other_routes_top(knn: ItemKNN, sequential, case: UserCase, recent: Sequence[Sequence], k: int) -> set[str]:
    """The items the recent, co-visitation and sequential routes each hold in their own top k for
    `case` (apart, before any merge: what each would recall alone), less what the user bought:
    what the intent route's exclusive recall at the routes is counted against."""
    found = {e["item_id"] for e in recent_route(recent, set(case.bought), k)}
    found |= {i for i, _, _ in knn.reasoner.score(recent, case.bought, k)}
    if sequential is not None:
        found |= {e["item_id"] for e in sequential.route_items([case.history], [set(case.bought)], k)[0]}
    return found - set(case.bought)


def served_merge(weights: tuple[float, float, float], lists: RouteLists, intent: list[dict], bought: set[str],
                 n: int) -> list[dict]:
    """The served list: (recent, behavioural, intent) `weights` over `lists` and the intent items,
    as reasoning/retrieval.py `merge_with_intent` merges them (no recent route when fused).

    >>> lists = RouteLists([], [{"item_id": "b", "route": "covisit"}], False)
    >>> intent = [{"item_id": "i", "route": "intent"}]
    >>> [e["item_id"] for e in served_merge((1.0, 1.0, 0.5), lists, intent, set(), 5)]
    ['b', 'i']
    >>> [e["item_id"] for e in served_merge((1.0, 1.0, 2.0), lists, intent, set(), 5)]
    ['i', 'b']
    """
    w_recent, w_behavioural, w_intent = weights
    return merge([(0.0 if lists.fused else w_recent, lists.recent), (w_behavioural, lists.behavioural),
                  (w_intent, intent)], bought, n)


def pick_intent_weight(cases: Sequence[UserCase], lists: Sequence[RouteLists], intents: Sequence[list[dict]],
                       weights: tuple[float, float], grid: Sequence[float] = INTENT_GRID,
                       k: int = INTENT_FIT_K) -> tuple[float, dict]:
    """(the intent weight of `grid` whose served merge scores best, each weight's scores): the
    score is the mean of NDCG@k of the `all` list (minus what the user bought) and of the `new`
    list (minus everything they interacted with, users whose target is new); NDCG, not recall:
    with one held-out item per user, Recall@k ties most weights. Ties go to the smaller weight.

    >>> b = UserCase("u", ["x"], {"x"}, set(), {"t"}, {"t"})
    >>> lists = [RouteLists([], [{"item_id": f"b{j}"} for j in range(30)], False)]
    >>> pick_intent_weight([b], lists, [[{"item_id": "t"}]], (1.0, 1.0))[0]  # only the intent route has it
    2.0
    >>> pick_intent_weight([b], lists, [[{"item_id": "z"}]], (1.0, 1.0))[0]  # it has nothing: weight 0
    0.0
    """
    w_recent, w_behavioural = weights
    scores: dict[str, dict] = {}
    best = None
    for w in sorted(grid):
        r_all, r_new = [], []
        for case, routes, intent in zip(cases, lists, intents):
            ranked = [e["item_id"] for e in served_merge((w_recent, w_behavioural, w), routes, intent,
                                                         set(case.bought), 5 * k)]
            r_all.append(metrics.ndcg_at([i for i in ranked if i not in case.bought], case.targets, k))
            if case.new_targets:
                r_new.append(metrics.ndcg_at([i for i in ranked if i not in case.seen], case.new_targets, k))
        all_, new = float(np.mean(r_all)) if r_all else 0.0, float(np.mean(r_new)) if r_new else 0.0
        scores[str(w)] = {f"ndcg@{k}_all": all_, f"ndcg@{k}_new": new}
        if best is None or (all_ + new) / 2 > best[0]:
            best = ((all_ + new) / 2, w)
    return (best[1] if best else 0.0), scores


class HeldOut(NamedTuple):
    """The held-out users an intent weight is fitted on, with what the worker would have served them."""

    cases: list[UserCase]
    """A seeded sample of the held-out cases."""
    recents: list[list]
    """Each case's recent items (the worker's state: newest first) from the events before it."""
    knn: ItemKNN
    """The behavioural model fitted on those events."""
    lists: list[RouteLists]
    """Each case's recent and behavioural lists (`route_lists`)."""


def held_out(learn: pd.DataFrame, cases: Sequence[UserCase], sequential=None, users: int = 600, seed: int = 0,
             n: int = 100) -> HeldOut:
    """`fit_intent_weight`'s steps 1-2: a seeded sample of at most `users` cases, the behavioural
    model fitted on `learn`, each case's lists as the worker builds them (with `sequential`, its
    served fusion, whose model must not have learned the cases either: both models cut
    training/data.py `holdout`)."""
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(cases), min(users, len(cases)), replace=False).tolist()) if cases else []
    sample = [cases[i] for i in chosen]
    knn = ItemKNN()
    knn.fit(Split("intent-holdout", learn, learn.iloc[:0], list(sample)), [])
    histories = user_histories(learn)
    recents = [list(reversed(histories.get(c.user_id, []))) for c in sample]
    return HeldOut(sample, recents, knn, [route_lists(knn, sequential, c, r, n) for c, r in zip(sample, recents)])


def intent_lists(engine, held: HeldOut, sequential=None, n: int = 100) -> list[list[dict]]:
    """`fit_intent_weight`'s step 3: the intent route's items for each held-out case, the pipeline
    (reasoning/pipeline.py `reason`) in the engine's batches; with `sequential` a tag's items are
    ranked for the user by it, as in serving; with `intent.complement_top` the route leaves out
    what each case's lists show (`RouteLists.shown`), as the reasoner does."""
    from reasoning.pipeline import IntentInput, reason

    popularity = held.knn.reasoner.model.popularity.scores
    intents: list[list[dict]] = []
    size, top = engine.config.batch_size, engine.config.complement_top
    for start in range(0, len(held.cases), size):
        batch = list(zip(held.cases, held.recents, held.lists))[start:start + size]
        inputs = [IntentInput(c.user_id, r, frozenset(c.bought),
                              {i: s for i, s, anchor in held.knn.reasoner.score(r, c.bought, n) if anchor},
                              lists.shown(top))
                  for c, r, lists in batch]
        personal = sequential.personal([c.history for c, _, _ in batch]) if sequential is not None else None
        results, _ = reason(engine, inputs, popularity, n, personal=personal)
        intents += [r.items[:n] for r in results]
    return intents


def fit_intent_weight(engine, learn: pd.DataFrame, cases: Sequence[UserCase], weights: tuple[float, float],
                      sequential=None, users: int = 600, seed: int = 0) -> dict:
    """{"weight_intent", "validation": {...}}: the intent route's merge weight, fitted on held-out
    `cases` (each user's next event after `learn`, which the intent model never learned from).

    1. A seeded sample of at most `users` cases; fewer than MIN_USERS: no weight (None: the
       setting's fallback serves, contracts/settings.py `IntentSettings.weight_intent`).
    2. The behavioural model (item-kNN, the worker's model code) fitted on `learn`; each user's
       lists as the worker builds them (`route_lists`; with `sequential`, its served fusion, whose
       model must not have learned the cases either: both models cut training/data.py `holdout`).
       Steps 1-2: `held_out`.
    3. The pipeline (reasoning/pipeline.py `reason`) in the engine's batches; with `sequential`
       a tag's items are ranked for the user by it, as in serving (`intent_lists`).
    4. `pick_intent_weight` at the fitted recent and behavioural `weights`.
    """
    # 1-2. The sample and its lists.
    held = held_out(learn, cases, sequential, users, seed)
    if len(held.cases) < MIN_USERS:
        return {"weight_intent": None, "validation": {"users": len(held.cases), "rule": INTENT_FIT_RULE}}
    # 3. The intent route.
    intents = intent_lists(engine, held, sequential)
    # 4. The weight.
    weight, scores = pick_intent_weight(held.cases, held.lists, intents, weights)
    return {"weight_intent": weight, "validation": {
        "users": len(held.cases), "rule": INTENT_FIT_RULE, "grid": scores,
        "against": "sequential fusion" if sequential is not None else "co-visitation",
        "sequential_model": getattr(sequential, "version", None),
        # what shaped the route's items (contracts/settings.py `IntentSettings.unfitted_route`)
        "item_step": engine.retriever.item_step.value, "complement_top": engine.config.complement_top}}
