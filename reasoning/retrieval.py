"""Tags -> items, and the merge of the routes into the final list.

A final tag's items are its category match (the catalog items the tag maps to) and, for catalogs
with text, its nearest items in the faiss index of item atoms (the tag's MiniLM vector against
item vectors: a "smartwatch" tag finds items whose text is near it even under another category
path). Three item steps (`ItemStep`) turn a user's tags into one list:

- `product` (with a sequential model; the default): the intent route says *what kind* of item,
  the sequence model *which one*: score(item) = P_seq(item | user) * sum of P(tag) over the
  user's final tags that hold the item, P_seq the sequential model's softmax over the whole
  catalog, P(tag) the arbiter's relevance of the tag normalised over the user's final tags.
  The model's confidence carries across tags; items in none of the tags are not served.
- `mixture` (with a sequential model): P(item) = sum over tags of P(tag) * P(item | tag, user),
  P(item | tag, user) the sequential model's softmax over the tag's items it knows. A confident
  tag goes deep, an unlikely one contributes its single best item; but a small tag's items get
  a high share for being few.
- `round_robin`: each tag's items (the user's co-visitation trail in it, then the sequential
  model's ranking of the tag's items, then popularity), tags interleaved by rank, so the list
  covers every tag before it goes deep into one (also the fallback without a sequential model).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from contracts.recs import RecsPayload, rec_item
from contracts.settings import ItemStep
from features.catalog import Catalog
from reasoning.index import ItemIndex
from reasoning.tags import TagVocabulary


@dataclass(frozen=True)
class PersonalScores:
    """Per-user scores of any item, for ranking a tag's items for *this* user: the sequential
    model's user vectors against its item embeddings (reasoning/sequential.py
    `SequentialRoute.personal`). Items the model does not know have no score."""

    user_vectors: np.ndarray
    """(users, d), in the order of the batch."""
    item_vectors: np.ndarray
    """(items, d)."""
    row_of: Mapping[str, int]
    """item id -> its row of item_vectors."""
    _known: dict = field(default_factory=dict, compare=False, repr=False)
    """id(items) -> (the known items, their rows): a tag's item list is resolved once per batch."""

    def top(self, u: int, items: Sequence[str], n: int, exclude: set[str]) -> list[str]:
        """The n known `items` (not in `exclude`) user u's vector scores highest, best first.

        >>> p = PersonalScores(np.array([[1.0, 0.0]]), np.array([[0.1, 0], [0.9, 0], [0.5, 0]]), {"a": 0, "b": 1, "c": 2})
        >>> p.top(0, ["a", "b", "c", "new"], 2, {"b"})
        ['c', 'a']
        """
        hit = self._known.get(id(items))
        if hit is None or hit[0] is not items:
            known = [i for i in items if i in self.row_of]
            hit = self._known[id(items)] = (items, known, np.asarray([self.row_of[i] for i in known], np.int64))
        _, known, rows = hit
        if not known:
            return []
        scores = self.item_vectors[rows] @ self.user_vectors[u]
        out = []
        for j in np.argsort(-scores, kind="stable")[: n + len(exclude)]:
            if known[j] not in exclude:
                out.append(known[j])
                if len(out) == n:
                    break
        return out


def tag_mixture(logits: np.ndarray, tag_rows: Sequence[np.ndarray], tag_weights: Sequence[float],
                excluded_rows: np.ndarray, k: int, within_tag: bool = True) -> list[tuple[int, float, int]]:
    """Up to k (row, score, tag position), best first. `within_tag` (the `mixture` step): score =
    sum over tags j of w_j / sum(w) * softmax(logits[tag_rows[j]])[row]; else (the `product`
    step): softmax(logits)[row] * sum over the tags j holding the row of w_j / sum(w), the model's
    own probability of the item, weighted by its tags. The tag position is the tag that gave the
    row most. Rows in `excluded_rows` never appear; a tag with no rows gives nothing.

    The mixture goes deep into a sure tag; an unlikely tag brings only an item the model is sure
    of within it:
    >>> logits = np.log(np.array([0.5, 0.3, 0.2, 0.9, 0.1]))
    >>> tags = [np.array([0, 1, 2]), np.array([3, 4])]
    >>> [(r, round(p, 3), j) for r, p, j in tag_mixture(logits, tags, [0.8, 0.2], np.array([], int), 4)]
    [(0, 0.4, 0), (1, 0.24, 0), (3, 0.18, 1), (2, 0.16, 0)]
    >>> [r for r, _, _ in tag_mixture(logits, tags, [0.8, 0.2], np.array([0]), 2)]  # row 0 bought
    [1, 3]

    The product keeps the model's confidence across tags (a small tag's items are not lifted by
    being few); with equal weights it is the model's ranking of the tags' items:
    >>> [(r, round(p, 3), j) for r, p, j in tag_mixture(logits, tags, [0.8, 0.2], np.array([], int), 3, False)]
    [(0, 0.2, 0), (1, 0.12, 0), (3, 0.09, 1)]
    >>> [r for r, _, _ in tag_mixture(logits, tags, [1.0, 1.0], np.array([], int), 5, False)]
    [3, 0, 1, 2, 4]
    """
    total = float(sum(tag_weights))
    if not total or k <= 0:
        return []
    score = np.zeros(len(logits))
    best = np.zeros(len(logits))
    best_tag = np.full(len(logits), -1)
    if not within_tag:
        everywhere = np.exp(logits - logits.max())
        everywhere /= everywhere.sum()
    for j, (rows, w) in enumerate(zip(tag_rows, tag_weights)):
        if not len(rows) or w <= 0:
            continue
        if within_tag:
            p = np.exp(logits[rows] - logits[rows].max())
            c = (w / total) * p / p.sum()
        else:
            c = (w / total) * everywhere[rows]
        score[rows] += c
        better = c > best[rows]
        best[rows[better]] = c[better]
        best_tag[rows[better]] = j
    score[excluded_rows] = 0.0
    candidates = np.flatnonzero(score > 0)
    top = candidates[np.argsort(-score[candidates], kind="stable")[:k]]
    return [(int(r), float(score[r]), int(best_tag[r])) for r in top]


class TagRetriever:
    def __init__(self, vocab: TagVocabulary, catalog: Catalog, tag_vectors: np.ndarray,
                 index: ItemIndex | None, per_tag: int = 8, ann_per_tag: int = 4,
                 item_step: ItemStep = ItemStep.PRODUCT) -> None:
        self.item_step = ItemStep(item_step)
        self.vocab = vocab
        self.tag_items = vocab.items_of(catalog)
        self.tag_sets = [set(items) for items in self.tag_items]
        self.tag_vectors = tag_vectors
        self.index = index
        self.per_tag = per_tag
        self.ann_per_tag = ann_per_tag if index is not None else 0

    def retrieve(self, ranked_tags: Sequence[Sequence[str]], popularity: Mapping[str, float],
                 exclude: Sequence[set[str]], k: int,
                 affinity: Sequence[Mapping[str, float]] | None = None,
                 personal: PersonalScores | None = None,
                 tag_weights: Sequence[Sequence[float]] | None = None,
                 item_step: ItemStep | None = None) -> list[list[tuple[str, float, str]]]:
        """Per user: up to k (item, score, tag), best first; items in `exclude[u]` never appear.

        With `personal` and the `product` or `mixture` step (`item_step`, default the
        retriever's): `tag_mixture` of the user's tags weighted by `tag_weights[u]` (the
        arbiter's relevance; equal without it) over the items the sequential model knows, then,
        if that gives fewer than k, the round-robin list.
        Round robin: within a tag, items the user's behaviour points at (`affinity[u]`: the
        behavioural route's co-visitation scores) come first, then, with `personal`, the tag's
        items ranked by the sequential model for this user (all of the tag's items, not only
        popular ones), then the tag's most popular items."""
        wanted = {t for tags in ranked_tags for t in tags}
        top: dict[str, list[str]] = {}
        for tag in wanted:
            items = self.tag_items[self.vocab.index[tag]]
            top[tag] = heapq.nlargest(self.per_tag * 3, items, key=lambda i: popularity.get(i, 0.0))
        near: dict[str, list[str]] = {}
        if self.ann_per_tag and wanted:
            order = sorted(wanted)
            found = self.index.search(self.tag_vectors[[self.vocab.index[t] for t in order]], self.ann_per_tag * 3)
            near = {t: [i for i, _ in hits] for t, hits in zip(order, found)}
        mixed = None
        step = item_step or self.item_step
        if personal is not None and step in (ItemStep.MIXTURE, ItemStep.PRODUCT):
            mixed = self._mixture(ranked_tags, exclude, k, personal, near, tag_weights, step is ItemStep.MIXTURE)
        out = []
        for u, (tags, excluded) in enumerate(zip(ranked_tags, exclude)):
            if mixed is not None and len(mixed[u]) >= k:
                out.append(mixed[u])
                continue
            near_user = affinity[u] if affinity is not None else {}
            lists = []
            for tag in tags:
                t = self.vocab.index[tag]
                members = self.tag_sets[t]
                liked = sorted((i for i in near_user if i in members and i not in excluded),
                               key=lambda i: -near_user[i])[: self.per_tag]
                if personal is not None and len(liked) < self.per_tag:
                    liked += personal.top(u, self.tag_items[t], self.per_tag - len(liked), excluded | set(liked))
                picks = liked + [i for i in top[tag] if i not in excluded and i not in liked][: self.per_tag - len(liked)]
                extra = [i for i in near.get(tag, ()) if i not in excluded and i not in picks][: self.ann_per_tag]
                lists.append((tag, picks + extra))
            ranked: list[tuple[str, float, str]] = []
            seen: set[str] = set()
            depth = max((len(items) for _, items in lists), default=0)
            for j in range(depth):  # round robin over tags by rank
                for tag, items in lists:
                    if j < len(items) and items[j] not in seen:
                        seen.add(items[j])
                        ranked.append((items[j], 1.0 / (1 + len(ranked)), tag))
                if len(ranked) >= k:
                    break
            if mixed is not None:  # the mixture first, the round robin after it
                first = {i for i, _, _ in mixed[u]}
                ranked = mixed[u] + [(i, 0.0, t) for i, _, t in ranked if i not in first]
            out.append(ranked[:k])
        return out

    def _mixture(self, ranked_tags, exclude, k, personal: PersonalScores, near: Mapping[str, list[str]],
                 tag_weights, within_tag: bool) -> list[list[tuple[str, float, str]]]:
        """`tag_mixture` per user: a tag's items are its category match and its faiss neighbours,
        those the sequential model knows (rows of `personal.item_vectors`)."""
        ids = [None] * len(personal.item_vectors)
        for item, row in personal.row_of.items():
            ids[row] = item
        rows_of: dict[str, np.ndarray] = {}
        out = []
        for u, (tags, excluded) in enumerate(zip(ranked_tags, exclude)):
            for tag in tags:
                if tag not in rows_of:
                    members = dict.fromkeys(self.tag_items[self.vocab.index[tag]] + near.get(tag, []))
                    rows_of[tag] = np.asarray([personal.row_of[i] for i in members if i in personal.row_of], np.int64)
            logits = personal.item_vectors @ personal.user_vectors[u]
            weights = tag_weights[u] if tag_weights is not None else [1.0] * len(tags)
            gone = np.asarray([personal.row_of[i] for i in excluded if i in personal.row_of], np.int64)
            picks = tag_mixture(logits, [rows_of[t] for t in tags], weights, gone, k, within_tag)
            out.append([(ids[r], p, tags[j]) for r, p, j in picks])
        return out


def recent_route(recent: Sequence[Sequence], bought: set[str], n: int) -> list[dict]:
    """The user's recent items they did not buy, newest first (shoppers come back to them).

    >>> [e["item_id"] for e in recent_route([["a", "view"], ["b", "purchase"], ["a", "cart"], ["c", "view"]], {"b"}, 5)]
    ['a', 'c']
    """
    items = [str(e[0]) for e in recent if str(e[0]) not in bought]
    return [rec_item(i, 1.0 / (1 + r), "recent", "You looked at this recently")
            for r, i in enumerate(dict.fromkeys(items))][:n]


def merge(routes: Sequence[tuple[float, list[dict]]], exclude: set[str], k: int, rrf_k: float = 20.0) -> list[dict]:
    """Weighted reciprocal-rank fusion of routes (each: weight, `rec_item` dicts best first).
    An item keeps the entry (route, tag, explanation) of the route that contributed most to it.

    >>> a = [{"item_id": "x", "route": "covisit"}, {"item_id": "y", "route": "covisit"}]
    >>> b = [{"item_id": "y", "route": "intent"}, {"item_id": "z", "route": "intent"}]
    >>> [(e["item_id"], e["route"]) for e in merge([(1.0, a), (1.0, b)], {"z"}, 10)]
    [('y', 'intent'), ('x', 'covisit')]
    """
    score: dict[str, float] = {}
    best: dict[str, tuple[float, dict]] = {}
    for weight, items in routes:
        for rank, entry in enumerate(items):
            item = entry["item_id"]
            if item in exclude:
                continue
            c = weight / (rrf_k + rank + 1)
            score[item] = score.get(item, 0.0) + c
            if item not in best or c > best[item][0]:
                best[item] = (c, entry)
    ranked = heapq.nlargest(k, score.items(), key=lambda kv: kv[1])
    return [{**best[item][1], "score": s} for item, s in ranked]


def merge_with_intent(behavioural: RecsPayload, recent: Sequence[Sequence], bought: set[str],
                      result: Mapping, k: int) -> RecsPayload:
    """A new payload: the behavioural list fused with the user's recent items and an intent result
    (the fields of contracts/intent.py `IntentResult`, with the weights it was merged with); the
    intents, tags, context and the model version `<behavioural>+<intent>` come from the result.
    The worker and the reasoner both merge through here, so a list merged by either is the same.

    >>> b = {"items": [{"item_id": "x", "route": "covisit"}], "model_version": "behavioural-1"}
    >>> r = {"items": [{"item_id": "y", "route": "intent"}], "weights": (0.0, 1.0, 1.0), "version": "m2",
    ...      "intents": [], "tags": ["t"], "context_items": ["x"], "context_actions": ["view"]}
    >>> out = merge_with_intent(b, [], set(), r, 10)
    >>> [e["item_id"] for e in out["items"]], out["model_version"]
    (['x', 'y'], 'behavioural-1+m2')
    """
    w_recent, w_behavioural, w_intent = result["weights"]
    items = merge([(w_recent, recent_route(recent, bought, k)), (w_behavioural, behavioural["items"]),
                   (w_intent, result["items"])], bought, k)
    return {**behavioural, "items": items, "intents": result["intents"], "tags": result["tags"],
            "context_items": result["context_items"], "context_actions": result["context_actions"],
            "model_version": f"{behavioural['model_version']}+{result['version']}"}


def remerge_intent(current: RecsPayload, previous_version: str | None, bought: set[str],
                   result: Mapping, k: int) -> RecsPayload:
    """`current`, a list of a newer state than `result`'s request (the worker refreshed the user
    while the request waited, merging the intent result it held then, of `previous_version`, or
    none), with its intent-route items replaced by `result`'s: its other items, state_version,
    trigger and fallback_reason are kept, the model version's intent part becomes `result`'s.
    An item that both a behavioural route and the old intent proposed carries the route that
    contributed most to it (`merge`); labelled intent, it goes with the old result's items.

    >>> current = {"items": [{"item_id": "x", "route": "covisit"}, {"item_id": "old", "route": "intent"}],
    ...            "model_version": "behavioural-1+seq-2+m1", "state_version": 9, "fallback_reason": None}
    >>> r = {"items": [{"item_id": "new", "route": "intent"}], "weights": (0.0, 1.0, 1.0), "version": "m2",
    ...      "intents": [], "tags": ["t"], "context_items": ["x"], "context_actions": ["view"]}
    >>> out = remerge_intent(current, "m1", set(), r, 10)
    >>> [e["item_id"] for e in out["items"]], out["model_version"], out["state_version"]
    (['x', 'new'], 'behavioural-1+seq-2+m2', 9)
    >>> remerge_intent({**current, "model_version": "behavioural-1+seq-2"}, None, set(), r, 10)["model_version"]
    'behavioural-1+seq-2+m2'
    """
    version = current["model_version"]
    suffix = f"+{previous_version}"
    if previous_version and version.endswith(suffix):
        version = version[: -len(suffix)]
    behavioural = {**current, "items": [e for e in current["items"] if e["route"] != "intent"],
                   "model_version": version}
    return merge_with_intent(behavioural, (), bought, result, k)
