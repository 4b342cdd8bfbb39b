"""boto3 clients and DynamoDB condition checks shared by the library.

One client per service and process (clients are thread-safe; creating one costs tens of
milliseconds at cold start, so the modules a handler imports share it instead of each
making its own). Call ``client.cache_clear()`` after changing the region or endpoint.
"""
from functools import cache

from funnelpilot.config import config


@cache
def client(service: str):
    import boto3  # here, so that importing funnelpilot.models costs no boto3 import of its own

    return boto3.client(service, region_name=config().region)


def dynamodb():
    """The shared low-level DynamoDB client."""
    return client("dynamodb")


def conditional(operation: str, **request) -> bool:
    """One conditional DynamoDB write (``update_item``, ``put_item``, ``delete_item``) on the
    contacts table unless ``TableName`` says otherwise; False when only its condition failed."""
    try:
        getattr(dynamodb(), operation)(**{"TableName": config().table, **request})
    except Exception as exc:
        if is_conditional_failure(exc):
            return False
        raise
    return True


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


def transact_write(items: list[dict], *, attempts: int = 8, base_delay: float = 0.02) -> None:
    """TransactWriteItems, retried while DynamoDB cancels it only for ``TransactionConflict``
    (another request was in progress on one of its items: the transaction was not applied,
    so a retry is safe; botocore does not retry it). Full-jitter exponential backoff. Any
    other cancellation (a condition failed) is raised at once, for the caller to read with
    ``failed_conditions``."""
    import random
    import time

    for attempt in range(attempts):
        try:
            dynamodb().transact_write_items(TransactItems=items)
            return
        except Exception as exc:
            reasons = (getattr(exc, "response", None) or {}).get("CancellationReasons") or []
            codes = {r.get("Code") for r in reasons} - {None, "None"}
            if codes != {"TransactionConflict"} or attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0, base_delay * 2 ** attempt))
