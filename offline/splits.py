"""Train/test splits of an event log, and what each evaluated user is scored against.

`global-time` (default): the last 10% of the time span is the test period; a user is evaluated
when they have at least 3 events before it and at least one in it; their targets are the
distinct items they touched in the test period (any event type). Methods only ever see the
events before the split.

`per-user-last`: every user with at least 5 events holds out the last 20% of their events (at
least one); targets are the distinct items of that tail, and training is everything else.

`leave-one-out` (the protocol of SASRec, P5, TIGER and eSASRec papers): every user with at least 3
events; their last event is the test item, the one before it the validation item (early
stopping and fitted weights only), the rest is training. A test user's history is their training
events plus the validation event (`Split.history`), as in those papers' code. "Last" follows the
event table's row order (offline/datasets.py sorts by time with a stable sort, so ties keep the
file's order); nothing here re-sorts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

SPLITS = ("global-time", "per-user-last", "leave-one-out")


@dataclass
class UserCase:
    user_id: str
    history: list[str]
    """Train-period items, oldest first (with repeats)."""
    seen: set[str]
    bought: set[str]
    targets: set[str]
    new_targets: set[str]
    """Targets the user never interacted with in the train period."""


@dataclass
class Split:
    name: str
    train: pd.DataFrame
    test: pd.DataFrame
    cases: list[UserCase]
    protocol: dict = field(default_factory=dict)
    validation: list[UserCase] = field(default_factory=list)
    """Held-out cases inside the train events (leave-one-out: each user's validation item, history
    the train events); empty when the split has none: a method cuts its own from `train`."""
    history: pd.DataFrame | None = None
    """The events a method may read as a test user's input (never learn from): `train` unless set
    (leave-one-out: train plus the validation events)."""

    @property
    def inputs(self) -> pd.DataFrame:
        return self.train if self.history is None else self.history


def _cases(history: pd.DataFrame, test: pd.DataFrame, users: list[str]) -> list[UserCase]:
    """One case per user: their `history` events (oldest first) and the distinct `test` items."""
    mine = history[history.user_id.isin(users)]
    items = mine.groupby("user_id", sort=False).item_id.agg(list)
    bought = mine[mine.type == "purchase"].groupby("user_id", sort=False).item_id.agg(set)
    targets = test[test.user_id.isin(users)].groupby("user_id", sort=False).item_id.agg(set)
    cases = []
    for user in users:
        seen_items = items[user]
        seen = set(seen_items)
        t = targets[user]
        cases.append(UserCase(user, seen_items, seen, bought.get(user, set()), t, t - seen))
    return cases


def global_time(events: pd.DataFrame, test_share: float = 0.1, min_train: int = 3) -> Split:
    t_min, t_max = int(events.ts.min()), int(events.ts.max())
    split_ts = t_min + (1.0 - test_share) * (t_max - t_min)
    train = events[events.ts < split_ts]
    test = events[events.ts >= split_ts]
    counts = train.user_id.value_counts()
    eligible = set(counts[counts >= min_train].index) & set(test.user_id)
    users = sorted(eligible)
    protocol = {"split": "global-time", "test_share": test_share, "min_train_events": min_train,
                "split_ts_ms": int(split_ts)}
    return Split("global-time", train, test, _cases(train, test, users), protocol)


def per_user_last(events: pd.DataFrame, test_share: float = 0.2, min_events: int = 5) -> Split:
    ordered = events.sort_values(["user_id", "ts"], kind="stable")
    sizes = ordered.groupby("user_id").user_id.transform("size")
    rank = ordered.groupby("user_id").cumcount()
    n_test = np.maximum(1, np.floor(sizes * test_share)).astype(int)
    is_test = (sizes >= min_events) & (rank >= sizes - n_test)
    test = ordered[is_test].sort_values("ts", kind="stable")
    train = ordered[~is_test].sort_values("ts", kind="stable")
    users = sorted(set(test.user_id))
    protocol = {"split": "per-user-last", "test_share": test_share, "min_events": min_events}
    return Split("per-user-last", train, test, _cases(train, test, users), protocol)


def leave_one_out(events: pd.DataFrame, min_events: int = 3) -> Split:
    """Last event of every user with `min_events` or more: test; the one before: validation.

    >>> import pandas as pd
    >>> log = pd.DataFrame({"user_id": list("aaaab"), "item_id": ["x", "y", "z", "w", "x"],
    ...                     "type": ["view"] * 5, "ts": [1, 2, 2, 2, 3]})
    >>> s = leave_one_out(log)
    >>> [(c.user_id, c.history, sorted(c.targets)) for c in s.cases]
    [('a', ['x', 'y', 'z'], ['w'])]
    >>> [(c.user_id, c.history, sorted(c.targets)) for c in s.validation]
    [('a', ['x', 'y'], ['z'])]
    >>> s.train.item_id.tolist(), s.inputs.item_id.tolist()
    (['x', 'y', 'x'], ['x', 'y', 'z', 'x'])
    """
    sizes = events.groupby("user_id", sort=False).user_id.transform("size")
    from_end = sizes - 1 - events.groupby("user_id", sort=False).cumcount()
    eligible = sizes >= min_events
    test = events[eligible & (from_end == 0)]
    valid = events[eligible & (from_end == 1)]
    history = events[~(eligible & (from_end == 0))]
    train = events[~(eligible & (from_end <= 1))]
    users = sorted(set(test.user_id))
    protocol = {"split": "leave-one-out", "min_events": min_events,
                "test": "each user's last event (row order, ties kept as in the file)",
                "validation": "the event before it (early stopping, fitted weights)",
                "ranking": "full catalog minus the user's history"}
    return Split("leave-one-out", train, test, _cases(history, test, users), protocol,
                 validation=_cases(train, valid, users), history=history)


def make_split(events: pd.DataFrame, name: str) -> Split:
    if name == "global-time":
        return global_time(events)
    if name == "per-user-last":
        return per_user_last(events)
    if name == "leave-one-out":
        return leave_one_out(events)
    raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")


def sample_cases(split: Split, users: int | None, seed: int) -> Split:
    """`split` with a seeded random sample of `users` of its test cases (in the split's order);
    the split itself when `users` is None or not below its count.

    >>> cases = [UserCase(str(i), [], set(), set(), {"t"}, {"t"}) for i in range(10)]
    >>> split = Split("s", None, None, cases)
    >>> [c.user_id for c in sample_cases(split, 3, 0).cases] == [c.user_id for c in sample_cases(split, 3, 0).cases]
    True
    >>> len(sample_cases(split, 3, 0).cases), sample_cases(split, None, 0) is split, sample_cases(split, 10, 0) is split
    (3, True, True)
    """
    if users is None or users >= len(split.cases):
        return split
    keep = set(random.Random(seed).sample(range(len(split.cases)), users))
    return replace(split, cases=[c for i, c in enumerate(split.cases) if i in keep])
