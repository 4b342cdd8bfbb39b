"""``customer.repurchase_due`` from the customer's own rhythm, scheduled with EventBridge
Scheduler (one one-time schedule per customer, replaced at every order) - no table scan.

The due date is the last order plus the customer's mean interval between orders, or, for
a seasonal buyer (orders spread over a year or more, all within a window of at most three
consecutive months), the start of that season next time round; minus ``remind_days_before``.
Settings: ``repurchase`` in ``infra/scoring.yaml``.

The schedule's name is a digest of the contact and its incarnation (no contact id in the
Scheduler console or its logs); an erasure deletes it (``unschedule``).
"""
import json
from datetime import datetime, timezone

from funnelpilot import aws, clock, erasure, scoring, tokens
from funnelpilot.config import config
from funnelpilot.models import Contact

DAY = 86_400


def _scheduler():
    return aws.client("scheduler")


def season(months: set[str]) -> int | None:
    """First month of the (circular) window of <= 3 consecutive months holding every order month."""
    held = {int(m) for m in months}
    for start in range(1, 13):
        window = {(start - 1 + i) % 12 + 1 for i in range(3)}
        if held <= window and start in held:
            return start
    return None


def due_at(contact: Contact) -> tuple[float, str] | None:
    """(when to remind, basis) or None when the customer has no rhythm yet."""
    cfg = {"min_orders": 2, "remind_days_before": 3, "seasonal_min_span_days": 300,
           **scoring.settings().repurchase}
    orders = int(contact.orders or 0)
    if orders < cfg["min_orders"] or contact.first_order_at is None or contact.last_order_at is None:
        return None
    first, last = float(contact.first_order_at), float(contact.last_order_at)
    remind = cfg["remind_days_before"] * DAY
    start_month = season(set(contact.order_months or set()))
    if last - first >= cfg["seasonal_min_span_days"] * DAY and start_month:
        d = datetime.fromtimestamp(last, tz=timezone.utc)
        year = d.year + 1 if (d.month, d.day) >= (start_month, 1) else d.year
        return datetime(year, start_month, 1, 9, tzinfo=timezone.utc).timestamp() - remind, "season"
    interval = (last - first) / (orders - 1)
    if interval <= 0:
        return None
    return last + interval - remind, "interval"


def schedule_name(cid: str, incarnation: str) -> str:
    """Salted with the incarnation (erased with the profile), like funnels.execution_name."""
    return f"repurchase-{tokens.digest_id('', cid, incarnation)}"


def unschedule(cid: str, incarnation: str) -> None:
    """Delete the customer's schedule, if there is one."""
    try:
        _scheduler().delete_schedule(Name=schedule_name(cid, incarnation), GroupName=config().schedule_group)
    except _scheduler().exceptions.ResourceNotFoundException:
        pass


def schedule(contact: Contact) -> str | None:
    """Create or replace the customer's one-time schedule; returns its expression (or None).
    The profile is read again afterwards: when the customer was erased meanwhile (the
    erasure may have looked for the schedule before it existed), the schedule is deleted."""
    due = due_at(contact)
    if due is None:
        return None
    when, basis = due
    when = max(when, clock.now() + 60)  # overdue: remind now
    at = datetime.fromtimestamp(when, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    cid = contact.pk
    detail = {"event_id": tokens.digest_id("rd", cid, at[:10]), "contact_id": cid, "occurred_at": at + "Z",
              "due_at": at + "Z", "basis": basis, "orders": int(contact.orders or 0)}
    request = {
        "Name": schedule_name(cid, contact.incarnation or ""), "GroupName": config().schedule_group,
        "ScheduleExpression": f"at({at})", "ScheduleExpressionTimezone": "UTC",
        "FlexibleTimeWindow": {"Mode": "OFF"}, "ActionAfterCompletion": "DELETE",
        "Target": {"Arn": config().bus_arn, "RoleArn": config().scheduler_role_arn, "Input": json.dumps(detail),
                   "EventBridgeParameters": {"DetailType": "customer.repurchase_due", "Source": "funnelpilot"}},
    }
    try:
        _scheduler().create_schedule(**request)
    except _scheduler().exceptions.ConflictException:
        _scheduler().update_schedule(**request)
    if erasure.incarnation(cid) != (contact.incarnation or ""):
        unschedule(cid, contact.incarnation or "")
        return None
    return request["ScheduleExpression"]
