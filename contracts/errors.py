"""The error root of intentstream and the one input error every layer shares.

Each package has its own `errors.py` whose root subclasses `IntentstreamError`; every error says
whether retrying can help (`retryable`), so a caller decides between retry, dead letter and stop
without knowing the layer that raised.
"""


class IntentstreamError(Exception):
    """Root of every error intentstream raises on purpose."""

    retryable: bool = False


class InvalidEvent(IntentstreamError):
    """A record (event or feedback) that breaks its contract: it belongs in the dead-letter topic
    with `reason` (`<kind>: <what>`), never retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
