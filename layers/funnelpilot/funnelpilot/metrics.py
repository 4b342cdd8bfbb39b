"""Funnel and email counters: one atomic ``UpdateItem`` (``ADD`` of several counters) per event,
counted once per event; no transaction, so no ``TransactionConflict`` on the hot items.

Item layout in the metrics table: ``pk = FUNNEL#<funnel>``, ``sk = DAY#<yyyy-mm-dd>#<row>``
with one number attribute per metric (``sent``, ``blocked_frequency_cap``, ``human_opens``...).
A row is ``FUNNEL`` (the funnel as a whole) or ``STEP#<step>``; a step item also names its
``template`` and A/B ``variant`` (fixed by the state machine: a send state sends one template,
in one branch), so the report sums a template's or a variant's figures from the step items
instead of every event also adding to rows of their own (``EMAIL#<template>`` and
``VARIANT#<step>#<variant>`` items written before are still read). Conversions belong to the
step only: the goal event names the state the contact was on, not an email. A funnel's report
over a day range is one Query on ``pk`` with ``sk BETWEEN`` (funnelpilot.report).

Entries, refused hand-offs and journey ends are counted where they happen, with no bus event and no marker
(``count`` without ``once_key``): the router when its StartExecution created the execution or
its refusal's item was new,
the sequence step's completion and the router's exit when they moved the entry's status (see
``entered`` and ``completed``): the producer's own conditional write is the counted-once guard,
and a process dying between it and the ``ADD`` loses that one count. A send (or a blocked send)
that ends its journey counts the end as ``completed`` on its step's row, in the send's own ADD
(``record(..., also=...)``): the report adds the step rows' ``completed`` to the funnel row's.

Sends, blocked sends, conversions (the router, once its write moved the entry to ``converted``),
deliveries, bounces and complaints are counted the same way, by their producers
with no bus event to the metrics function (``record(..., guarded=True)``, ``counted``): the sequence step
once its write marked the message sent or blocked (a blocked event says ``counted``; only the block of
an unknown or erased contact, which has no item, reaches the metrics function), ses_feedback when its
write set the message's first ``delivered_at``, ``bounced_at`` or ``complained_at``.

Idempotency of the events the metrics function counts: a marker item ``pk = SEEN#<key>``
(conditional put, with TTL) first, then the ``ADD``: a duplicate delivery finds the marker and
counts nothing. When the ``ADD`` fails the marker is deleted again and the error reaches the
Lambda, whose asynchronous retries count the event later. Two writes of 1 WRU instead of a
transaction of 2 WRU per item: only a process dying between the two loses that one count.
"""
import json
import os
import re

from funnelpilot import aws, clock, tokens
from funnelpilot.config import config

MARKER_TTL = 14 * 86400
FUNNEL_ROW = "FUNNEL"
STEP_ONLY = ("conversions",)  # counted on the step, never on its template's or variant's figures
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def counter_key(funnel: str, row: str, day: str | None = None) -> dict:
    day = day or clock.iso()[:10]
    return {"pk": {"S": f"FUNNEL#{funnel}"}, "sk": {"S": f"DAY#{day}#{row}"}}


def _marker_key(once_key: str) -> dict:
    return {"pk": {"S": f"SEEN#{once_key}"}, "sk": {"S": "SEEN"}}


def count(funnel: str, step: str | None, metrics: dict[str, int], *, once_key: str | None = None,
          day: str | None = None, template: str | None = None, variant: str | None = None) -> bool:
    """Add ``metrics`` (name -> amount) to the step's counters for the day (``step=None``: the
    funnel row), naming the step's ``template`` and ``variant`` on its item.

    With ``once_key`` (an event_id, or a natural key such as ``opens#<message>``) the add
    happens at most once for that key; returns False when it was a duplicate.
    """
    for name in metrics:
        if not _NAME.match(name):
            raise ValueError(f"bad metric name {name!r}")
    table = config().metrics_table
    names = {f"#m{i}": name for i, name in enumerate(metrics)}
    values = {f":v{i}": {"N": str(amount)} for i, amount in enumerate(metrics.values())}
    expression = "ADD " + ", ".join(f"#m{i} :v{i}" for i in range(len(metrics)))
    labels = {k: v for k, v in (("template", template), ("variant", variant)) if v and step is not None}
    if labels:
        names |= {f"#{k}": k for k in labels}
        values |= {f":{k}": {"S": str(v)} for k, v in labels.items()}
        expression += " SET " + ", ".join(f"#{k} = :{k}" for k in labels)
    if once_key is not None and not aws.conditional(
            "put_item", TableName=table, Item={**_marker_key(once_key),
                                               "expires_at": {"N": str(int(clock.now()) + MARKER_TTL)}},
            ConditionExpression="attribute_not_exists(pk)"):
        return False
    try:
        aws.write("update_item", TableName=table, Key=counter_key(funnel, FUNNEL_ROW if step is None else f"STEP#{step}", day),
                  UpdateExpression=expression, ExpressionAttributeNames=names, ExpressionAttributeValues=values)
    except Exception:
        if once_key is not None:  # counted nothing: the retry of this event must find no marker
            aws.write("delete_item", TableName=table, Key=_marker_key(once_key))
        raise
    return True


# ---------------------------------------------------------------- events -> counters
_REASON = re.compile(r"[^a-z0-9_]+")
# Exact names, so the report and dashboards can rely on them.
STEP_METRICS = ("entered", "sent", "blocked", "delivered", "bounced", "complained", "human_opens",
                "machine_opens", "human_clicks", "machine_clicks", "conversions", "unsubscribes",
                "sms_sent", "sms_delivered", "sms_failed")


def counters_for(detail_type: str, detail: dict) -> tuple[dict[str, int], str] | None:
    """(metrics to add, once key) for one bus event, or None when it counts nothing.

    Opens and clicks count once per message (a message is one email to one contact), so
    repeated opens and a human click's implied open add nothing; machine hits count per event.
    """
    mid, eid = detail.get("message_id"), detail["event_id"]
    if detail_type == "email.sent":
        return {"sent": 1, "entered": 1}, f"sent#{mid or eid}"
    if detail_type == "sms.sent":  # an SMS step's (funnelpilot.channels.sms); its deliveries come from sms_feedback
        return {"sms_sent": 1, "entered": 1}, f"sent#{mid or eid}"
    if detail_type in ("sms.delivered", "sms.failed"):
        name = detail_type.replace(".", "_")
        return {name: 1}, f"{name}#{mid or eid}"
    if detail_type in ("email.blocked", "sms.blocked"):
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
    if detail_type == "contact.list_unsubscribed":  # an opt-out of the email's list (funnelpilot.preferences)
        return {"unsubscribes": 1}, f"unsub#{tokens.digest_id('u', detail['contact_id'], detail.get('list') or '')}"
    if detail_type == "funnel.converted":
        return {"conversions": 1}, eid
    return None


FUNNEL_EVENTS = {"funnel.converted": "conversions", "funnel.failed": "failed"}


def entered(funnel: str) -> None:
    """A contact entered ``funnel`` (called once per execution, by the StartExecution that made it)."""
    count(funnel, None, {"entered": 1})


def completed(funnel: str) -> None:
    """A journey through ``funnel`` ended (completed or exited; once, by its status change)."""
    count(funnel, None, {"completed": 1})


def refused(funnel: str, reason: str) -> None:
    """A hand-off into ``funnel`` was refused (once, by its ``REFUSED#`` item, funnelpilot.funnels.refuse):
    ``refused`` and ``refused_<reason>`` in one ADD."""
    count(funnel, None, {"refused": 1, f"refused_{reason}": 1})


def record(detail_type: str, detail: dict, *, guarded: bool = False, also: dict[str, int] | None = None) -> bool:
    """Turn one bus event into counters (idempotent); returns False for a duplicate or no-op. An
    event about a broadcast's message is the broadcast's (funnelpilot.broadcasts.counters).
    ``guarded``: the caller's own conditional write made this event happen once (a producer
    counting its own event): no marker. ``also``: more counters of the same request for the event's
    step row, in the same ADD (a send that ends its journey: ``completed``)."""
    if detail.get("broadcast"):
        from funnelpilot.broadcasts import counters

        return counters.record(detail_type, detail, guarded=guarded)
    day = (detail.get("occurred_at") or clock.iso())[:10]
    funnel = detail.get("funnel")
    if not funnel:
        return False
    counted = False
    if detail_type in FUNNEL_EVENTS:
        counted = count(funnel, None, {FUNNEL_EVENTS[detail_type]: 1},
                        once_key=None if guarded else f"{detail['event_id']}#funnel", day=day)
    found = counters_for(detail_type, detail)
    step = detail.get("step")
    if found is None or not step:
        return counted
    amounts, once_key = found
    return count(funnel, step, {**amounts, **(also or {})}, once_key=None if guarded else once_key, day=day,
                 template=detail.get("template"), variant=detail.get("variant")) or counted


def counted(entry: dict, also: dict[str, int] | None = None) -> None:
    """A producer counts its own event (``entry``: a ``bus.event``; ``record(..., guarded=True)``: the
    caller's conditional write made it happen once; ``also``: see ``record``) and emits its EMF metric."""
    if record(entry["DetailType"], json.loads(entry["Detail"]), guarded=True, also=also):
        emit(entry["DetailType"], {})


# ---------------------------------------------------------------- EMF (CustomMetrics=true)
EMF_NAMES = {"email.sent": "EmailsSent", "email.blocked": "EmailsBlocked", "email.bounced": "EmailsBounced",
             "email.complained": "EmailsComplained", "contact.unsubscribed": "Unsubscribes",
             "funnel.converted": "Conversions", "funnel.failed": "FunnelExecutionsFailed"}


def emit(detail_type: str, detail: dict) -> None:
    """The operational EMF metric of a counted event (the CloudWatch dashboard), where it was counted.
    Flushed at once rather than by ``@log_metrics``: that warns on every invocation without a metric,
    and while disabled (local runtime) powertools keeps the values and prints them once 100 piled up.
    Off (no powertools import) unless the template's CustomMetrics turned it on."""
    name = EMF_NAMES.get(detail_type)
    if detail_type in ("email.opened", "email.clicked"):
        name = f"{'Human' if detail.get('human') is True else 'Machine'}{'Opens' if detail_type == 'email.opened' else 'Clicks'}"
    if not name or os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() == "true":
        return
    from aws_lambda_powertools import Metrics
    from aws_lambda_powertools.metrics import MetricUnit
    from aws_lambda_powertools.metrics.functions import is_metrics_disabled

    if not is_metrics_disabled():
        ops = Metrics()  # powertools' metrics share one set per process
        ops.add_metric(name=name, unit=MetricUnit.Count, value=1)
        ops.flush_metrics()
