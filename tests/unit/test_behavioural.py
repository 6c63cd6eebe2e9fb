import heapq
import math
import random

from contracts.recs import Recommendations
from features.state import TYPE_WEIGHT
from reasoning.behavioural import BehaviouralModel, BehaviouralReasoner
from reasoning.reasoner import UserView


def trained() -> BehaviouralModel:
    model = BehaviouralModel(covisit_window=3, max_neighbors=10, popularity_half_life_s=3600)
    sessions = [["a", "b", "c"], ["a", "b"], ["b", "c", "d"], ["x", "y"], ["p"], ["p"], ["p"]]
    ts = 0
    for session in sessions:
        history: list[str] = []
        for item in session:
            ts += 1000
            model.observe(item, "view", ts, history[::-1], category="cat." + item, brand="brand" + item)
            history.append(item)
    return model


def view(recent, bought=()):
    return UserView("u", [[i, "view", 0, None] for i in recent], frozenset(bought), [], 3, "event_count")


def test_covisited_items_rank_first_and_bought_items_never_appear():
    reasoner = BehaviouralReasoner(trained(), "m1")
    [payload] = reasoner.recommend([view(["a"], bought={"c"})], top_k=5)
    recs = Recommendations.model_validate(payload)
    ids = [i.item_id for i in recs.items]
    assert ids[0] == "b" and recs.items[0].route == "covisit"
    assert "c" not in ids
    assert len(ids) == 5 and len(set(ids)) == 5
    assert "branda" in recs.items[0].explanation  # grounded in the user's own item
    assert recs.fallback_reason is None


def test_user_without_covisitation_gets_popular_items_and_says_so():
    reasoner = BehaviouralReasoner(trained(), "m1")
    [payload] = reasoner.recommend([view(["unknown-item"])], top_k=3)
    recs = Recommendations.model_validate(payload)
    assert [i.item_id for i in recs.items][0] == "p"
    assert all(i.route == "popular" for i in recs.items)
    assert recs.fallback_reason == "no_covisitation"


def reference_score(model, recent, exclude, k, recent_used=10):
    """The plain loop `BehaviouralReasoner.score` vectorises (its co-visitation part)."""
    scores, anchors = {}, {}
    for rank, (anchor, kind, *_) in enumerate(recent[:recent_used]):
        w_anchor = TYPE_WEIGHT.get(kind, 1.0) * 0.85 ** rank
        for item, w in model.similar(anchor).items():
            if item in exclude:
                continue
            contribution = w_anchor * math.log1p(w)
            scores[item] = scores.get(item, 0.0) + contribution
            if contribution > anchors.get(item, (0.0, ""))[0]:
                anchors[item] = (contribution, anchor)
    ranked = heapq.nlargest(k, scores.items(), key=lambda kv: kv[1])
    return [(item, s, anchors[item][1]) for item, s in ranked]


def test_vectorised_score_equals_the_plain_loop_exactly():
    rng = random.Random(3)
    model = BehaviouralModel(covisit_window=4, max_neighbors=30, popularity_half_life_s=3600)
    kinds = ["view", "view", "view", "cart", "purchase"]
    histories: dict[int, list[str]] = {}
    for t in range(6000):
        user = rng.randrange(200)
        history = histories.setdefault(user, [])
        item = f"i{min(int(rng.paretovariate(0.9)), 400)}"
        model.observe(item, rng.choice(kinds), t, history[::-1][:4])
        history.append(item)
    reasoner = BehaviouralReasoner(model, "m")
    checked = 0
    for user, history in histories.items():
        recent = [[i, rng.choice(kinds), 0, None] for i in history[::-1][:12]]
        bought = set(rng.sample(history, min(3, len(history))))
        expected = reference_score(model, recent, bought, 50)
        got = reasoner.score(recent, bought, 50)[: len(expected)]
        assert got == expected, user  # same items, same float scores, same anchors, same order
        checked += len(expected)
        if user % 7 == 0:  # rows that change between scores are rebuilt
            model.observe(history[-1], "view", 10_000, [recent[0][0]])
    assert checked > 5000


def test_popularity_decays_with_event_time():
    model = BehaviouralModel(3, 10, popularity_half_life_s=1)
    for _ in range(4):
        model.observe("old", "view", 0, [])
    model.observe("new", "view", 10_000, [])  # 10 half-lives later
    assert [i for i, _ in model.popularity.top(2)] == ["new", "old"]


def test_popular_fill_grows_with_the_catalog_between_invalidations():
    model = BehaviouralModel(3, 10, 3600)
    model.observe("a", "view", 0, [])
    reasoner = BehaviouralReasoner(model, "m", popular_refresh_s=3600)
    assert [i for i, _ in reasoner.popular(5)] == ["a"]
    for item in "bcdef":
        model.observe(item, "view", 0, [])
    reasoner.invalidate()  # inside the refresh interval: the ranking is not recomputed for that...
    assert len(reasoner.popular(5)) == 5  # ...but a ranking shorter than asked for is


def test_the_popular_ranking_keeps_its_size_while_a_new_catalog_grows():
    # A catalog that grows by one item between refreshes (a new shop, one event per batch): the
    # ranking is redone at the same size, not doubled each time (it overflowed Redis's range).
    model = BehaviouralModel(3, 10, 3600)
    reasoner = BehaviouralReasoner(model, "m", popular_refresh_s=3600)
    for n in range(200):
        model.observe(f"i{n}", "view", n, [])
        assert len(reasoner.popular(100)) == min(n + 1, 100)
        assert reasoner._popular_cache[0] == 512
    assert len(reasoner.popular(600)) == 200 and reasoner._popular_cache[0] == 1024
