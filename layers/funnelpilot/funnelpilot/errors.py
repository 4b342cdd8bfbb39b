"""Errors with a name a caller can act on, and the one place AWS failures are classified.

A funnel step raises these by class name; the state machines match the names (Lambda's
``errorType``): ``TransientError``, ``SendRateExceeded`` and ``DailyQuotaExceeded`` are retried
with backoff (README "Funnels": the retry policy), anything else ends in "Record failure".
"""


class InvalidField(ValueError):
    """Bad input: becomes HTTP 400 ``{"error": message, "field": field}``."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class TransientError(RuntimeError):
    """A retryable failure (throttling, 5xx, network): Step Functions Retry catches it by name."""


class SendRateExceeded(TransientError):
    """SES refused a send over the account's maximum sending rate (``MaxSendRate`` per second)."""


class DailyQuotaExceeded(TransientError):
    """SES refused a send over the account's 24-hour quota; it frees as the rolling window moves."""


class RecipientRejected(Exception):
    """SES refused this message for good (``MessageRejected``: in the sandbox, an unverified
    recipient). ``message`` is SES's, with the recipient's address replaced by ``<recipient>``."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class FunnelLeft(RuntimeError):
    """The contact left the funnel (unknown or erased, unsubscribed, suppressed, goal reached
    while a step was in flight): the state machine catches it by name and ends the journey."""


class TemplateError(ValueError):
    """An email template that cannot be rendered (a syntax error, an undefined variable, no subject, a
    missing part): ``file`` (``welcome-2.html.j2``) and ``line`` say where. Not retried: the journey
    ends in "Record failure", whose cause names them."""

    def __init__(self, template: str, file: str, line: int, problem: str):
        super().__init__(f"{file}:{line}: {problem}")
        self.template, self.file, self.line, self.problem = template, file, line, problem


class QuietHours(RuntimeError):
    """A marketing send fell in the funnel's quiet hours (contact's time zone): the state
    machine catches it, waits (``until`` with ``wait: {"quiet": true}``) and re-enters the send."""


class FrequencyCapped(RuntimeError):
    """A marketing email met the contact's frequency cap and waits for their next free slot (the
    message says in how many seconds): the state machine catches it, waits (``until`` with
    ``wait: {"capped": true}``) and re-enters the send (funnelpilot.sending.cap)."""


class Answer(Exception):
    """An ``if`` step's answer that its Task state takes by a Catch (the class name is the error
    name the state machine matches: ``Yes`` or ``No``), the other answer going on by its Next."""


class Yes(Answer):
    pass


class No(Answer):
    pass


# Error codes AWS answers when a request may succeed later (botocore's standard retry mode lists
# the throttling ones; these arrive once botocore's own retries are spent).
THROTTLING = {"Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
              "TooManyRequestsException", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
              "TransactionInProgressException", "BandwidthLimitExceeded", "LimitExceededException",
              "RequestThrottled", "SlowDown", "PriorRequestNotComplete"}
UNAVAILABLE = {"InternalServerError", "InternalFailure", "InternalError", "InternalException", "ServiceException",
               "ServiceUnavailable", "ServiceUnavailableException", "RequestTimeout", "RequestTimeoutException"}


def transient(exc: BaseException) -> TransientError | None:
    """The retryable error an AWS failure stands for, or None when retrying cannot help.

    botocore ``ClientError``: a throttling code or a 5xx answer (SES's quota answers become
    ``SendRateExceeded`` / ``DailyQuotaExceeded``); botocore connection and timeout errors;
    a pynamodb error is judged by the botocore error it wraps. A ``TransientError`` is itself."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, TransientError):
        return exc
    cause = getattr(exc, "cause", None)  # pynamodb wraps the botocore error
    if cause is not None and cause is not exc and not isinstance(exc, ClientError):
        return transient(cause)
    if isinstance(exc, (ConnectionError, HTTPClientError)):
        return TransientError(f"network: {type(exc).__name__}")
    if not isinstance(exc, ClientError):
        return None
    error = exc.response.get("Error", {})
    code, message = error.get("Code", ""), error.get("Message", "")
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    operation = getattr(exc, "operation_name", "")
    if code in ("Throttling", "ThrottlingException") and "Daily message quota exceeded" in message:
        return DailyQuotaExceeded(f"{operation}: {message}")
    if code in ("Throttling", "ThrottlingException") and "Maximum sending rate exceeded" in message:
        return SendRateExceeded(f"{operation}: {message}")
    if code in THROTTLING or code in UNAVAILABLE or status >= 500:
        return TransientError(f"{operation}: {code or status} {message}".strip())
    return None


class RateLimited(Exception):
    """Too many requests for one ``field`` (``ip``, ``email``): HTTP 429 ``{"error", "field"}``
    with ``Retry-After: retry_after`` (seconds)."""

    def __init__(self, field: str, message: str, retry_after: int):
        super().__init__(message)
        self.field, self.message, self.retry_after = field, message, retry_after
