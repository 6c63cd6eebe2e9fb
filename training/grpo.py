"""GRPO with constrained reward shaping for the tag experts (RecGPT-V2 section 2.5), one readable
loop in torch.

Why not TRL's GRPOTrainer: our contexts are embeddings (one atom per item through the adaptor,
`inputs_embeds`) and decoding is constrained to the tag vocabulary by a prefix trie; GRPOTrainer
generates from token prompts with its own (or vLLM's) sampler, so neither fits without rewriting
its generation step. The loop below is the algorithm:

1. Inputs per user context (`tasks`): the **expert** task for one persona (the policy's own
   planner proposes the user's personas, greedy, and one is drawn), and the **planner** task
   itself. The paper trains the experts; we add the planner with the same rewards because an
   expert's tags nearly always cover its persona's categories (measured: on REES46 63 of 64
   sampled expert groups had equal R_acc), so which personas the planner picks is where the
   user's next categories are won or lost.
2. G outputs per input are sampled from the constrained distribution (softmax over the tokens
   the trie allows at each step, at `temperature`), sharing the prefilled context through its
   KV cache: `tags_per_persona` tags per expert output, `personas` personas per plan.
3. Rewards (training/rewards.py) against the user's next-interaction categories: R_acc (tags'
   categories; for a plan, see `PlanAccuracy`), R_align (reward
   model: mean over the tags; for a plan, over each persona's name tag), R_div (tag embeddings;
   for a plan, the personas' centres), R_len (tag or persona name words); combined by CRS
   (`reward="crs"`: accuracy times the gates) or the weighted sum (`reward="sum"`).
4. Advantages are group-relative: R - mean of the group (divided by the group's std when
   `scale_rewards`). A group whose rewards are all equal has no advantage: counted.
5. Loss per generated token: -min(r A, clip(r, 1 - eps, 1 + eps) A) + beta KL(pi || pi_ref), with
   r = pi / pi_old under the constrained distribution, KL the k3 estimator against the frozen
   SFT model, averaged per sequence then over sequences; `inner_epochs` updates per sample batch.
   Tokens the trie forces (one allowed) carry no choice and are left out.

`GRPOConfig` holds every hyper-parameter (the paper gives none; ours are documented there).
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum

import numpy as np
import torch

from features.catalog import Catalog
from reasoning.backends import LocalBackend
from reasoning.context import messages, task_expert, task_plan
from reasoning.intent_model import AtomTable, IntentModel
from reasoning.tags import PERSONA_SUFFIX
from training.data import Episode
from training.rewards import (
    Gates,
    LengthBand,
    r_acc,
    r_align,
    r_div,
    r_len,
    shaped,
    summed,
    violations,
)

log = logging.getLogger(__name__)

REWARDS = ("crs", "sum")
TASKS = ("plan", "expert")


class PlanAccuracy(StrEnum):
    """Which categories a plan's R_acc counts as covered."""

    PERSONAS = "personas"
    """Every category of every tag the chosen personas hold."""
    EXPERTS = "experts"
    """Those of the tags the chosen personas' experts emit for this user (greedy, as served: what
    the arbiter then picks from); one greedy expert call per distinct persona a context's plans
    chose. Tried because on REES46 (`bench rl --fresh-share 0.3`; 7 personas, 188 tags in 93
    categories) 4 personas hold 57 categories on average and the plans of GRPO's episodes had a
    mean R_acc of 0.97, while on the held-out users the personas' categories hit 69%, their
    experts' tags (29 categories) 63% and the arbiter's 30 60%. Measured in one run (same SFT
    model, seed and steps): plan R_acc 0.89 instead of 0.97, but as many zero-advantage groups
    (550 vs 551 of 640: the alignment gate, violated by 75% of the first samples, zeroes most
    groups, not the plan's accuracy) and HR@30 0.622 vs 0.625 (one user of 283), 26% slower per
    step; so not the default."""


@dataclass
class GRPOConfig:
    """Hyper-parameters of the GRPO stage (`intentstream train --once` and the benchmark)."""

    reward: str = "crs"            # crs (constrained reward shaping) or sum (the ablation)
    steps: int = 40                # policy-update rounds (each samples a fresh batch)
    contexts_per_step: int = 8     # user contexts per step (each gives a plan and an expert input)
    group_size: int = 8            # G: outputs sampled per input
    temperature: float = 1.0       # sampling temperature of the constrained distribution
    lr: float = 2e-5               # AdamW on the LM and the adaptor
    clip_eps: float = 0.2          # PPO clip of the policy ratio
    kl_coef: float = 0.1           # beta: weight of KL(pi || pi_sft)
    inner_epochs: int = 2          # updates per sampled batch (the ratio clip acts from the second)
    scale_rewards: bool = True     # divide advantages by the group's reward std
    gates: Gates = field(default_factory=Gates)
    sum_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # acc, align, div, len
    band: LengthBand = field(default_factory=LengthBand)
    mode: str = "hybrid"           # context form the policy reads (what serves)
    personas: int = 4              # K: personas the planner proposes
    tags_per_persona: int = 10     # M: tags per expert output
    tasks: tuple[str, ...] = ("plan", "expert")  # which tasks get GRPO inputs (see the module doc)
    expert_persona: str = "random"  # random: any planned persona; target: prefer one covering a next category
    plan_accuracy: PlanAccuracy = PlanAccuracy.PERSONAS  # what a plan's R_acc counts (PlanAccuracy)
    seed: int = 0

    def __post_init__(self) -> None:
        # From JSON or `as_dict()`: nested configs arrive as dicts and lists.
        if isinstance(self.gates, dict):
            self.gates = Gates(**self.gates)
        if isinstance(self.band, dict):
            self.band = LengthBand(**{k: tuple(v) for k, v in self.band.items()})
        self.sum_weights = tuple(self.sum_weights)
        self.tasks = tuple(self.tasks)
        self.plan_accuracy = PlanAccuracy(self.plan_accuracy)
        if self.expert_persona not in ("random", "target"):
            raise ValueError("GRPOConfig.expert_persona must be 'random' or 'target'")
        if self.reward not in REWARDS:
            raise ValueError(f"GRPOConfig.reward must be one of {REWARDS}, not {self.reward!r}")
        for name in ("steps", "contexts_per_step", "inner_epochs", "personas", "tags_per_persona"):
            if getattr(self, name) < 1:
                raise ValueError(f"GRPOConfig.{name} must be >= 1")
        if not self.tasks or set(self.tasks) - set(TASKS):
            raise ValueError(f"GRPOConfig.tasks must be a non-empty subset of {TASKS}")
        if self.group_size < 2:
            raise ValueError("GRPOConfig.group_size must be >= 2 (advantages are relative to the group)")

    def as_dict(self) -> dict:
        return asdict(self)


AlignFn = Callable[[list[int], str, list[int]], np.ndarray]
"""(history tag ids, persona, tag ids) -> reward-model scores in [0, 1], one per tag."""


@dataclass
class Sample:
    owner: int
    group: tuple[int, str]
    persona: str | None
    """The expert's persona; None for a plan."""
    tags: list[int]
    """Tag ids of an expert output; persona ids of a plan."""
    tokens: list[int]
    allowed: list[list[int]]
    rewards: dict
    sampled_logp: float = 0.0
    """Sum of the generated tokens' log-probs (full softmax) as the decoder saw them."""


class GRPOTrainer:
    def __init__(self, model: IntentModel, atoms: AtomTable, catalog: Catalog, tag_vectors: np.ndarray,
                 align: AlignFn, history_tags: Callable, cfg: GRPOConfig) -> None:
        self.model = model
        self.cfg = cfg
        self.atoms = atoms
        self.catalog = catalog
        self.tag_vectors = tag_vectors
        self.align = align
        self.history_tags = history_tags
        self.backend = LocalBackend(model, atoms, catalog)
        self.ref = IntentModel(copy.deepcopy(model.lm), model.tokenizer, copy.deepcopy(model.adaptor),
                               model.vocab, model.meta)  # on the policy's device
        for p in list(self.ref.lm.parameters()) + list(self.ref.adaptor.parameters()):
            p.requires_grad_(False)
        self.params = list(model.lm.parameters()) + list(model.adaptor.parameters())
        for p in self.params:
            p.requires_grad_(True)
        model.lm.eval()  # no dropout in the LM; eval mode keeps sampling and scoring identical
        model.adaptor.eval()
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0)
        self.rng = random.Random(cfg.seed)
        vocab = model.vocab
        self.persona_index = {p: i for i, p in enumerate(vocab.personas)}
        unit = tag_vectors / np.maximum(np.linalg.norm(tag_vectors, axis=1, keepdims=True), 1e-12)
        self.persona_vectors = np.stack([unit[vocab.persona_tags(p)].mean(0) if vocab.persona_tags(p) else unit[0] * 0
                                         for p in range(len(vocab.personas))])
        self.persona_categories = [{vocab.category[t] for t in vocab.persona_tags(p)} for p in range(len(vocab.personas))]
        self.persona_name_tag = [vocab.index.get(name.removesuffix(PERSONA_SUFFIX), (vocab.persona_tags(p) or [0])[0])
                                 for p, name in enumerate(vocab.personas)]
        self.step_no = 0

    # -- sampling ---------------------------------------------------------------------------------
    def sample(self, batch: Sequence[Episode]) -> list[Sample]:
        cfg, model, backend = self.cfg, self.model, self.backend
        contexts = [ep.context for ep in batch]
        session = backend.open(contexts, cfg.mode)
        plans = session.plan(cfg.personas)
        owners, kinds, personas, suffixes, tries, limits = [], [], [], [], [], []
        for b, names in enumerate(plans):
            if "plan" in cfg.tasks:
                for _ in range(cfg.group_size):
                    owners.append(b)
                    kinds.append("plan")
                    personas.append(None)
                    suffixes.append(backend.suffix(task_plan(), cfg.mode))
                    tries.append(backend.persona_trie)
                    limits.append(cfg.personas)
            if "expert" in cfg.tasks and names:
                options = names
                if cfg.expert_persona == "target":
                    # Inputs where the samples' R_acc can differ (the persona holds a next category).
                    wanted = batch[b].target_categories
                    options = [n for n in names if self.persona_categories[self.persona_index[n]] & wanted] or names
                name = self.rng.choice(options)
                for _ in range(cfg.group_size):
                    owners.append(b)
                    kinds.append("expert")
                    personas.append(name)
                    suffixes.append(backend.suffix(task_expert(name), cfg.mode))
                    tries.append(backend.persona_tries[self.persona_index[name]])
                    limits.append(cfg.tags_per_persona)
        trace: list = []
        lists, _ = backend.decoder.generate_lists(session.prefix, owners, suffixes, tries, limits,
                                                  temperature=cfg.temperature,
                                                  seed=cfg.seed * 100_003 + self.step_no, trace=trace)
        covers = self._plan_covers(session, len(batch), owners, kinds, lists)
        samples = []
        for owner, kind, persona, emitted, (tokens, allowed) in zip(owners, kinds, personas, lists, trace):
            ids = [t for t, _ in emitted]
            rewards = (self.rewards(batch[owner], persona, ids) if kind == "expert"
                       else self.plan_rewards(batch[owner], ids, covers[owner]))
            samples.append(Sample(owner, (owner, kind), persona, ids, tokens, allowed, rewards,
                                  sum(score for _, score in emitted)))
        return samples

    def _plan_covers(self, session, contexts: int, owners, kinds, lists) -> list[dict[int, set[str]]]:
        """Per context: persona id -> the categories a plan choosing it covers (`PlanAccuracy`).
        With `experts`, one greedy expert call per distinct persona the context's plans chose."""
        chosen: list[dict[int, set[str]]] = [{} for _ in range(contexts)]
        for owner, kind, emitted in zip(owners, kinds, lists):
            if kind == "plan":
                for p, _ in emitted:
                    chosen[owner][p] = self.persona_categories[p]
        if self.cfg.plan_accuracy == PlanAccuracy.EXPERTS and any(chosen):
            vocab = self.model.vocab
            order = [sorted(c) for c in chosen]
            tags = session.experts([[vocab.personas[p] for p in ps] for ps in order], self.cfg.tags_per_persona)
            for c, ps, lists_ in zip(chosen, order, tags):
                for p, names in zip(ps, lists_):
                    c[p] = {vocab.category[vocab.index[t]] for t in names}
        return chosen

    def plan_rewards(self, ep: Episode, personas: list[int], covers: dict[int, set[str]]) -> dict:
        cfg, vocab = self.cfg, self.model.vocab
        covered = set().union(*(covers[p] for p in personas)) if personas else set()
        acc = r_acc(covered, ep.target_categories)
        div = r_div(self.persona_vectors[personas]) if personas else 0.0
        length = r_len([vocab.personas[p] for p in personas], cfg.band)
        history = self.history_tags(ep.context)
        align = r_align([float(self.align(history, vocab.personas[p], [self.persona_name_tag[p]])[0])
                         for p in personas])
        return self._combine(acc, align, div, length)

    def rewards(self, ep: Episode, persona: str, tags: list[int]) -> dict:
        cfg, vocab = self.cfg, self.model.vocab
        names = [vocab.tags[t] for t in tags]
        acc = r_acc([vocab.category[t] for t in tags], ep.target_categories)
        div = r_div(self.tag_vectors[tags]) if tags else 0.0
        length = r_len(names, cfg.band)
        align = r_align(self.align(self.history_tags(ep.context), persona, tags)) if tags else 0.0
        return self._combine(acc, align, div, length)

    def _combine(self, acc: float, align: float, div: float, length: float) -> dict:
        cfg = self.cfg
        total = (shaped(acc, align, div, length, cfg.gates) if cfg.reward == "crs"
                 else summed(acc, align, div, length, cfg.sum_weights))
        return {"acc": acc, "div": div, "len": length, "align": align, "total": total,
                **{f"violates_{k}": v for k, v in violations(align, div, length, cfg.gates).items()}}

    # -- scoring ----------------------------------------------------------------------------------
    def sequences(self, batch: Sequence[Episode], samples: Sequence[Sample]):
        """Each sample as one sequence (context, task, generated tokens), its atoms and where
        the generated tokens start."""
        cfg, model = self.cfg, self.model
        seqs, atoms, starts = [], [], []
        for s in samples:
            task = task_expert(s.persona) if s.persona is not None else task_plan()
            ctx, suffix = model.encode_chat(messages(batch[s.owner].context, cfg.mode, task, self.catalog))
            seqs.append(ctx + suffix + s.tokens)
            starts.append(len(ctx) + len(suffix))
            atoms.append(self.atoms.atoms(batch[s.owner].context.items) if cfg.mode == "hybrid" else None)
        return seqs, atoms, starts

    def _logps(self, model: IntentModel, seqs, atoms, starts, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs of each sample's generated tokens under the constrained distribution of
        `model`, [N, T], and the mask of tokens that were a choice (more than one allowed)."""
        embeds, mask, positions = model.inputs(seqs, atoms, pad_left=False)
        logits = model.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits.float()
        n, length = len(samples), max(len(s.tokens) for s in samples)
        vocab_size = logits.shape[-1]
        index = torch.zeros((n, length), dtype=torch.long)
        targets = torch.zeros((n, length), dtype=torch.long)
        choice = torch.zeros((n, length), dtype=torch.bool)
        allowed = torch.ones((n, length, vocab_size), dtype=torch.bool)
        for k, s in enumerate(samples):
            m = len(s.tokens)
            index[k, :m] = torch.arange(starts[k] - 1, starts[k] - 1 + m)
            targets[k, :m] = torch.tensor(s.tokens)
            for i, options in enumerate(s.allowed):
                if len(options) > 1:
                    choice[k, i] = True
                    allowed[k, i] = False
                    allowed[k, i, options] = True
        device = logits.device
        index, targets, choice, allowed = index.to(device), targets.to(device), choice.to(device), allowed.to(device)
        rows = logits[torch.arange(n, device=device)[:, None], index]
        logp = torch.log_softmax(rows.masked_fill(~allowed, float("-inf")), dim=-1)
        return logp.gather(-1, targets[..., None]).squeeze(-1).masked_fill(~choice, 0.0), choice

    def step(self, batch: Sequence[Episode]) -> dict:
        cfg, model = self.cfg, self.model
        started = time.perf_counter()
        self.step_no += 1
        samples = self.sample(batch)
        sampled_s = time.perf_counter() - started
        # group-relative advantages
        groups: dict[tuple, list[int]] = {}
        for k, s in enumerate(samples):
            groups.setdefault(s.group, []).append(k)
        adv = np.zeros(len(samples), dtype=np.float32)
        zero_groups = 0
        for members in groups.values():
            r = np.array([samples[k].rewards["total"] for k in members], dtype=np.float32)
            centred = r - r.mean()
            if np.allclose(r, r[0]):
                zero_groups += 1
            elif cfg.scale_rewards:
                centred = centred / (r.std() + 1e-4)
            adv[members] = centred
        stats = self._stats(samples, len(groups), zero_groups)
        live = [k for k in range(len(samples)) if adv[k] != 0.0 and samples[k].tokens]
        if live:
            chosen = [samples[k] for k in live]
            advantages = torch.from_numpy(adv[live]).to(model.device)
            seqs, atoms, starts = self.sequences(batch, chosen)
            with torch.no_grad():
                old, choice = self._logps(model, seqs, atoms, starts, chosen)
                ref, _ = self._logps(self.ref, seqs, atoms, starts, chosen)
            counts = choice.sum(1).clamp(min=1)
            for _ in range(cfg.inner_epochs):
                logp, _ = self._logps(model, seqs, atoms, starts, chosen)
                ratio = torch.exp(logp - old)
                surrogate = torch.minimum(ratio * advantages[:, None],
                                          ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps) * advantages[:, None])
                delta = ref - logp
                kl = torch.exp(delta) - delta - 1
                per_token = -(surrogate - cfg.kl_coef * kl) * choice
                loss = (per_token.sum(1) / counts).mean()
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, 1.0))
                self.opt.step()
            stats.update(loss=float(loss.detach()), kl=float(((kl * choice).sum(1) / counts).mean().detach()),
                         grad_norm=grad_norm, clipped_share=float((((ratio - 1).abs() > cfg.clip_eps) & choice).sum()
                                                                  / choice.sum().clamp(min=1)))
        seconds = time.perf_counter() - started
        stats.update(step=self.step_no, seconds=seconds, sample_seconds=sampled_s,
                     contexts_per_s=len(batch) / seconds, samples_per_s=len(samples) / seconds)
        return stats

    def _stats(self, samples: list[Sample], groups: int, zero_groups: int) -> dict:
        def mean(key: str) -> float:
            return float(np.mean([s.rewards[key] for s in samples])) if samples else 0.0

        by_task = {}
        for kind in TASKS:
            mine = [s.rewards for s in samples if s.group[1] == kind]
            if mine:
                by_task[f"{kind}_acc"] = float(np.mean([r["acc"] for r in mine]))
                by_task[f"{kind}_reward"] = float(np.mean([r["total"] for r in mine]))
        return {**by_task, "reward": mean("total"), "acc": mean("acc"), "align": mean("align"), "div": mean("div"),
                "len": mean("len"), "violation_align": mean("violates_align"), "violation_div": mean("violates_div"),
                "violation_len": mean("violates_len"), "groups": groups, "zero_advantage_groups": zero_groups,
                "samples": len(samples)}

    def train(self, episodes: Sequence[Episode], progress: Callable[[str], None] | None = None,
              log_every: int = 10, after_step: Callable[[int], None] | None = None) -> list[dict]:
        """`cfg.steps` GRPO steps on batches drawn from `episodes`; their stats. `after_step(n)`
        runs after step n (e.g. a benchmark measuring the policy as it trains)."""
        if not episodes:
            raise ValueError("no episodes to train on")
        say = progress or log.info
        history = []
        for _ in range(self.cfg.steps):
            batch = self.rng.sample(list(episodes), min(self.cfg.contexts_per_step, len(episodes)))
            stats = self.step(batch)
            history.append(stats)
            if after_step is not None:
                after_step(stats["step"])
            if stats["step"] % log_every == 0 or stats["step"] == self.cfg.steps:
                window = history[-log_every:]
                say("grpo step {step}: reward {r:.3f} acc {a:.3f} violations align/div/len {va:.2f}/{vd:.2f}/{vl:.2f} "
                    "zero-adv groups {z}/{g} kl {kl:.4f} {s:.1f} s/step".format(
                        step=stats["step"], r=np.mean([h["reward"] for h in window]),
                        a=np.mean([h["acc"] for h in window]),
                        va=np.mean([h["violation_align"] for h in window]),
                        vd=np.mean([h["violation_div"] for h in window]),
                        vl=np.mean([h["violation_len"] for h in window]),
                        z=sum(h["zero_advantage_groups"] for h in window), g=sum(h["groups"] for h in window),
                        kl=np.mean([h.get("kl", 0.0) for h in window]),
                        s=np.mean([h["seconds"] for h in window])))
        self.model.lm.eval()
        for p in self.params:
            p.requires_grad_(False)
        return history

