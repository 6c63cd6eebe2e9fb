"""The Feast wrapper: apply the feature repo, push micro-batches, read online features.

One `FeastFeatures` object lives as long as its process: creating a `FeatureStore` reads the
registry, so the worker's pusher process (features/pusher.py) builds it once. A push is one
DataFrame per feature view for all rows coalesced since the previous push (never one call per
event or per user), written with `write_to_online_store` on the view: measured against `push()`
on the push source (benchmarks/feast_write.py, 2,000 user rows) it was 0.95-1.38x in four runs,
never clearly slower; `skip_dedup` and the async call were slower here.

Delivery: a push writes the latest row per entity to the online store (Redis). It is
idempotent for the same rows, so a batch replayed after a crash just writes them again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from string import Template
from typing import Any

import pandas as pd
import yaml
from feast import FeatureStore, RepoConfig

from contracts.settings import Settings
from features.errors import FeatureStoreError

USER_FEATURES = [
    "event_count", "view_count", "click_count", "cart_count", "fav_count", "purchase_count",
    "recent_items", "top_categories", "top_brands", "last_purchase_item", "last_purchase_ts",
    "last_event_ts", "state_version",
]
ITEM_FEATURES = ["views", "carts", "purchases", "category", "brand", "price", "last_event_ts"]
CONTEXT_FEATURES = ["context_items", "context_actions", "context_text", "context_mode", "context_format",
                    "embedder", "model_version", "state_version"]


def feast_values(settings: Settings) -> dict[str, str]:
    """The values that fill the ${...} placeholders of feature_store.yaml."""
    r = settings.redis
    return {
        "FEAST_PROJECT": settings.feast.project,
        "FEAST_REGISTRY_PATH": str(settings.feast_registry_path),
        "FEAST_REDIS_CONNECTION": ",".join([f"{r.host}:{r.port}", f"db={r.db}",
                                            *(f"{k}={'true' if v is True else v}" for k, v in r.client_options().items())]),
    }


def repo_config(settings: Settings, skip_dedup: bool = False) -> RepoConfig:
    """feature_store.yaml with the settings' values and the online rows' expiry
    (retention.feast_key_ttl_s: every write renews a row's TTL); `skip_dedup`: the Redis online
    store writes without first reading the stored timestamps (safe with one writer per entity
    key)."""
    path = settings.feast.repo_path / "feature_store.yaml"
    raw = yaml.safe_load(Template(path.read_text()).substitute(feast_values(settings)))
    online = dict(raw["online_store"])
    if settings.retention.feast_key_ttl_s:
        online["key_ttl_seconds"] = settings.retention.feast_key_ttl_s
    if skip_dedup:
        online["skip_dedup"] = True
    raw["online_store"] = online
    return RepoConfig(repo_path=settings.feast.repo_path, **raw)


def apply(settings: Settings) -> str:
    """Run `feast apply` on the feature repo (idempotent: unchanged objects stay as they are)."""
    settings.feast_registry_path.parent.mkdir(parents=True, exist_ok=True)
    feast_cli = os.path.join(os.path.dirname(sys.executable), "feast")
    result = subprocess.run(
        [feast_cli, "apply"],
        cwd=settings.feast.repo_path,
        env={**os.environ, **feast_values(settings), "FEAST_USAGE": "False"},
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise FeatureStoreError(f"feast apply failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "applied"


def is_applied(settings: Settings) -> bool:
    return settings.feast_registry_path.exists()


class FeastFeatures:
    """Micro-batch pushes and online reads against the project's feature views."""

    def __init__(self, settings: Settings) -> None:
        if not is_applied(settings):
            raise FeatureStoreError(
                f"no Feast registry at {settings.feast_registry_path}: run `intentstream up` first"
            )
        self.store = FeatureStore(config=repo_config(settings))

    @staticmethod
    def _frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
        frame = pd.DataFrame.from_records(rows)
        frame["event_timestamp"] = datetime.now(timezone.utc)
        return frame

    def push_users(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write the latest state of every user in `rows` (one row per user) to the online store."""
        if rows:
            self.store.write_to_online_store("user_state", self._frame(rows))

    def push_items(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self.store.write_to_online_store("item_stats", self._frame(rows))

    def push_contexts(self, rows: Sequence[dict[str, Any]]) -> None:
        """The compressed contexts the intent route read (one row per user; CONTEXT_FEATURES)."""
        if rows:
            self.store.write_to_online_store("intent_context", self._frame(rows))

    def read_contexts(self, user_ids: Sequence[str]) -> list[dict[str, Any]]:
        response = self.store.get_online_features(
            features=[f"intent_context:{name}" for name in CONTEXT_FEATURES],
            entity_rows=[{"user_id": uid} for uid in user_ids],
        ).to_dict()
        return [{name: response[name][i] for name in ["user_id", *CONTEXT_FEATURES]} for i in range(len(user_ids))]

    def read_users(self, user_ids: Sequence[str], features: Sequence[str] = USER_FEATURES) -> list[dict[str, Any]]:
        """Online features of `user_ids`, in order; a user never pushed has None values."""
        response = self.store.get_online_features(
            features=[f"user_state:{name}" for name in features],
            entity_rows=[{"user_id": uid} for uid in user_ids],
        ).to_dict()
        return [{name: response[name][i] for name in ["user_id", *features]} for i in range(len(user_ids))]

    def read_items(self, item_ids: Sequence[str], features: Sequence[str] = ITEM_FEATURES) -> list[dict[str, Any]]:
        response = self.store.get_online_features(
            features=[f"item_stats:{name}" for name in features],
            entity_rows=[{"item_id": iid} for iid in item_ids],
        ).to_dict()
        return [{name: response[name][i] for name in ["item_id", *features]} for i in range(len(item_ids))]
