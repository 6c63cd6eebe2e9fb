"""Category HR@30 of the intent model's tags: the measure shared by `intentstream bench intent`
(evaluation/intent_method.py), `bench rl` and the periodic trainer's promotion gate
(training/trainer.py). A user is a hit when one of their next-interaction categories is among the
categories of the arbiter's first `HR_AT` tags (planner -> experts -> arbiter)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from reasoning.context import UserContext
from reasoning.pipeline import propose
from reasoning.tags import TagVocabulary, categories_of_tags

HR_AT = 30


def category_hit(vocab: TagVocabulary, tags: Iterable[str], wanted: set[str]) -> bool:
    return bool(set(wanted) & set(categories_of_tags(vocab, tags)[:HR_AT]))


def category_hit_rate(engine, contexts: Sequence[UserContext], wanted: Sequence[set[str]],
                      mode: str | None = None, batch_size: int = 32) -> float:
    """Share of users whose next-interaction categories the engine's final tags hit."""
    hits = []
    mode = mode or engine.config.mode
    for start in range(0, len(contexts), batch_size):
        _, _, final, _ = propose(engine, contexts[start:start + batch_size], mode)
        for tags, want in zip(final, wanted[start:start + batch_size]):
            hits.append(category_hit(engine.model.vocab, [t for t, _ in tags], want))
    return float(np.mean(hits)) if hits else 0.0
