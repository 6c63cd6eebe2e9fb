"""Item statistics folded from the stream (counts by type, last known category/brand/price),
pushed to Feast's `item_stats` view."""

from __future__ import annotations

from typing import Any

from contracts.events import Event

_COUNTED = {"view": "views", "click": "views", "cart": "carts", "purchase": "purchases"}


class ItemStats:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def observe(self, event: Event) -> None:
        row = self.rows.get(event.item_id)
        if row is None:
            row = self.rows[event.item_id] = {
                "item_id": event.item_id, "views": 0, "carts": 0, "purchases": 0,
                "category": "", "brand": "", "price": 0.0, "last_event_ts": 0,
            }
        column = _COUNTED.get(event.type.value)
        if column:
            row[column] += 1
        if event.category:
            row["category"] = event.category
        if event.brand:
            row["brand"] = event.brand
        if event.price is not None:
            row["price"] = float(event.price)
        row["last_event_ts"] = max(row["last_event_ts"], event.ts)

    def feature_rows(self, item_ids: set[str]) -> list[dict[str, Any]]:
        return [self.rows[i] for i in item_ids]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return self.rows

    def load(self, rows: dict[str, dict[str, Any]]) -> None:
        self.rows = rows
