"""Training episodes from an event log: the context a refresh would have seen at some point of a
user's history, and the tags of what the user did next.

An episode at position t of a user's (time-ordered) events: context = the `max_items` events
before t (newest first), targets = the tags of events t .. t+horizon-1, most frequent first.
Only the train part of a split is ever used for training.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from features.catalog import Catalog
from offline.splits import UserCase, leave_one_out
from reasoning.context import UserContext, build_context
from reasoning.tags import TagVocabulary


def holdout(train: pd.DataFrame, validation: Sequence[UserCase] | None) -> tuple[pd.DataFrame, list[UserCase]]:
    """(the events to learn from, the held-out cases) of every model trained beside another: the
    split's own validation cases (leave-one-out: each user's second-to-last item) with all of
    `train`, else each user's last event of `train` held out (users with 3+ events). The
    sequential model and the intent model cut the same one, so a weight fitted on it scores
    items neither model learned.

    >>> log = pd.DataFrame({"user_id": list("aaab"), "item_id": list("xyzx"), "type": ["view"] * 4, "ts": [1, 2, 3, 4]})
    >>> learn, cases = holdout(log, None)
    >>> learn.item_id.tolist(), [(c.user_id, c.history, sorted(c.targets)) for c in cases]
    (['x', 'y', 'x'], [('a', ['x', 'y'], ['z'])])
    >>> holdout(log, cases)[0] is log
    True
    """
    if validation:
        return train, list(validation)
    inner = leave_one_out(train, min_events=3)
    return inner.inputs, inner.cases


@dataclass(frozen=True)
class Episode:
    context: UserContext
    target_tags: tuple[int, ...]
    """Tag indices, most frequent first."""
    target_categories: frozenset[str]


def ranked_tags(vocab: TagVocabulary, catalog: Catalog, item_ids) -> list[int]:
    counts: Counter = Counter()
    order: dict[int, int] = {}
    for item_id in item_ids:
        t = vocab.tag_of_item(catalog.get(str(item_id)))
        if t is not None:
            counts[t] += 1
            order.setdefault(t, len(order))
    return sorted(counts, key=lambda t: (-counts[t], order[t]))


def user_histories(events: pd.DataFrame) -> dict[str, list[list]]:
    """user -> [[item_id, type, ts], ...] oldest first."""
    out: dict[str, list[list]] = {}
    for user, item, kind, ts in events[["user_id", "item_id", "type", "ts"]].itertuples(index=False):
        out.setdefault(str(user), []).append([str(item), str(kind), int(ts)])
    return out


def episodes(events: pd.DataFrame, catalog: Catalog, vocab: TagVocabulary, max_items: int = 20,
             horizon: int = 5, per_user: int = 12, min_history: int = 3, seed: int = 0,
             from_ts: int | None = None) -> list[Episode]:
    """Up to `per_user` episodes per user; with `from_ts`, only positions at or after that time
    (the history before it still forms the context)."""
    rng = random.Random(seed)
    out = []
    for user, history in user_histories(events).items():
        positions = [t for t in range(min_history, len(history)) if from_ts is None or history[t][2] >= from_ts]
        if len(positions) > per_user:
            positions = sorted(rng.sample(positions, per_user))
        for t in positions:
            future = [h[0] for h in history[t:t + horizon]]
            tags = ranked_tags(vocab, catalog, future)
            if not tags:
                continue
            recent = list(reversed(history[max(0, t - max_items):t]))
            out.append(Episode(build_context(user, recent, catalog, max_items), tuple(tags),
                               frozenset(catalog.get(i).category for i in future if catalog.get(i).category)))
    return out
