"""The replay method: a REES46 slice's train period goes through Kafka → worker → Redis, and what
Redis serves is scored like any offline method (same protocol, same users)."""

from __future__ import annotations

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
    # The served lists come from the same behavioural code the offline item-kNN uses; they differ
    # by trigger timing and the stream's popularity window, not by an order of magnitude.
    assert replay["all"]["recall@20"] > methods["popularity"]["all"]["recall@20"]
    assert replay["all"]["recall@20"] >= 0.5 * methods["itemknn"]["all"]["recall@20"] > 0
