"""`intentstream bench explanations`: LLM-written explanations through the faithfulness gate.

The served pipeline (reasoning/pipeline.py `reason`, local backend) on the first `users` test
users of the dataset's global-time split, with `intent.llm_explanations` of each user's intent
items explained by the model itself (reasoning/backends.py `LocalBackend.write_explanation`);
an explanation is served only if it passes the gate (reasoning/explanations.py `check`), the
grounded realisation otherwise. Figures: the gate's pass rate of the LLM's sentences, the
diversity (1 - mean pairwise ROUGE-L among explanations of the same item) of the served LLM
sentences and of all served explanations, the share of served explanations the LLM wrote,
seconds per LLM explanation, and examples. Every served explanation passed the gate by
construction; the benchmark re-checks it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.ingest import commit, machine
from contracts.settings import Settings
from offline import datasets


def run_explanation_benchmark(settings: Settings, dataset: str, model_dir: Path, users: int = 40,
                              per_user: int = 2) -> dict[str, Any]:
    from offline.splits import global_time
    from reasoning.engine import IntentEngine
    from reasoning.explanations import Facts, diversity
    from reasoning.pipeline import IntentInput, reason
    from training.data import user_histories

    data = datasets.load(dataset, settings.data_dir)
    split = global_time(data.events)
    cfg = settings.intent.model_copy(update={"backend": "local", "llm_explanations": per_user})
    engine = IntentEngine(model_dir, cfg, settings.cache_dir)
    histories = user_histories(split.train)
    inputs = [IntentInput(c.user_id, list(reversed(histories.get(c.user_id, []))), frozenset(c.bought))
              for c in split.cases[:users]]
    # Which served texts the LLM wrote: wrap the writer to remember its sentences.
    written: set[str] = set()
    writer = engine.backend.write_explanation
    seconds = [0.0]

    def remembering(style, facts):
        started = time.perf_counter()
        text = writer(style, facts)
        seconds[0] += time.perf_counter() - started
        if text:
            written.add(text)
        return text

    engine.backend.write_explanation = remembering
    started = time.perf_counter()
    results = []
    for start in range(0, len(inputs), cfg.batch_size):
        batch, _ = reason(engine, inputs[start:start + cfg.batch_size], {}, settings.recs.top_k)
        results += batch
    wall = time.perf_counter() - started
    explainer = engine.explainer
    by_item_llm: dict[str, list[str]] = {}
    by_item_all: dict[str, list[str]] = {}
    served = llm_served = unfaithful = 0
    examples = []
    for user, result in zip(inputs, results):
        history = [engine.catalog.get(str(e[0])) for e in user.recent[: cfg.max_items]]
        persona_of_tag = {t: i["persona"] for i in result.intents for t in i["tags"]}  # as the pipeline builds facts
        for rank, entry in enumerate(result.items):
            served += 1
            text = entry["explanation"]
            by_item_all.setdefault(entry["item_id"], []).append(text)
            item = engine.catalog.get(entry["item_id"])
            facts = Facts.of(item, entry["tag"], persona_of_tag.get(entry["tag"]), history, result.context.situation)
            unfaithful += not explainer.check(text, facts)[0]
            if rank < per_user and text in written:
                llm_served += 1
                by_item_llm.setdefault(entry["item_id"], []).append(text)
                if len(examples) < 8:
                    examples.append({"item": entry["item_id"], "tag": entry["tag"], "text": text})
    attempts, rejected = explainer.llm_attempts, explainer.llm_rejected
    return {
        "command": f"intentstream bench explanations --dataset {dataset} --model {model_dir} --users {users}",
        "machine": machine(), "commit": commit(), "model": engine.version,
        "base": engine.model.meta.get("base", "tiny"), "users": len(inputs), "per_user": per_user,
        "llm_attempts": attempts, "llm_rejected": rejected,
        "llm_pass_rate": (attempts - rejected) / attempts if attempts else None,
        "served": served, "served_llm": llm_served, "served_unfaithful": unfaithful,
        "diversity_llm": diversity(by_item_llm), "llm_items_with_2_or_more": sum(len(v) >= 2 for v in by_item_llm.values()),
        "diversity_all": diversity(by_item_all), "items_with_2_or_more": sum(len(v) >= 2 for v in by_item_all.values()),
        "seconds_per_llm_explanation": seconds[0] / attempts if attempts else None,
        "seconds": round(wall, 1), "examples": examples,
    }
