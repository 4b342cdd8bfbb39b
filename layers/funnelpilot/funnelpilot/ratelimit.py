"""Fixed-window rate limits (POST /collect, POST /signup): one counter item per scope, key and
window in MetricsTable, counted with one conditional ``ADD`` that fails once the limit is
reached (a refused request adds nothing) and expired by the table's TTL after the window.
``key`` is always a keyed pseudonym (``tokens.keyed_id``), never a raw IP or address.
The count is an UpdateItem of its own (``allow``) or an ``Update`` in the transaction of the
change it guards (``counter``: POST /signup)."""
import math

from funnelpilot import aws
from funnelpilot.config import config


def counter(scope: str, key: str, limit: int, window: int, at: float) -> dict:
    """The conditional write counting one request at ``at`` (epoch seconds) in its ``window``-second
    window: UpdateItem parameters, also valid as a TransactWriteItems ``Update``; its condition fails
    once ``limit`` requests were counted there."""
    index = int(at // window)
    return {"TableName": config().metrics_table, "Key": {"pk": {"S": f"RATE#{scope}#{key}#{index}"}, "sk": {"S": "RATE"}},
            "UpdateExpression": "ADD hits :one SET expires_at = :expires",
            "ConditionExpression": "attribute_not_exists(hits) OR hits < :limit",
            "ExpressionAttributeValues": {":one": {"N": "1"}, ":limit": {"N": str(limit)},
                                          ":expires": {"N": str((index + 2) * window)}}}


def allow(scope: str, key: str, limit: int, window: int, at: float) -> bool:
    """Count one request (``counter``); False (nothing added) once the window is full."""
    return aws.conditional("update_item", **counter(scope, key, limit, window, at))


def retry_after(window: int, at: float) -> int:
    """Whole seconds until the window holding ``at`` ends (an HTTP ``Retry-After``)."""
    return max(1, math.ceil((int(at // window) + 1) * window - at))
