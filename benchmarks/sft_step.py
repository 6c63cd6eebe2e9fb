"""Seconds per stage-1 SFT step (forward and backward of one batch of full-text examples), before
and after training/sft.py's two changes, on the same batches in the same run, as one JSON object:

    python -m benchmarks.sft_step --datasets beauty,rees46,taobao --out benchmarks/results/sft-step.json

- `labels`: the model's own `labels=` loss over the whole right-padded batch (the code before);
- `answer_only`: `_batch_loss`, the LM head at the answer positions only;
- `chunked`: `_backward`, that loss in length-sorted chunks of `SFTConfig.chunk` (what trains).

Per dataset: the leave-one-out split's train part, the default SFTConfig's vocabulary, episodes
and tokenizer (as training/sft.py steps 0-3 build them), 2,000 episodes' examples, `--steps`
batches of `batch_size` drawn once and timed by each variant in turn (the first batch a warm-up,
the median of the rest reported), one torch thread.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from benchmarks.ingest import commit, machine


def _examples(dataset: str, settings, cfg):
    from features.catalog import Catalog
    from offline import datasets
    from offline.splits import leave_one_out, make_split
    from reasoning.context import answer, messages, task_tags
    from reasoning.intent_model import IntentModel, train_tokenizer
    from reasoning.tags import build_vocabulary
    from training.data import episodes
    from training.sft import build_atoms, examples_for, tag_embedder

    data = datasets.load(dataset, settings.data_dir)
    train = make_split(data.events, "leave-one-out").train
    catalog = Catalog.from_frames(data.items, data.events)
    learn = leave_one_out(train, min_events=3).inputs
    embedder, atoms = build_atoms(catalog, train, settings.cache_dir)
    vocab, _ = build_vocabulary(catalog, learn, tag_embedder(catalog, embedder), cfg.max_tags)
    eps = episodes(learn, catalog, vocab, cfg.max_items, cfg.horizon, cfg.episodes_per_user, seed=cfg.seed)
    corpus = [" ".join(m["content"] for m in messages(ep.context, "text", task_tags(), catalog)) for ep in eps[:4000]]
    corpus += vocab.tags + vocab.personas + [answer(vocab.tags[i: i + 10]) for i in range(0, len(vocab), 10)]
    model = IntentModel.create(cfg.lm, train_tokenizer(corpus, cfg.lm.vocab_size), atoms.dim, vocab,
                               {"version": "bench", "embedder": embedder.name}, seed=cfg.seed)
    sample = random.Random(cfg.seed).sample(eps, min(2000, len(eps)))
    return model, examples_for(model, sample, catalog, None, "text", cfg, cfg.seed)


def _labels_loss(model, batch) -> torch.Tensor:
    """The loss as training/sft.py computed it before: full logits, labels on the answers."""
    seqs = [e.context + e.suffix + e.answer for e in batch]
    embeds, mask, positions = model.inputs(seqs, [None] * len(batch), pad_left=False)
    labels = torch.full(mask.shape, -100, dtype=torch.long)
    for b, e in enumerate(batch):
        start = len(e.context) + len(e.suffix)
        labels[b, start: start + len(e.answer)] = torch.tensor(e.answer)
    return model.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, labels=labels).loss


def run(dataset: str, steps: int) -> dict:
    from contracts.settings import Settings
    from training.sft import SFTConfig, _backward, _batch_loss

    cfg = SFTConfig()
    model, examples = _examples(dataset, Settings(), cfg)
    model.lm.train()
    variants = {"labels": lambda b: _labels_loss(model, b).backward(),
                "answer_only": lambda b: _batch_loss(model, b).backward(),
                "chunked": lambda b: _backward(model, b, cfg.chunk)}
    rng = random.Random(1)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    tokens = []
    for _ in range(steps):
        batch = rng.sample(examples, cfg.batch_size)
        tokens.append(sum(len(e.context) + len(e.suffix) + len(e.answer) for e in batch))
        for name, step in variants.items():
            model.lm.zero_grad(set_to_none=True)
            started = time.perf_counter()
            step(batch)
            seconds[name].append(time.perf_counter() - started)
    median = {name: sorted(v[1:])[len(v[1:]) // 2] for name, v in seconds.items()}
    lengths = sorted(len(e.context) + len(e.suffix) + len(e.answer) for e in examples)
    return {"dataset": dataset, "batch_size": cfg.batch_size, "chunk": cfg.chunk, "steps_timed": steps - 1,
            "tokens_per_example_p50_p90_max": [lengths[len(lengths) // 2], lengths[int(0.9 * len(lengths))],
                                               lengths[-1]],
            "tokens_per_batch_mean": round(sum(tokens) / len(tokens)),
            "median_step_s": {k: round(v, 3) for k, v in median.items()},
            "speedup_vs_labels": {k: round(median["labels"] / v, 2) for k, v in median.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="beauty,rees46,taobao")
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"command": "python -m benchmarks.sft_step " + " ".join(sys.argv[1:]), "machine": machine(),
              "commit": commit(), "torch_threads": 1,
              "results": [run(d.strip(), args.steps) for d in args.datasets.split(",") if d.strip()]}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
