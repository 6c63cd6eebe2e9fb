"""The item catalog as the intent engine sees it: each item's text (title, category path, brand),
its category, and a version that changes when any of that changes.

Item text is what the full-text context spells out and what the embedder turns into an item
"atom". Catalogs without text (Taobao: category ids only) still get a category; their atoms are
learned (features/embedder.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from contracts.text import MAX_CATALOG_CHARS, plain_text


def _clean(value: object) -> str:
    """A catalog field as plain text (contracts/text.py): a hostile title never reaches a prompt
    as markup or a link."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return plain_text(str(value), MAX_CATALOG_CHARS)


@dataclass(frozen=True)
class CatalogItem:
    item_id: str
    category: str
    """Category path with `.` between levels ('' when unknown); the unit of category HR."""
    brand: str
    title: str

    @property
    def category_words(self) -> str:
        """'electronics.audio.headphone' -> 'electronics audio headphone'."""
        return self.category.replace(".", " ").replace("_", " ")

    @property
    def text(self) -> str:
        """What the full-text context says about the item (and what MiniLM embeds)."""
        parts = [self.title, self.brand, self.category_words]
        return " ".join(p for p in parts if p) or plain_text(f"item {self.item_id}")


class Catalog:
    """item_id -> CatalogItem, from a dataset's item table (categories filled from events)."""

    def __init__(self, items: Iterable[CatalogItem], has_text: bool) -> None:
        self.items: dict[str, CatalogItem] = {i.item_id: i for i in items}
        self.has_text = has_text
        """Whether items carry words (title or category path words or brand) the embedder can read."""
        digest = hashlib.sha256()
        for item in sorted(self.items.values(), key=lambda i: i.item_id):
            digest.update(f"{item.item_id}\t{item.category}\t{item.brand}\t{item.title}\n".encode())
        self.version = digest.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.items

    def get(self, item_id: str) -> CatalogItem:
        item = self.items.get(item_id)
        return item if item is not None else CatalogItem(item_id, "", "", "")

    @classmethod
    def from_frames(cls, items: pd.DataFrame, events: pd.DataFrame | None = None) -> "Catalog":
        """Build from a `offline.datasets.Dataset`'s items (and events for missing categories).

        >>> cat = Catalog.from_frames(pd.DataFrame({"item_id": ["1"], "category": ["a.b"], "brand": ["acme"]}))
        >>> cat.get("1").text, cat.has_text
        ('acme a b', True)
        """
        frame = items.copy()
        for column in ("category", "brand", "title"):
            if column not in frame:
                frame[column] = None
        if events is not None and "category" in events:
            known = events[["item_id", "category"]].dropna().drop_duplicates("item_id", keep="last")
            fill = dict(zip(known.item_id, known.category))
            missing = frame.category.isna()
            frame.loc[missing, "category"] = frame.loc[missing, "item_id"].map(fill)
            extra = set(known.item_id) - set(frame.item_id)
            if extra:
                frame = pd.concat([frame, pd.DataFrame({"item_id": sorted(extra)})], ignore_index=True)
                frame["category"] = frame.category.fillna(frame.item_id.map(fill))
        rows = [CatalogItem(str(i), _clean(c), _clean(b).lower(), _clean(t))
                for i, c, b, t in zip(frame.item_id, frame.category, frame.brand, frame.title)]
        # Text means words: a catalog whose categories are bare ids has none.
        has_text = any(r.title or r.brand or (r.category and not r.category.isdigit()) for r in rows)
        return cls(rows, has_text)
