"""The served intent row of `intentstream eval` (`intent_served`) on a given intent model, so a
change to serving (the item step, the merge) can be measured on the test users without training
the model again, as one JSON object in the evaluation's format:

    python -m benchmarks.intent_row --dataset beauty --split leave-one-out --model DIR --out F

Same split, protocol and scoring as `intentstream eval` (evaluation/harness.py `score_method`),
the sequential model of the split (cached), the intent model at DIR as it is: its merge weights
are the ones fitted when it was trained. Use a model trained on this split's train events only
(the evaluation's own, `<cache_dir>/models/eval-<dataset>-<split>-<key>`): nothing here checks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.ingest import commit, machine


def run(dataset: str, split_name: str, model_dir: Path) -> dict:
    from contracts.settings import Settings
    from evaluation.harness import evaluate, score_method
    from evaluation.intent_method import IntentMethod
    from offline import datasets
    from offline.methods import category_lookup
    from offline.splits import make_split

    started = time.perf_counter()
    settings = Settings()
    data = datasets.load(dataset, settings.data_dir)
    result = evaluate(data, split_name, (10, 20), [], settings)  # the protocol and counts, no method
    split = make_split(data.events, split_name)
    ks = sorted(set(result["protocol"]["ks"]))
    method = IntentMethod(settings, data, model_dir=model_dir, name="intent_served", served_only=True,
                          progress=lambda message: print(message, file=sys.stderr, flush=True))
    result["methods"]["intent_served"] = score_method(method, split, data.items.item_id.astype(str).tolist(), ks,
                                                      category_lookup(data.items, data.events))
    result.update({"command": f"python -m benchmarks.intent_row --dataset {dataset} --split {split_name} "
                              f"--model {model_dir}",
                   "machine": machine(), "commit": commit(), "seconds": round(time.perf_counter() - started, 1),
                   "intent_settings": settings.intent.model_dump(mode="json")})
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="global-time")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    text = json.dumps(run(args.dataset, args.split, args.model), indent=2, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
