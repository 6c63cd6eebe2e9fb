"""Reasoning throughput on each available device, as one JSON object: the prepared script of the
reasoning tier's GPU figure (issue 12), runnable on any machine with torch and transformers.

    # here: the bundle of benchmarks/grpo_step.py (the REES46 eval model, its atoms, 256 contexts)
    python -m benchmarks.grpo_step export --out .device/grpo
    # anywhere (no Kafka, Redis, faiss or settings needed):
    python -m benchmarks.device_reasoning --bundle .device/grpo

What it times: the LM stages of a reasoning batch (reasoning/pipeline.py `propose`: the context
prefill, planner, experts, arbiter scoring and selection), greedy, with intent's default K, M and
N, the bundle's contexts in batches of `batch` (32, as `bench reasoner`): on the CPU with one
torch thread (the baseline, measured in the same run) and, when CUDA is there, on the GPU.
Retrieval (faiss) and explanations are left out: they use no LM and run on the CPU wherever the
LM runs (about 14% of a batch on a CPU, `bench reasoner`'s stage shares), so users/s here is that
of the LM stages. It also gives the share of users whose final tags are the same on both devices
(their float arithmetic differs, so a greedy choice near a tie may differ).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from benchmarks.grpo_step import device_machine, load_bundle


class LMEngine(NamedTuple):
    """What `propose` reads of an IntentEngine (reasoning/engine.py): no catalog index, no retriever."""

    config: Any
    backend: Any
    model: Any
    tag_vectors: np.ndarray


def measure(bundle: Path, device: str, users: int = 256, batch: int = 32, threads: int = 1) -> dict[str, Any]:
    """Users/s of the LM stages on `device` (`threads` torch threads), and each user's final tags."""
    import torch

    from contracts.settings import IntentSettings
    from reasoning.backends import LocalBackend
    from reasoning.pipeline import propose

    torch.set_num_threads(threads)
    b = load_bundle(bundle, device)
    cfg = IntentSettings()
    engine = LMEngine(cfg, LocalBackend(b.model, b.atoms, b.catalog), b.model, b.tag_vectors)
    contexts = [e.context for e in b.episodes][:users]

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    propose(engine, contexts[:batch], cfg.mode)  # warm-up (allocations, kernels)
    sync()
    finals, tokens = [], 0
    started = time.perf_counter()
    for start in range(0, len(contexts), batch):
        _, _, final, session = propose(engine, contexts[start:start + batch], cfg.mode)
        finals += [[tag for tag, _ in tags] for tags in final]
        tokens += session.tokens
    sync()
    wall = time.perf_counter() - started
    return {"device": device, "users": len(contexts), "batch_size": batch, "torch_threads": torch.get_num_threads(),
            "seconds": round(wall, 3), "users_per_s": round(len(contexts) / wall, 2),
            "lm_tokens_per_user": round(tokens / max(len(contexts), 1), 1), "final_tags": finals}


def run(bundle: Path, users: int, batch: int) -> dict[str, Any]:
    import torch

    results = [measure(bundle, "cpu", users, batch)]
    if torch.cuda.is_available():
        results.append(measure(bundle, "cuda", users, batch))
    finals = [r.pop("final_tags") for r in results]
    out: dict[str, Any] = {
        "command": f"python -m benchmarks.device_reasoning --bundle {bundle} --users {users} --batch {batch}",
        "machine": device_machine(), "what": "LM stages of reasoning (propose): prefill, planner, experts, arbiter",
        "results": results}
    if len(results) > 1:
        out["gpu_over_cpu_users_per_s"] = round(results[1]["users_per_s"] / results[0]["users_per_s"], 2)
        out["same_final_tags_share"] = round(float(np.mean([a == b for a, b in zip(finals[0], finals[1])])), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    print(json.dumps(run(args.bundle, args.users, args.batch), indent=1))


if __name__ == "__main__":
    main()
