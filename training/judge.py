"""Agent-as-a-Judge (RecGPT-V2 section 2.6): one sub-evaluator per dimension, then a senior reviewer.

Every sub-evaluator returns a `Verdict` with a score: -1 (a defect), 0 (acceptable) or +1 (a
positive signal), and a note saying why. The senior reviewer grades:

- **B** (Bad) when any dimension has a defect;
- otherwise **S** (Superior) when the share of positive dimensions is at least
  `JudgeConfig.superior_share`, else **A** (Average).

Tag dimensions (one tag proposed for a user and a persona):
  relevance (embedding similarity of the tag to the tags of the user's history), consistency
  (the tag belongs to the persona, or lies close to the persona's centre), specificity (a
  brand-in-category tag is specific; a tag covering too much of the catalog is a defect), validity
  (in the vocabulary and mapping to at least one catalog item).

Explanation dimensions (one explanation of one recommended item):
  faithfulness (the faithfulness gate of reasoning/explanations.py, and how much of it is
  grounded), clarity (length in words, no stuttering), informativeness (how many facts it names),
  diversity (IDF of its words over recent explanations).

The local judge is rules and embedding similarity. An LLM judge (the same dimensions as prompts
to a strong model) is not part of this build: see the README.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from features.catalog import Catalog
from reasoning.context import UserContext
from reasoning.explanations import Explainer, Facts, describe, template_words
from reasoning.tags import TagVocabulary
from training.rewards import r_grounding, r_idf_diversity

GRADES = ("B", "A", "S")
"""Worst to best; `GRADES.index(g)` orders them."""

TAG_DIMENSIONS = ("relevance", "consistency", "specificity", "validity")
EXPLANATION_DIMENSIONS = ("faithfulness", "clarity", "informativeness", "diversity")


@dataclass(frozen=True)
class Verdict:
    dimension: str
    score: int
    """-1 defect, 0 acceptable, +1 positive."""
    note: str


@dataclass(frozen=True)
class Judgement:
    grade: str
    verdicts: tuple[Verdict, ...]

    def as_row(self) -> dict:
        row = {"grade": self.grade}
        for v in self.verdicts:
            row[v.dimension] = v.score
            row[f"{v.dimension}_note"] = v.note
        return row


@dataclass(frozen=True)
class JudgeConfig:
    """Thresholds of the local judge (cosines are of the tag embeddings saved with the model)."""

    relevance_defect: float = 0.25
    """Max cosine to the history's tags below this: irrelevant."""
    relevance_positive: float = 0.6
    consistency_defect: float = 0.2
    """A tag outside the persona whose cosine to the persona's centre is below this: inconsistent."""
    generic_share: float = 0.2
    """A tag mapping to more than this share of the catalog is too generic."""
    superior_share: float = 0.5
    """Share of positive dimensions (no defect) that makes a Superior."""
    clarity_words: tuple[int, int] = (4, 30)
    diversity_defect: float = 0.1
    diversity_positive: float = 0.5


def review(verdicts: Sequence[Verdict], superior_share: float) -> str:
    """The senior reviewer: defect detection, then excellence elevation.

    >>> review([Verdict("a", 1, ""), Verdict("b", -1, "")], 0.5)
    'B'
    >>> review([Verdict("a", 1, ""), Verdict("b", 0, "")], 0.5)
    'S'
    >>> review([Verdict("a", 1, ""), Verdict("b", 0, ""), Verdict("c", 0, "")], 0.5)
    'A'
    """
    if any(v.score < 0 for v in verdicts):
        return "B"
    positive = sum(v.score > 0 for v in verdicts) / max(len(verdicts), 1)
    return "S" if positive >= superior_share else "A"


class TagJudge:
    def __init__(self, vocab: TagVocabulary, tag_vectors: np.ndarray, catalog: Catalog,
                 config: JudgeConfig = JudgeConfig()) -> None:
        self.vocab = vocab
        self.catalog = catalog
        self.config = config
        norms = np.maximum(np.linalg.norm(tag_vectors, axis=1, keepdims=True), 1e-12)
        self.vectors = (tag_vectors / norms).astype(np.float32)
        self.item_counts = np.array([len(items) for items in vocab.items_of(catalog)])
        self.persona_centres = np.zeros((len(vocab.personas), self.vectors.shape[1]), np.float32)
        for p in range(len(vocab.personas)):
            members = vocab.persona_tags(p)
            if members:
                c = self.vectors[members].mean(0)
                self.persona_centres[p] = c / max(float(np.linalg.norm(c)), 1e-12)
        self.persona_index = {name: i for i, name in enumerate(vocab.personas)}

    def history_tags(self, context: UserContext) -> list[int]:
        out = []
        for item_id, _ in context.items:
            t = self.vocab.tag_of_item(self.catalog.get(item_id))
            if t is not None:
                out.append(t)
        return list(dict.fromkeys(out))

    def judge(self, context: UserContext, persona: str, tag: str, history: list[int] | None = None) -> Judgement:
        cfg = self.config
        t = self.vocab.index.get(tag)
        if t is None:
            verdicts = (Verdict("validity", -1, "not in the tag vocabulary"),)
            return Judgement("B", verdicts)
        history = self.history_tags(context) if history is None else history
        v = self.vectors[t]
        # relevance
        if history:
            best = float((self.vectors[history] @ v).max())
            score = -1 if best < cfg.relevance_defect else (1 if best >= cfg.relevance_positive else 0)
            relevance = Verdict("relevance", score, f"max cosine to history tags {best:.2f}")
        else:
            relevance = Verdict("relevance", 0, "no tagged history")
        # consistency
        p = self.persona_index.get(persona)
        if p is None:
            consistency = Verdict("consistency", -1, f"unknown persona {persona!r}")
        elif self.vocab.persona_of[t] == p:
            consistency = Verdict("consistency", 1, "tag belongs to the persona")
        else:
            cos = float(self.persona_centres[p] @ v)
            consistency = Verdict("consistency", -1 if cos < cfg.consistency_defect else 0,
                                  f"outside the persona, cosine to its centre {cos:.2f}")
        # specificity
        share = self.item_counts[t] / max(len(self.catalog), 1)
        if share > cfg.generic_share:
            specificity = Verdict("specificity", -1, f"covers {share:.0%} of the catalog")
        elif self.vocab.brand[t]:
            specificity = Verdict("specificity", 1, "brand within a category")
        else:
            specificity = Verdict("specificity", 0, "category")
        # validity
        validity = Verdict("validity", 0 if self.item_counts[t] > 0 else -1,
                           f"maps to {int(self.item_counts[t])} items")
        verdicts = (relevance, consistency, specificity, validity)
        return Judgement(review(verdicts, cfg.superior_share), verdicts)


class ExplanationJudge:
    def __init__(self, explainer: Explainer, config: JudgeConfig = JudgeConfig()) -> None:
        self.explainer = explainer
        self.config = config
        self.recent: list[str] = []

    def judge(self, text: str, facts: Facts, recent: Sequence[str] | None = None) -> Judgement:
        cfg = self.config
        recent = self.recent[-200:] if recent is None else recent
        named = [describe(facts.item), facts.item.text, facts.situation]
        if facts.tag:
            named.append(facts.tag)
        if facts.persona:
            named.append(facts.persona)
        if facts.related is not None:
            named += [describe(facts.related), facts.related.text]
        ok, why = self.explainer.check(text, facts)
        grounding = r_grounding(text, named, template_words())
        faithfulness = Verdict("faithfulness", -1 if not ok else (1 if grounding >= 0.99 else 0),
                               why or f"grounded share {grounding:.2f}")
        words = text.split()
        low, high = cfg.clarity_words
        stutter = any(a.lower() == b.lower() for a, b in zip(words, words[1:]))
        clarity = Verdict("clarity", -1 if stutter or not low <= len(words) <= high else 0,
                          "repeated word" if stutter else f"{len(words)} words")
        mentioned = sum(1 for f in (describe(facts.item), facts.tag,
                                    describe(facts.related) if facts.related else None,
                                    facts.situation.split(", ")[0] if facts.situation else None)
                        if f and f.lower() in text.lower())
        informativeness = Verdict("informativeness", -1 if mentioned == 0 else (1 if mentioned >= 2 else 0),
                                  f"names {mentioned} facts")
        div = r_idf_diversity(text, recent)
        diversity = Verdict("diversity", -1 if div < cfg.diversity_defect else (1 if div >= cfg.diversity_positive else 0),
                            f"idf diversity {div:.2f} over {len(recent)} recent")
        self.recent.append(text)
        verdicts = (faithfulness, clarity, informativeness, diversity)
        return Judgement(review(verdicts, cfg.superior_share), verdicts)


@dataclass
class JudgeLog:
    """Every verdict the judge gave in a training run (written beside the candidate model)."""

    rows: list[dict] = field(default_factory=list)

    def add(self, kind: str, key: dict, judgement: Judgement) -> None:
        self.rows.append({"kind": kind, **key, **judgement.as_row()})

    def grade_shares(self, kind: str) -> dict[str, float]:
        grades = [r["grade"] for r in self.rows if r["kind"] == kind]
        return {g: grades.count(g) / len(grades) for g in GRADES} if grades else {}

    def write(self, path) -> None:
        import pandas as pd

        pd.DataFrame(self.rows).to_parquet(path)
