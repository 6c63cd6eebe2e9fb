"""Category HR@30 of the intent model's tags: the measure shared by `intentstream bench intent`
(evaluation/intent_method.py), `bench rl` and the periodic trainer's promotion gate
(training/trainer.py). A user is a hit when one of their next-interaction categories is among the
categories of the arbiter's first `HR_AT` tags (planner -> experts -> arbiter)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from reasoning.context import UserContext
from reasoning.pipeline import propose
from reasoning.tags import TagVocabulary, categories_of_tags

HR_AT = 30


def category_hit(vocab: TagVocabulary, tags: Iterable[str], wanted: set[str]) -> bool:
    return bool(set(wanted) & set(categories_of_tags(vocab, tags)[:HR_AT]))


class StageHits(NamedTuple):
    """Shares of users whose next-interaction categories each stage of the pipeline holds: what a
    later stage can keep at most (the arbiter picks from the experts' tags, each expert from its
    persona's tags)."""

    personas: float
    """Among the categories of every tag of the planner's personas."""
    experts: float
    """Among those of the tags the experts emitted."""
    final: float
    """Among those of the arbiter's first `HR_AT` tags: category HR@30."""


def stage_hit_rates(engine, contexts: Sequence[UserContext], wanted: Sequence[set[str]],
                    mode: str | None = None, batch_size: int = 32) -> StageHits:
    """`StageHits` of the engine's planner -> experts -> arbiter on `contexts`."""
    vocab = engine.model.vocab
    persona_categories = {name: {vocab.category[t] for t in vocab.persona_tags(p)}
                          for p, name in enumerate(vocab.personas)}
    hits: list[tuple[bool, bool, bool]] = []
    mode = mode or engine.config.mode
    for start in range(0, len(contexts), batch_size):
        personas, proposals, final, _ = propose(engine, contexts[start:start + batch_size], mode)
        for names, lists, tags, wants in zip(personas, proposals, final, wanted[start:start + batch_size]):
            want = set(wants)
            held = set().union(*(persona_categories[n] for n in names))
            emitted = set(categories_of_tags(vocab, [t for expert in lists for t in expert]))
            hits.append((bool(held & want), bool(emitted & want), category_hit(vocab, [t for t, _ in tags], want)))
    if not hits:
        return StageHits(0.0, 0.0, 0.0)
    return StageHits(*(float(np.mean(stage)) for stage in zip(*hits)))


def category_hit_rate(engine, contexts: Sequence[UserContext], wanted: Sequence[set[str]],
                      mode: str | None = None, batch_size: int = 32) -> float:
    """Share of users whose next-interaction categories the engine's final tags hit."""
    return stage_hit_rates(engine, contexts, wanted, mode, batch_size).final
