"""``customer.repurchase_due`` and ``customer.lapsed`` from the customer's own rhythm, scheduled
with EventBridge Scheduler (one-time schedules per customer, replaced at every order) - no table scan.

Repurchase due: the last order plus the customer's mean interval between orders, or, for a
seasonal buyer (orders spread over a year or more, all within a window of at most three
consecutive months), the start of that season next time round; minus ``remind_days_before``.
Lapsed (win-back): no order for ``winback.after_intervals`` times that interval (at least
``winback.min_days``), or, for a customer of one order, ``winback.after_days`` after it; a
seasonal buyer lapses ``after_days`` after their season began without an order.
Settings: ``repurchase`` and ``winback`` in ``infra/scoring.yaml``.

The schedules' names are a digest of the contact and its incarnation (no contact id in the
Scheduler console or its logs); an erasure deletes them (``unschedule``).
"""
import json
from datetime import datetime, timezone

from funnelpilot import aws, clock, erasure, scoring, tokens
from funnelpilot.config import config
from funnelpilot.models import Contact

DAY = 86_400
KINDS = {"repurchase": "customer.repurchase_due", "lapsed": "customer.lapsed"}  # schedule prefix -> event


def _scheduler():
    return aws.client("scheduler")


def _settings(name: str) -> dict:
    defaults = {"repurchase": {"min_orders": 2, "remind_days_before": 3, "seasonal_min_span_days": 300},
                "winback": {"after_intervals": 2, "min_days": 21, "after_days": 90}}[name]
    return {**defaults, **(getattr(scoring.settings(), name) or {})}


def season(months: set[str]) -> int | None:
    """First month of the (circular) window of <= 3 consecutive months holding every order month."""
    held = {int(m) for m in months}
    for start in range(1, 13):
        window = {(start - 1 + i) % 12 + 1 for i in range(3)}
        if held <= window and start in held:
            return start
    return None


def _rhythm(contact: Contact) -> tuple[float, str] | None:
    """(when the next order is due, basis) for a customer of ``min_orders`` orders or more."""
    cfg = _settings("repurchase")
    orders = int(contact.orders or 0)
    if orders < max(2, cfg["min_orders"]) or contact.first_order_at is None or contact.last_order_at is None:
        return None
    first, last = float(contact.first_order_at), float(contact.last_order_at)
    start_month = season(set(contact.order_months or set()))
    if last - first >= cfg["seasonal_min_span_days"] * DAY and start_month:
        d = datetime.fromtimestamp(last, tz=timezone.utc)
        year = d.year + 1 if (d.month, d.day) >= (start_month, 1) else d.year
        return datetime(year, start_month, 1, 9, tzinfo=timezone.utc).timestamp(), "season"
    interval = (last - first) / (orders - 1)
    return (last + interval, "interval") if interval > 0 else None


def due_at(contact: Contact) -> tuple[float, str] | None:
    """(when to remind, basis) or None when the customer has no rhythm yet."""
    rhythm = _rhythm(contact)
    if rhythm is None:
        return None
    return rhythm[0] - _settings("repurchase")["remind_days_before"] * DAY, rhythm[1]


def lapsed_at(contact: Contact) -> tuple[float, str] | None:
    """(when the customer counts as lapsed if no order came, basis) or None for a non-customer."""
    if not int(contact.orders or 0) or contact.last_order_at is None:
        return None
    cfg, last = _settings("winback"), float(contact.last_order_at)
    rhythm = _rhythm(contact)
    if rhythm is None:
        return last + cfg["after_days"] * DAY, "one_order"
    due, basis = rhythm
    if basis == "season":
        return due + cfg["after_days"] * DAY, basis
    return last + max(cfg["after_intervals"] * (due - last), cfg["min_days"] * DAY), basis


def schedule_name(cid: str, incarnation: str, kind: str = "repurchase") -> str:
    """Salted with the incarnation (erased with the profile), like funnels.execution_name."""
    return f"{kind}-{tokens.digest_id('' if kind == 'repurchase' else kind, cid, incarnation)}"


def unschedule(cid: str, incarnation: str) -> None:
    """Delete the customer's schedules, if there are any."""
    for kind in KINDS:
        try:
            _scheduler().delete_schedule(Name=schedule_name(cid, incarnation, kind), GroupName=config().schedule_group)
        except _scheduler().exceptions.ResourceNotFoundException:
            pass


def _put(contact: Contact, kind: str, when: float, basis: str) -> str:
    when = max(when, clock.now() + 60)  # overdue: now
    at = datetime.fromtimestamp(when, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    cid = contact.pk
    detail = {"event_id": tokens.digest_id("rd" if kind == "repurchase" else "cl", cid, at[:10]), "contact_id": cid,
              "occurred_at": at + "Z", "due_at": at + "Z", "basis": basis, "orders": int(contact.orders or 0)}
    request = {
        "Name": schedule_name(cid, contact.incarnation or "", kind), "GroupName": config().schedule_group,
        "ScheduleExpression": f"at({at})", "ScheduleExpressionTimezone": "UTC",
        # UpdateSchedule replaces the whole schedule (an optional field left out becomes null), so
        # the request names State too: moto leaves an updated schedule with no state, which never fires
        "FlexibleTimeWindow": {"Mode": "OFF"}, "ActionAfterCompletion": "DELETE", "State": "ENABLED",
        "Target": {"Arn": config().bus_arn, "RoleArn": config().scheduler_role_arn, "Input": json.dumps(detail),
                   "EventBridgeParameters": {"DetailType": KINDS[kind], "Source": "funnelpilot"}},
    }
    try:
        _scheduler().create_schedule(**request)
    except _scheduler().exceptions.ConflictException:
        _scheduler().update_schedule(**request)
    return request["ScheduleExpression"]


def schedule(contact: Contact) -> dict[str, str]:
    """Create or replace the customer's one-time schedules (repurchase due, lapsed); returns
    kind -> expression. The profile is read again afterwards: when the customer was erased
    meanwhile (the erasure may have looked for the schedules before they existed), they are deleted."""
    made = {}
    for kind, when in (("repurchase", due_at(contact)), ("lapsed", lapsed_at(contact))):
        if when is not None:
            made[kind] = _put(contact, kind, *when)
    if made and erasure.incarnation(contact.pk) != (contact.incarnation or ""):
        unschedule(contact.pk, contact.incarnation or "")
        return {}
    return made
