"""Errors of the training layer."""

from contracts.errors import IntentstreamError


class TrainingError(IntentstreamError):
    """A model cannot be trained as asked (e.g. its backbone is not installed); retrying the
    same call does not help."""

    retryable: bool = False
