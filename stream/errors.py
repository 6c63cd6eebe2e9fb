"""Errors of the stream layer. Each says whether retrying can help."""


class StreamError(Exception):
    """Root of stream errors."""

    retryable: bool = False


class InvalidEvent(StreamError):
    """An event that breaks the contract; it belongs in the dead-letter topic, never retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BrokerUnavailable(StreamError):
    """Kafka could not be reached; retrying later can help."""

    retryable = True


class DatasetError(StreamError):
    """A dataset folder that cannot be read as the format it claims."""
