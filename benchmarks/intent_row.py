"""The served intent row of `intentstream eval` (`intent_served`) on a given intent model, so a
change to serving (the item step, the merge) can be measured on the test users without training
the model again, as one JSON object in the evaluation's format:

    python -m benchmarks.intent_row --dataset beauty --split leave-one-out --model DIR --out F

Same split, protocol and scoring as `intentstream eval` (evaluation/harness.py `score_method`),
the sequential model of the split (cached), the intent model at DIR as it is: its merge weights
are the ones fitted when it was trained. Use a model trained on this split's train events only
(the evaluation's own, `<cache_dir>/models/eval-<dataset>-<split>-<key>`): nothing here checks.

Without `--model` it trains (or reuses) the evaluation's own model on each backbone of `--bases`
(tiny, smollm2; `SFTConfig.for_base`), one row each (`intent_<base>`), by the rule the `intent`
methods use (evaluation/intent_method.py `split_intent_model`). `--users N` scores a seeded random
sample of N test users (`--seed`), the same users for every backbone: for a backbone that cannot
reason about a whole test set here (SmolLM2 at 0.37 users/s on the 2-core VM: 17 h for Beauty's
22,363 users); the JSON names the sample (`sample`), the counts stay the full split's.
`--no-sequential` turns the sequential route off (its SASRec is not trained: 57 min on Beauty
here); the tags' items are then ranked without it (reasoning/retrieval.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.ingest import commit, machine


def run(dataset: str, split_name: str, model_dir: Path | None, bases: Sequence[str] = ("tiny",),
        users: int | None = None, seed: int = 0, sequential: bool = True,
        on_row: Callable[[dict], None] | None = None) -> dict:
    """The row of the model at `model_dir` (`intent_served`), or one row per backbone of `bases`
    (`intent_<base>`), each trained on the split's train events; `sequential` False turns the
    sequential route off (no SASRec trained: the merge and the item step go without it).
    `on_row` gets the result so far after each row (a run killed in its second backbone's
    training, OOM on Beauty, had lost the first row's 25 minutes)."""
    from contracts.settings import Settings
    from evaluation.harness import evaluate, score_method
    from evaluation.intent_method import IntentMethod
    from offline import datasets
    from offline.methods import category_lookup
    from offline.splits import make_split, sample_cases
    from training.sft import SFTConfig

    if model_dir is not None and len(bases) != 1:
        raise ValueError("--model names one model: give no --bases with it")
    started = time.perf_counter()
    settings = Settings()
    if not sequential:
        settings = settings.model_copy(update={"sequential": settings.sequential.model_copy(update={"enabled": False})})
    data = datasets.load(dataset, settings.data_dir)
    result = evaluate(data, split_name, (10, 20), [], settings)  # the protocol and counts, no method
    split = sample_cases(make_split(data.events, split_name), users, seed)
    ks = sorted(set(result["protocol"]["ks"]))
    catalog, category_of = data.items.item_id.astype(str).tolist(), category_lookup(data.items, data.events)
    what = f"--model {model_dir}" if model_dir else f"--bases {','.join(bases)}"
    options = (f" --users {users} --seed {seed}" if users else "") + ("" if sequential else " --no-sequential")
    if users:
        result["sample"] = {"users": len(split.cases), "seed": seed, "of": result["counts"]["users_evaluated"]}
    result.update({"command": f"python -m benchmarks.intent_row --dataset {dataset} --split {split_name} {what}{options}",
                   "machine": machine(), "commit": commit(), "sequential_route": sequential,
                   "intent_settings": settings.intent.model_dump(mode="json")})
    for base in bases:
        name = "intent_served" if model_dir else f"intent_{base}"
        method = IntentMethod(settings, data, sft=SFTConfig.for_base(base), model_dir=model_dir, name=name,
                              served_only=True, progress=lambda message: print(message, file=sys.stderr, flush=True))
        result["methods"][name] = score_method(method, split, catalog, ks, category_of)
        result["seconds"] = round(time.perf_counter() - started, 1)
        if on_row:
            on_row(result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="global-time")
    parser.add_argument("--model", type=Path, default=None, help="an intent model (default: train on the split)")
    parser.add_argument("--bases", default="tiny", help="without --model: the backbones to train, comma-separated "
                        "(tiny, smollm2), one row each")
    parser.add_argument("--users", type=int, default=None, help="score a seeded random sample of this many test users")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sequential", action="store_true", help="the sequential route off (no SASRec trained)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    def write(result: dict) -> None:
        if args.out:
            args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")

    result = run(args.dataset, args.split, args.model, args.bases.split(","), args.users, args.seed,
                 not args.no_sequential, on_row=write)
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
