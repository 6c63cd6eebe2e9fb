"""Errors of the embedded services."""

from contracts.errors import IntentstreamError


class ServiceError(IntentstreamError):
    """A service could not be set up or started. `retryable` says whether trying again can help."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class MissingTool(ServiceError):
    """A program the embedded services need (java, mvn, redis-server) is not installed."""

    def __init__(self, tool: str, how: str) -> None:
        super().__init__(
            f"{tool} is missing: {how}. Without it, run the stack with `docker compose up` instead."
        )
        self.tool = tool
