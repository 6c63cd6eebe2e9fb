"""The replay method: a REES46 slice's train period goes through Kafka → worker → Redis, and what
Redis serves is scored like any offline method (same protocol, same users)."""

from __future__ import annotations

import json

import pytest

from evaluation.harness import evaluate
from offline import datasets


def test_replay_method_scores_what_the_pipeline_serves(scoped, data_dir):
    data = datasets.load("rees46", data_dir)
    result = evaluate(data, "global-time", (10, 20), ["replay", "itemknn", "popularity"], scoped)
    methods = result["methods"]
    assert result["counts"]["users_evaluated"] >= 100
    replay = methods["replay"]
    assert replay["users"] == result["counts"]["users_evaluated"]
    assert replay["stats"]["events_valid"] == result["counts"]["train_events"]
    # What the scored lists were made of: every user's list counted once, and the hits in the
    # top 10 by route are at least the users with a hit there (hr@10 of the same `all` lists).
    served = replay["stats"]["served"]
    assert sum(served["lists"].values()) == replay["users"]
    assert set(served["items"]) <= {"recent", "covisit", "popular", "sequential", "intent"}
    assert sum(served["hits"].values()) >= round(replay["all"]["hr@10"] * replay["users"]) > 0
    # The served lists come from the same behavioural code the offline item-kNN uses; they differ
    # by trigger timing and the stream's popularity window, not by an order of magnitude.
    assert replay["all"]["recall@20"] > methods["popularity"]["all"]["recall@20"]
    assert replay["all"]["recall@20"] >= 0.5 * methods["itemknn"]["all"]["recall@20"] > 0


def test_replay_serves_an_intent_model_trained_on_the_split_alone(scoped, data_dir):
    """With the intent route on, the replay method is the deployed system evaluated as deployed:
    it trains the intent model on the split's train events (never the model the cache serves,
    which may have learned another dataset or these test events), serves it with a reasoner
    beside the worker, scores once reasoning has drained, and names the model; the same split
    and config reuse it. Without the dataset to train from it refuses before starting anything."""
    from evaluation.intent_method import split_intent_model
    from evaluation.replay_method import ReplayMethod
    from offline.splits import make_split
    from reasoning.intent_model import LMConfig
    from training.sft import SFTConfig

    data = datasets.load("rees46", data_dir).head(2500)
    split = make_split(data.events, "global-time")
    ids = data.items.item_id.astype(str).tolist()
    # The cache's serving model must not be what serves: point intent.model_dir at nothing.
    settings = scoped.model_copy(update={"intent": scoped.intent.model_copy(update={
        "enabled": True, "model_dir": scoped.state_dir / "no-model-here"})})
    sft = SFTConfig(lm=LMConfig(hidden=48, layers=2, heads=2, intermediate=96, vocab_size=600),
                    lm_steps=100, adaptor_steps=10, episodes_per_user=2, batch_size=16, intent_weight_users=100)
    with pytest.raises(ValueError, match="give it the dataset"):
        ReplayMethod(settings, sft=sft).fit(split, ids)

    method = ReplayMethod(settings, timeout_s=600, dataset=data, sft=sft)
    method.fit(split, ids)
    try:
        model_dir, trained_now = split_intent_model(method.settings, data, split, sft)
        assert not trained_now and method.stats["intent_model"] == model_dir.name  # reused, and named
        meta = json.loads((model_dir / "intent.json").read_text())
        # It learned from this split's train events alone (less each held-out user's last one).
        assert meta["holdout"]["learn_events"] + meta["holdout"]["users"] == len(split.train)
        assert method.stats["intent_handled"] > 0 and not method.stats.get("intent_errors")
        # Every user the replay refreshed, not only the split's test users (one, in this slice):
        # under the replay's burst the reasoner sheds what waited past intent.max_wait_s (117 of
        # 502 requests in a run here), so one user's list alone is not merged in every run.
        users = split.inputs.user_id.astype(str).unique()
        served = [method.reader.get_recommendations(method.prefix + u) for u in users]
        assert sum(1 for r in served if r and r.model_version.endswith(f"+{meta['version']}")) > 0
    finally:
        method.close()


def test_replay_scores_the_full_refreshes_a_worker_that_fell_behind_owes(scoped, data_dir):
    """A worker that is behind serves degraded lists (`overloaded`) and owes each user a full
    refresh (stream/processor.py `_shed`); the replay scores once those are built, not the
    degraded lists (a Beauty replay beside another job scored R@10 0.072 instead of 0.092 so)."""
    from contracts.recs import FallbackReason
    from evaluation.replay_method import ReplayMethod
    from offline.splits import make_split

    data = datasets.load("rees46", data_dir)
    split = make_split(data.events, "global-time")
    # Always behind: every batch's oldest event waited longer than 1 ms (0 would never shed); no
    # debounce interval, so the replay's own pause before scoring is one second.
    settings = scoped.model_copy(update={"worker": scoped.worker.model_copy(update={"shed_lag_s": 0.001}),
                                         "trigger": scoped.trigger.model_copy(update={"min_interval_s": 0.0}),
                                         "sequential": scoped.sequential.model_copy(update={"enabled": False})})
    method = ReplayMethod(settings, timeout_s=600)
    method.fit(split, data.items.item_id.astype(str).tolist())
    try:
        assert method.stats["refreshes_overloaded"] > 0  # it did fall behind
        assert int(method.stats.get("refreshes_pending", 0)) == 0
        served = [method.reader.get_recommendations(method.prefix + c.user_id) for c in split.cases]
        served = [r for r in served if r is not None]
        assert served and not [r for r in served if r.fallback_reason is FallbackReason.overloaded]
    finally:
        method.close()
