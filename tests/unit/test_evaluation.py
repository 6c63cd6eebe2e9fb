import math

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


class FixedRanking:
    """Ranks every user the same way: the harness's exclusions and metrics are then hand-checkable."""

    name = "fixed"

    def __init__(self, ranking):
        self.ranking = ranking

    def fit(self, split, catalog):
        pass

    def rank(self, case, n):
        return self.ranking[:n]


def test_leave_one_out_split_follows_row_order_and_scores_by_hand(tmp_path):
    from evaluation.harness import score_method
    from offline.datasets import load_generic
    from offline.splits import leave_one_out

    # Written user by user, as the Beauty file is; ties on the last day keep the file's order.
    (tmp_path / "events.csv").write_text("user_id,item_id,event_type,timestamp\n" + "\n".join([
        "u1,a,purchase,1", "u1,b,purchase,2", "u1,c,purchase,3", "u1,d,purchase,3",
        "u2,e,purchase,5", "u2,f,purchase,5", "u2,h,purchase,5",
        "u3,a,purchase,1", "u3,g,purchase,9",  # 2 events: trains, never evaluated
        "u4,i,purchase,7", "u4,j,purchase,8", "u4,k,purchase,9", "u4,z,purchase,9",
    ]) + "\n")
    data = load_generic(tmp_path)
    split = leave_one_out(data.events)
    cases = {c.user_id: c for c in split.cases}
    assert {u: (c.history, c.targets) for u, c in cases.items()} == {
        "u1": (["a", "b", "c"], {"d"}), "u2": (["e", "f"], {"h"}), "u4": (["i", "j", "k"], {"z"})}
    assert {c.user_id: (c.history, c.targets) for c in split.validation} == {
        "u1": (["a", "b"], {"c"}), "u2": (["e"], {"f"}), "u4": (["i", "j"], {"k"})}
    assert sorted(split.train.item_id) == ["a", "a", "b", "e", "g", "i", "j"]
    assert sorted(split.inputs.item_id) == ["a", "a", "b", "c", "e", "f", "g", "i", "j", "k"]

    # Each user's history is taken out of the ranking (every event is a purchase):
    # u1 gets [g, d, h, ...]: d at rank 2; u2 gets [a, g, d, b, h, ...]: h at rank 5; u4: z nowhere.
    ranking = ["a", "g", "d", "b", "h", "c", "e", "i", "j", "f"]
    result = score_method(FixedRanking(ranking), split, data.items.item_id.tolist(), (5,), {})
    assert result["users"] == 3
    assert abs(result["all"]["recall@5"] - 2 / 3) < 1e-12
    ndcg = (1 / math.log2(3) + 1 / math.log2(6) + 0) / 3  # 0.33926
    assert abs(result["all"]["ndcg@5"] - ndcg) < 1e-12 and abs(ndcg - 0.33926) < 1e-5
    assert result["new"] == result["all"]  # nothing bought is ever a new target here

    # The cut-offs of the published tables are always there.
    table = evaluate(data, "leave-one-out", (20,), ["oracle"])
    assert {"recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20"} <= set(table["methods"]["oracle"]["all"])
    assert table["methods"]["oracle"]["all"]["ndcg@10"] == 1.0


def test_the_intent_rows_differ_only_in_backbone_and_what_else_they_reason_about():
    from contracts.settings import Settings
    from evaluation.harness import build_method

    data = Dataset("toy", pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "ts": [0], "event_type": ["view"]}),
                   pd.DataFrame({"item_id": ["i"], "category": ["c"]}))
    built = {n: build_method(n, Settings(), data) for n in ("intent", "intent_served", "intent_smollm2")}
    assert {n: (m.name, m.served_only, m.sft.base) for n, m in built.items()} == {
        "intent": ("intent", False, "tiny"), "intent_served": ("intent_served", True, "tiny"),
        "intent_smollm2": ("intent_smollm2", True, "smollm2")}
    # The served row is the same model: its cache key does not name the row.
    assert built["intent"].sft == built["intent_served"].sft


def test_exclusive_recall_counts_at_the_served_list_and_at_the_routes():
    """Served: hits in the merged top 20 that only the intent route's top 20 holds. At the
    routes: targets in the intent route's top 20 and in no other route's own top 20, over the
    targets any route's top 20 holds (before the merge, whatever the intent weight)."""
    from contracts.recs import rec_item
    from evaluation.intent_method import IntentMethod
    from offline.methods import ItemKNN
    from offline.splits import Split, UserCase
    from reasoning.pipeline import IntentInput, IntentResult

    train = pd.DataFrame({"user_id": ["x", "x", "y", "y"], "item_id": ["a", "b", "a", "c"],
                          "type": ["view"] * 4, "ts": [1, 2, 3, 4], "category": ["k"] * 4})
    # u's target t: only the intent route has it; v's target b: co-visitation (a -> b) has it too.
    cases = [UserCase("u", ["a"], {"a"}, set(), {"t"}, {"t"}), UserCase("v", ["a"], {"a"}, set(), {"b"}, {"b"})]
    method = IntentMethod.__new__(IntentMethod)
    method.behavioural = ItemKNN()
    method.behavioural.fit(Split("toy", train, train.iloc[:0], cases), ["a", "b", "c", "t"])
    method.sequential, method.variants, method.stats = None, {}, {}
    method._exclusive = {"hits": 0, "intent_only": 0, "intent_route_hits": 0}
    method.inputs = {c.user_id: IntentInput(c.user_id, [["a", "view", 10]], frozenset()) for c in cases}
    method.results = {c.user_id: IntentResult(c.user_id, None, [], ["tag"], [rec_item(t, 1.0, "intent", "", "tag")])
                      for c, t in zip(cases, ("t", "b"))}
    for weights, served in (((1.0, 1.0, 1.0), 0.5), ((1.0, 1.0, 0.0), None)):
        method.weights, method._exclusive, method.stats = weights, {"hits": 0, "intent_only": 0, "intent_route_hits": 0}, {}
        ranked = [method.rank(c, 20) for c in cases]
        assert "b" in ranked[1]
        assert method.stats["exclusive_recall_routes"] == 0.5  # t of {t, b}: the same at any weight
        assert method.stats["exclusive_counts"]["routes_hits"] == 2
        if served is not None:
            assert method.stats["exclusive_recall"] == served  # t and b in the merged top 20, t only by intent
