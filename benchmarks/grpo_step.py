"""Seconds per GRPO step on each available device, as one JSON object: the prepared script of the
GPU check (issue 5), runnable on any machine.

    # here: write a bundle (the REES46 eval model, its item atoms, 256 train episodes)
    python -m benchmarks.grpo_step export --out .device/grpo
    # anywhere with torch and transformers (no Kafka, Redis, faiss or settings needed):
    python -m benchmarks.grpo_step run --bundle .device/grpo --steps 8

`run` times the same `GRPOTrainer.step` (sampling with the KV cache and the trie, rewards,
three teacher-forced passes, two updates) on the CPU and, when CUDA is there, on the GPU, with
the same episodes and seeds; the CPU figure is the baseline measured in the same run. With
`--compare-cache` it also times the CPU with decoding concatenating the KV cache each step (as
before reasoning/decoding.py `ReservedLayer`), the before of that change in the same run. R_align
is a constant here (the reward model is a 60k-parameter MLP on the CPU, not what a GPU changes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np


def export(out: Path, dataset: str = "rees46", episodes_n: int = 256, model: Path | None = None) -> None:
    """The bundle: the evaluation's intent model of `dataset` (or `model`, e.g. the demo's at
    intent.model_dir), its item atoms and `episodes_n` train episodes."""
    from contracts.settings import Settings
    from evaluation.intent_method import split_intent_model
    from features.catalog import Catalog
    from offline import datasets
    from offline.splits import make_split
    from training.data import episodes
    from training.rl import engine_for
    from training.sft import SFTConfig

    settings = Settings()
    data = datasets.load(dataset, settings.data_dir)
    split = make_split(data.events, "global-time")
    catalog = Catalog.from_frames(data.items, data.events)
    model_dir = model or split_intent_model(settings, data, split, SFTConfig(), catalog=catalog)[0]
    engine = engine_for(model_dir, settings.cache_dir, settings.intent)
    eps = episodes(split.train, catalog, engine.model.vocab, settings.intent.max_items, 5, 12, seed=1)
    eps = random.Random(0).sample(eps, min(episodes_n, len(eps)))
    write_bundle(out, model_dir, engine.atoms, eps)
    print(json.dumps({"bundle": str(out), "model": engine.version, "episodes": len(eps)}))


def write_bundle(out: Path, model_dir: Path, atoms, eps) -> None:
    """The bundle's files: the model directory, the atoms of its catalog, the episodes."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(model_dir, out / "model")
    ids = sorted(atoms.row)
    np.savez(out / "atoms.npz", ids=np.array(ids), vectors=atoms.vectors[[atoms.row[i] for i in ids]])
    (out / "episodes.json").write_text(json.dumps([
        {"user_id": e.context.user_id, "items": list(e.context.items), "situation": e.context.situation,
         "profile": e.context.profile, "categories": sorted(e.target_categories)} for e in eps]))


class Bundle(NamedTuple):
    """A bundle loaded: the model on a device, what decoding reads beside it, the episodes."""

    model: Any
    atoms: Any
    catalog: Any
    tag_vectors: np.ndarray
    episodes: list


def load_bundle(bundle: Path, device: str) -> Bundle:
    import pandas as pd

    from features.catalog import Catalog
    from reasoning.context import UserContext
    from reasoning.intent_model import AtomTable, IntentModel
    from training.data import Episode

    model_dir = bundle / "model"
    catalog = Catalog.from_frames(pd.read_parquet(model_dir / "catalog.parquet"))
    z = np.load(bundle / "atoms.npz")
    atoms = AtomTable([str(i) for i in z["ids"]], z["vectors"], None, catalog)
    eps = [Episode(UserContext(e["user_id"], tuple(tuple(x) for x in e["items"]), e["situation"], e["profile"]),
                   (), frozenset(e["categories"])) for e in json.loads((bundle / "episodes.json").read_text())]
    return Bundle(IntentModel.load(model_dir).to(device), atoms, catalog, np.load(model_dir / "tag_vectors.npy"), eps)


def _time(bundle: Path, device: str, steps: int, contexts: int, reserve_cache: bool = True) -> dict:
    import torch

    from training.grpo import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    model, atoms, catalog, tag_vectors, eps = load_bundle(bundle, device)
    cfg = GRPOConfig(steps=steps, contexts_per_step=contexts)
    trainer = GRPOTrainer(model, atoms, catalog, tag_vectors, lambda h, p, t: np.full(len(t), 0.9), lambda c: [], cfg)
    trainer.backend.decoder.reserve_cache = reserve_cache
    rng = random.Random(0)
    trainer.step(rng.sample(eps, contexts))  # warm-up (allocations, kernels)
    if device == "cuda":
        torch.cuda.synchronize()
    history = []
    for _ in range(steps):
        history.append(trainer.step(rng.sample(eps, contexts)))
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = [h["seconds"] for h in history]
    return {"device": device, "steps": steps, "contexts_per_step": contexts, "samples_per_step": history[0]["samples"],
            "seconds_per_step": float(np.mean(seconds)), "seconds_per_step_min": float(np.min(seconds)),
            "sampling_share": float(np.sum([h["sample_seconds"] for h in history]) / np.sum(seconds)),
            "contexts_per_s": float(np.mean([h["contexts_per_s"] for h in history])),
            "samples_per_s": float(np.mean([h["samples_per_s"] for h in history])),
            "torch_threads": torch.get_num_threads(), "reserved_cache": reserve_cache}


def device_machine() -> dict:
    """The machine of a bundle run (its GPU, when CUDA is there)."""
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "torch": torch.__version__}


def run(bundle: Path, steps: int, contexts: int, compare_cache: bool = False) -> None:
    import torch

    results = [_time(bundle, "cpu", steps, contexts)]
    if compare_cache:
        before = _time(bundle, "cpu", steps, contexts, reserve_cache=False)
        results.append(before)
    if torch.cuda.is_available():
        results.append(_time(bundle, "cuda", steps, contexts))
    out = {"command": f"python -m benchmarks.grpo_step run --bundle {bundle} --steps {steps} --contexts {contexts}"
                      + (" --compare-cache" if compare_cache else ""),
           "machine": device_machine(),
           "results": results}
    if compare_cache:
        out["cpu_concatenated_over_reserved_seconds_per_step"] = (before["seconds_per_step"]
                                                                  / results[0]["seconds_per_step"])
    gpu = [r for r in results if r["device"] == "cuda"]
    if gpu:
        out["cpu_over_gpu_seconds_per_step"] = results[0]["seconds_per_step"] / gpu[0]["seconds_per_step"]
    print(json.dumps(out, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--dataset", default="rees46")
    e.add_argument("--model", type=Path, default=None, help="model directory (default: the evaluation's)")
    r = sub.add_parser("run")
    r.add_argument("--bundle", type=Path, required=True)
    r.add_argument("--steps", type=int, default=8)
    r.add_argument("--contexts", type=int, default=8)
    r.add_argument("--compare-cache", action="store_true")
    args = parser.parse_args()
    if args.cmd == "export":
        export(args.out, args.dataset, model=args.model)
    else:
        run(args.bundle, args.steps, args.contexts, args.compare_cache)


if __name__ == "__main__":
    main()
