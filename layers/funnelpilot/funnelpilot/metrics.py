"""Funnel and email counters: atomic ``ADD`` on counter items, counted once per event.

Item layout in the metrics table: ``pk = FUNNEL#<funnel>``, ``sk = DAY#<yyyy-mm-dd>#<row>``
with one number attribute per metric (``sent``, ``blocked_frequency_cap``, ``human_opens``...).
A row is ``FUNNEL`` (the funnel as a whole), ``STEP#<step>``, ``EMAIL#<template>`` or
``VARIANT#<step>#<variant>``. A funnel's report over a day range is one Query on ``pk`` with
``sk BETWEEN`` (funnelpilot.report).
Idempotency: the ADD and a marker item ``pk = SEEN#<key>`` (conditional put, with TTL)
go in one transaction, so a duplicate delivery counts nothing and nothing is lost. A step's
rows are hot (every send of the step adds to them), so concurrent counts cancel each other
with ``TransactionConflict``: ``aws.transact_write`` retries those; when it gives up the error
reaches the Lambda, whose asynchronous retries count the event later (nothing was written).
"""
import re

from botocore.exceptions import ClientError

from funnelpilot import aws, clock, tokens
from funnelpilot.config import config

MARKER_TTL = 14 * 86400
FUNNEL_ROW = "FUNNEL"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def counter_key(funnel: str, row: str, day: str | None = None) -> dict:
    day = day or clock.iso()[:10]
    return {"pk": {"S": f"FUNNEL#{funnel}"}, "sk": {"S": f"DAY#{day}#{row}"}}


def count(funnel: str, step: str | None, metrics: dict[str, int], *, once_key: str | None = None,
          day: str | None = None, also: tuple[str, ...] = ()) -> bool:
    """Add ``metrics`` (name -> amount) to the step's counters for the day (``step=None``:
    the funnel row); ``also`` names more rows (``EMAIL#welcome-1``) given the same add.

    With ``once_key`` (an event_id, or a natural key such as ``open#<message>``) the
    add happens at most once for that key; returns False when it was a duplicate.
    """
    for name in metrics:
        if not _NAME.match(name):
            raise ValueError(f"bad metric name {name!r}")
    names = {f"#m{i}": name for i, name in enumerate(metrics)}
    values = {f":v{i}": {"N": str(amount)} for i, amount in enumerate(metrics.values())}
    rows = (FUNNEL_ROW if step is None else f"STEP#{step}", *also)
    updates = [{
        "TableName": config().metrics_table,
        "Key": counter_key(funnel, row, day),
        "UpdateExpression": "ADD " + ", ".join(f"#m{i} :v{i}" for i in range(len(metrics))),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    } for row in rows]
    if once_key is None and len(updates) == 1:
        aws.write("update_item", **updates[0])
        return True
    items = [{"Update": u} for u in updates]
    if once_key is not None:
        items.insert(0, {"Put": {"TableName": config().metrics_table,
                                 "Item": {"pk": {"S": f"SEEN#{once_key}"}, "sk": {"S": "SEEN"},
                                          "expires_at": {"N": str(int(clock.now()) + MARKER_TTL)}},
                                 "ConditionExpression": "attribute_not_exists(pk)"}})
    try:
        aws.transact_write(items)
    except ClientError as exc:
        if aws.failed_conditions(exc):
            return False
        raise
    return True


# ---------------------------------------------------------------- events -> counters
_REASON = re.compile(r"[^a-z0-9_]+")
# Exact names, so the report and dashboards can rely on them.
STEP_METRICS = ("entered", "sent", "blocked", "delivered", "bounced", "complained", "human_opens",
                "machine_opens", "human_clicks", "machine_clicks", "conversions", "unsubscribes")


def counters_for(detail_type: str, detail: dict) -> tuple[dict[str, int], str] | None:
    """(metrics to add, once key) for one bus event, or None when it counts nothing.

    Opens and clicks count once per message (a message is one email to one contact), so
    repeated opens and a human click's implied open add nothing; machine hits count per event.
    """
    mid, eid = detail.get("message_id"), detail["event_id"]
    if detail_type == "email.sent":
        return {"sent": 1, "entered": 1}, f"sent#{mid or eid}"
    if detail_type == "email.blocked":
        reason = _REASON.sub("_", str(detail.get("reason") or "unknown").lower()).strip("_")[:40] or "unknown"
        return {"blocked": 1, f"blocked_{reason}": 1, "entered": 1}, f"blocked#{mid or eid}"
    if detail_type in ("email.delivered", "email.bounced", "email.complained"):
        name = {"email.delivered": "delivered", "email.bounced": "bounced", "email.complained": "complained"}
        return {name[detail_type]: 1}, f"{name[detail_type]}#{mid or eid}"
    if detail_type in ("email.opened", "email.clicked"):
        kind = "opens" if detail_type == "email.opened" else "clicks"
        if detail.get("human") is True and mid:
            return {f"human_{kind}": 1}, f"{kind}#{mid}"
        return {f"machine_{kind}": 1}, eid
    if detail_type == "contact.unsubscribed":
        return {"unsubscribes": 1}, f"unsub#{tokens.digest_id('u', detail['contact_id'])}"  # not the id itself
    if detail_type == "funnel.converted":
        return {"conversions": 1}, eid
    return None


FUNNEL_EVENTS = {"funnel.entered": "entered", "funnel.completed": "completed", "funnel.converted": "conversions",
                 "funnel.failed": "failed"}


def record(detail_type: str, detail: dict) -> bool:
    """Turn one bus event into counters (idempotent); returns False for a duplicate or no-op."""
    day = (detail.get("occurred_at") or clock.iso())[:10]
    funnel = detail.get("funnel")
    if not funnel:
        return False
    counted = False
    if detail_type in FUNNEL_EVENTS:
        counted = count(funnel, None, {FUNNEL_EVENTS[detail_type]: 1}, once_key=f"{detail['event_id']}#funnel",
                        day=day)
    found = counters_for(detail_type, detail)
    step = detail.get("step")
    if found is None or not step:
        return counted
    amounts, once_key = found
    rows = []
    if detail.get("template"):
        rows.append(f"EMAIL#{detail['template']}")
    if detail.get("variant"):
        rows.append(f"VARIANT#{step}#{detail['variant']}")
    return count(funnel, step, amounts, once_key=once_key, day=day, also=tuple(rows)) or counted
