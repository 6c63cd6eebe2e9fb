"""Constrained generation of phrase lists with a KV cache shared across branches.

A `PhraseTrie` holds the token sequences of the allowed phrases (tags, or personas). Decoding
emits `phrase; phrase; ... <|end|>` with exactly `limit` phrases (fewer only when the
allowed set runs out); at every step only tokens that continue an allowed,
not-yet-emitted phrase (or close a complete one) are allowed, so the output is always a list of
distinct vocabulary phrases. `Prefix` is a prefilled context; `branch` continues it with several
suffixes at once (one per persona, per candidate) without recomputing the context.

Sequences are laid out `[left pad][context][suffix pad][suffix][generated]`: the attention mask
hides both pads and position ids count real tokens only, so every branch sees its context and
suffix contiguously, as in training.

Decoding writes each step's keys and values into room reserved after the branch
(`ReservedLayer`) instead of letting transformers' `DynamicLayer` concatenate the whole cache
per layer per step. Measured on the demo model (4 layers, 128 users in batches of 32, 1 thread,
cProfile): `torch.cat` 1.35 s -> 0.15 s, but attention reading the strided views of the buffer
+0.3 s, net 16.7 -> 19.0 users/s (1.14x). Outputs are identical (a unit test holds it).
`bench reasoner` measures this and the tensor walk below together against the decoding before
them: 1.08x, 1.17x and 1.10x in three runs (benchmarks/REPORT.md has the latest).

The trie walk runs as tensor operations over all rows at once (`TrieForest`, `_TensorWalk`:
every trie of a call in one node table, allowed tokens by gather and mask, greedy and sampled
choices for the batch in one operation each); `Decoder(tensor_walk=False)` keeps the per-row
`_Cursor` walk, the rules it vectorises and the reference a unit test compares it with (same
lists, log-probs, token counts and traces on fixed seeds). Measured on this 2-core CPU, same
runs, both ways: serving 21.6 / 20.4 users/s per-row vs 21.8 / 20.0 tensor (256 users, batches
of 32, 1 thread); a GRPO step 0.828 / 0.773 s vs 0.863 / 0.739 s. No gain here: the per-row walk
was about 5% of a reasoning batch and 12% of a GRPO step (cProfile), and the tensor operations
cost about as much for rows of a 2,631-token vocabulary; the LM's arithmetic is the cost.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.cache_utils import DynamicLayer

from reasoning.intent_model import IntentModel


class ReservedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values live in a buffer with room for `extra` more
    positions: a step writes its slot and the layer exposes views of the filled part (what
    attention reads), so no step copies the cache. Past the room it falls back to concatenation."""

    @classmethod
    def reserve(cls, layer: DynamicLayer, extra: int) -> DynamicLayer:
        if type(layer) is not DynamicLayer or not layer.is_initialized or layer.keys.dim() != 4:
            return layer  # another layer kind (sliding window, quantised): leave it as it is
        new = cls.__new__(cls)
        new.__dict__.update(layer.__dict__)
        b, h, n, d = layer.keys.shape
        new._k = layer.keys.new_empty((b, h, n + extra, d))
        new._v = layer.values.new_empty((b, h, n + extra, layer.values.shape[-1]))
        new._k[:, :, :n], new._v[:, :, :n] = layer.keys, layer.values
        new._n = n
        new.keys, new.values = new._k[:, :, :n], new._v[:, :, :n]
        return new

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        t = key_states.shape[-2]
        if self._n + t > self._k.shape[-2]:
            return super().update(key_states, value_states, *args, **kwargs)
        self._k[:, :, self._n:self._n + t] = key_states
        self._v[:, :, self._n:self._n + t] = value_states
        self._n += t
        self.keys, self.values = self._k[:, :, :self._n], self._v[:, :, :self._n]
        return self.keys, self.values


class PhraseTrie:
    def __init__(self, phrases: Sequence[list[int]], ids: Sequence[int] | None = None) -> None:
        self.children: list[dict[int, int]] = [{}]
        self.terminal: dict[int, int] = {}
        self.size: list[int] = [0]
        self.phrase_ids = list(ids) if ids is not None else list(range(len(phrases)))
        self.paths: dict[int, list[int]] = {}
        for pid, tokens in zip(self.phrase_ids, phrases):
            node, path = 0, [0]
            for tok in tokens:
                nxt = self.children[node].get(tok)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][tok] = nxt
                    self.children.append({})
                    self.size.append(0)
                node = nxt
                path.append(node)
            if node in self.terminal or node == 0:
                continue  # duplicate or empty phrase
            self.terminal[node] = pid
            for n in path:
                self.size[n] += 1
            self.paths[pid] = path


@dataclass
class _Cursor:
    trie: PhraseTrie
    limit: int
    node: int = 0
    used: dict | None = None
    emitted: list | None = None
    scores: list | None = None
    current: float = 0.0
    done: bool = False

    def __post_init__(self) -> None:
        self.used, self.emitted, self.scores = {}, [], []

    def allowed(self, sep: int, end: int) -> list[int]:
        t = self.trie
        out = [tok for tok, child in t.children[self.node].items() if t.size[child] - self.used.get(child, 0) > 0]
        pid = t.terminal.get(self.node)
        if pid is not None and pid not in self.emitted:
            # Lists are exactly `limit` long while the vocabulary has phrases left.
            if len(self.emitted) + 1 < self.limit and t.size[0] - self.used.get(0, 0) > 1:
                out.append(sep)
            else:
                out.append(end)
        if not out:
            out.append(end)
        return out

    def step(self, tok: int, logp: float, sep: int, end: int) -> None:
        self.current += logp
        if tok in (sep, end):
            pid = self.trie.terminal.get(self.node)
            if pid is not None and pid not in self.emitted:
                self.emitted.append(pid)
                self.scores.append(self.current)
                for n in self.trie.paths[pid]:
                    self.used[n] = self.used.get(n, 0) + 1
            self.node, self.current = 0, 0.0
            self.done = tok == end
            return
        self.node = self.trie.children[self.node][tok]


class TrieForest:
    """Every trie of a decoding call as tensors, one node table (each trie's nodes offset after the
    previous trie's): per node its children's tokens and nodes in insertion order (padded to the
    widest node with a sentinel node that allows nothing), the phrases below it, the phrase it
    ends (or -1), and, for a phrase's end node, the nodes on its path."""

    def __init__(self, tries: Sequence[PhraseTrie]) -> None:
        self.root: dict[int, int] = {}
        child_tok: list[list[int]] = []
        child_node: list[list[int]] = []
        size: list[int] = []
        terminal: list[int] = []
        paths: dict[int, list[int]] = {}
        for trie in tries:
            base = len(size)
            self.root[id(trie)] = base
            for node, children in enumerate(trie.children):
                child_tok.append(list(children.keys()))
                child_node.append([base + c for c in children.values()])
                size.append(trie.size[node])
                terminal.append(trie.terminal.get(node, -1))
            for path in trie.paths.values():
                paths[base + path[-1]] = [base + n for n in path]
        self.sentinel = len(size)
        width = max(1, max((len(c) for c in child_tok), default=1))
        depth = max(1, max((len(path) for path in paths.values()), default=1))
        n = self.sentinel + 1
        self.child_tok = torch.zeros((n, width), dtype=torch.long)
        self.child_node = torch.full((n, width), self.sentinel, dtype=torch.long)
        for node, (toks, nodes) in enumerate(zip(child_tok, child_node)):
            self.child_tok[node, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            self.child_node[node, : len(nodes)] = torch.tensor(nodes, dtype=torch.long)
        self.size = torch.tensor(size + [0], dtype=torch.long)
        self.terminal = torch.tensor(terminal + [-1], dtype=torch.long)
        self.path = torch.full((n, depth), self.sentinel, dtype=torch.long)
        for end, path in paths.items():
            self.path[end, : len(path)] = torch.tensor(path, dtype=torch.long)


class _TensorWalk:
    """`_Cursor`'s rules for every row at once, as tensor operations (no Python per row per step).

    Exactly the same choices: children in insertion order then the separator or end, greedy by
    the first maximum, sampling by torch.multinomial's own rule for one draw (argmax of p / q,
    q ~ Exp(1), one draw per allowed token, rows in order, rows with one allowed token drawing
    nothing), so a fixed seed gives the lists the per-row walk gives (a unit test holds it)."""

    def __init__(self, forest: TrieForest, tries: Sequence[PhraseTrie], limits: Sequence[int], sep: int, end: int,
                 temperature: float, gen: torch.Generator) -> None:
        self.f, self.sep, self.end, self.temperature, self.gen = forest, sep, end, temperature, gen
        rows = len(tries)
        self.root = torch.tensor([forest.root[id(t)] for t in tries], dtype=torch.long)
        self.node = self.root.clone()
        self.limit = torch.tensor([max(1, lim) for lim in limits], dtype=torch.long)
        self.used = torch.zeros((rows, forest.sentinel + 1), dtype=torch.long)
        self.emitted = torch.zeros((rows, forest.sentinel + 1), dtype=torch.bool)
        self.count = torch.zeros(rows, dtype=torch.long)
        self.current = torch.zeros(rows, dtype=torch.float64)
        self.done = torch.zeros(rows, dtype=torch.bool)
        self.rows = torch.arange(rows)
        self.closed: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        """Per step: the rows that emitted a phrase, its id and its log-prob."""
        self.steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        """Per step (with a trace): active rows, allowed tokens, their mask, the chosen token."""

    def allowed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row the candidate tokens [R, C+1] and which are allowed."""
        f, node = self.f, self.node
        toks, kids = f.child_tok[node], f.child_node[node]
        valid = (f.size[kids] - self.used.gather(1, kids)) > 0
        pid = f.terminal[node]
        ends = (pid >= 0) & ~self.emitted[self.rows, node]
        more = (self.count + 1 < self.limit) & (f.size[self.root] - self.used[self.rows, self.root] > 1)
        extra = torch.where(ends & more, self.sep, self.end)
        return (torch.cat([toks, extra[:, None]], dim=1),
                torch.cat([valid, (ends | ~valid.any(dim=1))[:, None]], dim=1))

    def step(self, logp: torch.Tensor, trace: bool) -> torch.Tensor:
        """Choose every active row's token from `logp` [R, V] and advance; returns the tokens [R]."""
        active = ~self.done
        toks, ok = self.allowed()
        scores = logp.gather(1, toks).masked_fill(~ok, float("-inf"))
        pick = torch.argmax(scores, dim=1)
        if self.temperature > 0:
            draw = active & (ok.sum(dim=1) > 1)
            if draw.any():
                probs = torch.softmax(scores[draw] / self.temperature, dim=1)
                mask = ok[draw]
                q = torch.full(probs.shape, float("inf"))
                q[mask] = torch.empty(int(mask.sum())).exponential_(generator=self.gen)
                pick[draw] = torch.argmax(probs / q, dim=1)
        chosen = toks.gather(1, pick[:, None])[:, 0]
        chosen = torch.where(active, chosen, self.end)
        if trace:
            self.steps.append((active, toks, ok, chosen))
        self.current += torch.where(active, logp.gather(1, chosen[:, None])[:, 0].double(), 0.0)
        f, node = self.f, self.node
        closing = active & ((chosen == self.sep) | (chosen == self.end))
        pid = f.terminal[node]
        emits = closing & (pid >= 0) & ~self.emitted[self.rows, node]
        if emits.any():
            rows = self.rows[emits]
            self.closed.append((rows, pid[emits], self.current[emits].clone()))
            self.emitted[rows, node[emits]] = True
            self.count[rows] += 1
            self.used[rows] = self.used[rows].scatter_add(1, f.path[node[emits]], torch.ones_like(f.path[node[emits]]))
        # The separator / end column has no child; closing rows go back to their root anyway.
        child = f.child_node[node].gather(1, pick.clamp(max=f.child_node.shape[1] - 1)[:, None])[:, 0]
        self.node = torch.where(closing, self.root, torch.where(active, child, node))
        self.current = torch.where(closing, 0.0, self.current)
        self.done = self.done | (active & (chosen == self.end))
        return chosen

    def lists(self) -> list[list[tuple[int, float]]]:
        out: list[list[tuple[int, float]]] = [[] for _ in range(len(self.root))]
        for rows, pids, scores in self.closed:
            for r, pid, score in zip(rows.tolist(), pids.tolist(), scores.tolist()):
                out[r].append((pid, score))
        return out

    def trace(self) -> list[tuple[list[int], list[list[int]]]]:
        out: list[tuple[list[int], list[list[int]]]] = [([], []) for _ in range(len(self.root))]
        for active, toks, ok, chosen in self.steps:
            for r in self.rows[active].tolist():
                out[r][0].append(int(chosen[r]))
                out[r][1].append(toks[r][ok[r]].tolist())
        return out


@dataclass
class Prefix:
    """A prefilled batch of contexts."""

    cache: object
    mask: torch.Tensor
    last_position: torch.Tensor
    tokens: int
    """Real tokens read (what a refresh pays for the context)."""


class Decoder:
    def __init__(self, model: IntentModel, reserve_cache: bool = True, tensor_walk: bool = True) -> None:
        self.model = model
        self.lm = model.lm
        self.reserve_cache = reserve_cache
        """Decode into reserved cache room (`ReservedLayer`); False: transformers' concatenation."""
        self.tensor_walk = tensor_walk
        """Walk the tries as tensors, all rows at once (`_TensorWalk`); False: `_Cursor` per row."""
        self._forests: dict[tuple[int, ...], TrieForest] = {}

    def forest(self, tries: Sequence[PhraseTrie]) -> TrieForest:
        """The forest of the distinct tries of a call (built once per set of tries; they live as
        long as the backend that owns them)."""
        distinct = list({id(t): t for t in tries}.values())
        key = tuple(id(t) for t in distinct)
        if key not in self._forests:
            self._forests[key] = TrieForest(distinct)
        return self._forests[key]

    @torch.no_grad()
    def prefill(self, sequences: Sequence[list[int]], atoms: Sequence[np.ndarray | None]) -> Prefix:
        embeds, mask, positions = self.model.inputs(sequences, atoms)
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
        return Prefix(out.past_key_values, mask, positions[:, -1], int(mask.sum()))

    @torch.no_grad()
    def branch(self, prefix: Prefix, owners: Sequence[int], suffixes: Sequence[list[int]]):
        """Continue context `owners[j]` with `suffixes[j]`; returns (logits [J, S, V], state)."""
        device = self.model.device
        index = torch.tensor(list(owners), dtype=torch.long, device=prefix.mask.device)
        cache = copy.deepcopy(prefix.cache)
        cache.batch_select_indices(index)
        length = max(len(s) for s in suffixes)
        ids = torch.full((len(suffixes), length), self.model.pad_id, dtype=torch.long)
        smask = torch.zeros((len(suffixes), length), dtype=torch.long)
        for j, s in enumerate(suffixes):
            ids[j, length - len(s):] = torch.tensor(s)
            smask[j, length - len(s):] = 1
        ids, smask = ids.to(device), smask.to(device)
        mask = torch.cat([prefix.mask[index], smask], dim=1)
        positions = prefix.last_position[index, None] + smask.cumsum(1)
        out = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        state = {"cache": out.past_key_values, "mask": mask, "position": positions[:, -1], "tokens": int(smask.sum())}
        return out.logits, state

    @torch.no_grad()
    def generate_lists(self, prefix: Prefix, owners: Sequence[int], suffixes: Sequence[list[int]],
                       tries: Sequence[PhraseTrie], limits: Sequence[int], max_steps: int = 64,
                       temperature: float = 0.0, seed: int = 0,
                       trace: list | None = None) -> tuple[list[list[tuple[int, float]]], int]:
        """Per branch: the emitted (phrase id, log-prob) list; and the tokens processed.

        With `trace` (a list), each branch's generated tokens and the tokens allowed at each step
        are appended to it as `(tokens, allowed)`: what RL needs to score the sample under the
        constrained distribution (training/grpo.py)."""
        logits, state = self.branch(prefix, owners, suffixes)
        if self.reserve_cache and hasattr(state["cache"], "layers"):
            state["cache"].layers = [ReservedLayer.reserve(layer, max_steps + 1) for layer in state["cache"].layers]
        last = logits[:, -1]
        if self.tensor_walk:
            return self._generate_tensor(last, state, tries, limits, max_steps, temperature, seed, trace)
        cursors = [_Cursor(t, max(1, lim)) for t, lim in zip(tries, limits)]
        steps: list[tuple[list[int], list[list[int]]]] = [([], []) for _ in cursors]
        sep, end = self.model.sep_id, self.model.end_id
        gen = torch.Generator().manual_seed(seed)
        tokens = state["tokens"]
        cache, mask, position = state["cache"], state["mask"], state["position"]
        device = self.model.device
        for _ in range(max_steps):
            # The trie walk is Python: read the step's log-probs on the CPU once.
            logp = torch.log_softmax(last.float(), dim=-1).cpu()
            chosen = torch.full((len(cursors),), end, dtype=torch.long)
            for j, cur in enumerate(cursors):
                if cur.done:
                    continue
                allowed = cur.allowed(sep, end)
                if len(allowed) == 1:
                    tok = allowed[0]
                else:
                    scores = logp[j, allowed]
                    if temperature > 0:
                        probs = torch.softmax(scores / temperature, dim=0)
                        tok = allowed[int(torch.multinomial(probs, 1, generator=gen))]
                    else:
                        tok = allowed[int(torch.argmax(scores))]
                cur.step(tok, float(logp[j, tok]), sep, end)
                chosen[j] = tok
                steps[j][0].append(tok)
                steps[j][1].append(allowed)
            if all(c.done for c in cursors):
                break
            mask = torch.cat([mask, torch.ones((len(cursors), 1), dtype=torch.long, device=device)], dim=1)
            position = position + 1
            out = self.lm(input_ids=chosen[:, None].to(device), attention_mask=mask, position_ids=position[:, None],
                          past_key_values=cache, use_cache=True)
            tokens += sum(1 for c in cursors if not c.done)
            cache, last = out.past_key_values, out.logits[:, -1]
        if trace is not None:
            trace.extend(steps)
        return [list(zip(c.emitted, c.scores)) for c in cursors], tokens

    def _generate_tensor(self, last: torch.Tensor, state: dict, tries: Sequence[PhraseTrie], limits: Sequence[int],
                         max_steps: int, temperature: float, seed: int,
                         trace: list | None) -> tuple[list[list[tuple[int, float]]], int]:
        """`generate_lists` with the trie walk as tensors (`_TensorWalk`): the same lists."""
        walk = _TensorWalk(self.forest(tries), tries, limits, self.model.sep_id, self.model.end_id, temperature,
                           torch.Generator().manual_seed(seed))
        tokens = state["tokens"]
        cache, mask, position = state["cache"], state["mask"], state["position"]
        device = self.model.device
        rows = len(tries)
        for _ in range(max_steps):
            logp = torch.log_softmax(last.float(), dim=-1).cpu()
            chosen = walk.step(logp, trace is not None)
            if bool(walk.done.all()):
                break
            mask = torch.cat([mask, torch.ones((rows, 1), dtype=torch.long, device=device)], dim=1)
            position = position + 1
            out = self.lm(input_ids=chosen[:, None].to(device), attention_mask=mask, position_ids=position[:, None],
                          past_key_values=cache, use_cache=True)
            tokens += int((~walk.done).sum())
            cache, last = out.past_key_values, out.logits[:, -1]
        if trace is not None:
            trace.extend(walk.trace())
        return walk.lists(), tokens

    @torch.no_grad()
    def score_lists(self, prefix: Prefix, task: list[int], lists: Sequence[Sequence[list[int]]]) -> tuple[list[list[float]], int]:
        """Read each owner's candidate phrases as one list after its context and `task`
        (`phrase; phrase; ...`) in a single pass, and return each phrase's mean token log-prob
        in that list: the union is judged jointly against the context, in one sequence per user."""
        suffixes, spans = [], []
        for phrases in lists:
            seq, marks = list(task), []
            for p in phrases:
                start = len(seq)
                seq += p + [self.model.sep_id]
                marks.append((start, len(seq)))
            suffixes.append(seq)
            spans.append(marks)
        logits, state = self.branch(prefix, range(len(lists)), suffixes)
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        length = logits.shape[1]
        out = []
        for j, (seq, marks) in enumerate(zip(suffixes, spans)):
            offset = length - len(seq)  # left padding inside the branch
            scores = []
            for start, end in marks:
                targets = torch.tensor(seq[start:end])
                rows = logp[j, offset + start - 1: offset + end - 1]
                scores.append(float(rows[torch.arange(len(targets)), targets].mean()))
            out.append(scores)
        return out, state["tokens"]
