"""The intent route for a batch of users, top to bottom:

    context (hybrid or text) -> planner (K personas) -> experts (M tags per persona, one batched
    call) -> arbiter (joint relevance against the context + non-redundancy, top N) ->
    retrieval (tags -> items) -> explanations (style -> grounded text -> faithfulness check)

`reason` returns, per user, the personas with their tags, the final tags and the intent route's
items as `rec_item` dicts; `stats` says what the batch cost (LM tokens, seconds per stage).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from contracts.recs import rec_item
from reasoning.context import UserContext, build_context
from reasoning.explanations import Facts
from reasoning.retrieval import PersonalScores


@dataclass(frozen=True)
class IntentInput:
    user_id: str
    recent: Sequence[Sequence]
    """[item_id, type, ts_ms, ...], newest first (the worker's UserState.recent)."""
    bought: frozenset[str]
    affinity: Mapping[str, float] = field(default_factory=dict)
    """Items the behavioural route scored for this user (co-visitation), for ranking within tags."""
    shown: frozenset[str] = frozenset()
    """Items the other routes already show the user (`shown_items` of the lists the intent route
    is merged with, at `intent.complement_top`): the route leaves them out, like `bought`."""


def shown_items(behavioural: Sequence[Mapping], recent: Sequence[Mapping], n: int) -> frozenset[str]:
    """The items of the first `n` of each of the lists the intent route is merged with (rec_item
    dicts, best first), which `intent.complement_top` = n keeps out of the route.

    >>> sorted(shown_items([{"item_id": "a"}, {"item_id": "b"}], [{"item_id": "c"}, {"item_id": "d"}], 1))
    ['a', 'c']
    >>> shown_items([{"item_id": "a"}], [], 0)
    frozenset()
    """
    return frozenset(e["item_id"] for e in [*behavioural[:n], *recent[:n]])


@dataclass
class IntentResult:
    user_id: str
    context: UserContext
    intents: list[dict]
    """[{"persona": ..., "tags": [...]}] as proposed by planner and experts."""
    tags: list[str]
    """The arbiter's final tags, best first."""
    items: list[dict]
    explanations_rejected: int = 0
    relevance: list[float] = field(default_factory=list)
    """The arbiter's relevance of each final tag (the tag weights of the product and mixture item steps)."""


@dataclass
class BatchStats:
    users: int = 0
    tokens: int = 0
    """Every token the LM read or wrote for the batch."""
    context_tokens: int = 0
    """Tokens of the users' contexts (read once per user by the local backend)."""
    seconds: dict = field(default_factory=dict)
    candidates: int = 0
    duplicates: int = 0
    """Expert proposals that another expert of the same user also proposed."""
    explanations_rejected: int = 0


def arbiter_select(candidates: Sequence[str], relevance: Sequence[float], vectors: np.ndarray,
                   n: int, diversity: float) -> list[tuple[str, float]]:
    """Maximal marginal relevance: relevance (the LM's mean token log-prob, as a probability)
    minus `diversity` times the best cosine to a tag already kept.

    >>> v = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> [t for t, _ in arbiter_select(["a", "a2", "b"], [-0.1, -0.2, -0.5], v, 2, 0.5)]
    ['a', 'b']
    """
    if not candidates:
        return []
    rel = np.exp(np.asarray(relevance, dtype=np.float64))
    chosen: list[int] = []
    left = list(range(len(candidates)))
    while left and len(chosen) < n:
        if chosen:
            sims = vectors[left] @ vectors[chosen].T
            penalty = sims.max(axis=1)
        else:
            penalty = np.zeros(len(left))
        mmr = rel[left] - diversity * penalty
        pick = left[int(np.argmax(mmr))]
        chosen.append(pick)
        left.remove(pick)
    return [(candidates[i], float(rel[i])) for i in chosen]


def propose(engine, contexts: Sequence[UserContext], mode: str, stats: BatchStats | None = None, lap=None):
    """Planner -> experts -> arbiter for a batch of contexts. Returns (personas per user, the
    experts' tag lists per user, the arbiter's final (tag, relevance) list per user, the session)."""
    cfg = engine.config
    stats = stats if stats is not None else BatchStats(users=len(contexts))
    lap = lap or (lambda name: None)
    session = engine.backend.open(contexts, mode)
    lap("context")
    personas = session.plan(cfg.personas)
    lap("planner")
    proposals = session.experts(personas, cfg.tags_per_persona)
    lap("experts")
    candidates = []
    for lists in proposals:
        flat = [t for tags in lists for t in tags]
        stats.candidates += len(flat)
        stats.duplicates += len(flat) - len(set(flat))
        # Interleaved by rank (every expert's best first), the order the arbiter reads them in.
        depth = max((len(tags) for tags in lists), default=0)
        ordered = [tags[r] for r in range(depth) for tags in lists if r < len(tags)]
        candidates.append(list(dict.fromkeys(ordered)))
    relevance = session.score(candidates)
    vocab = engine.model.vocab
    final = [arbiter_select(c, r, engine.tag_vectors[[vocab.index[t] for t in c]] if c else engine.tag_vectors[:0],
                            cfg.final_tags, cfg.arbiter_diversity)
             for c, r in zip(candidates, relevance)]
    lap("arbiter")
    return personas, proposals, final, session


def reason(engine, users: Sequence[IntentInput], popularity: Mapping[str, float], k: int,
           mode: str | None = None, personal: PersonalScores | None = None) -> tuple[list[IntentResult], BatchStats]:
    """Planner -> experts -> arbiter -> retrieval -> explanations for a batch of users; with
    `personal` (the sequential model's view of these users, in their order) a tag's items are
    ranked for each user by it rather than by popularity."""
    cfg = engine.config
    mode = mode or cfg.mode
    # With an LLM backend the first `llm_explanations` intent items of a user get an explanation
    # written from the prompt; it is served only if it passes the faithfulness check.
    writer = getattr(engine.backend, "write_explanation", None)
    stats = BatchStats(users=len(users))
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stats.seconds[name] = stats.seconds.get(name, 0.0) + now - clock
        clock = now

    contexts = [build_context(u.user_id, u.recent, engine.catalog, cfg.max_items) for u in users]
    personas, proposals, final, session = propose(engine, contexts, mode, stats, lap)
    exclude = [set(u.bought) | set(u.shown) for u in users]
    retrieved = engine.retriever.retrieve([[t for t, _ in tags] for tags in final], popularity, exclude, k,
                                          [u.affinity for u in users], personal,
                                          [[relevance for _, relevance in tags] for tags in final])
    lap("retrieval")
    results = []
    for user, ctx, names, lists, tags, items in zip(users, contexts, personas, proposals, final, retrieved):
        persona_of_tag = {t: name for name, ts in zip(names, lists) for t in ts}
        history = [engine.catalog.get(str(e[0])) for e in user.recent[: cfg.max_items]]
        entries, rejected = [], 0
        for rank, (item_id, score, tag) in enumerate(items):
            facts = Facts.of(engine.catalog.get(item_id), tag, persona_of_tag.get(tag), history, ctx.situation)
            _, text, ok = engine.explainer.explain(facts, f"{user.user_id}/{item_id}",
                                                   writer if rank < cfg.llm_explanations else None)
            if not ok:
                rejected += 1
                continue  # never serve an explanation that cites what is not there
            entries.append(rec_item(item_id, score, "intent", text, tag))
        results.append(IntentResult(user.user_id, ctx, [{"persona": n, "tags": ts} for n, ts in zip(names, lists)],
                                    [t for t, _ in tags], entries, rejected, [r for _, r in tags]))
    lap("explanations")
    stats.explanations_rejected = sum(r.explanations_rejected for r in results)
    stats.tokens = session.tokens
    stats.context_tokens = getattr(session, "context_tokens", 0)
    return results, stats
