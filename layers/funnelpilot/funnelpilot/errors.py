"""Errors with a name a caller can act on."""


class InvalidField(ValueError):
    """Bad input: becomes HTTP 400 ``{"error": message, "field": field}``."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class TransientError(RuntimeError):
    """A retryable failure (throttling, timeouts): Step Functions Retry catches it by name."""


class FunnelLeft(RuntimeError):
    """The contact left the funnel (unknown or erased, unsubscribed, suppressed, goal reached
    while a step was in flight): the state machine catches it by name and ends the journey."""


class QuietHours(RuntimeError):
    """A marketing send fell in the funnel's quiet hours (contact's time zone): the state
    machine catches it, waits (``until`` with ``quiet_hours: true``) and re-enters the send."""
