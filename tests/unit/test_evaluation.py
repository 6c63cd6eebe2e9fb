import pandas as pd

from evaluation.harness import evaluate
from offline.datasets import Dataset
from offline.splits import global_time, per_user_last


def log(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "type", "ts"]).assign(category=None)


EVENTS = log([
    ("u1", "a", "view", 0), ("u1", "b", "purchase", 10), ("u1", "c", "view", 20), ("u1", "d", "view", 95),
    ("u1", "a", "view", 96),
    ("u2", "a", "view", 1), ("u2", "b", "view", 2), ("u2", "x", "view", 97),
    ("u3", "a", "view", 5), ("u3", "z", "view", 99),  # too few train events
    ("u4", "b", "view", 3), ("u4", "c", "view", 4), ("u4", "d", "view", 30),  # nothing in test
])


def test_global_time_split_has_no_leak_and_right_targets():
    split = global_time(EVENTS)
    assert split.train.ts.max() < split.protocol["split_ts_ms"] <= split.test.ts.min()
    cases = {c.user_id: c for c in split.cases}
    assert set(cases) == {"u1"}  # u2 has 2 train events, u3 1, u4 none in the test period
    u1 = cases["u1"]
    assert u1.targets == {"d", "a"} and u1.new_targets == {"d"} and u1.bought == {"b"}


def test_per_user_last_holds_out_the_tail():
    split = per_user_last(EVENTS)
    cases = {c.user_id: c for c in split.cases}
    assert set(cases) == {"u1"}  # the only user with 5 events
    assert cases["u1"].targets == {"a"}  # last 20% of 5 events = 1 event
    assert len(split.train) == len(EVENTS) - 1


def test_oracle_and_random_sanity():
    rows = []
    for u in range(30):
        for t in range(6):
            rows.append((f"u{u}", f"i{(u * 7 + t) % 200}", "view", t))
        rows.append((f"u{u}", f"i{(u * 13) % 200}", "view", 100))
    events = log(rows)
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(200)]})
    result = evaluate(Dataset("toy", events, items), "global-time", (10,), ["oracle", "random"])
    assert result["methods"]["oracle"]["all"]["recall@10"] == 1.0
    assert result["methods"]["oracle"]["new"]["recall@10"] == 1.0
    assert result["methods"]["random"]["all"]["recall@10"] < 0.2
