"""Errors of the offline tools (dataset adapters, splits)."""

from contracts.errors import IntentstreamError


class DatasetError(IntentstreamError):
    """A dataset folder that cannot be read as the format it claims."""
