"""Ranking metrics for one user's list against their targets (binary relevance)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def recall_at(ranked: Sequence[str], targets: set[str], k: int) -> float:
    """Targets found in the top k over min(|targets|, k): a list of the targets scores 1.0 even
    when there are more targets than slots.

    >>> recall_at(["a", "b", "c"], {"b", "x"}, 2)
    0.5
    >>> recall_at(["a", "b"], {"a", "b", "c"}, 2)  # the best any 2-item list can do
    1.0
    >>> recall_at(["a"], set(), 5)
    0.0
    """
    if not targets:
        return 0.0
    return len(set(ranked[:k]) & targets) / min(len(targets), k)


def hit_at(ranked: Sequence[str], targets: set[str], k: int) -> float:
    """1 when any target is in the top k.

    >>> hit_at(["a", "b"], {"b"}, 1), hit_at(["a", "b"], {"b"}, 2)
    (0.0, 1.0)
    """
    return 1.0 if set(ranked[:k]) & targets else 0.0


def ndcg_at(ranked: Sequence[str], targets: set[str], k: int) -> float:
    """Normalised DCG with binary gains; the ideal list puts min(|targets|, k) hits first.

    >>> ndcg_at(["x", "a"], {"a"}, 2)  # one hit at rank 2: (1/log2 3) / 1
    0.6309297535714575
    >>> ndcg_at(["a", "b"], {"a", "b"}, 2)
    1.0
    """
    if not targets:
        return 0.0
    dcg = sum(1.0 / math.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in targets)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(targets), k)))
    return dcg / ideal


def category_hit_at(ranked: Sequence[str], target_categories: set[str], category_of: dict[str, str], k: int) -> float:
    """1 when any of the top k items is in a category of the targets.

    >>> category_hit_at(["a", "b"], {"shoes"}, {"a": "hats", "b": "shoes"}, 1)
    0.0
    >>> category_hit_at(["a", "b"], {"shoes"}, {"a": "hats", "b": "shoes"}, 2)
    1.0
    """
    return 1.0 if any(category_of.get(i) in target_categories for i in ranked[:k]) else 0.0


def novelty_at(ranked: Sequence[str], seen: set[str], k: int) -> float:
    """Share of the top k the user never interacted with before.

    >>> novelty_at(["a", "b", "c", "d"], {"a"}, 4)
    0.75
    """
    top = ranked[:k]
    return sum(1 for i in top if i not in seen) / len(top) if top else 0.0
