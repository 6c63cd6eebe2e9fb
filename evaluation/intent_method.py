"""The intent route under the evaluation protocol (`intentstream eval --methods intent`).

`fit` trains the intent model on the train events (SFT, cached per dataset, split and config),
builds the serving engine from it, and runs the pipeline for every evaluated user in batches,
in the hybrid context (what serves) and the full-text context (for comparison), plus the
multi-route baseline. `rank` returns the served list: the user's recent unbought items, the
behavioural route and the intent route merged by reciprocal-rank fusion, the worker's code.

`stats` reports what issue 4 asks for: category HR@30 of the arbiter's tags (hybrid vs text),
tokens per refresh, latency, duplication (hierarchy vs multi-route), exclusive recall of the
intent route, explanation diversity and the faithfulness pass rate. Exclusive recall, two ways:
`exclusive_recall`, of the served list (hits in the merged top 20 that the intent route's own
top 20 holds and neither the recent nor the behavioural route's top 20 does, over the merged top
20's hits: 0 when the fitted intent weight is 0) and `exclusive_recall_routes`, at the routes
before the merge (targets in the intent route's top 20 and in none of the recent, co-visitation
and sequential routes' own top 20, over the targets any of those top 20s holds: the paper's
"recalled only by the LLM channel").
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from contracts.recs import rec_item
from contracts.settings import ItemStep
from features.catalog import Catalog
from offline.datasets import Dataset
from offline.metrics import recall_at
from offline.methods import ItemKNN
from offline.splits import Split, UserCase
from offline.tags import HR_AT, category_hit
from reasoning.context import build_context
from reasoning.engine import IntentEngine
from reasoning.explanations import diversity
from reasoning.pipeline import IntentInput, reason
from training.data import user_histories
from training.merge_weights import other_routes_top, route_lists, served_merge
from training.sft import SFTConfig, train_sft

K_EVAL = 20


def split_intent_model(settings, dataset: Dataset, split: Split, sft: SFTConfig, sequential=None, progress=None,
                       catalog: Catalog | None = None) -> tuple[Path, bool]:
    """(the intent model trained by SFT on `split`'s train events only, whether this call trained
    it): reused from `<cache_dir>/models/eval-<dataset>-<split>-<key>` when the same catalog, split,
    SFT config, sequential model (`sequential`, a SequentialRoute: the intent weight is fitted
    against its fusion), item step and complement (`intent.item_step`, `intent.complement_top`:
    the weight is fitted on the items they give) trained one before. The one rule by which the
    `intent` methods, the replay method and `bench loop` get the model they evaluate, so none
    serves a model that learned from another dataset or from test events."""
    catalog = catalog or Catalog.from_frames(dataset.items, dataset.events)
    # format 3: SFT holds out what the sequential model holds out (the split's validation cases,
    # else each user's last train event) and fits the intent weight on them (against the
    # sequential model named here, when one serves, with the item step that serves).
    key = json.dumps({"catalog": catalog.version, "split": split.protocol, "train": len(split.train),
                      "sft": sft.model_key(), "format": 3, "sequential": sequential.version if sequential else None,
                      "item_step": settings.intent.item_step.value,
                      **({"complement_top": settings.intent.complement_top} if settings.intent.complement_top else {})},
                     sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    model_dir = settings.cache_dir / "models" / f"eval-{dataset.name}-{split.name}-{digest}"
    if (model_dir / "intent.json").exists():
        if progress:
            progress(f"intent model {model_dir.name} reused (trained on this split's train events)")
        return model_dir, False
    train_sft(split.train, catalog, model_dir, settings.cache_dir, sft, version=f"eval-{model_dir.name}",
              progress=progress, intent=settings.intent, sequential=sequential, validation=split.validation or None)
    return model_dir, True


class IntentMethod:
    name = "intent"

    def __init__(self, settings, dataset: Dataset, sft: SFTConfig | None = None, model_dir: Path | None = None,
                 progress=None, name: str = "intent", served_only: bool = False) -> None:
        """`served_only`: reason in the served context mode only, without the full-text comparison
        and the multi-route baseline (a slow backbone's ablation row; their stats are None)."""
        self.name = name
        self.served_only = served_only
        self.settings = settings
        self.dataset = dataset
        self.sft = sft or SFTConfig()
        self.model_dir = model_dir
        self.progress = progress or (lambda message: None)
        self.stats: dict = {}

    def fit(self, split: Split, catalog_ids: Sequence[str]) -> None:
        cfg = self.settings.intent
        catalog = Catalog.from_frames(self.dataset.items, self.dataset.events)
        # The sequential route as deployed (trained on this split's train part, cached): merged
        # into the behavioural list, and ranking each tag's items for the user; the intent weight
        # is fitted against its fusion.
        self.sequential = None
        if self.settings.sequential.enabled:
            from reasoning.sequential import SequentialRoute
            from training.sequential import cached_model

            self.sequential = SequentialRoute(cached_model(split.train, self.settings.cache_dir,
                                                           split.validation or None, label="intent",
                                                           progress=self.progress))
        started = time.perf_counter()
        model_dir, fresh = (self.model_dir, False) if self.model_dir else split_intent_model(
            self.settings, self.dataset, split, self.sft, self.sequential, self.progress, catalog)
        trained = time.perf_counter() - started if fresh else 0.0
        self.engine = engine = IntentEngine(model_dir, cfg, self.settings.cache_dir)
        self.weights = cfg.merge_weights(engine.model.meta)
        self.behavioural = ItemKNN()
        self.behavioural.fit(split, catalog_ids)
        popularity = self.behavioural.reasoner.model.popularity.scores
        histories = user_histories(split.train)
        self.inputs = {}
        top = cfg.complement_top
        for c in split.cases:
            recent = list(reversed(histories.get(c.user_id, [])))
            scored = self.behavioural.reasoner.score(recent, c.bought, 100)
            shown = route_lists(self.behavioural, self.sequential, c, recent,
                                 self.settings.recs.top_k).shown(top) if top else frozenset()
            self.inputs[c.user_id] = IntentInput(c.user_id, recent, frozenset(c.bought),
                                                 {i: s for i, s, anchor in scored if anchor}, shown)
        self.results: dict[str, object] = {}
        self.variants: dict[str, dict[str, list[dict]]] = {}
        """Per user, the served mode's intent items by other item steps from the same tags, for
        the before/after figures: `_popularity_within_tags` (round robin, each tag's items by
        popularity: before the sequential model ranked them) and each item step that does not
        serve (reasoning/retrieval.py)."""
        n = 100
        per_mode: dict[str, dict] = {}
        for mode in (cfg.mode,) if self.served_only else ("hybrid", "text"):
            tokens = context_tokens = candidates = duplicates = 0
            seconds = 0.0
            hits = []
            for start in range(0, len(split.cases), cfg.batch_size):
                cases = split.cases[start:start + cfg.batch_size]
                t0 = time.perf_counter()
                personal = self.sequential.personal([c.history for c in cases]) if self.sequential else None
                results, st = reason(engine, [self.inputs[c.user_id] for c in cases], popularity, n, mode=mode,
                                     personal=personal)
                seconds += time.perf_counter() - t0
                if mode == cfg.mode and personal is not None:
                    # The same tags through the other item steps, for the route-alone figures.
                    args = ([r.tags for r in results], popularity,
                            [set(c.bought) | self.inputs[c.user_id].shown for c in cases], n,
                            [self.inputs[c.user_id].affinity for c in cases])
                    others = [("_popularity_within_tags", engine.retriever.retrieve(*args))]
                    others += [(f"_{step.value}", engine.retriever.retrieve(*args, personal, [r.relevance for r in results],
                                                                            item_step=step))
                               for step in ItemStep if step is not engine.retriever.item_step]
                    for variant, items_of in others:
                        for case, items in zip(cases, items_of):
                            self.variants.setdefault(case.user_id, {})[variant] = [
                                rec_item(i, sc, "intent", "", tag) for i, sc, tag in items]
                tokens += st.tokens
                context_tokens += st.context_tokens
                candidates += st.candidates
                duplicates += st.duplicates
                for case, result in zip(cases, results):
                    hits.append(self._category_hit(case, result.tags, catalog))
                    if mode == cfg.mode:
                        self.results[case.user_id] = result
            users = max(len(split.cases), 1)
            per_mode[mode] = {
                f"category_hr@{HR_AT}": float(np.mean(hits)) if hits else 0.0,
                "tokens_per_refresh": tokens / users, "context_tokens_per_refresh": context_tokens / users,
                "seconds_per_user": seconds / users, "users_per_s": users / seconds if seconds else 0.0,
                "expert_duplication": duplicates / candidates if candidates else 0.0,
            }
            self.progress(f"intent {mode}: {per_mode[mode]}")
        # The multi-route baseline: K independent routes re-reading the context, M tags each.
        dup = total = route_tokens = 0
        route_hits = []
        t0 = time.perf_counter()
        for start in range(0, 0 if self.served_only else len(split.cases), cfg.batch_size):
            cases = split.cases[start:start + cfg.batch_size]
            contexts = [build_context(c.user_id, self.inputs[c.user_id].recent, engine.catalog, cfg.max_items)
                        for c in cases]
            routes, used = engine.backend.multi_route(contexts, cfg.mode, cfg.personas, cfg.tags_per_persona)
            route_tokens += used
            for case, lists in zip(cases, routes):
                flat = [t for tags in lists for t in tags]
                total += len(flat)
                dup += len(flat) - len(set(flat))
                route_hits.append(self._category_hit(case, list(dict.fromkeys(flat)), catalog))
        route_seconds = time.perf_counter() - t0
        users = max(len(split.cases), 1)
        hybrid, text = per_mode.get("hybrid"), per_mode.get("text")
        both = hybrid is not None and text is not None
        self.stats = {
            "model": engine.version, "model_dir": str(model_dir),
            "train_seconds": round(trained, 1) if trained else engine.model.meta.get("train_seconds"),
            "trained_in_this_run": bool(trained),
            "merge_weights": dict(zip(("recent", "behavioural", "intent"), self.weights)),
            "merge_validation": engine.model.meta.get("merge", {}).get("validation"),
            "intent_weight_validation": engine.model.meta.get("merge", {}).get("intent_validation"),
            "parameters": engine.model.meta.get("parameters"), "tags": len(engine.model.vocab),
            "personas": len(engine.model.vocab.personas), "k_m_n": [cfg.personas, cfg.tags_per_persona, cfg.final_tags],
            "hybrid": hybrid, "text": text,
            "base": engine.model.meta.get("base", "tiny"), "served_mode": cfg.mode,
            "sft": engine.model.meta.get("sft", {}),
            "token_ratio_text_over_hybrid": text["tokens_per_refresh"] / hybrid["tokens_per_refresh"]
            if both and hybrid["tokens_per_refresh"] else None,
            "context_token_ratio_text_over_hybrid": text["context_tokens_per_refresh"] / hybrid["context_tokens_per_refresh"]
            if both and hybrid["context_tokens_per_refresh"] else None,
            f"category_hr@{HR_AT}_relative_change_hybrid_vs_text": (hybrid[f"category_hr@{HR_AT}"] - text[f"category_hr@{HR_AT}"])
            / text[f"category_hr@{HR_AT}"] if both and text[f"category_hr@{HR_AT}"] else None,
            "multi_route": None if self.served_only else {
                "duplication": dup / total if total else 0.0, "tokens_per_refresh": route_tokens / users,
                f"category_hr@{HR_AT}": float(np.mean(route_hits)) if route_hits else 0.0,
                "seconds_per_user": route_seconds / users},
        }
        self._explanation_stats()

    def _category_hit(self, case: UserCase, tags: Sequence[str], catalog: Catalog) -> float:
        wanted = {catalog.get(t).category for t in case.targets if catalog.get(t).category}
        return float(category_hit(self.engine.model.vocab, tags, wanted))

    def _explanation_stats(self) -> None:
        by_item: dict[str, list[str]] = {}
        served = rejected = 0
        for result in self.results.values():
            rejected += result.explanations_rejected
            for entry in result.items[:K_EVAL]:
                served += 1
                by_item.setdefault(entry["item_id"], []).append(entry["explanation"])
        self.stats["explanations"] = {
            "diversity_1_minus_rouge_l": diversity(by_item), "items_with_2_or_more": sum(len(v) >= 2 for v in by_item.values()),
            "faithful_share": served / (served + rejected) if served + rejected else None, "rejected": rejected,
        }
        self._exclusive = {"hits": 0, "intent_only": 0, "intent_route_hits": 0}

    def rank(self, case: UserCase, n: int) -> list[str]:
        lists = route_lists(self.behavioural, self.sequential, case, self.inputs[case.user_id].recent, n)
        recent, behavioural = lists.recent, lists.behavioural
        intent = self.results[case.user_id].items[:n]
        ranked = [e["item_id"] for e in served_merge(self.weights, lists, intent, set(case.bought), n)]
        top = [i for i in ranked if i not in case.bought][:K_EVAL]
        hits = [i for i in top if i in case.targets]
        # A route "finds" an item when it is in the route's own top K (what it would show alone).
        others = {e["item_id"] for e in recent[:K_EVAL]} | {e["item_id"] for e in behavioural[:K_EVAL]}
        ex = self._exclusive
        ex["hits"] += len(hits)
        found_by_intent = {e["item_id"] for e in intent[:K_EVAL]}
        ex["intent_only"] += sum(1 for i in hits if i not in others and i in found_by_intent)
        ex["intent_route_hits"] += sum(1 for e in intent[:K_EVAL] if e["item_id"] in case.targets)
        # At the routes, before any merge (the paper's channels): each channel's own top K, the
        # recent, co-visitation and sequential routes apart rather than the fused behavioural list.
        channels = other_routes_top(self.behavioural, self.sequential, case, self.inputs[case.user_id].recent, K_EVAL)
        routes_found = (channels | found_by_intent) - set(case.bought)
        ex["routes_hits"] = ex.get("routes_hits", 0) + len(routes_found & case.targets)
        ex["routes_intent_only"] = ex.get("routes_intent_only", 0) + len((found_by_intent - channels) & case.targets)
        ex["users"] = ex.get("users", 0) + 1
        variants = {"": intent, **self.variants.get(case.user_id, {})}
        for suffix, items in variants.items():  # the intent route alone, as the harness scores a method
            ids = [e["item_id"] for e in items]
            key = f"intent_route_alone{suffix}"
            ex[f"{key}_all"] = ex.get(f"{key}_all", 0.0) + recall_at([i for i in ids if i not in case.bought],
                                                                     case.targets, K_EVAL)
            if case.new_targets:
                ex[f"{key}_new"] = ex.get(f"{key}_new", 0.0) + recall_at([i for i in ids if i not in case.seen],
                                                                         case.new_targets, K_EVAL)
                ex["users_new"] = ex.get("users_new", 0) + (suffix == "")
            self.stats[f"{key}_recall@20_all"] = ex[f"{key}_all"] / ex["users"]
            if ex.get("users_new"):
                self.stats[f"{key}_recall@20_new"] = ex.get(f"{key}_new", 0.0) / ex["users_new"]
        self.stats["exclusive_recall"] = ex["intent_only"] / ex["hits"] if ex["hits"] else 0.0
        self.stats["exclusive_recall_routes"] = ex["routes_intent_only"] / ex["routes_hits"] if ex["routes_hits"] else 0.0
        self.stats["exclusive_counts"] = dict(ex)
        self.stats["sequential_model"] = self.sequential.version if self.sequential else None
        return ranked
