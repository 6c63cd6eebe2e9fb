"""intentstream: a feature-store-integrated streaming recommender with LLM intent reasoning.

The package holds the entry points (CLI, demo); the architecture lives in the top-level packages,
layered as the README's "Layers" draws them, with `contracts` (settings, records, keys) at the bottom.
"""

__version__ = "0.1.0"
