"""`intentstream bench intent`: the intent route's figures on one dataset, as one JSON object.

- The evaluation harness (same split and protocol as every baseline) over recent_history,
  itemknn (the behavioural route alone), sasrec (optional: minutes) and intent (the merged list
  the worker serves). The intent method trains its model on the train events when its cache has
  none, and reports category HR@30 of the arbiter's tags (hybrid vs full text), tokens per
  refresh, latency, duplication vs the multi-route baseline, exclusive recall, explanation
  diversity and the faithfulness pass rate (evaluation/intent_method.py).
- faiss HNSW recall@10 against exact search over the catalog's real item atoms, and the
  embedder's throughput, when the catalog has text.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.ingest import commit, machine
from contracts.settings import Settings
from evaluation.harness import evaluate
from offline import datasets


def index_figures(settings: Settings, data: datasets.Dataset) -> dict[str, Any] | None:
    from features.catalog import Catalog
    from features.embedder import MiniLMEmbedder, item_embeddings
    from reasoning.index import ItemIndex, recall_vs_exact

    catalog = Catalog.from_frames(data.items, data.events)
    if not catalog.has_text:
        return None
    embedder = MiniLMEmbedder(settings.cache_dir)
    texts = [catalog.get(i).text for i in sorted(catalog.items)][:2000]
    started = time.perf_counter()
    embedder.encode(texts)
    per_s = len(texts) / (time.perf_counter() - started)
    _, vectors = item_embeddings(catalog, embedder, settings.cache_dir)
    recall = recall_vs_exact(vectors, k=10, queries=1000)
    index = ItemIndex([str(i) for i in range(len(vectors))], vectors)
    q = vectors[np.random.default_rng(1).choice(len(vectors), 500)]
    started = time.perf_counter()
    for row in q:
        index.search(row[None, :], 10)
    recall.update({"ms_per_query": 1000 * (time.perf_counter() - started) / len(q),
                   "embedder_strings_per_s": per_s, "embedder": embedder.name})
    return recall


def run_intent_benchmark(settings: Settings, dataset: str, with_sasrec: bool, progress=None,
                         bases: Sequence[str] = ("tiny",)) -> dict[str, Any]:
    """The intent pipeline on each backbone of `bases` (`intent`: tiny, `intent_smollm2`), with
    the baselines, in one run on one split."""
    data = datasets.load(dataset, settings.data_dir)
    intent = ["intent" if base == "tiny" else f"intent_{base}" for base in bases]
    methods = ["recent_history", "itemknn"] + (["sasrec"] if with_sasrec else []) + intent
    started = time.perf_counter()
    result = evaluate(data, "global-time", (10, 20), methods, settings, progress=progress)
    result.update({
        "command": f"intentstream bench intent --dataset {dataset}" + ("" if with_sasrec else " --no-sasrec")
                   + ("" if tuple(bases) == ("tiny",) else f" --bases {','.join(bases)}"),
        "machine": machine(), "commit": commit(), "seconds": round(time.perf_counter() - started, 1),
        "intent_settings": settings.intent.model_dump(mode="json"),
        "faiss": index_figures(settings, data),
    })
    return result
