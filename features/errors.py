"""Errors of the features layer."""

from contracts.errors import IntentstreamError


class FeaturesError(IntentstreamError):
    """Root of feature errors."""

    retryable: bool = False


class FeatureStoreError(FeaturesError):
    """Feast could not be applied, written or read. Redis being down is worth a retry."""

    retryable = True


class CatalogError(FeaturesError):
    """The catalog cannot be embedded as asked (e.g. no text and no events to learn from)."""
