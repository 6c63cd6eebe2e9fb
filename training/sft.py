"""Supervised fine-tuning of the intent model, top to bottom (`intentstream train --sft`).

0. Holdout (training/data.py `holdout`, the sequential model's too): the split's validation
   cases when it has them (leave-one-out: each user's second-to-last item; the model learns from
   all the train events), else each user with 3+ train events holds out the last one and the
   model learns from the rest (steps 2-5); step 7 fits the intent route's merge weight on those
   users, whose next event neither it nor the sequential model learned.
1. Atoms: item vectors for the catalog (MiniLM through ONNX when items have text, learned
   category vectors otherwise), cached per catalog version.
2. Tag vocabulary and personas from the catalog and the train events.
3. The LM (`SFTConfig.base`, training/backbone.py): `tiny` gets a byte-level BPE tokenizer
   trained on rendered prompts and answers (catalog and tag text) and a fresh small Llama;
   `smollm2` starts from SmolLM2-135M-Instruct with its own tokenizer and chat template.
4. Stage 1: the LM learns all three tasks (plan personas; tags for a persona; tags) on the
   full-text context; loss on the answer tokens only. `tiny` trains every weight; `smollm2`
   trains LoRA adapters (peft) on every projection of every block, merged into the weights
   afterwards (the saved model is a plain Llama: serving, `transformers serve` and vLLM need no
   peft), so the pretrained weights move little on a small log. A step's batch is run in
   length-sorted chunks (at most `chunk` examples and `chunk_tokens` tokens each), the LM head
   at the answer positions only (`_backward`: the batch's gradient; a stage-1 step 3.1x faster
   on Beauty's long titles, 2.1x on REES46, 1.3x on Taobao: benchmarks/sft_step.py).
5. Stage 2: the adaptor learns to put item atoms where the text was, the LM frozen (hybrid
   context), on the same episodes.
6. The merge weights of the recent and behavioural routes, fitted on a held-out tail of the
   train events (training/merge_weights.py `fit_merge_weights`).
7. Saved as a Hugging Face model directory (reasoning/intent_model.py); then the saved model
   serves the held-out users of step 0 and the intent route's weight is fitted on them
   (`fit_intent_weight`: at most `intent_weight_users`, against the sequential route's fusion
   when one is given, else the co-visitation route) and written into its `intent.json`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from contracts.settings import IntentSettings
from features.catalog import Catalog
from features.embedder import CategoryEmbedder, embedder_for, item_embeddings
from offline.splits import UserCase
from reasoning.context import answer, messages, task_expert, task_plan, task_tags
from reasoning.intent_model import AtomTable, IntentModel, LMConfig, set_torch_threads, train_tokenizer
from reasoning.tags import TagVocabulary, build_vocabulary
from training.backbone import BASES, smollm2_dir
from training.data import Episode, episodes, holdout
from training.merge_weights import fit_intent_weight, fit_merge_weights

log = logging.getLogger(__name__)


@dataclass
class SFTConfig:
    """Hyper-parameters of `intentstream train --sft` (`for_base` gives each base's defaults)."""

    base: str = "tiny"             # training/backbone.py BASES
    lm: LMConfig = field(default_factory=LMConfig)  # the tiny base's shape (a pretrained base brings its own)
    lora_rank: int = 16            # pretrained bases: LoRA rank (alpha = 2 x rank) on q/k/v/o/gate/up/down
    lora_dropout: float = 0.05
    # data
    max_items: int = 20            # recent items in a context
    horizon: int = 5               # next events whose tags are the target
    episodes_per_user: int = 12    # contexts sampled per user from the train events
    max_tags: int = 3000           # tag vocabulary size cap
    personas_k: int = 4            # personas in a planner answer
    tags_per_persona: int = 10     # tags in an expert answer
    tags_n: int = 30               # tags in a `tags` answer
    # optimisation
    lm_steps: int = 800            # stage 1 (full-text LM) steps
    adaptor_steps: int = 400       # stage 2 (adaptor, LM frozen) steps
    batch_size: int = 32
    chunk: int = 8                 # examples of similar length per forward pass (a step's gradient is the batch's)
    chunk_tokens: int = 0          # at most this many (padded) tokens per forward pass, 0: no cap (memory, below)
    lr: float = 2e-3               # AdamW, cosine decay to 10%
    adaptor_lr: float = 2e-3
    weight_decay: float = 0.01
    threads: int = 0               # torch threads (0: torch's default)
    seed: int = 0
    # the intent weight's fit (step 7)
    intent_weight_users: int = 600  # held-out users the saved model reasons about (0: no fit)

    def __post_init__(self) -> None:
        for name in ("max_items", "horizon", "episodes_per_user", "lm_steps", "batch_size", "chunk", "personas_k",
                     "tags_per_persona", "tags_n", "lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"SFTConfig.{name} must be >= 1")
        if self.base not in BASES:
            raise ValueError(f"SFTConfig.base must be one of {BASES}, not {self.base!r}")

    def model_key(self) -> dict:
        """The fields that decide the trained model, for cache keys: all but `chunk_tokens`, a
        memory cap under which a step's gradient is still the batch's (tests/unit/test_intent.py),
        so a model trained before the cap existed, or under another cap, is the same model (up to
        float rounding: the chunks' gradients are summed in another order).

        >>> SFTConfig(chunk_tokens=1536).model_key() == SFTConfig().model_key()
        True
        >>> SFTConfig(lm_steps=10).model_key() == SFTConfig().model_key()
        False
        """
        return {k: v for k, v in asdict(self).items() if k != "chunk_tokens"}

    @classmethod
    def for_base(cls, base: str, **overrides) -> SFTConfig:
        """The defaults of `base`. SmolLM2 (135M parameters, ~80x the tiny model) gets a budget
        a 2-core CPU finishes in well under an hour: fewer, smaller steps at a LoRA learning
        rate (measured cost in benchmarks/REPORT.md). Its forward passes hold at most 1,536 tokens
        (`chunk_tokens`): a LoRA backward keeps ~4.6 GB of activations per 1,000 tokens here (one
        pass over Beauty's two longest full-text examples, 2 x ~1,370 tokens: 14.5 GB peak RSS), and
        eight of them in one pass ran a 24 GiB machine out of memory in stage 1."""
        budget = {"smollm2": {"lm_steps": 150, "adaptor_steps": 150, "batch_size": 8, "lr": 3e-4,
                              "adaptor_lr": 1e-3, "intent_weight_users": 150, "chunk_tokens": 1536}}.get(base, {})
        return cls(base=base, **{**budget, **overrides})


@dataclass
class Example:
    context: list[int]
    suffix: list[int]
    answer: list[int]
    atoms: np.ndarray | None


def tag_embedder(catalog: Catalog, embedder) -> Callable[[list[str]], np.ndarray]:
    """How tags are embedded: their text through MiniLM, or their category's learned vector."""
    if isinstance(embedder, CategoryEmbedder):
        return lambda tags: embedder.encode([t.removeprefix("category ") for t in tags])
    return embedder.encode


def examples_for(model: IntentModel, eps: list[Episode], catalog: Catalog, atoms: AtomTable | None,
                 mode: str, cfg: SFTConfig, seed: int) -> list[Example]:
    rng = random.Random(seed)
    vocab = model.vocab
    out = []
    for ep in eps:
        item_atoms = atoms.atoms(ep.context.items) if mode == "hybrid" else None
        personas = list(dict.fromkeys(vocab.persona_of[t] for t in ep.target_tags))
        tasks = [(task_plan(), [vocab.personas[p] for p in personas[: cfg.personas_k]]),
                 (task_tags(), [vocab.tags[t] for t in ep.target_tags[: cfg.tags_n]])]
        p = rng.choice(personas)
        tasks.append((task_expert(vocab.personas[p]),
                      [vocab.tags[t] for t in ep.target_tags if vocab.persona_of[t] == p][: cfg.tags_per_persona]))
        for task, target in tasks:
            ctx, suffix = model.encode_chat(messages(ep.context, mode, task, catalog))
            ans = model.ids(answer(target)) + [model.end_id]
            out.append(Example(ctx, suffix, ans, item_atoms))
    return out


def _answer_nll(model: IntentModel, batch: list[Example]) -> torch.Tensor:
    """Summed cross-entropy of the batch's answer tokens, the LM head run only at the positions
    that predict one (the position before each answer token). The model's own `labels=` path
    computes the logits of every position of the right-padded batch and their softmax: on Beauty
    (full-text contexts of long titles, 209 / 479 / 1,376 tokens p50 / p90 / max, answers a few
    dozen) that is 32 x ~600 x 4,096 floats a step for a loss that reads a tenth of them."""
    seqs = [e.context + e.suffix + e.answer for e in batch]
    embeds, mask, positions = model.inputs(seqs, [e.atoms for e in batch], pad_left=False)
    rows, cols, targets = [], [], []
    for b, e in enumerate(batch):
        start = len(e.context) + len(e.suffix)
        rows += [b] * len(e.answer)
        cols += range(start - 1, start - 1 + len(e.answer))
        targets += e.answer
    hidden = model.lm.get_decoder()(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
    logits = model.lm.get_output_embeddings()(hidden[torch.tensor(rows), torch.tensor(cols)])
    return torch.nn.functional.cross_entropy(logits.float(), torch.tensor(targets, device=logits.device),
                                             reduction="sum")


def _batch_loss(model: IntentModel, batch: list[Example]) -> torch.Tensor:
    """Mean cross-entropy of the batch's answer tokens: the model's own `labels=` loss (unit test)."""
    return _answer_nll(model, batch) / sum(len(e.answer) for e in batch)


def chunks(lengths: Sequence[int], chunk: int, max_tokens: int = 0) -> list[list[int]]:
    """Indices of `lengths` sorted by length, cut into runs of at most `chunk` whose padded size
    (count x longest) stays within `max_tokens` (0: no cap; an example longer than the cap is a
    run of its own): the forward passes of `_backward`.

    >>> chunks([5, 1, 3, 2], 3)
    [[1, 3, 2], [0]]
    >>> chunks([5, 1, 3, 2], 3, max_tokens=6)
    [[1, 3], [2], [0]]
    >>> chunks([9, 1], 8, max_tokens=4)
    [[1], [0]]
    """
    runs: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        run = runs[-1] if runs else None
        if run is None or len(run) >= chunk or (max_tokens and (len(run) + 1) * lengths[i] > max_tokens):
            runs.append([i])
        else:
            run.append(i)
    return runs


def _backward(model: IntentModel, batch: list[Example], chunk: int, max_tokens: int = 0) -> float:
    """Backpropagate `_batch_loss` of the batch in `chunks` of examples of similar length (at most
    `chunk`, at most `max_tokens` padded tokens), each padded only to its own longest and scaled
    by the batch's answer tokens: the same gradient as the batch at once (unit test), without
    computing the padding a random batch of uneven lengths carries (~2x its tokens on Beauty), and
    with the activations of one pass bounded. Returns the loss."""
    total = sum(len(e.answer) for e in batch)
    value = 0.0
    for run in chunks([len(e.context) + len(e.suffix) + len(e.answer) for e in batch], chunk, max_tokens):
        part = _answer_nll(model, [batch[i] for i in run]) / total
        part.backward()
        value += float(part.detach())
    return value


def _train(model: IntentModel, data: list[Example], params, steps: int, lr: float, cfg: SFTConfig,
           label: str, log_every: int = 100) -> list[dict]:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)) if s > 20 else (s + 1) / 21)
    rng = random.Random(cfg.seed)
    history, started, running = [], time.perf_counter(), []
    for step in range(1, steps + 1):
        batch = rng.sample(data, min(cfg.batch_size, len(data)))
        opt.zero_grad(set_to_none=True)
        loss = _backward(model, batch, cfg.chunk, cfg.chunk_tokens)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running.append(loss)
        if step % log_every == 0 or step == steps:
            entry = {"stage": label, "step": step, "loss": round(float(np.mean(running)), 4),
                     "seconds": round(time.perf_counter() - started, 1)}
            history.append(entry)
            log.info("%s", entry)
            running = []
    return history


def build_atoms(catalog: Catalog, events: pd.DataFrame, cache_dir: Path):
    embedder = embedder_for(catalog, events, cache_dir)
    ids, vectors = item_embeddings(catalog, embedder, cache_dir)
    category_vectors = ({c: embedder.vectors[i] for c, i in embedder.index.items()}
                        if isinstance(embedder, CategoryEmbedder) else None)
    return embedder, AtomTable(ids, vectors, category_vectors, catalog)


def train_sft(train_events: pd.DataFrame, catalog: Catalog, out_dir: Path, cache_dir: Path,
              cfg: SFTConfig | None = None, version: str | None = None,
              progress: Callable[[str], None] | None = None, intent: IntentSettings | None = None,
              sequential=None, validation: Sequence[UserCase] | None = None) -> IntentModel:
    """The module docstring's steps. `intent`: the serving settings step 7 reasons with (batch
    size, K/M/N, mode); `sequential`: the reasoning/sequential.py `SequentialRoute` that will
    serve beside the model, trained on the same train events and `validation` (the split's
    held-out cases, if it has them: step 0 holds out the same as the sequential model)."""
    cfg = cfg or SFTConfig()
    say = progress or log.info
    set_torch_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    # 0. Holdout.
    learn, held_out = holdout(train_events, validation)
    say(f"holdout: {len(held_out)} users' {'validation item' if validation else 'last event'} (the intent weight's "
        f"fit), {len(learn)} events to learn from")
    embedder, atoms = build_atoms(catalog, train_events, cache_dir)
    say(f"atoms: {len(atoms.row)} items x {atoms.dim} ({embedder.name})")
    vocab, tag_vectors = build_vocabulary(catalog, learn, tag_embedder(catalog, embedder), cfg.max_tags)
    say(f"tags: {len(vocab)} in {len(vocab.personas)} personas")
    eps = episodes(learn, catalog, vocab, cfg.max_items, cfg.horizon, cfg.episodes_per_user, seed=cfg.seed)
    if not eps:
        raise ValueError("no training episodes: the events hold no user with enough history and tagged items")
    say(f"episodes: {len(eps)}")

    meta = {"version": version or f"sft-{time.strftime('%Y%m%d-%H%M%S')}", "embedder": embedder.name,
            "catalog_version": catalog.version, "base": cfg.base,
            "sft": {k: v for k, v in asdict(cfg).items() if k != "lm"}, "episodes": len(eps),
            "holdout": {"users": len(held_out), "learn_events": len(learn)}}
    if cfg.base == "tiny":
        corpus = []
        for ep in eps[: 4000]:
            corpus.append(" ".join(m["content"] for m in messages(ep.context, "text", task_tags(), catalog)))
        corpus += vocab.tags + vocab.personas + [answer(vocab.tags[i: i + 10]) for i in range(0, len(vocab), 10)]
        tokenizer = train_tokenizer(corpus, cfg.lm.vocab_size)
        model = IntentModel.create(cfg.lm, tokenizer, atoms.dim, vocab, meta, seed=cfg.seed)
    else:
        model = IntentModel.from_pretrained(smollm2_dir(cache_dir, say), atoms.dim, vocab, meta, seed=cfg.seed)
    n_params = sum(p.numel() for p in model.lm.parameters())
    say(f"LM ({cfg.base}): {n_params / 1e6:.2f}M parameters, tokenizer {len(model.tokenizer)} tokens")

    model.lm.train()
    text = examples_for(model, eps, catalog, None, "text", cfg, cfg.seed)
    if cfg.base == "tiny":
        hist = _train(model, text, list(model.lm.parameters()), cfg.lm_steps, cfg.lr, cfg, "lm")
    else:
        from peft import LoraConfig, get_peft_model

        model.lm = get_peft_model(model.lm, LoraConfig(
            r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=cfg.lora_dropout,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        lora = [p for p in model.lm.parameters() if p.requires_grad]
        say(f"LoRA: {sum(p.numel() for p in lora) / 1e6:.2f}M trainable parameters")
        hist = _train(model, text, lora, cfg.lm_steps, cfg.lr, cfg, "lm", log_every=25)
        model.lm = model.lm.merge_and_unload()
    say(f"stage 1 (LM, full text): loss {hist[-1]['loss']} after {cfg.lm_steps} steps, {hist[-1]['seconds']} s")

    for p in model.lm.parameters():
        p.requires_grad_(False)
    model.adaptor.train()
    hybrid = examples_for(model, eps, catalog, atoms, "hybrid", cfg, cfg.seed)
    hist2 = _train(model, hybrid, list(model.adaptor.parameters()), cfg.adaptor_steps, cfg.adaptor_lr, cfg, "adaptor",
                   log_every=100 if cfg.base == "tiny" else 25)
    say(f"stage 2 (adaptor, LM frozen): loss {hist2[-1]['loss']} after {cfg.adaptor_steps} steps, {hist2[-1]['seconds']} s")
    model.lm.eval()
    model.adaptor.eval()
    model.meta.update({"parameters": n_params, "train_seconds": round(time.perf_counter() - started, 1),
                       "loss": hist + hist2, "merge": fit_merge_weights(train_events)})
    model.save(out_dir)
    np.save(out_dir / "tag_vectors.npy", tag_vectors)
    if atoms.category_vectors is not None:
        cats = sorted(atoms.category_vectors)
        np.save(out_dir / "category_vectors.npy", np.stack([atoms.category_vectors[c] for c in cats]))
        (out_dir / "categories.txt").write_text("\n".join(cats))
    save_catalog(catalog, out_dir / "catalog.parquet")
    # 7. The intent weight, fitted on the held-out users by the saved model as it serves.
    if cfg.intent_weight_users:
        from reasoning.engine import IntentEngine

        t0 = time.perf_counter()
        engine = IntentEngine(out_dir, intent or IntentSettings(), cache_dir)
        merge = model.meta["merge"]
        fitted = fit_intent_weight(engine, learn, held_out, (merge["weight_recent"], merge["weight_behavioural"]),
                                   sequential, cfg.intent_weight_users, cfg.seed)
        fitted["validation"]["seconds"] = round(time.perf_counter() - t0, 1)
        merge.update(weight_intent=fitted["weight_intent"], intent_validation=fitted["validation"])
        model.save_meta(out_dir)
        say(f"intent weight {fitted['weight_intent']} (fitted on {fitted['validation']['users']} held-out users, "
            f"{fitted['validation']['seconds']} s)")
    return model


def save_catalog(catalog: Catalog, path: Path) -> None:
    items = list(catalog.items.values())
    pd.DataFrame({"item_id": [i.item_id for i in items], "category": [i.category for i in items],
                  "brand": [i.brand for i in items], "title": [i.title for i in items]}).to_parquet(path)


def train_model(dataset, out_dir: Path, cache_dir: Path, cfg: SFTConfig | None = None,
                progress: Callable[[str], None] | None = None, intent: IntentSettings | None = None,
                sequential=None) -> IntentModel:
    """Train on a whole `offline.datasets.Dataset` and write the model directory atomically (a
    worker loading `out_dir` meanwhile never sees half a model); `intent`, `sequential`: as
    `train_sft`'s."""
    import shutil

    catalog = Catalog.from_frames(dataset.items, dataset.events)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = train_sft(dataset.events, catalog, tmp, cache_dir, cfg,
                      version=f"sft-{dataset.name}-{time.strftime('%Y%m%d-%H%M%S')}", progress=progress,
                      intent=intent, sequential=sequential)
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return model
