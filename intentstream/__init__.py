"""intentstream: a feature-store-integrated streaming recommender with LLM intent reasoning.

The package holds the entry points (CLI, settings, demo); the architecture lives in the
top-level packages `stream`, `features`, `reasoning`, `training` and `infra`.
"""

__version__ = "0.1.0"
