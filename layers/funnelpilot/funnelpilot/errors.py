"""Errors with a name a caller can act on."""


class InvalidField(ValueError):
    """Bad input: becomes HTTP 400 ``{"error": message, "field": field}``."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class TransientError(RuntimeError):
    """A retryable failure (throttling, timeouts): Step Functions Retry catches it by name."""
