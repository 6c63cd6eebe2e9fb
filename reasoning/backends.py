"""Language-model backends of the intent route, behind one interface.

`open(contexts, mode)` starts a session over a batch of user contexts; the pipeline then asks it,
in order, for personas (`plan`), tags per persona (`experts`) and relevance scores of candidate
tags (`score`). `tokens` counts what the LM read and wrote for the batch.

- `local`: the project's checkpoint in-process (transformers). The context is prefilled once per
  user and branched (KV cache) into the planner, every expert and the arbiter (which reads each user's candidates as one list); items enter as
  atoms in the `hybrid` mode; decoding is constrained to the vocabulary by a prefix trie.
- `openai`: an OpenAI-compatible server (`vllm serve`, `transformers serve`) hosting the same
  checkpoint. Text prompts from reasoning/prompts/*.md through the chat template; requests of
  a batch run concurrently. With `structured="vllm"` the answer is limited to the vocabulary by
  a regex (vLLM's structured outputs); otherwise every answer is parsed and phrases outside the
  vocabulary are rejected (counted in `rejected`). With `prompt_embeds=True` (vLLM started with
  `--enable-prompt-embeds`) the hybrid context is sent as embeddings to /v1/completions.
  The arbiter asks the `tags` task and scores candidates by their rank in its answer.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import httpx
import numpy as np
import torch

from features.catalog import Catalog
from reasoning.context import (
    UserContext,
    messages,
    parse_answer,
    task_expert,
    task_plan,
    task_tags,
)
from reasoning.decoding import Decoder, PhraseTrie, Prefix
from reasoning.errors import BackendError
from reasoning.intent_model import AtomTable, IntentModel

BACKENDS = ("local", "openai")


class IntentSession(Protocol):
    tokens: int

    def plan(self, k: int) -> list[list[str]]: ...

    def experts(self, personas: list[list[str]], m: int) -> list[list[list[str]]]: ...

    def score(self, candidates: list[list[str]]) -> list[list[float]]: ...


class IntentBackend(Protocol):
    name: str

    def open(self, contexts: Sequence[UserContext], mode: str) -> IntentSession: ...


# -- local ------------------------------------------------------------------------------------------
EXPLANATION_TOKENS = 48
"""Longest explanation an LLM writes (tokens)."""


def explanation_prompt(style: str, facts) -> str:
    """The user message asking an LLM for one explanation (reasoning/prompts/explanation.md),
    naming only the grounded facts (reasoning/explanations.py `Facts`)."""
    from reasoning import prompts
    from reasoning.explanations import describe

    named = [f"item: {describe(facts.item)}"]
    if facts.tag:
        named.append(f"tag: {facts.tag}")
    if facts.related is not None:
        named.append(f"in the user's history: {describe(facts.related)}")
    named.append(f"situation: {facts.situation}")
    return prompts.load("explanation").format(style=style, facts="; ".join(named))


class LocalBackend:
    name = "local"

    def __init__(self, model: IntentModel, atoms: AtomTable, catalog: Catalog) -> None:
        self.model = model
        self.atoms = atoms
        self.catalog = catalog
        self.decoder = Decoder(model)
        vocab = model.vocab
        self.tag_tokens = [model.phrase_ids(t) for t in vocab.tags]
        self.tag_trie = PhraseTrie(self.tag_tokens)
        self.persona_trie = PhraseTrie([model.phrase_ids(p) for p in vocab.personas])
        self.persona_tries = []
        for p in range(len(vocab.personas)):
            members = vocab.persona_tags(p)
            self.persona_tries.append(PhraseTrie([self.tag_tokens[t] for t in members], members))

    def write_explanation(self, style: str, facts) -> str | None:
        """One explanation written by the in-process LM, greedy, from the same prompt the openai
        backend sends (the caller checks it). Worth it with a pretrained instruct backbone
        (`--base smollm2`); the tiny model's text rarely passes the faithfulness check."""
        msgs = [{"role": "user", "content": explanation_prompt(style, facts)}]
        prompt = self.model.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([self.model.ids(prompt)], device=self.model.device)
        with torch.no_grad():
            out = self.model.lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                         max_new_tokens=EXPLANATION_TOKENS, eos_token_id=self.model.end_id,
                                         pad_token_id=self.model.pad_id)
        text = self.model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        return text or None

    def suffix(self, task: str, mode: str) -> list[int]:
        probe = UserContext("", (), "", "")
        return self.model.encode_chat(messages(probe, mode, task, self.catalog))[1]

    def open(self, contexts: Sequence[UserContext], mode: str) -> "LocalSession":
        seqs, atoms = [], []
        for ctx in contexts:
            ids, _ = self.model.encode_chat(messages(ctx, mode, task_tags(), self.catalog))
            seqs.append(ids)
            atoms.append(self.atoms.atoms(ctx.items) if mode == "hybrid" else None)
        return LocalSession(self, self.decoder.prefill(seqs, atoms), mode)

    def multi_route(self, contexts: Sequence[UserContext], mode: str, routes: int, m: int,
                    temperature: float = 1.0) -> tuple[list[list[list[str]]], int]:
        """The baseline the hierarchy replaces: `routes` independent routes, each re-reading the
        full context and sampling `m` tags from the whole vocabulary."""
        out: list[list[list[str]]] = [[] for _ in contexts]
        tokens = 0
        for r in range(routes):
            session = self.open(contexts, mode)
            suffix = self.suffix(task_tags(), mode)
            lists, used = self.decoder.generate_lists(
                session.prefix, range(len(contexts)), [suffix] * len(contexts), [self.tag_trie] * len(contexts),
                [m] * len(contexts), temperature=temperature, seed=r)
            tokens += session.prefix.tokens + used
            for b, emitted in enumerate(lists):
                out[b].append([self.model.vocab.tags[t] for t, _ in emitted])
        return out, tokens


class LocalSession:
    def __init__(self, backend: LocalBackend, prefix: Prefix, mode: str) -> None:
        self.backend = backend
        self.prefix = prefix
        self.mode = mode
        self.tokens = prefix.tokens
        self.context_tokens = prefix.tokens
        self.n = int(prefix.mask.shape[0])

    def plan(self, k: int) -> list[list[str]]:
        b = self.backend
        suffix = b.suffix(task_plan(), self.mode)
        lists, used = b.decoder.generate_lists(self.prefix, range(self.n), [suffix] * self.n,
                                               [b.persona_trie] * self.n, [k] * self.n)
        self.tokens += used
        return [[b.model.vocab.personas[p] for p, _ in emitted] for emitted in lists]

    def experts(self, personas: list[list[str]], m: int) -> list[list[list[str]]]:
        b = self.backend
        vocab = b.model.vocab
        index = {p: i for i, p in enumerate(vocab.personas)}
        owners, suffixes, tries = [], [], []
        for user, names in enumerate(personas):
            for name in names:
                owners.append(user)
                suffixes.append(b.suffix(task_expert(name), self.mode))
                tries.append(b.persona_tries[index[name]])
        out: list[list[list[str]]] = [[] for _ in personas]
        if not owners:
            return out
        lists, used = b.decoder.generate_lists(self.prefix, owners, suffixes, tries, [m] * len(owners))
        self.tokens += used
        for user, emitted in zip(owners, lists):
            out[user].append([vocab.tags[t] for t, _ in emitted])
        return out

    def score(self, candidates: list[list[str]]) -> list[list[float]]:
        b = self.backend
        vocab = b.model.vocab
        lists = [[b.tag_tokens[vocab.index[t]] for t in tags] for tags in candidates]
        if not any(lists):
            return [[] for _ in candidates]
        scores, used = b.decoder.score_lists(self.prefix, b.suffix(task_tags(), self.mode), lists)
        self.tokens += used
        return scores


# -- OpenAI-compatible server -------------------------------------------------------------------------
def _list_regex(phrases: Sequence[str], limit: int) -> str:
    one = "(" + "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True)) + ")"
    return f" {one}(; {one}){{0,{max(0, limit - 1)}}}"


class OpenAIBackend:
    name = "openai"

    def __init__(self, base_url: str, model_name: str, model: IntentModel, catalog: Catalog,
                 atoms: AtomTable | None = None, structured: str = "none", prompt_embeds: bool = False,
                 timeout_s: float = 30.0, concurrency: int = 8, max_tokens: int = 96,
                 api_key: str | None = None) -> None:
        if structured not in ("none", "vllm"):
            raise ValueError(f"structured must be 'none' or 'vllm', not {structured!r}")
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.model = model
        self.catalog = catalog
        self.atoms = atoms
        self.structured = structured
        self.prompt_embeds = prompt_embeds
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers)
        self.pool = ThreadPoolExecutor(concurrency)
        self.max_tokens = max_tokens
        self.rejected = 0
        """Phrases a server answered that are not in the vocabulary (dropped)."""
        self.answers = 0
        """Non-empty answers received."""

    def open(self, contexts: Sequence[UserContext], mode: str) -> "OpenAISession":
        if mode == "hybrid" and not self.prompt_embeds:
            mode = "text"  # a plain server can only read text
        return OpenAISession(self, list(contexts), mode)

    def close(self) -> None:
        self.client.close()
        self.pool.shutdown(wait=False)

    def complete(self, ctx: UserContext, mode: str, task: str, allowed: Sequence[str], limit: int) -> tuple[list[str], int]:
        msgs = messages(ctx, mode, task, self.catalog)
        body: dict = {"model": self.model_name, "max_tokens": self.max_tokens, "temperature": 0.0}
        if self.structured == "vllm":
            body["structured_outputs"] = {"regex": _list_regex(allowed, limit)}
        if mode == "hybrid":
            url = f"{self.base_url}/v1/completions"
            body["prompt_embeds"] = self._embeds(ctx, msgs)
        else:
            url = f"{self.base_url}/v1/chat/completions"
            body["messages"] = msgs
        try:
            response = self.client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise BackendError(f"{url}: {exc}", retryable=True) from exc
        if response.status_code != 200:
            raise BackendError(f"{url} answered {response.status_code}: {response.text[:300]}",
                               retryable=response.status_code >= 500)
        data = response.json()
        choice = data["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        usage = data.get("usage") or {}
        allowed_set = set(allowed)
        phrases = list(dict.fromkeys(parse_answer(text or "")))
        self.answers += bool(phrases)
        kept = [p for p in phrases if p in allowed_set][:limit]
        self.rejected += len(phrases) - len([p for p in phrases if p in allowed_set])
        return kept, int(usage.get("total_tokens", 0))

    def write_explanation(self, style: str, facts) -> str | None:
        """One explanation from reasoning/prompts/explanation.md (the caller checks it)."""
        body = {"model": self.model_name, "max_tokens": EXPLANATION_TOKENS, "temperature": 0.0,
                "messages": [{"role": "user", "content": explanation_prompt(style, facts)}]}
        try:
            response = self.client.post(f"{self.base_url}/v1/chat/completions", json=body)
            response.raise_for_status()
            return (response.json()["choices"][0]["message"]["content"] or "").strip() or None
        except (httpx.HTTPError, KeyError, ValueError):
            return None  # the grounded realisation serves

    def _embeds(self, ctx: UserContext, msgs: list[dict]) -> str:
        ctx_ids, suffix = self.model.encode_chat(msgs)
        with torch.no_grad():
            embeds, _, _ = self.model.inputs([ctx_ids + suffix], [self.atoms.atoms(ctx.items)])
        buffer = io.BytesIO()
        torch.save(embeds[0].float(), buffer)
        return base64.b64encode(buffer.getvalue()).decode()


class OpenAISession:
    def __init__(self, backend: OpenAIBackend, contexts: list[UserContext], mode: str) -> None:
        self.backend = backend
        self.contexts = contexts
        self.mode = mode
        self.tokens = 0

    def _run(self, jobs: list[tuple[UserContext, str, Sequence[str], int]]) -> list[list[str]]:
        results = list(self.backend.pool.map(lambda job: self.backend.complete(job[0], self.mode, *job[1:]), jobs))
        self.tokens += sum(t for _, t in results)
        return [kept for kept, _ in results]

    def plan(self, k: int) -> list[list[str]]:
        personas = self.backend.model.vocab.personas
        return self._run([(ctx, task_plan(), personas, k) for ctx in self.contexts])

    def experts(self, personas: list[list[str]], m: int) -> list[list[list[str]]]:
        vocab = self.backend.model.vocab
        index = {p: i for i, p in enumerate(vocab.personas)}
        jobs, owners = [], []
        for user, names in enumerate(personas):
            for name in names:
                members = [vocab.tags[t] for t in vocab.persona_tags(index[name])]
                jobs.append((self.contexts[user], task_expert(name), members, m))
                owners.append(user)
        out: list[list[list[str]]] = [[] for _ in personas]
        for user, tags in zip(owners, self._run(jobs)):
            out[user].append(tags)
        return out

    def score(self, candidates: list[list[str]]) -> list[list[float]]:
        answers = self._run([(ctx, task_tags(), cands, len(cands)) for ctx, cands in zip(self.contexts, candidates)])
        out = []
        for cands, ranked in zip(candidates, answers):
            rank = {t: r for r, t in enumerate(ranked)}
            # Named by the arbiter: by its rank; otherwise below, by the experts' order.
            out.append([float(-np.log1p(rank[t])) if t in rank else float(-np.log1p(len(ranked) + i + 1))
                        for i, t in enumerate(cands)])
        return out
