"""Funnel and email counters: atomic ``ADD`` on counter items, counted once per event.

Item layout in the metrics table: ``pk = FUNNEL#<funnel>#<yyyy-mm-dd>``,
``sk = STEP#<step>`` with one number attribute per metric (``sent``, ``blocked_frequency_cap``,
``human_opens``...). A day's report for a funnel is one Query on ``pk``.
Idempotency: the ADD and a marker item ``pk = SEEN#<key>`` (conditional put, with TTL)
go in one transaction, so a duplicate delivery counts nothing and nothing is lost.
"""
import re
from functools import cache

import boto3
from botocore.exceptions import ClientError

from funnelpilot import clock
from funnelpilot.config import config

MARKER_TTL = 14 * 86400
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@cache
def _ddb():
    return boto3.client("dynamodb", region_name=config().region)


def counter_key(funnel: str, step: str, day: str | None = None) -> dict:
    day = day or clock.iso()[:10]
    return {"pk": {"S": f"FUNNEL#{funnel}#{day}"}, "sk": {"S": f"STEP#{step}"}}


def count(funnel: str, step: str, metrics: dict[str, int], *, once_key: str | None = None,
          day: str | None = None) -> bool:
    """Add ``metrics`` (name -> amount) to the step's counters for the day.

    With ``once_key`` (an event_id, or a natural key such as ``open#<message>``) the
    add happens at most once for that key; returns False when it was a duplicate.
    """
    for name in metrics:
        if not _NAME.match(name):
            raise ValueError(f"bad metric name {name!r}")
    names = {f"#m{i}": name for i, name in enumerate(metrics)}
    values = {f":v{i}": {"N": str(amount)} for i, amount in enumerate(metrics.values())}
    update = {
        "TableName": config().metrics_table,
        "Key": counter_key(funnel, step, day),
        "UpdateExpression": "ADD " + ", ".join(f"#m{i} :v{i}" for i in range(len(metrics))),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }
    if once_key is None:
        _ddb().update_item(**update)
        return True
    marker = {"TableName": config().metrics_table,
              "Item": {"pk": {"S": f"SEEN#{once_key}"}, "sk": {"S": "SEEN"},
                       "expires_at": {"N": str(int(clock.now()) + MARKER_TTL)}},
              "ConditionExpression": "attribute_not_exists(pk)"}
    try:
        _ddb().transact_write_items(TransactItems=[{"Put": marker}, {"Update": update}])
    except ClientError as exc:
        reasons = exc.response.get("CancellationReasons") or []
        if any(r.get("Code") == "ConditionalCheckFailed" for r in reasons):
            return False
        raise
    return True
