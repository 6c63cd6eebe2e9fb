"""The feedback loop's parts without services: feedback records and their log, the judge, the
reward model, one GRPO step on a real (tiny) checkpoint."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from contracts.errors import InvalidEvent
from contracts.feedback import decode_feedback
from stream.feedback import FeedbackLog, attribute
from training.data import Episode
from training.judge import GRADES, JudgeConfig, TagJudge
from training.reward_model import Group, agreement, listwise_loss, train_reward_model


def _impression(fid: str, user: str, ts: int, items, context=("a",)) -> bytes:
    import orjson

    return orjson.dumps({"kind": "impression", "feedback_id": fid, "impression_id": fid, "user_id": user, "ts": ts,
                         "items": list(items), "tags": ["t"], "context_items": list(context),
                         "context_actions": ["view"] * len(context), "state_version": 3, "model_version": "m+v1"})


def test_feedback_records_are_validated_with_a_reason() -> None:
    assert decode_feedback(_impression("i1", "u", 5, ["x"])).items == ["x"]
    for raw, reason in [(b"{", "bad_json"), (b'{"kind":"like"}', "kind must be"),
                        (b'{"kind":"action","feedback_id":"f","user_id":"u","ts":1,"item_id":"i","action":"stare"}',
                         "action"),
                        (_impression("i2", "u", 5, []), "items")]:
        with pytest.raises(InvalidEvent, match=reason):
            decode_feedback(raw)


def test_the_log_keeps_every_record_once_and_attributes_actions(tmp_path: Path) -> None:
    import orjson

    log = FeedbackLog(tmp_path)
    imp = decode_feedback(_impression("i1", "u", 1_000, ["x", "y"]))
    act = decode_feedback(orjson.dumps({"kind": "action", "feedback_id": "a1", "user_id": "u", "ts": 2_000,
                                        "item_id": "y", "action": "cart"}))
    late = decode_feedback(orjson.dumps({"kind": "action", "feedback_id": "a2", "user_id": "u", "ts": 10_000_000,
                                         "item_id": "z", "action": "click"}))
    log.append([imp, act])
    log.append([act, late])  # a redelivery of a1
    impressions, actions = log.read()
    assert len(impressions) == 1 and sorted(actions.feedback_id) == ["a1", "a2"]
    attributed = attribute(impressions, actions, window_s=60).set_index("feedback_id")
    assert attributed.loc["a1", "attributed_to"] == "i1" and attributed.loc["a1", "recommended"]
    assert attributed.loc["a2", "attributed_to"] is None
    assert log.read(since_ms=int(impressions.logged_at.max()) + 10**9)[0].empty


def test_reward_model_learns_the_judges_order_with_either_loss() -> None:
    rng = np.random.default_rng(0)
    groups = []
    for _ in range(60):
        x = rng.normal(size=(6, 4)).astype(np.float32)
        quality = x[:, 0] + 0.1 * rng.normal(size=6)
        grades = np.digitize(quality, [-0.5, 0.5])  # 0 B, 1 A, 2 S
        groups.append(Group(x, grades))
    for loss in ("listwise", "pointwise"):
        model = train_reward_model(groups[:45], loss, epochs=40)
        assert agreement(model, groups[45:]) > 0.85, loss
    assert float(listwise_loss(torch.tensor([3.0, 0.0]), torch.tensor([2, 0]))) < \
        float(listwise_loss(torch.tensor([0.0, 3.0]), torch.tensor([2, 0])))


@pytest.fixture(scope="module")
def engine(tiny_intent_model: Path, base_settings):
    from training.rl import engine_for

    return engine_for(tiny_intent_model, base_settings.cache_dir, base_settings.intent)


def _episodes(engine, n: int = 12) -> list[Episode]:
    from reasoning.context import build_context

    rng = random.Random(0)
    items = [i for i in engine.catalog.items if engine.catalog.get(i).category][:400]
    out = []
    for u in range(n):
        seen = rng.sample(items, 6)
        nxt = rng.sample(items, 3)
        out.append(Episode(build_context(f"u{u}", [[i, "view", 1_570_000_000_000] for i in seen], engine.catalog, 20),
                           (), frozenset(engine.catalog.get(i).category for i in nxt)))
    return out


def test_judge_flags_defects_and_grades_with_the_senior_reviewer(engine) -> None:
    vocab = engine.model.vocab
    judge = TagJudge(vocab, engine.tag_vectors, engine.catalog, JudgeConfig())
    ctx = _episodes(engine, 1)[0].context
    assert judge.judge(ctx, vocab.personas[0], "no such tag").grade == "B"
    tag = vocab.tags[vocab.persona_tags(0)[0]]
    j = judge.judge(ctx, vocab.personas[0], tag)
    dims = {v.dimension: v.score for v in j.verdicts}
    assert set(dims) == {"relevance", "consistency", "specificity", "validity"}
    assert dims["consistency"] == 1 and dims["validity"] == 0
    positive = sum(score > 0 for score in dims.values()) / len(dims)
    expected = "B" if min(dims.values()) < 0 else ("S" if positive >= 0.5 else "A")
    assert j.grade == expected and j.grade in GRADES


def test_explanation_judge_fails_an_explanation_that_names_what_is_not_there(engine) -> None:
    from reasoning.explanations import Facts, realise
    from training.judge import ExplanationJudge

    branded = [i for i in engine.catalog.items.values() if i.brand and i.category]
    item = branded[0]
    other = next(i.brand for i in branded if i.brand != item.brand and i.brand not in item.text)
    facts = Facts(item, None, None, None, "evening, monday, autumn")
    judge = ExplanationJudge(engine.explainer)
    grounded = judge.judge(realise("situation", facts, "u1"), facts, recent=[])
    assert {v.dimension: v.score for v in grounded.verdicts}["faithfulness"] >= 0 and grounded.grade != "B"
    invented = judge.judge(f"Trending now among {other} fans this evening.", facts, recent=[])
    assert {v.dimension: v.score for v in invented.verdicts}["faithfulness"] == -1 and invented.grade == "B"


def test_a_grpo_step_scores_samples_like_the_decoder_and_counts_what_the_issue_asks(engine) -> None:
    from reasoning.intent_model import IntentModel
    from training.grpo import GRPOConfig, GRPOTrainer, Sample

    model = IntentModel.load(engine.model_dir)
    # Summed rewards: R_div differs between a group's samples, so every group has an advantage.
    cfg = GRPOConfig(steps=1, contexts_per_step=4, group_size=4, inner_epochs=1, tags_per_persona=3, personas=2,
                     reward="sum")
    trainer = GRPOTrainer(model, engine.atoms, engine.catalog, engine.tag_vectors,
                          lambda history, persona, tags: np.full(len(tags), 0.9), lambda ctx: [], cfg)
    batch = _episodes(engine, 4)
    # Teacher-forcing a sample (every token "allowed": the full softmax) gives back exactly the
    # log-probs the KV-cached, left-padded decoder sampled it with.
    samples = trainer.sample(batch)
    vocab_size = model.lm.config.vocab_size
    full = [Sample(s.owner, s.group, s.persona, s.tags, s.tokens, [list(range(vocab_size))] * len(s.tokens), s.rewards)
            for s in samples]
    with torch.no_grad():
        logp, _ = trainer._logps(model, *trainer.sequences(batch, full), full)
    assert np.allclose(logp.sum(1).numpy(), [s.sampled_logp for s in samples], atol=2e-3)
    # Under the constrained distribution a forced token (one allowed) carries no choice.
    with torch.no_grad():
        constrained, choice = trainer._logps(model, *trainer.sequences(batch, samples), samples)
    assert (constrained <= 1e-6).all() and (constrained[~choice] == 0).all()
    before = [p.detach().clone() for p in model.lm.parameters()]
    stats = trainer.step(batch)
    for key in ("reward", "acc", "violation_align", "violation_div", "violation_len", "zero_advantage_groups",
                "groups", "contexts_per_s", "plan_acc", "expert_acc"):
        assert key in stats, key
    assert stats["groups"] == 8 and stats["samples"] == 32
    assert stats["zero_advantage_groups"] < stats["groups"] and "kl" in stats
    assert any(not torch.equal(a, b) for a, b in zip(before, model.lm.parameters()))


def test_grpo_checkpoints_are_the_policy_so_far_and_are_removed(engine, tmp_path: Path) -> None:
    """run_grpo's `checkpoint_every` (bench rl --eval-every): the policy after steps 2 and 4 of 5,
    each a loadable model that differs from the SFT model, gone after its call; the run's end
    writes the final model as before."""
    from reasoning.intent_model import IntentModel
    from training.grpo import GRPOConfig
    from training.rl import RLConfig, run_grpo

    class FlatRewardModel:  # every tag equally aligned: the other rewards drive the policy
        def score(self, features: np.ndarray) -> np.ndarray:
            return np.full(len(features), 0.9)

    judge = TagJudge(engine.model.vocab, engine.tag_vectors, engine.catalog)
    cfg = RLConfig(grpo=GRPOConfig(steps=5, contexts_per_step=2, group_size=2, inner_epochs=1, tags_per_persona=3,
                                   personas=2, reward="sum", lr=1e-3))
    sft = next(IntentModel.load(engine.model_dir).lm.parameters()).detach().clone()
    seen: list[tuple[int, Path]] = []

    def measure(step: int, path: Path) -> None:
        seen.append((step, path))
        assert not torch.equal(next(IntentModel.load(path).lm.parameters()), sft)

    out = tmp_path / "candidate"
    trained = run_grpo(engine.model_dir, engine, FlatRewardModel(), judge, _episodes(engine, 4), out, cfg, "t",
                       checkpoint_every=2, on_checkpoint=measure)
    assert [step for step, _ in seen] == [2, 4] and not any(path.exists() for _, path in seen)
    assert len(trained["history"]) == 5 and IntentModel.load(out).meta["version"] == "t"


def test_a_plans_accuracy_counts_what_its_experts_emit_not_every_category_its_personas_hold(engine) -> None:
    from reasoning.intent_model import IntentModel
    from training.grpo import GRPOConfig, GRPOTrainer, PlanAccuracy
    from training.rewards import r_acc

    model = IntentModel.load(engine.model_dir)
    vocab = model.vocab
    batch = _episodes(engine, 4)
    acc, plans = {}, {}
    for rule in PlanAccuracy:
        cfg = GRPOConfig(contexts_per_step=4, group_size=3, tags_per_persona=2, personas=2, tasks=("plan",),
                         plan_accuracy=rule)
        trainer = GRPOTrainer(model, engine.atoms, engine.catalog, engine.tag_vectors,
                              lambda history, persona, tags: np.full(len(tags), 0.9), lambda ctx: [], cfg)
        samples = trainer.sample(batch)
        acc[rule], plans[rule] = [s.rewards["acc"] for s in samples], [s.tags for s in samples]
        if rule == PlanAccuracy.EXPERTS:
            # The same plans scored by hand: the greedy expert tags of each chosen persona, as served.
            expected = []
            for s in samples:
                one = trainer.backend.open([batch[s.owner].context], cfg.mode)
                lists = one.experts([[vocab.personas[p] for p in s.tags]], cfg.tags_per_persona)[0]
                covered = {vocab.category[vocab.index[t]] for tags in lists for t in tags}
                expected.append(r_acc(covered, batch[s.owner].target_categories))
            assert np.allclose(acc[rule], expected), (acc[rule], expected)
    # The same seed samples the same plans; an expert emits some of its persona's tags: never
    # more covered than by the whole tag sets.
    assert plans[PlanAccuracy.EXPERTS] == plans[PlanAccuracy.PERSONAS]
    assert all(e <= p + 1e-9 for e, p in zip(acc[PlanAccuracy.EXPERTS], acc[PlanAccuracy.PERSONAS]))
    assert GRPOConfig(plan_accuracy="personas").plan_accuracy is PlanAccuracy.PERSONAS


def test_the_device_benchmarks_bundle_reasons_as_the_served_engine(engine, tmp_path: Path) -> None:
    # The prepared GPU scripts (benchmarks/grpo_step.py, benchmarks/device_reasoning.py) rebuild
    # the model from a bundle without settings or services: what they time must be what serves.
    from benchmarks.device_reasoning import measure
    from benchmarks.grpo_step import write_bundle
    from reasoning.pipeline import propose

    eps = _episodes(engine, 6)
    write_bundle(tmp_path / "bundle", engine.model_dir, engine.atoms, eps)
    result = measure(tmp_path / "bundle", "cpu", users=6, batch=4)
    _, _, final, _ = propose(engine, [e.context for e in eps[:4]], engine.config.mode)
    _, _, rest, _ = propose(engine, [e.context for e in eps[4:]], engine.config.mode)
    assert result["final_tags"] == [[t for t, _ in tags] for tags in final + rest]
    assert result["users"] == 6 and result["users_per_s"] > 0 and result["lm_tokens_per_user"] > 0
