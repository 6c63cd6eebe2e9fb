"""Errors of the reasoning layer. `retryable` says whether trying again can help."""

from contracts.errors import IntentstreamError


class ReasoningError(IntentstreamError):
    """Root of reasoning errors."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class BackendError(ReasoningError):
    """The LM backend failed (a server down or answering errors is retryable)."""


class ModelNotFound(ReasoningError):
    """No intent model at the configured path: train one with `intentstream train --sft`."""
