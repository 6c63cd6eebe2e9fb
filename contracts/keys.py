"""Names of the Redis keys the project writes; one place so writers and readers agree.

A user id is any string, so the only keys a user id reaches are `recs:{user_id}`: every key of
the project's own (the update stream, the popularity fallback, metrics, models) lies outside the
`recs:` namespace, where no user id can land. `system_keys` lists them; a test holds the rule.
"""

from __future__ import annotations


class RedisKeys:
    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def recs(self, user_id: str) -> str:
        return f"{self.prefix}recs:{user_id}"

    @property
    def updates(self) -> str:
        """Stream announcing every recommendation update (fields: user_id, state_version, ...)."""
        return f"{self.prefix}recs-updates"

    @property
    def popular(self) -> str:
        """Popularity fallback list served to unknown users."""
        return f"{self.prefix}recs-popular"

    @property
    def behavioural_model(self) -> str:
        """The behavioural model's checkpoint (co-visitation, popularity)."""
        return f"{self.prefix}model:behavioural"

    @property
    def item_stats(self) -> str:
        """The item statistics' checkpoint (JSON)."""
        return f"{self.prefix}model:behavioural:items"

    @property
    def metrics(self) -> str:
        return f"{self.prefix}metrics"

    def samples(self, name: str) -> str:
        return f"{self.prefix}metrics:{name}"

    @property
    def model_serving(self) -> str:
        """The intent model registry's serving entry (JSON; reasoning/registry.py)."""
        return f"{self.prefix}model:serving"

    @property
    def model_history(self) -> str:
        """Every registry entry ever promoted, oldest first (list of JSON)."""
        return f"{self.prefix}model:history"

    @property
    def model_sequence(self) -> str:
        """Counter that numbers new model versions."""
        return f"{self.prefix}model:sequence"

    @property
    def model_retired(self) -> str:
        """Versions rolled back from (a set): never served again by a rollback."""
        return f"{self.prefix}model:retired"

    def system_keys(self) -> list[str]:
        """Every fixed key above (sample lists are `metrics:{name}`): none starts with `recs:`."""
        return [self.updates, self.popular, self.behavioural_model, self.item_stats, self.metrics,
                self.model_serving, self.model_history, self.model_sequence, self.model_retired]
