"""Recommendation methods under one protocol: each is fitted on the train events only and ranks
items for an evaluated user. The harness removes bought items (the `all` list) or every item the
user touched before (the `new` list) from the ranking, so a method ranks enough candidates
(`n`, at least 100) for both."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from features.state import StateLimits
from offline.splits import Split, UserCase
from reasoning.behavioural import BehaviouralModel, BehaviouralReasoner

DAY_MS = 86_400_000


class Method(Protocol):
    name: str

    def fit(self, split: Split, catalog: Sequence[str]) -> None: ...

    def rank(self, case: UserCase, n: int) -> list[str]: ...


class Popularity:
    """Most interacted-with items in the last `window_ms` of the train period (all of it if
    shorter; None: the whole period, the standard "most popular"), then the rest by their counts
    over the whole period."""

    name = "popularity"

    def __init__(self, window_ms: int | None = DAY_MS) -> None:
        self.window_ms = window_ms
        if window_ms is None:
            self.name = "popularity_global"

    def fit(self, split: Split, catalog: Sequence[str]) -> None:
        train = split.train
        recent = train if self.window_ms is None else train[train.ts >= train.ts.max() - self.window_ms]
        self.ranking = recent.item_id.value_counts().index.tolist()
        rest = train.item_id.value_counts().index
        known = set(self.ranking)
        self.ranking += [i for i in rest if i not in known]

    def rank(self, case: UserCase, n: int) -> list[str]:
        return self.ranking[: n + len(case.bought)]


class RecentHistory:
    """The user's own most recent distinct items (a strong baseline: shoppers revisit)."""

    name = "recent_history"

    def fit(self, split: Split, catalog: Sequence[str]) -> None:
        pass

    def rank(self, case: UserCase, n: int) -> list[str]:
        return list(dict.fromkeys(reversed(case.history)))[:n]


class ItemKNN:
    """The worker's behavioural route (co-visitation + popularity), learned from the train events
    in time order with the same model code that serves users; a user's recent items are read from
    the split's inputs (leave-one-out: the validation event too, which the model never learns),
    as many as the worker's state keeps by default (`StateLimits.recent_items`)."""

    name = "itemknn"

    def __init__(self, covisit_window: int = 5, max_neighbors: int = 100, half_life_s: float = 3600.0) -> None:
        self.params = (covisit_window, max_neighbors, half_life_s)

    def fit(self, split: Split, catalog: Sequence[str]) -> None:
        model = BehaviouralModel(*self.params)
        recent: dict[str, list[list]] = {}
        window, keep = self.params[0], StateLimits().recent_items
        cols = split.train[["user_id", "item_id", "type", "ts", "category"]].itertuples(index=False)
        for user, item, kind, ts, category in cols:
            history = recent.setdefault(user, [])
            model.observe(item, kind, int(ts), [h[0] for h in history[:window]],
                          category if isinstance(category, str) else None)
            history.insert(0, [item, kind, int(ts), None])
            del history[keep:]
        if split.history is not None:
            extra = split.history.loc[split.history.index.difference(split.train.index)]
            for user, item, kind, ts in extra[["user_id", "item_id", "type", "ts"]].itertuples(index=False):
                history = recent.setdefault(user, [])
                history.insert(0, [item, kind, int(ts), None])
                del history[keep:]
        self.recent = recent
        self.reasoner = BehaviouralReasoner(model, "eval")

    def rank(self, case: UserCase, n: int) -> list[str]:
        ranked = self.reasoner.score(self.recent.get(case.user_id, []), case.bought, n)
        return [item for item, _, _ in ranked]


class Oracle:
    """Recommends the user's targets (new targets first): Recall must come out as 1.0."""

    name = "oracle"

    def fit(self, split: Split, catalog: Sequence[str]) -> None:
        pass

    def rank(self, case: UserCase, n: int) -> list[str]:
        return sorted(case.new_targets) + sorted(case.targets - case.new_targets)


class RandomItems:
    """Uniformly random catalog items: Recall@K should be near K / catalog size."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, split: Split, catalog: Sequence[str]) -> None:
        self.catalog = np.asarray(catalog, dtype=object)
        self.rng = np.random.default_rng(self.seed)

    def rank(self, case: UserCase, n: int) -> list[str]:
        size = min(n, len(self.catalog))
        return self.catalog[self.rng.choice(len(self.catalog), size, replace=False)].tolist()


def category_lookup(items: pd.DataFrame, events: pd.DataFrame) -> dict[str, str]:
    """item -> category leaf (last level of a path), from the item table or the events."""
    source = items if "category" in items and items.category.notna().any() else events
    pairs = source[["item_id", "category"]].dropna().drop_duplicates("item_id", keep="last")
    return {i: str(c).split(".")[-1] for i, c in zip(pairs.item_id, pairs.category)}
