"""Rewards of the constrained RL stage (RecGPT-V2 section 2.5), as plain functions.

Tags (one expert's list for one user and persona):

- `r_acc`: share of the user's next-interaction categories that the tags cover (the tags map to
  categories one to one, reasoning/tags.py).
- `r_div`: 1 - mean pairwise cosine similarity of the tags' embeddings.
- `r_len`: mean length score of the tags in words, a band like the paper's 1.0 / 0.5 / 0 (our
  tags are short catalog phrases, so the band is `LengthBand()`'s, not the paper's 6-11 words).
- `r_align`: mean reward-model score of the tags (training/reward_model.py).

`shaped` combines them: constrained reward shaping (CRS) multiplies accuracy by hard gates,
`summed` is the weighted sum the paper ablates against.

Explanations: `r_grounding` (share of the explanation's content words that the facts hold) and
`r_idf_diversity` (how rare the explanation's words are among recent explanations).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


def r_acc(tag_categories: Iterable[str], next_categories: Iterable[str]) -> float:
    """Share of the next-interaction categories covered by the tags' categories.

    >>> r_acc(["phones", "audio"], ["phones", "tv"])
    0.5
    >>> r_acc(["phones"], [])
    0.0
    """
    wanted = set(next_categories)
    if not wanted:
        return 0.0
    return len(wanted & set(tag_categories)) / len(wanted)


def r_div(vectors: np.ndarray) -> float:
    """1 - mean pairwise cosine similarity of the rows (0 for fewer than two tags).

    >>> r_div(np.array([[1.0, 0.0], [0.0, 1.0]]))
    1.0
    >>> r_div(np.array([[1.0, 0.0], [2.0, 0.0]]))
    0.0
    >>> r_div(np.array([[1.0, 0.0]]))
    0.0
    """
    n = len(vectors)
    if n < 2:
        return 0.0
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    mean = (sims.sum() - np.trace(sims)) / (n * (n - 1))
    return float(round(1.0 - mean, 12))


@dataclass(frozen=True)
class LengthBand:
    """Words per tag that score 1.0 (`best`), 0.5 (`near`), else 0."""

    best: tuple[int, int] = (2, 4)
    near: tuple[int, int] = (1, 6)

    def score(self, tag: str) -> float:
        """
        >>> band = LengthBand()
        >>> band.score("samsung smartphone"), band.score("tv"), band.score("a b c d e f g")
        (1.0, 0.5, 0.0)
        """
        n = len(tag.split())
        if self.best[0] <= n <= self.best[1]:
            return 1.0
        if self.near[0] <= n <= self.near[1]:
            return 0.5
        return 0.0


def r_len(tags: Sequence[str], band: LengthBand = LengthBand()) -> float:
    """Mean length score of the tags (0 for no tags).

    >>> r_len(["samsung smartphone", "tv"])
    0.75
    """
    return float(np.mean([band.score(t) for t in tags])) if tags else 0.0


def r_align(scores: Sequence[float]) -> float:
    """Mean reward-model score of the tags (each in [0, 1]).

    >>> r_align([0.2, 0.6])
    0.4
    """
    return float(np.mean(scores)) if len(scores) else 0.0


@dataclass(frozen=True)
class Gates:
    """CRS thresholds: a reward below its gate zeroes the shaped reward."""

    align: float = 0.5
    div: float = 0.3
    len: float = 0.75


def violations(align: float, div: float, length: float, gates: Gates) -> dict[str, bool]:
    """Which constraints an output breaks.

    >>> violations(0.9, 0.1, 1.0, Gates())
    {'align': False, 'div': True, 'len': False}
    """
    return {"align": align < gates.align, "div": div < gates.div, "len": length < gates.len}


def shaped(acc: float, align: float, div: float, length: float, gates: Gates) -> float:
    """Constrained reward shaping: accuracy, only inside the feasible region.

    >>> shaped(0.5, 0.9, 0.4, 1.0, Gates())
    0.5
    >>> shaped(0.5, 0.9, 0.1, 1.0, Gates())  # too little diversity
    0.0
    """
    return acc if not any(violations(align, div, length, gates).values()) else 0.0


def summed(acc: float, align: float, div: float, length: float,
           weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)) -> float:
    """The weighted sum CRS is compared with (weights: acc, align, div, len).

    >>> summed(0.5, 0.9, 0.1, 1.0)
    2.5
    """
    w_acc, w_align, w_div, w_len = weights
    return w_acc * acc + w_align * align + w_div * div + w_len * length


# -- explanations ---------------------------------------------------------------------------------
_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    "a an the and or of for to in on with your you it its this that is are was be from as by at "
    "because since if we our my me i".split())


def content_words(text: str) -> list[str]:
    """
    >>> content_words("Because you liked the Samsung phone")
    ['liked', 'samsung', 'phone']
    """
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def r_grounding(text: str, facts: Iterable[str], template_words: Iterable[str] = ()) -> float:
    """Share of the explanation's content words found in its facts (or in the fixed wording of
    the explanation styles, `template_words`).

    >>> r_grounding("matches your samsung phone", ["samsung", "phone"], ["matches"])
    1.0
    >>> r_grounding("a great apple phone", ["samsung phone"])
    0.3333333333333333
    """
    words = content_words(text)
    if not words:
        return 0.0
    known = {w for f in facts for w in content_words(f)} | set(template_words)
    return sum(w in known for w in words) / len(words)


def r_idf_diversity(text: str, recent: Sequence[str]) -> float:
    """Mean IDF of the explanation's content words over `recent` explanations, scaled to [0, 1]
    (1: no word occurs in any recent explanation; 0: every word occurs in all of them).

    >>> r_idf_diversity("fresh words here", ["old text", "other old text"])
    1.0
    >>> r_idf_diversity("old text", ["old text", "old text"])
    0.0
    """
    words = content_words(text)
    if not words:
        return 0.0
    n = len(recent)
    if n == 0:
        return 1.0
    df = Counter(w for r in recent for w in set(content_words(r)))
    top = math.log(n + 1)
    return float(np.mean([math.log((n + 1) / (df[w] + 1)) / top for w in words]))
