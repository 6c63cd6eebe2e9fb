"""The intent route's item steps (reasoning/retrieval.py `ItemStep`) compared on held-out train
users only, the figures `intent.item_step`'s default was chosen by, as one JSON object:

    python -m benchmarks.item_step --dataset rees46 --out benchmarks/results/item-step-rees46.json
    python -m benchmarks.item_step --dataset beauty --split leave-one-out --out ...

The cases are the ones the intent weight is fitted on (training/data.py `holdout` of the split's
train part: the leave-one-out split's validation items, else each user's last train event), a
seeded sample of 600 as in `fit_intent_weight`, with the lists built as it builds them (the
behavioural route fitted on the events before, the sequential route of the split). For each
item step, from the same model: the intent route alone (Recall@20 of its own list, `all` and
`new`), its top-20 hits that none of the recent, co-visitation and sequential routes' own top 20
holds (and their share of the hits any of the four top 20s holds: exclusive recall at the
routes, evaluation/intent_method.py), the intent weight `pick_intent_weight` would choose,
with its grid, and the diversity of the explanations in its top 20 (reasoning/explanations.py
`diversity`: what explanation changes are compared by). No test case is read. `--complement
0,20` runs every step again with each `intent.complement_top` (the route leaving out what the
other routes show: reasoning/pipeline.py `IntentInput.shown`), the figures its default was
chosen by.

The model: `--model DIR`, else the split's intent model as the evaluation gets it
(evaluation/intent_method.py `split_intent_model`, trained on the split's train part if the
cache has none).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.ingest import commit, machine
from contracts.settings import ItemStep

USERS = 600
K = 20


def _name(step, complement_top: int) -> str:
    """A row's name: the item step, and the complement when there is one.

    >>> _name(ItemStep.PRODUCT, 0), _name(ItemStep.PRODUCT, 20)
    ('product', 'product, complement 20')
    """
    return step.value + (f", complement {complement_top}" if complement_top else "")


def run(dataset: str, model_dir: Path | None = None, split_name: str = "global-time",
        complement: tuple[int, ...] = (0,)) -> dict:
    from contracts.settings import Settings
    from evaluation.intent_method import split_intent_model
    from offline import datasets, metrics
    from offline.splits import make_split
    from reasoning.engine import IntentEngine
    from reasoning.explanations import diversity
    from reasoning.sequential import SequentialRoute
    from training.data import holdout
    from training.merge_weights import held_out, intent_lists, other_routes_top, pick_intent_weight
    from training.sequential import cached_model
    from training.sft import SFTConfig

    started = time.perf_counter()
    settings = Settings()
    served = _name(ItemStep(settings.intent.item_step), settings.intent.complement_top)  # before the runs change it
    data = datasets.load(dataset, settings.data_dir)
    split = make_split(data.events, split_name)
    sequential = SequentialRoute(cached_model(split.train, settings.cache_dir, split.validation or None,
                                              label="intent"))
    given = model_dir
    if model_dir is None:
        model_dir, _ = split_intent_model(settings, data, split, SFTConfig(), sequential)
    learn, cases = holdout(split.train, split.validation or None)
    held = held_out(learn, cases, sequential, USERS)
    sample, lists = held.cases, held.lists
    others = [other_routes_top(held.knn, sequential, c, r, K) for c, r in zip(sample, held.recents)]
    engine = IntentEngine(model_dir, settings.intent, settings.cache_dir)
    merge = engine.model.meta["merge"]
    steps = {}
    for step, top in [(step, top) for top in complement for step in ItemStep]:
        engine.retriever.item_step = step
        engine.config.complement_top = top
        t0 = time.perf_counter()
        intents = intent_lists(engine, held, sequential)
        seconds = time.perf_counter() - t0
        weight, grid = pick_intent_weight(sample, lists, intents, (merge["weight_recent"], merge["weight_behavioural"]))
        alone_all, alone_new, only_intent, route_hits, any_hits = [], [], 0, 0, 0
        by_item: dict[str, list[str]] = {}
        for case, items, channels in zip(sample, intents, others):
            ids = [e["item_id"] for e in items]
            for e in items[:K]:
                by_item.setdefault(e["item_id"], []).append(e["explanation"])
            alone_all.append(metrics.recall_at([i for i in ids if i not in case.bought], case.targets, K))
            if case.new_targets:
                alone_new.append(metrics.recall_at([i for i in ids if i not in case.seen], case.new_targets, K))
            found = {i for i in ids[:K] if i in case.targets}
            route_hits += len(found)
            only_intent += len(found - channels)
            any_hits += len((found | channels) & case.targets)
        steps[_name(step, top)] = {
            f"intent_route_alone_recall@{K}_all": float(np.mean(alone_all)),
            f"intent_route_alone_recall@{K}_new": float(np.mean(alone_new)) if alone_new else None,
            f"intent_top{K}_hits": route_hits, f"intent_top{K}_hits_in_no_other_top{K}": only_intent,
            f"routes_top{K}_hits": any_hits, "exclusive_recall_routes": only_intent / any_hits if any_hits else 0.0,
            "weight_intent": weight, "grid": grid, "seconds": round(seconds, 1),
            "explanation_diversity": diversity(by_item), "explained_items_with_2_or_more": sum(len(v) >= 2 for v in by_item.values())}
    return {
        "command": f"python -m benchmarks.item_step --dataset {dataset} --split {split_name}"
                   + (f" --model {given}" if given else "")
                   + (f" --complement {','.join(map(str, complement))}" if complement != (0,) else ""),
        "machine": machine(), "commit": commit(), "dataset": data.name, "split": split_name,
        "cases": "validation items" if split.validation else "each user's last train event",
        "users": len(sample), "users_new": sum(1 for c in sample if c.new_targets), "model": engine.version,
        "sequential_model": sequential.version, "served_default": served,
        "steps": steps, "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="rees46")
    parser.add_argument("--model", type=Path, default=None, help="an intent model directory (default: the split's)")
    parser.add_argument("--split", default="global-time", help="global-time, per-user-last or leave-one-out")
    parser.add_argument("--complement", default="0",
                        help="intent.complement_top values to run each item step with, comma-separated (0: none)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args.dataset, args.model, args.split, tuple(int(v) for v in args.complement.split(",")))
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
