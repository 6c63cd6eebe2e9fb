"""The tag vocabulary: short phrases derived from the catalog, each mapping to items, grouped
into personas. Generation is constrained to it (reasoning/decoding.py), so no tag is invented.

Tags: one per category ("electronics audio headphone"; catalogs with bare category ids get
"category 4756105"), and one per brand within a category ("samsung smartphone") where the pair
has enough items or events. Every tag has exactly one category, which is how tags are scored by
category HR. Personas are clusters of tags (k-means on tag embeddings), named after the tag
nearest their centre ("smartphone shopper").
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from contracts.text import MAX_TAG_CHARS, plain_text
from features.catalog import Catalog, CatalogItem

PERSONA_SUFFIX = " shopper"
TAG_CHARS = MAX_TAG_CHARS - len(PERSONA_SUFFIX)
"""Longest tag: a persona is named after a tag plus `PERSONA_SUFFIX`, and both stay within
`MAX_TAG_CHARS` (contracts/text.py; plain text, so a hostile catalog cannot put markup in one)."""


def category_tag(category: str) -> str:
    """
    >>> category_tag("electronics.audio.headphone"), category_tag("4756105")
    ('electronics audio headphone', 'category 4756105')
    """
    if category.isdigit():
        return f"category {category}"
    return plain_text(category.replace(".", " ").replace("_", " "), TAG_CHARS)


def brand_tag(brand: str, category: str) -> str:
    """
    >>> brand_tag("samsung", "electronics.smartphone")
    'samsung smartphone'
    """
    return plain_text(f"{brand} {category.split('.')[-1].replace('_', ' ')}", TAG_CHARS)


@dataclass
class TagVocabulary:
    tags: list[str]
    category: list[str]
    """category[t]: the one category tag t stands for."""
    brand: list[str]
    """brand[t]: '' for a category tag."""
    persona_of: list[int]
    """persona_of[t]: index into `personas`."""
    personas: list[str]
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {t: i for i, t in enumerate(self.tags)}
        self.by_category: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(self.category):
            self.by_category[c].append(i)

    def __len__(self) -> int:
        return len(self.tags)

    def __contains__(self, tag: str) -> bool:
        return tag in self.index

    def tag_of_item(self, item: CatalogItem) -> int | None:
        """The most specific tag of an item (brand-in-category, else category)."""
        if item.brand:
            t = self.index.get(brand_tag(item.brand, item.category)) if item.category else None
            if t is not None:
                return t
        return self.index.get(category_tag(item.category)) if item.category else None

    def persona_tags(self, persona: int) -> list[int]:
        return [t for t, p in enumerate(self.persona_of) if p == persona]

    def items_of(self, catalog: Catalog) -> list[list[str]]:
        """items[t]: the catalog items tag t maps to (brand tags: that brand in that category)."""
        out: list[list[str]] = [[] for _ in self.tags]
        for item in catalog.items.values():
            if not item.category:
                continue
            for t in self.by_category.get(item.category, ()):
                if not self.brand[t] or self.brand[t] == item.brand:
                    out[t].append(item.item_id)
        return out

    # -- persistence (saved next to the model that was trained on it) -------------------------
    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"tags": self.tags, "category": self.category, "brand": self.brand,
                                    "persona_of": self.persona_of, "personas": self.personas}))

    @classmethod
    def load(cls, path: Path) -> "TagVocabulary":
        data = json.loads(path.read_text())
        return cls(data["tags"], data["category"], data["brand"], data["persona_of"], data["personas"])


def build_vocabulary(catalog: Catalog, events: pd.DataFrame, embed, max_tags: int = 3000,
                     min_brand_events: int = 5, personas: int | None = None, seed: int = 0) -> tuple[TagVocabulary, np.ndarray]:
    """Tags from the catalog and the event counts (most interacted first, at most `max_tags`);
    returns the vocabulary and the tags' embeddings (`embed(list[str]) -> array`, normalised).

    A category tag exists for every category with events; a brand-in-category tag when the pair
    has `min_brand_events` events. Personas: k-means over the tag embeddings.
    """
    counts = Counter(events.item_id.astype(str))
    cat_events: Counter = Counter()
    pair_events: Counter = Counter()
    for item_id, n in counts.items():
        item = catalog.get(item_id)
        if not item.category:
            continue
        cat_events[item.category] += n
        if item.brand:
            pair_events[(item.brand, item.category)] += n
    entries: list[tuple[int, str, str, str]] = []  # (events, tag, category, brand)
    seen_tags: set[str] = set()
    for category, n in sorted(cat_events.items(), key=lambda e: (-e[1], e[0])):
        tag = category_tag(category)
        if tag and tag not in seen_tags:  # two paths can read alike once cut to plain text
            entries.append((n, tag, category, ""))
            seen_tags.add(tag)
    for (brand, category), n in pair_events.items():
        tag = brand_tag(brand, category)
        if n >= min_brand_events and tag and tag not in seen_tags:
            entries.append((n, tag, category, brand))
            seen_tags.add(tag)
    entries.sort(key=lambda e: (-e[0], e[1]))
    entries = entries[:max_tags]
    tags = [e[1] for e in entries]
    vectors = embed(tags) if tags else np.zeros((0, 1), np.float32)
    n_personas = personas or int(np.clip(len(tags) // 25, 4, 32))
    n_personas = max(1, min(n_personas, len(tags)))
    assign, names = _personas(tags, vectors, n_personas, seed)
    vocab = TagVocabulary(tags, [e[2] for e in entries], [e[3] for e in entries], assign, names)
    return vocab, vectors


def _personas(tags: Sequence[str], vectors: np.ndarray, k: int, seed: int) -> tuple[list[int], list[str]]:
    import faiss

    if k == 1 or len(tags) <= k:
        return list(range(len(tags))) if len(tags) <= k else [0] * len(tags), [t + PERSONA_SUFFIX for t in tags[:k]]
    km = faiss.Kmeans(vectors.shape[1], k, niter=25, seed=seed, spherical=True, verbose=False)
    km.train(np.ascontiguousarray(vectors, dtype=np.float32))
    _, labels = km.index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    labels = labels[:, 0]
    used = sorted(set(labels.tolist()))
    remap = {old: new for new, old in enumerate(used)}
    names = []
    for old in used:
        members = np.flatnonzero(labels == old)
        centre = km.centroids[old]
        best = members[int(np.argmax(vectors[members] @ centre))]
        names.append(tags[best] + PERSONA_SUFFIX)
    return [remap[int(l)] for l in labels], names


def categories_of_tags(vocab: TagVocabulary, tags: Iterable[str]) -> list[str]:
    """Distinct categories of a ranked tag list, in rank order."""
    out: dict[str, None] = {}
    for tag in tags:
        t = vocab.index.get(tag)
        if t is not None:
            out.setdefault(vocab.category[t], None)
    return list(out)
