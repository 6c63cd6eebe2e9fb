"""Explanations in two stages, grounded, and checked.

1. Style, chosen from the user's interests, the item and the situation: `history` (a related
   item the user interacted with), `interest` (the intent tag and persona that retrieved it),
   `situation` (time of day and season of the user's visit), `attribute` (the item's own brand
   and category).
2. Text in that style, realised from grounded facts only (the local path), or written by an LLM
   from reasoning/prompts/explanation.md (the openai path).

`check` is the faithfulness gate: an explanation that names a brand or category word, a tag, or
a time word that is not among the item's attributes, the tags, the user's history or the
situation is rejected, with the offending word.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from contracts.text import MAX_EXPLANATION_CHARS, is_plain, plain_text
from features.catalog import Catalog, CatalogItem

STYLES = ("history", "interest", "situation", "attribute")
TIME_WORDS = {"night", "morning", "afternoon", "evening", "monday", "tuesday", "wednesday", "thursday",
              "friday", "saturday", "sunday", "winter", "spring", "summer", "autumn", "weekend"}
_WORD = re.compile(r"[a-z0-9]+")

TEMPLATES = {
    "history": (
        "Because you looked at {related}, here is another {what}.",
        "You viewed {related}; this {what} is a close match.",
        "More like the {related} in your history: {what}.",
        "A pick in the spirit of your {related}: {what}.",
    ),
    "interest": (
        "Picked for your interest in {tag}: {what}.",
        "Matches what you are exploring ({tag}): {what}.",
        "For the {persona}: a {what}.",
        "You seem to be into {tag}; try this {what}.",
    ),
    "situation": (
        "A {what} for your {part} browsing this {season}.",
        "Something for this {season} {part}: {what}.",
        "For a {day} {part}: {what}.",
    ),
    "attribute": (
        "A {what}, well liked by shoppers.",
        "Worth a look: {what}.",
        "Trending now: {what}.",
    ),
}


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def describe(item: CatalogItem) -> str:
    """How an explanation names an item: brand and category leaf (or its category id)."""
    if item.category.isdigit() or not item.category:
        leaf = f"item from category {item.category}" if item.category else f"item {item.item_id}"
    else:
        leaf = item.category.split(".")[-1].replace("_", " ")
    return f"{item.brand} {leaf}" if item.brand else leaf


@dataclass(frozen=True)
class Facts:
    item: CatalogItem
    tag: str | None
    persona: str | None
    related: CatalogItem | None
    """An item from the user's history sharing the item's category (or brand)."""
    situation: str
    """'evening, wednesday, autumn' (reasoning/context.situation_text)."""


def related_item(item: CatalogItem, history: Sequence[CatalogItem]) -> CatalogItem | None:
    for other in history:
        if other.item_id != item.item_id and other.category and other.category == item.category:
            return other
    for other in history:
        if other.item_id != item.item_id and other.brand and other.brand == item.brand:
            return other
    return None


def choose_style(facts: Facts, salt: str) -> str:
    """Styles the facts support, strongest first; a stable hash picks among the two strongest,
    so the same item reads differently for different users."""
    options = []
    if facts.related is not None:
        options.append("history")
    if facts.tag:
        options.append("interest")
    if facts.situation:
        options.append("situation")
    options.append("attribute")
    pick = zlib.crc32(salt.encode()) % min(2, len(options))
    return options[pick]


def realise(style: str, facts: Facts, salt: str) -> str:
    part, day, season = (facts.situation.split(", ") + ["", "", ""])[:3]
    values = {
        "what": describe(facts.item), "related": describe(facts.related) if facts.related else "",
        "tag": facts.tag or "", "persona": facts.persona or "", "part": part, "day": day, "season": season,
    }
    choices = TEMPLATES[style]
    return choices[zlib.crc32(("t" + salt).encode()) % len(choices)].format(**values)


class Explainer:
    def __init__(self, catalog: Catalog, tags: Sequence[str], personas: Sequence[str]) -> None:
        self.catalog = catalog
        vocabulary: set[str] = set()
        for item in catalog.items.values():
            vocabulary |= words(describe(item)) | words(item.text)
        for phrase in list(tags) + list(personas):
            vocabulary |= words(phrase)
        # Words the templates themselves use ("a", "for", "the", ...) are not claims, even when
        # some brand is spelled that way.
        template_words = set()
        for texts in TEMPLATES.values():
            for text in texts:
                template_words |= words(re.sub(r"\{[a-z]+\}", " ", text))
        self.entity_words = vocabulary - template_words - {"item", "from", "category", "shopper"}
        self.llm_attempts = 0
        self.llm_rejected = 0
        """LLM-written explanations that failed the check (the grounded text served instead)."""

    def check(self, text: str, facts: Facts) -> tuple[bool, str | None]:
        """Faithful when every catalog or time word it uses is grounded in the facts."""
        grounded = words(describe(facts.item)) | words(facts.item.text) | words(facts.situation)
        if facts.tag:
            grounded |= words(facts.tag)
        if facts.persona:
            grounded |= words(facts.persona)
        if facts.related is not None:
            grounded |= words(describe(facts.related)) | words(facts.related.text)
        for word in words(text):
            if (word in self.entity_words or word in TIME_WORDS) and word not in grounded:
                return False, f"{word!r} is not in the item, the tags, the history or the situation"
        return True, None

    def explain(self, facts: Facts, salt: str, writer=None) -> tuple[str, str, bool]:
        """(style, text, faithful). `writer(style, facts) -> str | None` is an LLM path; its text
        is used only when it is plain text (contracts/text.py) and passes the check, otherwise
        the grounded realisation is (cut to `MAX_EXPLANATION_CHARS`)."""
        style = choose_style(facts, salt)
        if writer is not None:
            self.llm_attempts += 1
            text = writer(style, facts)
            # Markup, a link or a run-on answer is rejected, not repaired: the grounded text serves.
            if text and is_plain(text, MAX_EXPLANATION_CHARS) and self.check(text, facts)[0]:
                return style, text, True
            self.llm_rejected += 1
        text = plain_text(realise(style, facts, salt), MAX_EXPLANATION_CHARS)
        return style, text, self.check(text, facts)[0]


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 over words.

    >>> rouge_l("a b c d", "a c d e")
    0.75
    >>> rouge_l("x", "y")
    0.0
    """
    x, y = a.lower().split(), b.lower().split()
    if not x or not y:
        return 0.0
    prev = [0] * (len(y) + 1)
    for xi in x:
        cur = [0]
        for j, yj in enumerate(y):
            cur.append(prev[j] + 1 if xi == yj else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(x), lcs / len(y)
    return 2 * p * r / (p + r)


def diversity(texts_by_item: dict[str, list[str]], max_pairs: int = 200) -> float | None:
    """1 - mean pairwise ROUGE-L among explanations of the same item (items with >= 2)."""
    scores = []
    for texts in texts_by_item.values():
        pairs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))][:max_pairs]
        scores += [rouge_l(texts[i], texts[j]) for i, j in pairs]
    return 1.0 - sum(scores) / len(scores) if scores else None
