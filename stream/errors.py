"""Errors of the stream layer. Each says whether retrying can help."""

from contracts.errors import IntentstreamError


class StreamError(IntentstreamError):
    """Root of stream errors."""


class BrokerUnavailable(StreamError):
    """Kafka could not be reached; retrying later can help."""

    retryable = True
