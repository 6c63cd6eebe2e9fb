"""The interface every recommendation route implements, and the view of a user it reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from contracts.recs import RecsPayload


@dataclass(frozen=True)
class UserView:
    """What a reasoner may know about a user at refresh time (read from the worker's state)."""

    user_id: str
    recent: Sequence[Sequence]
    """[item_id, type, ts_ms, category], most recent first."""
    bought: frozenset[str]
    top_categories: Sequence[str]
    state_version: int
    trigger: str


class Reasoner(Protocol):
    """Computes recommendations for a batch of users (batched: one call per refresh batch)."""

    model_version: str

    def recommend(self, users: Sequence[UserView], top_k: int) -> list[RecsPayload]:
        """One `Recommendations`-shaped payload per user, in order."""
        ...
