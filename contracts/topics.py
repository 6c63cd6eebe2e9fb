"""Names of the Kafka topics a worker reads and writes, Faust's internal ones included."""

from __future__ import annotations

from contracts.settings import Settings


def worker_topics(settings: Settings) -> list[str]:
    """Events, dead letters, feedback, intent requests, the state table's changelog and Faust's
    assignor leader topic: what to delete when an isolated run (test, benchmark, evaluation) is over."""
    k, app_id = settings.kafka, settings.worker.app_id
    return [k.events_topic, k.dead_letter_topic, k.feedback_topic, k.intent_topic, f"{app_id}-user_state-changelog",
            f"{app_id}-__assignor-__leader"]
