"""Train/test splits of an event log, and what each evaluated user is scored against.

`global-time` (default): the last 10% of the time span is the test period; a user is evaluated
when they have at least 3 events before it and at least one in it; their targets are the
distinct items they touched in the test period (any event type). Methods only ever see the
events before the split.

`per-user-last`: every user with at least 5 events holds out the last 20% of their events (at
least one); targets are the distinct items of that tail, and training is everything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SPLITS = ("global-time", "per-user-last")


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


def _cases(train: pd.DataFrame, test: pd.DataFrame, users: list[str]) -> list[UserCase]:
    by_user_train = {u: g for u, g in train[train.user_id.isin(users)].groupby("user_id", sort=False)}
    targets = test[test.user_id.isin(users)].groupby("user_id").item_id.agg(lambda s: set(s))
    cases = []
    for user in users:
        g = by_user_train[user]
        history = g.item_id.tolist()
        seen = set(history)
        bought = set(g.item_id[g.type == "purchase"])
        t = targets[user]
        cases.append(UserCase(user, history, seen, bought, t, t - seen))
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


def make_split(events: pd.DataFrame, name: str) -> Split:
    if name == "global-time":
        return global_time(events)
    if name == "per-user-last":
        return per_user_last(events)
    raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")
