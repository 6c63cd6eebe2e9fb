"""The periodic trainer: `intentstream train --once` and `intentstream train --every 15m`.

One run:

1. The registry's serving version (reasoning/registry.py). With nothing promoted yet, the model
   at `intent.model_dir` (the SFT model) is copied in as the first version and promoted.
2. The feedback logged since the serving version was trained (`feedback_until`), as episodes:
   each impression that carries the model's context, with the categories of the actions
   attributed to it (`episodes_from_log`). Fewer than `trainer.min_episodes`: the run waits.
3. Users are split by a keyed hash (`HoldoutDraw`: HMAC-SHA256 of the user id under a secret
   the trainer keeps), so whoever writes feedback cannot choose which users are held out:
   `trainer.holdout_share` of them are. Fewer than `trainer.min_holdout_users` held-out users:
   the run waits (a gate on a handful of users promotes noise).
4. Judge -> reward model -> GRPO from the serving version on the other users' episodes
   (training/rl.py), written to a new version directory (judge verdicts in judgements.parquet).
5. Category HR@30 of the arbiter's tags on the held-out episodes, serving vs candidate. The
   candidate is promoted only when it beats the serving version by more than
   `trainer.promote_margin`; a rejected candidate's directory stays for inspection (its name is
   never reused). `trainer.json` in the candidate directory says what happened.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from contracts.settings import Settings
from features.catalog import Catalog
from reasoning.context import build_context
from reasoning.registry import ModelRegistry, RegistryError
from reasoning.tags import TagVocabulary
from stream.feedback import FeedbackLog, attribute
from training.data import Episode, ranked_tags
from training.grpo import GRPOConfig
from training.judge import JudgeLog
from training.rl import (
    RLConfig,
    build_reward_model,
    engine_for,
    episode_hit_rate,
    run_grpo,
)

log = logging.getLogger(__name__)


def parse_period(text: str) -> float:
    """Seconds in '90s', '15m', '2h' (a bare number is seconds).

    >>> parse_period("15m"), parse_period("2h"), parse_period("45")
    (900.0, 7200.0, 45.0)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise ValueError(f"period {text!r}: expected a number with an s, m or h suffix, e.g. 15m")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def episodes_from_log(impressions: pd.DataFrame, actions: pd.DataFrame, catalog: Catalog, vocab: TagVocabulary,
                      window_s: float, max_items: int) -> list[Episode]:
    """One episode per impression that carries the model's context and has attributed actions:
    the context the model saw, and the categories (and tags) of what the user did next."""
    attributed = attribute(impressions, actions, window_s)
    by_impression: dict[str, list[str]] = {}
    for row in attributed.sort_values("ts").itertuples(index=False):
        if row.attributed_to is not None:
            by_impression.setdefault(row.attributed_to, []).append(str(row.item_id))
    out = []
    for imp in impressions.itertuples(index=False):
        items = list(imp.context_items) if imp.context_items is not None else []
        nxt = by_impression.get(imp.impression_id, [])
        if not items or not nxt:
            continue
        actions_ = list(imp.context_actions) if imp.context_actions is not None else []
        recent = [[i, actions_[k] if k < len(actions_) else "view", int(imp.ts)] for k, i in enumerate(items)]
        categories = frozenset(catalog.get(i).category for i in nxt if catalog.get(i).category)
        if not categories:
            continue
        out.append(Episode(build_context(str(imp.user_id), recent, catalog, max_items),
                           tuple(ranked_tags(vocab, catalog, nxt)), categories))
    return out


HOLDOUT_KEY_FILE = "holdout.key"


class HoldoutDraw:
    """Which users are held out: HMAC-SHA256(key, user_id) below `share`. Stable for a key (a
    held-out user stays held out, so no version ever trains on them), and without the key
    nobody can tell or pick them: forged feedback cannot steer the gate by choosing users that
    land in the held-out set.

    >>> draw = HoldoutDraw(b"k" * 32, 0.2)
    >>> draw.held_out("u1") == HoldoutDraw(b"k" * 32, 0.2).held_out("u1")
    True
    >>> sum(draw.held_out(f"u{n}") for n in range(10_000)) / 10_000
    0.2005
    """

    def __init__(self, key: bytes, share: float) -> None:
        self.key = key
        self.share = share

    def held_out(self, user_id: str) -> bool:
        digest = hmac.new(self.key, user_id.encode(), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") < self.share * 2**64

    @classmethod
    def from_settings(cls, settings: Settings, versions_dir: Path) -> "HoldoutDraw":
        """The key of `trainer.holdout_key`, else the one in `<versions_dir>/holdout.key`,
        created (random, mode 0600) on the first run: on the trainer's disk, not in Redis,
        which every worker and reasoner can write."""
        t = settings.trainer
        if t.holdout_key is not None:
            return cls(t.holdout_key.get_secret_value().encode(), t.holdout_share)
        path = versions_dir / HOLDOUT_KEY_FILE
        if not path.exists():
            versions_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
            try:
                os.link(tmp, path)  # the first writer wins; a concurrent one reads its key
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return cls(path.read_bytes(), t.holdout_share)


def ensure_serving(settings: Settings, registry: ModelRegistry) -> dict:
    current = registry.current()
    if current is not None:
        return current
    source = settings.intent.resolved_model_dir(settings.cache_dir)
    if not (source / "intent.json").exists():
        raise RegistryError(f"no intent model at {source} and none in the registry: "
                            "train one first with `intentstream train --sft`")
    name, path = registry.new_version("sft")
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    tmp.rename(path)
    return registry.promote(name, path, source=str(source), feedback_until=0)


def run_once(settings: Settings, progress: Callable[[str], None] | None = None) -> dict:
    """One trainer run; returns its report (status: waiting, promoted or rejected)."""
    say = progress or log.info
    t = settings.trainer
    registry = ModelRegistry.from_settings(settings)
    serving = ensure_serving(settings, registry)
    since = int(serving.get("feedback_until", 0))
    impressions, actions = FeedbackLog(settings.feedback_dir).read(since)
    serving_dir = Path(serving["path"])
    serving_engine = engine_for(serving_dir, settings.cache_dir, settings.intent)
    eps = episodes_from_log(impressions, actions, serving_engine.catalog, serving_engine.model.vocab,
                            settings.feedback.window_s, settings.intent.max_items)
    report = {"serving": serving["version"], "feedback_since": since, "impressions": len(impressions),
              "actions": len(actions), "episodes": len(eps)}
    if len(eps) < t.min_episodes:
        say(f"waiting: {len(eps)} feedback episodes since {serving['version']}, {t.min_episodes} needed")
        return {**report, "status": "waiting"}
    until = int(max(impressions.logged_at.max(), actions.logged_at.max() if len(actions) else 0))
    draw = HoldoutDraw.from_settings(settings, registry.root)
    evaluation = [e for e in eps if draw.held_out(e.context.user_id)]
    train = [e for e in eps if not draw.held_out(e.context.user_id)]
    held_out_users = len({e.context.user_id for e in evaluation})
    report["held_out_users"] = held_out_users
    if held_out_users < t.min_holdout_users or not train:
        say(f"waiting: {held_out_users} held-out users ({t.min_holdout_users} needed) and {len(train)} "
            f"train episodes since {serving['version']}")
        return {**report, "status": "waiting",
                "reason": f"{held_out_users} held-out users, {t.min_holdout_users} needed; {len(train)} train episodes"}
    cfg = RLConfig(grpo=GRPOConfig(steps=t.grpo_steps, reward=t.reward), rm_loss=t.rm_loss, threads=t.threads)
    say(f"training on {len(train)} episodes ({len(evaluation)} held out) from {serving['version']}")
    judge_log = JudgeLog()
    rms, judge, rm_stats = build_reward_model(serving_engine, train, cfg, judge_log)
    name, path = registry.new_version(f"grpo-{t.reward}")
    started = time.perf_counter()
    trained = run_grpo(serving_dir, serving_engine, rms[t.rm_loss], judge, train,
                       path, cfg, name, progress=say, extra_meta={"feedback_until": until})
    judge_log.write(path / "judgements.parquet")
    hr_serving = episode_hit_rate(serving_engine, evaluation)
    hr_candidate = episode_hit_rate(engine_for(path, settings.cache_dir, settings.intent), evaluation)
    promote = hr_candidate > hr_serving + t.promote_margin
    report.update({
        "candidate": name, "path": str(path), "held_out_episodes": len(evaluation), "train_episodes": len(train),
        "category_hr@30": {"serving": hr_serving, "candidate": hr_candidate}, "margin": t.promote_margin,
        "reward_model": rm_stats, "grpo_seconds": round(time.perf_counter() - started, 1),
        "seconds_per_step": sum(h["seconds"] for h in trained["history"]) / len(trained["history"]),
        "status": "promoted" if promote else "rejected",
    })
    if promote:
        registry.promote(name, path, parent=serving["version"], feedback_until=until,
                         category_hr30=hr_candidate, serving_hr30=hr_serving)
        say(f"promoted {name}: held-out category HR@30 {hr_candidate:.4f} > {hr_serving:.4f} + {t.promote_margin}")
    else:
        say(f"kept {serving['version']}: candidate {name} HR@30 {hr_candidate:.4f} vs {hr_serving:.4f} "
            f"(needs > +{t.promote_margin})")
    (path / "trainer.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def run_every(settings: Settings, period_s: float, progress: Callable[[str], None] | None = None,
              runs: int | None = None) -> None:
    """`run_once` every `period_s` seconds (a failed run is logged; the next one still comes);
    runs by status and promotions are counted at the trainer's Prometheus endpoint
    (metrics.trainer_port)."""
    from stream.prometheus import process_exporter

    say = progress or log.info
    exporter = process_exporter()
    exporter.serve(settings.metrics.host, settings.metrics.trainer_port)
    done = 0
    while runs is None or done < runs:
        started = time.monotonic()
        try:
            status = run_once(settings, say)["status"]
        except Exception as exc:  # a bad run must not stop the schedule
            log.exception("trainer run failed")
            say(f"trainer run failed: {type(exc).__name__}: {exc}")
            status = "failed"
        exporter.trainer_runs.labels(status).inc()
        if status == "promoted":
            exporter.promotions.inc()
        done += 1
        if runs is not None and done >= runs:
            break
        time.sleep(max(0.0, period_s - (time.monotonic() - started)))
