"""Feedback: what was shown and what the user did about it, on Kafka and in a durable log.

The shop emits two kinds of JSON records to the feedback topic (keyed by user_id):

- **impression**: the recommendations it showed, as read from `recs:{user_id}` (`items`, and for
  an intent-refreshed list `tags` and `context`: the items and actions the model read), with the
  record's `state_version` and `model_version`.
- **action**: a click, cart or purchase of the user after an impression, with the
  `impression_id` it follows (the shop's attribution token) or without one (then it is
  attributed to the user's latest impression at most `feedback.window_s` before it).

The worker validates every record (invalid ones go to the dead-letter topic with the reason) and
appends valid ones to a parquet log, one part per batch (`FeedbackLog`), so that every training
episode can be rebuilt: `episodes_from_log` joins each impression that carries a model context
with the actions attributed to it. Redelivered records (same `feedback_id`) are dropped on read.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from contracts.feedback import Action, Impression

IMPRESSION_COLUMNS = ("feedback_id", "impression_id", "user_id", "ts", "items", "tags", "context_items",
                      "context_actions", "state_version", "model_version", "logged_at")
ACTION_COLUMNS = ("feedback_id", "impression_id", "user_id", "ts", "item_id", "action", "logged_at")


class FeedbackLog:
    """Append-only parquet log: `impressions/` and `actions/` hold one part per written batch
    (written to a temporary name, then renamed: a reader never sees half a part)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def append(self, records: Sequence[Impression | Action]) -> int:
        now = int(time.time() * 1000)
        impressions = [r for r in records if isinstance(r, Impression)]
        actions = [r for r in records if isinstance(r, Action)]
        if impressions:
            self._write("impressions", pd.DataFrame(
                [{**r.model_dump(exclude={"kind"}), "logged_at": now} for r in impressions], columns=IMPRESSION_COLUMNS))
        if actions:
            self._write("actions", pd.DataFrame(
                [{**r.model_dump(exclude={"kind"}), "logged_at": now} for r in actions], columns=ACTION_COLUMNS))
        return len(impressions) + len(actions)

    def _write(self, kind: str, frame: pd.DataFrame) -> None:
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = folder / f".{name}.tmp"
        frame.to_parquet(tmp, index=False)
        tmp.rename(folder / name)

    def read(self, since_ms: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(impressions, actions) logged after `since_ms` (by logging time), deduplicated."""
        return self._read("impressions", IMPRESSION_COLUMNS, since_ms), self._read("actions", ACTION_COLUMNS, since_ms)

    def _read(self, kind: str, columns: Iterable[str], since_ms: int) -> pd.DataFrame:
        parts = sorted((self.root / kind).glob("part-*.parquet")) if (self.root / kind).exists() else []
        frames = [pd.read_parquet(p) for p in parts]
        if not frames:
            return pd.DataFrame(columns=list(columns))
        frame = pd.concat(frames, ignore_index=True)
        frame = frame[frame.logged_at > since_ms]
        return frame.drop_duplicates("feedback_id").reset_index(drop=True)


def attribute(impressions: pd.DataFrame, actions: pd.DataFrame, window_s: float) -> pd.DataFrame:
    """Each action with the impression it follows: its own `impression_id` when that impression
    is logged, else the user's latest impression at most `window_s` before it. Columns of the
    actions plus `attributed_to` (None when no impression qualifies) and `recommended` (the item
    was in that impression).

    >>> imp = pd.DataFrame({"impression_id": ["i1"], "user_id": ["u"], "ts": [1000], "items": [["a", "b"]]})
    >>> act = pd.DataFrame({"impression_id": [None, None], "user_id": ["u", "u"], "ts": [2000, 99_000_000],
    ...                     "item_id": ["b", "c"], "action": ["click", "click"]})
    >>> attribute(imp, act, 60)[["attributed_to", "recommended"]].values.tolist()
    [['i1', True], [None, False]]
    """
    out = actions.copy()
    if out.empty:
        out["attributed_to"] = pd.Series(dtype=object)
        out["recommended"] = pd.Series(dtype=bool)
        return out
    by_id = {row.impression_id: row for row in impressions.itertuples(index=False)}
    by_user: dict[str, list] = {}
    for row in impressions.sort_values("ts").itertuples(index=False):
        by_user.setdefault(row.user_id, []).append(row)
    window_ms = window_s * 1000
    attributed, recommended = [], []
    for act in out.itertuples(index=False):
        imp = by_id.get(act.impression_id) if isinstance(act.impression_id, str) else None
        if imp is None:
            for cand in reversed(by_user.get(act.user_id, [])):
                if cand.ts <= act.ts:
                    imp = cand if act.ts - cand.ts <= window_ms else None
                    break
        attributed.append(imp.impression_id if imp is not None else None)
        recommended.append(bool(imp is not None and act.item_id in set(imp.items)))
    out["attributed_to"] = attributed
    out["recommended"] = recommended
    return out
