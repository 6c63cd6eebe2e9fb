"""The user's context as the intent model reads it, in two forms.

`hybrid` (the paper's atomized entity compression): each recent item is one `<|item|>` position
whose input vector is the item's atom (embedding + action) through the adaptor; profile and
situation stay as text. `text`: the same context with every item spelled out. Both render to
chat messages with the model's chat template, so a server (`transformers serve`, vLLM) that
applies the template sees exactly what the in-process model sees.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from features.catalog import Catalog
from reasoning import prompts

ITEM_TOKEN = "<|item|>"
_MARKUP = re.compile(r"<\|[^|<>]*\|>")
MODES = ("hybrid", "text")
ACTIONS = ("view", "click", "cart", "fav", "purchase")


@dataclass(frozen=True)
class UserContext:
    user_id: str
    items: tuple[tuple[str, str], ...]
    """(item_id, action), newest first."""
    situation: str
    profile: str


def situation_text(ts_ms: int) -> str:
    """Time of day, weekday and season of the user's last event (UTC).

    >>> situation_text(1_570_000_000_000)  # 2019-10-02 07:06 UTC
    'morning, wednesday, autumn'
    """
    t = datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc)
    part = ("night", "morning", "afternoon", "evening")[t.hour // 6]
    season = ("winter", "spring", "summer", "autumn")[(t.month % 12) // 3]
    return f"{part}, {t.strftime('%A').lower()}, {season}"


def build_context(user_id: str, recent: Sequence[Sequence], catalog: Catalog, max_items: int) -> UserContext:
    """From the worker's `recent` entries ([item_id, type, ts_ms, ...], newest first)."""
    used = [(str(e[0]), str(e[1])) for e in recent[:max_items]]
    last_ts = int(recent[0][2]) if recent else 0
    cats = Counter(catalog.get(i).category for i, _ in used if catalog.get(i).category)
    top = ", ".join(c.split(".")[-1] if not c.isdigit() else f"category {c}" for c, _ in cats.most_common(2)) or "none"
    bought = sum(1 for _, a in used if a == "purchase")
    profile = f"likes {top}; {bought} purchases"
    return UserContext(user_id, tuple(used), situation_text(last_ts), profile)


def item_phrase(catalog: Catalog, item_id: str, action: str) -> str:
    return f"{action} {catalog.get(item_id).text}"


def messages(ctx: UserContext, mode: str, task: str, catalog: Catalog) -> list[dict[str, str]]:
    if mode == "hybrid":
        history = ITEM_TOKEN * len(ctx.items)
    elif mode == "text":
        history = "; ".join(item_phrase(catalog, i, a) for i, a in ctx.items)
    else:
        raise ValueError(f"unknown context mode {mode!r}; choose from {MODES}")
    return [
        {"role": "system", "content": prompts.load("system").format(situation=ctx.situation, profile=ctx.profile)},
        {"role": "user", "content": prompts.load("user").format(history=history, task=task)},
    ]


def task_plan() -> str:
    return prompts.load("planner").text


def task_expert(persona: str) -> str:
    return prompts.load("expert").format(persona=persona)


def task_tags() -> str:
    return prompts.load("tags").text


def answer(phrases: Sequence[str]) -> str:
    """The assistant's text for a list of tags or personas (what generation produces)."""
    return " " + "; ".join(phrases)


def parse_answer(text: str) -> list[str]:
    """The phrases of an answer; chat markup (`<|end|>`, `<|im_end|>`, ...) is not part of one.

    >>> parse_answer(" samsung smartphone; audio headphone ;<|im_end|>")
    ['samsung smartphone', 'audio headphone']
    """
    return [p.strip() for p in _MARKUP.sub("", text).split(";") if p.strip()]
