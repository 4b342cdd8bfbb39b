"""boto3 clients, DynamoDB condition checks and transaction-conflict retries shared by the library.

One client per service and process (clients are thread-safe; creating one costs tens of
milliseconds at cold start, so the modules a handler imports share it instead of each
making its own). Call ``client.cache_clear()`` after changing the region or endpoint.
"""
from functools import cache

from funnelpilot import clock
from funnelpilot.config import config


@cache
def client(service: str):
    import boto3  # here, so that importing funnelpilot.models costs no boto3 import of its own

    return boto3.client(service, region_name=config().region)


def dynamodb():
    """The shared low-level DynamoDB client."""
    return client("dynamodb")


_parameters: dict[tuple[str, bool], tuple[str, float]] = {}  # (name, decrypt) -> (value, when to read it again)


def parameter(name: str, *, decrypt: bool = False, max_age: float = 300) -> str:
    """An SSM parameter's value, read again once ``max_age`` seconds of funnelpilot.clock have passed (wall
    time on AWS). Not powertools' cache: it expires on wall time, so under the local runtime's stepped clock
    how many reads a run makes would depend on how fast the machine ran it."""
    now = clock.now()
    cached = _parameters.get((name, decrypt))
    if cached is None or now >= cached[1]:
        value = client("ssm").get_parameter(Name=name, WithDecryption=decrypt)["Parameter"]["Value"]
        cached = _parameters[(name, decrypt)] = (value, now + max_age)
    return cached[0]


def clear_parameters() -> None:
    """Forget the parameters read (``parameter``): the next read is a cold start's."""
    _parameters.clear()


def conditional(operation: str, **request) -> bool:
    """One conditional DynamoDB write (``update_item``, ``put_item``, ``delete_item``) on the
    contacts table unless ``TableName`` says otherwise; False when only its condition failed."""
    try:
        write(operation, **request)
    except Exception as exc:
        if is_conditional_failure(exc):
            return False
        raise
    return True


def write(operation: str, **request) -> dict:
    """One single-item DynamoDB write on the contacts table unless ``TableName`` says otherwise,
    retried while it only met an in-flight transaction on its item (``retry_conflicts``)."""
    return retry_conflicts(lambda: getattr(dynamodb(), operation)(**{"TableName": config().table, **request}))


def transact_write(items: list[dict], **retry) -> None:
    """TransactWriteItems, retried while DynamoDB cancels it only for ``TransactionConflict``
    (``retry_conflicts``). Any other cancellation (a condition failed) is raised at once, for the
    caller to read with ``failed_conditions``."""
    retry_conflicts(lambda: dynamodb().transact_write_items(TransactItems=items), **retry)


def is_conditional_failure(exc: Exception) -> bool:
    """True when a single-item write (botocore ``ClientError`` or a pynamodb exception)
    failed only because its condition was false."""
    code = getattr(exc, "cause_response_code", None)  # pynamodb
    if code is None and hasattr(exc, "response"):  # botocore ClientError
        code = exc.response.get("Error", {}).get("Code")
    return code == "ConditionalCheckFailedException"


def failed_conditions(exc: Exception) -> list[int]:
    """Indexes of the items whose condition failed in a cancelled TransactWriteItems
    (empty for any other error)."""
    reasons = (getattr(exc, "response", None) or {}).get("CancellationReasons") or []
    return [i for i, r in enumerate(reasons) if r.get("Code") == "ConditionalCheckFailed"]


def is_conflict(exc: Exception) -> bool:
    """True when DynamoDB refused a write only because another request was in progress on one
    of its items: a transaction cancelled for ``TransactionConflict`` alone, or a single write
    meeting an in-flight transaction (``TransactionConflictException``). Nothing was written,
    so a retry is safe; botocore retries neither. Also for pynamodb's exceptions (their cause)."""
    response = getattr(exc, "response", None)
    if response is None:
        response = getattr(getattr(exc, "cause", None), "response", None)
    code = (response or {}).get("Error", {}).get("Code")
    if code == "TransactionConflictException":
        return True
    codes = {r.get("Code") for r in (response or {}).get("CancellationReasons") or []} - {None, "None"}
    return code == "TransactionCanceledException" and codes == {"TransactionConflict"}


def retry_conflicts(call, *, attempts: int = 10, base_delay: float = 0.02, max_delay: float = 1.0):
    """``call()``, again after a full-jitter exponential backoff (capped at ``max_delay``) while
    it fails only with a transaction conflict (``is_conflict``). The last conflict is raised:
    the Lambda fails and its asynchronous retries, then its dead-letter queue, take over."""
    import random
    import time

    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if not is_conflict(exc) or attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0, min(max_delay, base_delay * 2 ** attempt)))


def batch_write(requests: list[dict], table: str | None = None, attempts: int = 10) -> None:
    """BatchWriteItem of ``requests`` (PutRequest / DeleteRequest) on the contacts table unless ``table``
    says otherwise, 25 a call; what DynamoDB leaves unprocessed is written again after a full-jitter
    backoff (``TransientError`` when some still is after ``attempts``)."""
    import random
    import time

    from funnelpilot.errors import TransientError

    table = table or config().table
    for i in range(0, len(requests), 25):
        pending = {table: requests[i:i + 25]}
        for attempt in range(attempts):
            pending = dynamodb().batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
            if not pending:
                break
            time.sleep(random.uniform(0, min(1.0, 0.05 * 2 ** attempt)))
        else:
            raise TransientError("BatchWriteItem kept returning unprocessed items")
