"""`intentstream eval`: every method under one protocol, one table (or one JSON object).

For each evaluated user a method ranks at least 100 candidates. Two lists are scored:
`all` (the ranking without items the user bought) against all targets, and `new` (the ranking
without every item the user touched before the test period, the next candidates moving up)
against new targets only, over the users who have new targets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from offline import metrics as m
from offline.datasets import Dataset
from offline.methods import (
    ItemKNN,
    Method,
    Oracle,
    Popularity,
    RandomItems,
    RecentHistory,
    category_lookup,
)
from offline.splits import Split, UserCase, make_split

METHODS = ("popularity", "popularity_global", "recent_history", "itemknn", "sasrec", "replay", "oracle", "random")
OPTIONAL_METHODS = ("intent", "intent_served", "intent_smollm2", "replay2")
"""Not in the default run: `intent` trains the intent model on the tiny base (minutes) and also
reasons with the full-text context and the multi-route baseline for their figures;
`intent_served` is the same model and list in the served context mode only (a third of the
reasoning: for test sets of tens of thousands of users, such as Beauty's); `intent_smollm2` on
SmolLM2-135M-Instruct (tens of minutes on a CPU, served mode only); `replay2` is the replay
method with two workers on one group (it should score what `replay` scores)."""
MIN_CANDIDATES = 100


def build_method(name: str, settings=None, dataset: Dataset | None = None, progress=None) -> Method:
    if name == "popularity":
        return Popularity()
    if name == "popularity_global":
        return Popularity(window_ms=None)
    if name == "recent_history":
        return RecentHistory()
    if name == "itemknn":
        return ItemKNN()
    if name == "oracle":
        return Oracle()
    if name == "random":
        return RandomItems()
    if name == "sasrec":
        from evaluation.sasrec import SASRecMethod

        return SASRecMethod(progress=progress, cache_dir=settings.cache_dir if settings is not None else None)
    if name in ("replay", "replay2"):
        from evaluation.replay_method import ReplayMethod

        if settings is None:
            raise ValueError("the replay method needs settings (Kafka, Redis, Feast)")
        return ReplayMethod(settings, workers=2 if name == "replay2" else 1, dataset=dataset, progress=progress)
    if name in ("intent", "intent_served", "intent_smollm2"):
        from evaluation.intent_method import IntentMethod
        from training.sft import SFTConfig

        if settings is None or dataset is None:
            raise ValueError("the intent method needs settings and the dataset (item text)")
        base = "smollm2" if name == "intent_smollm2" else "tiny"
        # SmolLM2 reasons ~300x slower here: the served mode only.
        return IntentMethod(settings, dataset, sft=SFTConfig.for_base(base), progress=progress, name=name,
                            served_only=name != "intent")
    raise ValueError(f"unknown method {name!r}; choose from {METHODS + OPTIONAL_METHODS}")


def _scores(lists: list[list[str]], cases: list[UserCase], target_of: Callable[[UserCase], set[str]],
            ks: Sequence[int], category_of: dict[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        r, n, h, c = [], [], [], []
        for ranked, case in zip(lists, cases):
            targets = target_of(case)
            cats = {category_of[t] for t in targets if t in category_of}
            r.append(m.recall_at(ranked, targets, k))
            n.append(m.ndcg_at(ranked, targets, k))
            h.append(m.hit_at(ranked, targets, k))
            c.append(m.category_hit_at(ranked, cats, category_of, k))
        out[f"recall@{k}"] = float(np.mean(r)) if r else 0.0
        out[f"ndcg@{k}"] = float(np.mean(n)) if n else 0.0
        out[f"hr@{k}"] = float(np.mean(h)) if h else 0.0
        out[f"category_hr@{k}"] = float(np.mean(c)) if c else 0.0
    return out


def score_method(method: Method, split: Split, catalog: Sequence[str], ks: Sequence[int],
                 category_of: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    method.fit(split, catalog)
    fitted = time.perf_counter()
    all_lists, new_lists = [], []
    ns = [max(MIN_CANDIDATES, max(ks) + len(case.seen)) for case in split.cases]
    rank_many = getattr(method, "rank_many", None)  # a model that ranks a batch of users at once
    rankings = rank_many(split.cases, ns) if rank_many else map(method.rank, split.cases, ns)
    for case, ranked in zip(split.cases, rankings):
        all_lists.append([i for i in ranked if i not in case.bought])
        new_lists.append([i for i in ranked if i not in case.seen])
    if hasattr(method, "close"):
        method.close()
    with_new = [i for i, c in enumerate(split.cases) if c.new_targets]
    k_cov = 20
    top = [lst[:k_cov] for lst in all_lists]
    result = {
        "all": _scores(all_lists, split.cases, lambda c: c.targets, ks, category_of),
        "new": _scores([new_lists[i] for i in with_new], [split.cases[i] for i in with_new],
                       lambda c: c.new_targets, ks, category_of),
        f"coverage@{k_cov}": len({i for lst in top for i in lst}) / max(len(catalog), 1),
        f"novelty@{k_cov}": float(np.mean([m.novelty_at(lst, c.seen, k_cov) for lst, c in zip(top, split.cases)]))
        if split.cases else 0.0,
        "users": len(split.cases),
        "users_new": len(with_new),
        "fit_seconds": round(fitted - started, 2),
        "rank_seconds": round(time.perf_counter() - fitted, 2),
    }
    for extra in ("log", "best_val", "stats"):
        if getattr(method, extra, None):
            result[extra] = getattr(method, extra)
    return result


def evaluate(dataset: Dataset, split_name: str = "global-time", ks: Sequence[int] = (10, 20),
             methods: Sequence[str] = METHODS, settings=None,
             on_method: Callable[[str], None] | None = None,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    split = make_split(dataset.events, split_name)
    if split_name == "leave-one-out":  # the cut-offs the published leave-one-out tables report
        ks = sorted(set(ks) | {5, 10})
    catalog = dataset.items.item_id.astype(str).tolist()
    category_of = category_lookup(dataset.items, dataset.events)
    results: dict[str, Any] = {}
    for name in methods:
        if on_method:
            on_method(name)
        results[name] = score_method(build_method(name, settings, dataset, progress), split, catalog, ks, category_of)
    return {
        "dataset": dataset.name,
        "protocol": {**split.protocol, "ks": list(ks), "min_candidates": MIN_CANDIDATES,
                     "recall": "hits in top K / min(|targets|, K)",
                     "all": "ranking minus bought items, against all targets",
                     "new": "ranking minus every item touched before, against never-touched targets"},
        "counts": {
            "train_events": len(split.train), "test_events": len(split.test),
            "users_evaluated": len(split.cases), "users_with_new_targets": sum(1 for c in split.cases if c.new_targets),
            "items": len(catalog),
        },
        "methods": results,
    }
