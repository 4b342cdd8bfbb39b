"""Putting contacts into funnels (each funnel is a Step Functions state machine).

Executions are named ``<contact_id>-<entry>`` so an operator finds a person's journey
in the console and a goal event can address (stop) it. The entry rule is enforced by a
conditional write on the contact's ``FUNNEL#<id>`` item *and* by the execution name.
"""
import json
from functools import cache

import boto3
from pynamodb.exceptions import PutError

from funnelpilot import clock
from funnelpilot.config import config
from funnelpilot.models import FunnelEntry, is_conditional_failure

ENTRY_RULES = ("once_per_contact", "once_per_trigger", "always")


@cache
def _sfn():
    return boto3.client("stepfunctions", region_name=config().region)


def execution_name(contact_id: str, entry: str) -> str:
    return f"{contact_id}-{entry}"[:80]


def enter(*, funnel: str, state_machine_arn: str, entry_rule: str, event: dict) -> str | None:
    """Start the funnel for the event's contact if the entry rule allows; returns the
    execution name, or None when the contact may not (re-)enter. Safe to repeat."""
    if entry_rule not in ENTRY_RULES:
        raise ValueError(f"unknown entry rule {entry_rule!r}")
    detail = event["detail"]
    cid = detail["contact_id"]
    entry = "1" if entry_rule == "once_per_contact" else detail["event_id"][:32]
    name = execution_name(cid, entry)
    guard = FunnelEntry(cid, f"FUNNEL#{funnel}", funnel=funnel, entries=1, entered_at=clock.iso(),
                        status="starting", execution_arn=None)
    try:
        guard.save(condition=FunnelEntry.pk.does_not_exist())
    except PutError as exc:
        if not is_conditional_failure(exc):
            raise
        existing = FunnelEntry.get(cid, f"FUNNEL#{funnel}")
        if entry_rule == "once_per_contact" and existing.status != "starting":
            return None  # entered before (a retry of a half-done entry has status 'starting')
    payload = {"contact_id": cid, "funnel": funnel, "entry": entry,
               "trigger": event.get("detail-type"), "event_id": detail["event_id"]}
    try:
        arn = _sfn().start_execution(stateMachineArn=state_machine_arn, name=name,
                                     input=json.dumps(payload))["executionArn"]
    except _sfn().exceptions.ExecutionAlreadyExists:
        arn = f"{state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"
    FunnelEntry(cid, f"FUNNEL#{funnel}").update(actions=[
        FunnelEntry.execution_arn.set(arn), FunnelEntry.status.set("running")])
    return name

