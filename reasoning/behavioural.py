"""The behavioural route: item-to-item co-visitation plus recent-window popularity.

`BehaviouralReasoner` scores users against an `ItemModel`: in the worker that is the shared,
Redis-backed model every worker feeds (features/item_model.py `SharedItemModel`); offline (the
evaluation harness) it is the in-memory `BehaviouralModel` below, which learns the same sums with
the same increments (`covisit_pairs`), so the served route and the evaluated one score alike.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Protocol

import numpy as np

from contracts.recs import FallbackReason, RecsPayload, recommendations_payload
from contracts.text import MAX_EXPLANATION_CHARS, plain_text
from features.item_model import EMPTY_ROW, ItemCodes, covisit_pairs
from features.item_model import MAX_EXPONENT as _MAX_EXPONENT
from features.state import TYPE_WEIGHT
from reasoning.reasoner import UserView


class ItemModel(Protocol):
    """What the behavioural reasoner reads of an item model. `prefetch` is called with the items
    a batch of users will ask about before `neighbour_arrays`, `category` and `label` are."""

    codes: ItemCodes
    """The codes `neighbour_arrays` uses."""

    def prefetch(self, items: Iterable[str]) -> None: ...
    def neighbour_arrays(self, item_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The item's co-visitation row as (neighbour codes, log1p(weight)), in the row's order."""
    def top_popular(self, n: int) -> list[tuple[str, float]]: ...
    def popular_size(self) -> int: ...
    def category(self, item_id: str) -> str | None: ...
    def label(self, item_id: str) -> str: ...


class Popularity:
    """Time-decayed item counts by event time (a recent-window popularity)."""

    def __init__(self, half_life_s: float) -> None:
        self.half_life_ms = half_life_s * 1000.0
        self.t0: int | None = None
        self.scores: dict[str, float] = {}

    def add(self, item_id: str, ts_ms: int, weight: float) -> None:
        if self.t0 is None:
            self.t0 = ts_ms
        exponent = (ts_ms - self.t0) / self.half_life_ms
        if exponent > _MAX_EXPONENT:
            shift = 2.0 ** -exponent
            self.scores = {k: v * shift for k, v in self.scores.items() if v * shift > 1e-12}
            self.t0, exponent = ts_ms, 0.0
        self.scores[item_id] = self.scores.get(item_id, 0.0) + weight * 2.0 ** exponent

    def top(self, n: int) -> list[tuple[str, float]]:
        if not self.scores:
            return []
        best = heapq.nlargest(n, self.scores.items(), key=lambda kv: kv[1])
        norm = best[0][1]
        return [(item, score / norm) for item, score in best]


class CoVisitation:
    """Weighted counts of items interacted with close together by the same user."""

    def __init__(self, window: int, max_neighbors: int) -> None:
        self.window = window
        self.max_neighbors = max_neighbors
        self.neighbors: dict[str, dict[str, float]] = {}

    def add(self, item_id: str, previous: Sequence[str], weight: float) -> None:
        for other, w in covisit_pairs(item_id, previous, weight, self.window):
            self._bump(item_id, other, w)
            self._bump(other, item_id, w)

    def _bump(self, a: str, b: str, w: float) -> None:
        row = self.neighbors.get(a)
        if row is None:
            row = self.neighbors[a] = {}
        row[b] = row.get(b, 0.0) + w
        if len(row) > 2 * self.max_neighbors:
            keep = heapq.nlargest(self.max_neighbors, row.items(), key=lambda kv: kv[1])
            self.neighbors[a] = dict(keep)

    def similar(self, item_id: str) -> dict[str, float]:
        return self.neighbors.get(item_id, {})


class BehaviouralModel:
    """The in-memory item model (offline evaluation, tests); implements `ItemModel`."""

    def __init__(self, covisit_window: int, max_neighbors: int, popularity_half_life_s: float) -> None:
        self.covisit = CoVisitation(covisit_window, max_neighbors)
        self.popularity = Popularity(popularity_half_life_s)
        self.categories: dict[str, str] = {}
        self.brands: dict[str, str] = {}
        self.codes = ItemCodes()
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        """item -> its row as arrays, built on first use and dropped when the row changes."""

    def observe(self, item_id: str, kind: str, ts_ms: int, previous: Sequence[str],
                category: str | None = None, brand: str | None = None) -> None:
        """Learn from one applied event; `previous` are the user's items before it, newest first."""
        weight = TYPE_WEIGHT[kind]
        self.popularity.add(item_id, ts_ms, weight)
        self.covisit.add(item_id, previous, weight)
        if self._arrays:
            self._arrays.pop(item_id, None)
            for other in previous:
                self._arrays.pop(other, None)
        if category:
            self.categories[item_id] = category
        if brand:
            self.brands[item_id] = brand

    def prefetch(self, items: Iterable[str]) -> None:
        """Everything is in memory."""

    def similar(self, item_id: str) -> dict[str, float]:
        return self.covisit.similar(item_id)

    def neighbour_arrays(self, item_id: str) -> tuple[np.ndarray, np.ndarray]:
        arrays = self._arrays.get(item_id)
        if arrays is None:
            row = self.covisit.similar(item_id)
            if not row:
                return EMPTY_ROW
            arrays = self._arrays[item_id] = self.codes.row(row)
        return arrays

    def top_popular(self, n: int) -> list[tuple[str, float]]:
        return self.popularity.top(n)

    def popular_size(self) -> int:
        return len(self.popularity.scores)

    def category(self, item_id: str) -> str | None:
        return self.categories.get(item_id)

    def label(self, item_id: str) -> str:
        """A human-readable name for an item from what the stream told us about it."""
        parts = [self.brands.get(item_id), self.categories.get(item_id)]
        text = " ".join(p.replace(".", " ").replace("_", " ") for p in parts if p)
        return text or f"item {item_id}"


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class BehaviouralReasoner:
    """Scores co-visitation neighbours of the user's recent items; popularity fills the rest.

    Items the user bought are never recommended. Items they only viewed may come back: shoppers
    revisit what they viewed, and the evaluation measures both lists.
    """

    def __init__(self, model: ItemModel, model_version: str, recent_used: int = 10,
                 popular_refresh_s: float = 1.0) -> None:
        self.model = model
        self.model_version = model_version
        self.recent_used = recent_used
        self.popular_refresh_s = popular_refresh_s
        self._popular_cache: tuple[int, list[tuple[str, float]]] | None = None  # (size, ranking)
        self._popular_at = 0.0

    def popular(self, n: int) -> list[tuple[str, float]]:
        # Ranking the whole catalog costs ~10 ms at 50k items, so it is shared by all users and
        # redone at most every `popular_refresh_s` after `invalidate` (popularity moves slowly);
        # ranked with headroom so users who bought or hold many items still get n after filtering.
        # The headroom doubles only when asked for more than it holds: a ranking that is short
        # because the catalog was small is redone at the same size (doubling it on every growth
        # step overflowed Redis's ZREVRANGE range after ~55 batches of a new catalog, and every
        # refresh of that batch raised until the worker's retries happened to pass it).
        cache = self._popular_cache
        if cache is None or cache[0] < n:
            size = max(n, 2 * cache[0] if cache else 512)
        elif len(cache[1]) < n and self.model.popular_size() > len(cache[1]):
            size = cache[0]
        else:
            return cache[1][:n]
        self._popular_cache = (size, self.model.top_popular(size))
        self._popular_at = time.monotonic()
        return self._popular_cache[1][:n]

    def invalidate(self) -> None:
        """The model learned something; the popular ranking may be recomputed when it is due."""
        if time.monotonic() - self._popular_at >= self.popular_refresh_s:
            self._popular_cache = None

    def score(self, recent: Sequence[Sequence], exclude: Iterable[str], k: int) -> list[tuple[str, float, str]]:
        """Top-k (item, score, anchor item or '') for a history, newest first.

        An item scores the sum over the `recent_used` newest anchors of type weight x 0.85^rank x
        log1p(co-visitation weight), and is explained by the anchor that gave it the most; ties
        rank in the order items first appear (anchor by anchor, each row in its order). Vectorised
        over the anchors' rows; `tests/unit/test_behavioural.py` holds the plain loop it equals.
        """
        excluded = set(exclude)
        codes, weights, ranks = [], [], []
        for rank, entry in enumerate(recent[: self.recent_used]):
            row_codes, logw = self.model.neighbour_arrays(entry[0])
            if row_codes.size:
                codes.append(row_codes)
                weights.append(logw * (TYPE_WEIGHT.get(entry[1], 1.0) * 0.85 ** rank))
                ranks.append(np.full(row_codes.size, rank))
        out: list[tuple[str, float, str]] = []
        if codes:
            code, contribution, rank_of = np.concatenate(codes), np.concatenate(weights), np.concatenate(ranks)
            if excluded:
                keep = ~np.isin(code, self.model.codes.known(excluded))
                code, contribution, rank_of = code[keep], contribution[keep], rank_of[keep]
            if code.size:
                unique, first, group = np.unique(code, return_index=True, return_inverse=True)
                totals = np.bincount(group, weights=contribution)  # summed in input order, like a loop
                by_first = np.argsort(first, kind="stable")
                best = by_first[np.argsort(-totals[by_first], kind="stable")[:k]]
                # Each chosen item's strongest contribution, the earliest on ties.
                is_best = np.zeros(unique.size, dtype=bool)
                is_best[best] = True
                chosen = np.flatnonzero(is_best[group])
                order = chosen[np.lexsort((chosen, -contribution[chosen], group[chosen]))]
                strongest = order[np.searchsorted(group[order], best)]
                ids = self.model.codes.ids
                out = [(ids[c], total, recent[r][0]) for c, total, r in
                       zip(unique[best].tolist(), totals[best].tolist(), rank_of[strongest].tolist())]
        if len(out) < k:
            have = {item for item, _, _ in out}
            floor = out[-1][1] if out else 1.0
            for item, pop in self.popular(k + len(excluded) + len(have)):
                if len(out) >= k:
                    break
                if item in excluded or item in have:
                    continue
                out.append((item, floor * 0.01 * pop, ""))
        return out

    def _explain(self, item: str, anchor: str, cache: dict[str, tuple[str, str]]) -> tuple[str, str]:
        key = anchor or "@" + item
        hit = cache.get(key)
        if hit is None:
            # Labels and categories come from event context, which may hold a link: plain text only.
            if anchor:
                text = f"Shoppers who looked at {self.model.label(anchor)} (in your history) also viewed this"
                hit = ("covisit", plain_text(text, MAX_EXPLANATION_CHARS))
            else:
                category = self.model.category(item)
                text = f"Popular right now in {category.replace('.', ' › ')}" if category else "Popular with shoppers right now"
                hit = ("popular", plain_text(text, MAX_EXPLANATION_CHARS))
            cache[key] = hit
        return hit

    def _items(self, ranked: list[tuple[str, float, str]], cache: dict) -> list[dict]:
        out = []
        for item, s, anchor in ranked:
            hit = cache.get(anchor or "@" + item)
            route, text = hit if hit is not None else self._explain(item, anchor, cache)
            out.append({"item_id": item, "score": s, "route": route, "tag": None, "explanation": text})
        return out

    def recommend(self, users: Sequence[UserView], top_k: int) -> list[RecsPayload]:
        generated_at = _now_iso()
        self.model.prefetch(entry[0] for user in users for entry in user.recent[: self.recent_used])
        cache: dict[str, tuple[str, str]] = {}  # explanations repeat across users of a batch
        results = []
        for user in users:
            items = self._items(self.score(user.recent, user.bought, top_k), cache)
            covisited = any(entry["route"] == "covisit" for entry in items)
            results.append(recommendations_payload(
                user.user_id, items, generated_at, user.state_version, user.trigger, self.model_version,
                fallback_reason=None if covisited else FallbackReason.no_covisitation,
            ))
        return results

    def popular_fallback(self, user_id: str, top_k: int, reason: FallbackReason) -> RecsPayload:
        items = self._items([(i, s, "") for i, s in self.popular(top_k)], {})
        return recommendations_payload(user_id, items, _now_iso(), 0, "fallback", self.model_version,
                                       fallback_reason=reason)
