"""SASRec's training objective compared on validation only (training/sequential.py
`SequentialLoss`: the full softmax over the catalog, the default, against the sampled softmax of
the published "SASRec with sampled softmax" rows), as one JSON object:

    python -m benchmarks.sasrec_loss --dataset beauty --split leave-one-out \
        --out benchmarks/results/sasrec-loss-beauty.json

Each loss trains as the evaluation's `sasrec` baseline does (`SequentialConfig` defaults: one run
per dropout of the grid, early stopping on NDCG@10 of the validation cases, the best kept); the
figure per loss and dropout is the best validation NDCG@10 and its epoch. No test case is read.

`--full-from FILE` takes the full softmax's runs from an evaluation JSON's `sasrec` log instead of
training them again (the same split, config and seed give the same runs: the full-softmax path
draws no negatives).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.ingest import commit, machine


def _runs(log: list[dict], val: str) -> dict[str, dict]:
    """Per dropout: epochs trained, the best validation score and its epoch, seconds."""
    out: dict[str, dict] = {}
    for dropout in sorted({e["dropout"] for e in log}):
        entries = [e for e in log if e["dropout"] == dropout]
        best = max(entries, key=lambda e: e[val])
        out[str(dropout)] = {"epochs": len(entries), "best_epoch": best["epoch"], f"best_{val}": round(best[val], 4),
                             "seconds": round(sum(e["seconds"] for e in entries), 1)}
    return out


def run(dataset: str, split_name: str, losses: list[str], full_from: Path | None = None) -> dict:
    from contracts.settings import Settings
    from offline import datasets
    from offline.splits import make_split
    from training.sequential import SequentialConfig, SequentialLoss, train_sequential

    started = time.perf_counter()
    settings = Settings()
    data = datasets.load(dataset, settings.data_dir)
    split = make_split(data.events, split_name)
    cfg = SequentialConfig()
    val = f"val_ndcg@{cfg.val_k}"
    results: dict[str, dict] = {}
    for loss in map(SequentialLoss, losses):
        if loss is SequentialLoss.FULL and full_from is not None:
            log = json.loads(full_from.read_text())["methods"]["sasrec"]["log"]
            results[loss] = {"source": str(full_from), "runs": _runs(log, val)}
            continue
        trained = train_sequential(split.train, split.validation or None, SequentialConfig(loss=loss),
                                   progress=lambda m: print(m, file=sys.stderr, flush=True))
        results[loss] = {"source": "this run", "runs": _runs(trained.log, val)}
    best = {loss: max(r[f"best_{val}"] for r in res["runs"].values()) for loss, res in results.items()}
    return {
        "command": "python -m benchmarks.sasrec_loss " + " ".join(sys.argv[1:]),
        "machine": machine(), "commit": commit(), "dataset": dataset, "split": split_name,
        "config": {"shape": vars(cfg.shape), "dropout_grid": cfg.dropout_grid, "negatives": cfg.negatives,
                   "batch_size": cfg.batch_size, "lr": cfg.lr, "patience": cfg.patience,
                   "lr_drops": cfg.lr_drops},
        "validation_users": len(split.validation) if split.validation else None,
        "losses": results, f"best_{val}": best, "chosen": max(best, key=best.get),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--split", default="leave-one-out")
    parser.add_argument("--losses", default="full,sampled")
    parser.add_argument("--full-from", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args.dataset, args.split, args.losses.split(","), args.full_from)
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
