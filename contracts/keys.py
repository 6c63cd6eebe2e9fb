"""Names of the Redis keys the project writes; one place so writers and readers agree.

A user id is any string, so the only keys a user id reaches are `recs:{user_id}` and
`intent:{user_id}`: every key of the project's own (the update stream, the popularity fallback,
metrics, models) lies outside those namespaces, where no user id can land. `system_keys` lists
them; a test holds the rule.
"""

from __future__ import annotations

from typing import NamedTuple

MODEL_KINDS = ("intent", "sequential")
"""The kinds of served model with a registry: the intent LM (reasoners) and the sequential route's
SASRec (workers)."""


class RegistryKeys(NamedTuple):
    serving: str
    """The serving entry (JSON)."""
    history: str
    """Every entry ever promoted, oldest first (list of JSON)."""
    retired: str
    """Versions rolled back from (a set)."""


class RedisKeys:
    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def recs(self, user_id: str) -> str:
        return f"{self.prefix}recs:{user_id}"

    def intent(self, user_id: str) -> str:
        """The user's last intent result (JSON, contracts/intent.py `IntentResult`), written by the
        reasoner, read by the worker at the user's next refresh."""
        return f"{self.prefix}intent:{user_id}"

    USER_NAMESPACES = ("recs:", "intent:")

    @property
    def updates(self) -> str:
        """Stream announcing every recommendation update (fields: user_id, state_version, ...)."""
        return f"{self.prefix}recs-updates"

    @property
    def popular(self) -> str:
        """Popularity fallback list served to unknown users."""
        return f"{self.prefix}recs-popular"

    @property
    def item_fence(self) -> str:
        """Hash "{events topic}:{partition}" -> the last offset applied to the item model."""
        return f"{self.prefix}items-fence"

    @property
    def item_popularity(self) -> str:
        """Sorted set: item -> forward-decayed popularity score (features/item_model.py)."""
        return f"{self.prefix}items-pop"

    @property
    def item_popularity_t0(self) -> str:
        """Event time (ms) the popularity scores are decayed against."""
        return f"{self.prefix}items-pop-t0"

    def item_covisit(self, item_id: str) -> str:
        """Hash: the item's co-visitation neighbours -> weight (the empty id gives the prefix)."""
        return f"{self.prefix}items-covisit:{item_id}"

    def item_stats_row(self, item_id: str) -> str:
        """Hash: the item's counts by type, category, brand, price, last event time."""
        return f"{self.prefix}items-stats:{item_id}"

    def item_dirty(self, slot: str) -> str:
        """Set: items whose stats changed since their slot's owner last pushed them to Feast."""
        return f"{self.prefix}items-dirty:{slot}"

    @property
    def metrics(self) -> str:
        return f"{self.prefix}metrics"

    def samples(self, name: str) -> str:
        return f"{self.prefix}metrics:{name}"

    def registry(self, kind: str) -> "RegistryKeys":
        """The keys of one model kind's registry (reasoning/registry.py): `model:*` for the intent
        model (as before there were two kinds), `model:{kind}:*` for the others."""
        if kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {kind!r}; known: {MODEL_KINDS}")
        base = f"{self.prefix}model:" if kind == "intent" else f"{self.prefix}model:{kind}:"
        return RegistryKeys(base + "serving", base + "history", base + "retired")

    @property
    def model_serving(self) -> str:
        """The intent model registry's serving entry (JSON; reasoning/registry.py)."""
        return self.registry("intent").serving

    @property
    def model_history(self) -> str:
        """Every registry entry ever promoted, oldest first (list of JSON)."""
        return self.registry("intent").history

    @property
    def model_sequence(self) -> str:
        """Counter that numbers new model versions."""
        return f"{self.prefix}model:sequence"

    @property
    def model_retired(self) -> str:
        """Versions rolled back from (a set): never served again by a rollback."""
        return self.registry("intent").retired

    def system_keys(self) -> list[str]:
        """Every fixed key above (sample lists are `metrics:{name}`, item rows `items-*:{id}`): none
        starts with `recs:` or `intent:` (USER_NAMESPACES)."""
        return [self.updates, self.popular, self.item_fence, self.item_popularity, self.item_popularity_t0,
                self.metrics,
                self.model_sequence, *(key for kind in MODEL_KINDS for key in self.registry(kind))]
