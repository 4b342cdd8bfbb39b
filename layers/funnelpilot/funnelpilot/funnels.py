"""Putting contacts into funnels, taking them out at a goal, and resuming ``wait_for`` steps
(functions/funnel_router; each funnel is a Step Functions state machine).

Executions are named by a digest of (contact, funnel, entry, the contact's
incarnation): deterministic, so a duplicate trigger event finds its execution
(ExecutionAlreadyExists) and a goal event can address (stop) it, but no contact id in the
console, in CloudWatch or in an ARN; a signup after an erasure is a new incarnation, so
new names (and a new welcome). An operator finds a person's executions in their export
(the ``FUNNEL#`` items' ``execution_arn``). The contact's ``FUNNEL#<id>`` item guards the
entry rule: one conditional write claims an entry (1 WRU, not a transaction with the profile's
check at 4) as ``running``, then the profile is read again (funnelpilot.erasure): when it is gone or another
incarnation the claim is taken back, so an event in flight when the person was erased leaves
nothing; duplicate or concurrent trigger events start one execution. Its ``execution_arn`` is set by that
claim, which lets the steps of a stale execution recognise that the entry is no longer theirs. No second
write marks the start: a retry of the trigger finds the claim and asks Step Functions whether its execution
exists (``_unstarted``), and starts it when a process died between the claim and StartExecution.
"""
import json
from datetime import datetime
from functools import cache
from typing import NamedTuple

from funnelpilot import aws, bus, clock, erasure, funnel_spec, metrics, outbox, scoring, tokens
from funnelpilot.config import config
from funnelpilot.errors import TransientError
from funnelpilot.sending import sendtime
from funnelpilot.steering import abtest

ENTRY_RULES = ("once_per_contact", "once_per_trigger", "always")
LIVE = ("starting", "running")  # (``starting``: a claim made before claims were ``running`` at once)
NAME_RESERVED = 90 * 86_400  # an execution's name stays taken this long after it closed (Step Functions)
# send_task_success errors meaning the wait already ended (timeout, goal, stop): nothing to do.
_ENDED_TASK = ("TaskTimedOut", "InvalidToken", "TaskDoesNotExist")


def _sfn():
    return aws.client("stepfunctions")


def _entry_key(cid: str, funnel: str) -> dict:
    return {"pk": {"S": cid}, "sk": {"S": f"FUNNEL#{funnel}"}}


def execution_name(contact_id: str, funnel: str, entry: str, incarnation: str) -> str:
    """The execution of one entry of one incarnation of a contact (25 characters, [a-z2-7]).
    A digest salted with the incarnation, a random value erased with the profile: once the
    person is erased nobody can tell which executions were theirs (and the router needs no
    signing key)."""
    return tokens.digest_id("x", contact_id, funnel, entry, incarnation)


def execution_arn(state_machine_arn: str, name: str) -> str:
    return f"{state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"


def entry(cid: str, funnel: str) -> dict | None:
    """The contact's FUNNEL# item as plain values, or None."""
    item = aws.dynamodb().get_item(TableName=config().table, Key=_entry_key(cid, funnel),
                                   ConsistentRead=True).get("Item")
    return {k: next(iter(v.values())) for k, v in item.items()} if item else None


def recent_states(arn: str) -> list[str]:
    """Names of the states the execution entered, latest first (empty if it cannot be read)."""
    try:
        events = _sfn().get_execution_history(executionArn=arn, reverseOrder=True, maxResults=50)["events"]
    except _sfn().exceptions.ExecutionDoesNotExist:
        return []
    return [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]


@cache
def send_states(state_machine_arn: str) -> frozenset[str]:
    """The Send states of a funnel (read once per Lambda container from its definition)."""
    definition = json.loads(_sfn().describe_state_machine(stateMachineArn=state_machine_arn)["definition"])
    params = {name: state.get("Parameters") or {} for name, state in definition["States"].items()}
    return frozenset(name for name, p in params.items() if p.get("Payload", p).get("action") == "send")  # a send
    # with its wait_for is a waitForTaskToken Task: its parameters are the Payload


def converting_step(arn: str) -> tuple[str | None, str | None]:
    """(the last email the contact got in this journey, the state they are in): a conversion
    counts on the email step, which is what a marketer compares; the state is kept too."""
    states = recent_states(arn)
    sends = send_states(arn.rsplit(":", 1)[0].replace(":execution:", ":stateMachine:"))
    return next((s for s in states if s in sends), states[0] if states else None), (states[0] if states else None)


# ---------------------------------------------------------------- enter
# A hand-off to someone no marketing may reach is refused (the status is the reason).
NOT_MARKETABLE = ("unsubscribed", "suppressed", "sunset")
_CLAIM_ATTEMPTS = 3  # the entry changing between its read and the claim (a journey ending at that instant)


class Attempt(NamedTuple):
    execution: str | None = None  # the execution's name when entered
    refused: str | None = None  # why the entry rule (or the person's status) refused it
    incarnation: str | None = None  # the profile's, when there is one


def _claim_condition(entry_rule: str, reenter_after: float) -> str:
    """Who may (re-)enter. A duplicate of the current trigger never does (trigger_event_id)."""
    if entry_rule == "once_per_contact":
        return "attribute_not_exists(pk)"
    allowed = ["(attribute_not_exists(trigger_event_id) OR trigger_event_id <> :eid)"]
    if reenter_after > 0:
        allowed.append("(attribute_not_exists(entered_ts) OR entered_ts <= :cut)")
    if entry_rule == "once_per_trigger":
        allowed.append("NOT (#s IN (:starting, :running))")
    return f"attribute_not_exists(pk) OR ({' AND '.join(allowed)})" if len(allowed) > 1 else \
        f"attribute_not_exists(pk) OR {allowed[0]}"


def _refusal(entry_rule: str, reenter_after: float, current: dict, now: float) -> str | None:
    """Which part of the claim's condition failed, from the entry as it is now; None when none
    fails any more (it changed since it was read: claim again)."""
    if not current:
        return None
    if entry_rule == "once_per_contact":
        return "once_per_contact"
    if entry_rule == "once_per_trigger" and current.get("status") in LIVE:
        return "already_in_funnel"
    if reenter_after > 0 and float(current.get("entered_ts") or 0) > now - reenter_after:
        return "reenter_after"
    return None


def enter(*, funnel: str, state_machine_arn: str, entry_rule: str, event: dict,
          reenter_after: float = 0, start_wait: dict | None = None, draining: bool = False) -> str | None:
    """Start the funnel for the event's contact if the entry rule allows; the execution
    name, or None when the contact may not (re-)enter. Safe to repeat.

    once_per_contact: the first trigger only, ever. once_per_trigger: each distinct trigger
    event, not while the contact is in the funnel nor within ``reenter_after`` seconds of
    the last entry. always: each distinct trigger event (``reenter_after`` still applies
    when > 0); a running execution is stopped and replaced. ``start_wait`` (the compiler's, when
    the machine starts with a computed Wait): its seconds go in the input as ``wait_seconds``.
    ``draining`` (a funnel being removed, README "Changing a live funnel"): nobody enters; the
    refusal is counted once per event (``refused`` and ``refused_draining`` on the funnel's row).
    """
    if draining:
        metrics.count(funnel, None, {"refused": 1, "refused_draining": 1},
                      once_key=f"refused#{funnel}#{event['detail']['event_id']}")
        return None
    return _enter(funnel, state_machine_arn, entry_rule, event, reenter_after, start_wait).execution


def handoff(*, funnel: str, state_machine_arn: str, entry_rule: str, event: dict, reenter_after: float = 0,
            mode: str = "enter", start_wait: dict | None = None, draining: bool = False) -> dict:
    """A ``funnel.handoff`` into ``funnel`` (a ``goto``, a bulk action, an import): an explicit entry,
    which enters or is refused with its reason and recorded (``refuse``), never dropped. ``mode``
    (the funnel's ``entry.handoff``): ``enter`` overrides ``reenter_after`` (the person was sent here on
    purpose), ``respect_reentry`` refuses within it. Also refused: ``once_per_contact`` (once ever),
    ``already_in_funnel`` (once_per_trigger, running), a person no marketing may reach
    (NOT_MARKETABLE) and anyone while the funnel is ``draining``. A duplicate of a hand-off that
    entered is neither."""
    attempt = _enter(funnel, state_machine_arn, entry_rule, event,
                     reenter_after if mode == "respect_reentry" else 0, start_wait, NOT_MARKETABLE, draining)
    if attempt.refused:
        refuse(event, funnel, attempt.refused, attempt.incarnation)
    return {"execution": attempt.execution, "refused": attempt.refused}


def refuse(event: dict, funnel: str, reason: str, incarnation: str) -> bool:
    """Record a refused hand-off, once per hand-off event: a ``REFUSED#`` item in the contact's
    partition (their timeline, funnelpilot.audience.lookup) carrying ``funnel.refused`` (funnel, reason,
    from) for the outbox relay (``outbox.carry``), in one transaction conditioned on the profile
    (funnelpilot.erasure) and on the item being new, then the funnel's ``refused`` counters (one ADD, funnelpilot.metrics). False
    when it was recorded already (a duplicate delivery) or the person is erased."""
    detail = event["detail"]
    cid, source = detail["contact_id"], detail.get("from")
    refusal_id = tokens.digest_id("fr", funnel, detail["event_id"])
    origin = {"from": source} if isinstance(source, str) else {}
    item = {"pk": {"S": cid}, "sk": {"S": f"REFUSED#{refusal_id}"}, "funnel": {"S": funnel}, "reason": {"S": reason},
            "at": {"S": clock.iso()}, **{k: {"S": v} for k, v in origin.items()}}
    refused = bus.event("funnel.refused", cid, event_id=refusal_id, funnel=funnel, reason=reason, **origin)
    try:
        aws.transact_write([erasure.alive(cid, incarnation), outbox.carry(item, refused)])  # new only: the guard
    except Exception as exc:
        if not aws.failed_conditions(exc):
            raise
        return False
    metrics.refused(funnel, reason)
    return True


def _enter(funnel: str, state_machine_arn: str, entry_rule: str, event: dict, reenter_after: float,
           start_wait: dict | None, refused_statuses: tuple[str, ...] = (), draining: bool = False) -> Attempt:
    """``enter``; ``refused_statuses``: profile statuses refused outright (their name is the reason);
    ``draining``: the funnel takes nobody in (the reason: ``draining``)."""
    if entry_rule not in ENTRY_RULES:
        raise ValueError(f"unknown entry rule {entry_rule!r}")
    detail = event["detail"]
    cid, event_id = detail["contact_id"], detail["event_id"]
    profile = erasure.live(cid, "timezone")
    if profile is None:
        return Attempt()  # erased (an event in flight), or never subscribed: nothing is written
    incarnation = profile["incarnation"]
    if draining or profile.get("status") in refused_statuses:
        return Attempt(refused="draining" if draining else profile["status"], incarnation=incarnation)
    entry_id = "1" if entry_rule == "once_per_contact" else event_id[:32]
    name = execution_name(cid, funnel, entry_id, incarnation)
    arn = execution_arn(state_machine_arn, name)
    for _attempt in range(_CLAIM_ATTEMPTS):
        # the entry this claim replaces is read first (``_release`` puts it back)
        old = aws.dynamodb().get_item(TableName=config().table, Key=_entry_key(cid, funnel), ConsistentRead=True
                                      ).get("Item") or {}
        now = clock.now()
        values = {":starting": {"S": "starting"}, ":running": {"S": "running"}, ":eid": {"S": event_id},
                  ":iso": {"S": clock.iso(now)}, ":now": {"N": str(int(now))}, ":one": {"N": "1"},
                  ":arn": {"S": arn}, ":f": {"S": funnel}}
        condition = _claim_condition(entry_rule, reenter_after)
        if ":cut" in condition:
            values[":cut"] = {"N": str(int(now - reenter_after))}
        if ":starting" not in condition:
            del values[":starting"]
        sets = ("SET #s = :running, entered_at = :iso, entered_ts = :now, trigger_event_id = :eid, "
                "execution_arn = :arn, funnel = :f")
        if isinstance(detail.get("list"), str):  # the journey's emails belong to the list its trigger named
            sets += ", list_name = :list"
            values[":list"] = {"S": detail["list"]}
        else:
            sets += " REMOVE list_name"
        if old.get("execution_arn"):  # pin what we replace: "always" stops it, a failed start puts it back
            condition = f"({condition}) AND execution_arn = :old AND #s = :oldstatus"
            values[":old"], values[":oldstatus"] = old["execution_arn"], old.get("status", {"S": ""})
        claim = {"Key": _entry_key(cid, funnel), "UpdateExpression": f"{sets} ADD entries :one",
                 "ConditionExpression": condition, "ExpressionAttributeNames": {"#s": "status"},
                 "ExpressionAttributeValues": values}
        try:
            aws.write("update_item", **claim)
        except Exception as exc:
            if not aws.is_conditional_failure(exc):
                raise
            current = entry(cid, funnel) or {}
            if current.get("trigger_event_id") == event_id:
                if not _unstarted(current, now):
                    return Attempt(incarnation=incarnation)  # a duplicate of an entry already made
                arn = current["execution_arn"]  # a retry of a half-done entry: start it
                old, claimed = {}, False
                break
            reason = _refusal(entry_rule, reenter_after, current, now)
            if reason:
                return Attempt(refused=reason, incarnation=incarnation)
        else:
            if erasure.incarnation(cid) != incarnation:  # erased (and maybe back) since the read: delete the claim
                _release(cid, funnel, arn, {})  # (what it replaced was the erased person's)
                return Attempt()
            claimed = True
            break
    else:
        raise TransientError(f"entry into {funnel}: the entry kept changing under its claim")
    old_arn = old.get("execution_arn", {}).get("S")
    if entry_rule == "always" and old_arn and old_arn != arn and old.get("status", {}).get("S") in LIVE:
        _stop(old_arn, "FunnelReentered", "replaced by a new entry (entry rule: always)")
    payload = {"contact_id": cid, "funnel": funnel, "entry": entry_id, "trigger": event.get("detail-type"),
               "event_id": event_id, "lead_magnet": detail.get("lead_magnet")}
    if start_wait:  # from the trigger's not_before if later (the inactivity job spreads its day's starts with it)
        now = clock.now()
        start = max(now, _not_before(detail))
        payload["wait_seconds"] = clock.real_seconds(start - now) + sendtime.wait_seconds(
            start_wait, funnel_spec.load(funnel), profile.get("timezone"), cid, start)
    try:
        started = _start(state_machine_arn, name, payload)
    except Exception:
        if claimed:  # StartExecution refused (throttled...): undo the claim, so the retry enters afresh
            _release(cid, funnel, arn, old)
        raise
    if not started and _sfn().describe_execution(executionArn=arn)["status"] != "RUNNING":
        # A late duplicate of a trigger whose journey already ran (same name): nothing to start.
        set_status(cid, funnel, arn, "completed")
        return Attempt(incarnation=incarnation)
    if entry(cid, funnel) is None:  # (the erasure deletes the entry, stopping only the executions that existed)
        _stop(arn, "ContactErased", "the contact was erased while the journey started")
        return Attempt()
    if started:  # once per execution: a retry finds it exists (funnelpilot.metrics)
        metrics.entered(funnel)
    return Attempt(execution=name, incarnation=incarnation)


def _unstarted(current: dict, now: float) -> bool:
    """Whether a live claim's execution was never started (the process died between the claim and
    StartExecution): an old ``starting`` claim, or a claim whose execution Step Functions does not know
    while its name cannot have been freed yet (``NAME_RESERVED`` after it closed, so after it began)."""
    if current.get("status") not in LIVE:
        return False
    if current["status"] == "starting":
        return True
    if now - float(current.get("entered_ts") or 0) >= NAME_RESERVED:
        return False
    try:
        _sfn().describe_execution(executionArn=current["execution_arn"])
    except _sfn().exceptions.ExecutionDoesNotExist:
        return True
    return False


def _not_before(detail: dict) -> float:
    """A trigger event's ``not_before`` (ISO 8601) as epoch seconds; 0 when absent or unreadable."""
    try:
        return datetime.fromisoformat(detail["not_before"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return 0.0


def _start(state_machine_arn: str, name: str, payload: dict) -> bool:
    """StartExecution; False when an execution of that name exists already."""
    try:
        _sfn().start_execution(stateMachineArn=state_machine_arn, name=name, input=json.dumps(payload))
        return True
    except _sfn().exceptions.ExecutionAlreadyExists:
        return False


def _release(cid: str, funnel: str, arn: str, old: dict) -> None:
    """Put the entry item back as it was before this claim (none: delete it), if still ours."""
    guard = {"ConditionExpression": "execution_arn = :arn AND #s = :running",
             "ExpressionAttributeNames": {"#s": "status"},
             "ExpressionAttributeValues": {":arn": {"S": arn}, ":running": {"S": "running"}}}
    if old:
        aws.conditional("put_item", Item=old, **guard)
    else:
        aws.conditional("delete_item", Key=_entry_key(cid, funnel), **guard)


def _stop(arn: str, error: str, cause: str) -> None:
    try:
        _sfn().stop_execution(executionArn=arn, error=error, cause=cause)
    except _sfn().exceptions.ExecutionDoesNotExist:
        pass


def set_status(cid: str, funnel: str, arn: str, status: str, *, only_from=LIVE, **fields: str) -> bool:
    """Move this execution's entry to ``status`` if it is still in one of ``only_from``."""
    names = {"#s": "status"}
    values = {":arn": {"S": arn}, ":new": {"S": status}}
    sets = ["#s = :new"]
    for i, old in enumerate(only_from):
        values[f":from{i}"] = {"S": old}
    for key, value in fields.items():
        names[f"#{key}"] = key
        values[f":{key}"] = {"S": value} if value is not None else {"NULL": True}
        sets.append(f"#{key} = :{key}")
    allowed = ", ".join(f":from{i}" for i in range(len(only_from)))
    return aws.conditional("update_item", Key=_entry_key(cid, funnel), UpdateExpression="SET " + ", ".join(sets),
                           ConditionExpression=f"execution_arn = :arn AND #s IN ({allowed})",
                           ExpressionAttributeNames=names, ExpressionAttributeValues=values)


# ---------------------------------------------------------------- goal / exit
def goal(*, funnel: str, kind: str, event: dict) -> str | None:
    """A goal (``kind="goal"``) or exit event: stop the contact's running execution and
    record where they were. Returns the state they converted/exited on, or None when
    nothing was running (or the event is the one that started the journey). Idempotent."""
    detail = event["detail"]
    cid = detail["contact_id"]
    current = entry(cid, funnel)
    if not current or current.get("status") not in LIVE or current.get("trigger_event_id") == detail["event_id"]:
        return None
    arn = current["execution_arn"]
    step, state = converting_step(arn)
    outcome = "converted" if kind == "goal" else "exited"
    _stop(arn, "FunnelGoal" if kind == "goal" else "FunnelExit", f"{event.get('detail-type')} ({kind})")
    if not set_status(cid, funnel, arn, outcome, completed_at=clock.iso(), goal=event.get("detail-type"),
                       step=step):
        return None
    if kind == "goal":  # counted here, once (the status change above is the guard: no marker, no metrics invocation)
        converted = bus.event("funnel.converted", cid, event_id=tokens.digest_id("fg", funnel, arn, outcome),
                              funnel=funnel, step=step, state=state, goal=event.get("detail-type"))
        metrics.counted(converted)
        bus.publish(converted)  # before the judging: a retry finds the status moved and publishes nothing
        abtest.on_counted("funnel.converted", json.loads(converted["Detail"]))  # a split judged on conversions
    else:  # an exit ends the journey: counted here, once (the status change above is the guard)
        metrics.completed(funnel)
    return step


# ---------------------------------------------------------------- resume (wait_for)
ENGAGEMENT = {"clicked": "email.clicked", "opened": "email.opened"}  # wait_for kinds a person's hit resumes


def wait_spec(condition: dict, execution: str) -> tuple[str, dict]:
    """(detail-type, match) of a ``wait_for`` condition, which a resumer compares events with
    (``wait_matches``): an ``event:`` and its ``where``, or a click (``link``: in its URL) or an open of
    one of the emails the named send states of ``execution`` sent."""
    if "event" in condition:
        return condition["event"], {"where": condition.get("where") or {}}
    (kind, arg), = condition.items()
    if kind not in ENGAGEMENT:
        raise ValueError(f"wait_for: unknown condition {kind!r}")
    ids = [tokens.digest_id("m", execution, s) for s in arg["states"]]
    return ENGAGEMENT[kind], {"message_ids": ids, "link": arg.get("link") if kind == "clicked" else None}


def wait_matches(match: dict, detail: dict) -> bool:
    """Whether an event's detail satisfies a stored wait (see sequence.wait_for)."""
    if "message_ids" in match:
        if detail.get("human") is not True or detail.get("message_id") not in match["message_ids"]:
            return False
        return not match.get("link") or match["link"] in (detail.get("url") or "")
    return all(scoring.matches(detail.get(k), want) for k, want in (match.get("where") or {}).items())


def resume(event: dict) -> int:
    """Resume every waiting step of the event's contact that this event satisfies; how many: the
    ``wait_for`` of a click or an open its journey waits in (``_resume_engagement``), and the stored
    waits for an event (``WAIT#`` items, sequence.wait_for)."""
    detail_type, detail = event.get("detail-type"), event["detail"]
    cid = detail["contact_id"]
    resumed = _resume_engagement(detail_type, detail) if detail_type in ENGAGEMENT.values() else 0
    query = {"TableName": config().table, "KeyConditionExpression": "pk = :c AND begins_with(sk, :w)",
             "ExpressionAttributeValues": {":c": {"S": cid}, ":w": {"S": "WAIT#"}}, "ConsistentRead": True}
    while True:
        page = aws.dynamodb().query(**query)
        for item in page["Items"]:
            if item["detail_type"]["S"] != detail_type or not wait_matches(json.loads(item["match"]["S"]), detail):
                continue
            if release(item, {"resumed_by": detail_type, "event_id": detail.get("event_id")}):
                resumed += 1
        if "LastEvaluatedKey" not in page:
            return resumed
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _resume_engagement(detail_type: str, detail: dict) -> int:
    """A person's click or open on an email of the contact's live journey in its funnel resumes the
    ``wait_for`` that journey waits in, if it waits for this: the Task's token is read from the execution's
    latest history events (its parameters, ``_waiting``), not stored, so the send writes nothing for it.
    One resumer wins: Step Functions closes a task once (a second SendTaskSuccess gets ``TaskTimedOut``)."""
    cid, funnel, state = detail["contact_id"], detail.get("funnel"), detail.get("step")
    if detail.get("human") is not True or not funnel or not state:
        return 0
    current = entry(cid, funnel) or {}
    arn = current.get("execution_arn")
    if current.get("status") not in LIVE or not arn or tokens.digest_id("m", arn, state) != detail.get("message_id"):
        return 0  # no live journey, or an email of an earlier one (its execution ended)
    payload = _waiting(arn)
    condition = payload and ((payload.get("wait_for") or {}).get("condition") or payload.get("condition"))
    if not condition or "event" in condition:
        return 0
    kind, match = wait_spec(condition, arn)
    if kind != detail_type or not wait_matches(match, detail):
        return 0
    return int(succeed(payload["token"], {"resumed_by": detail_type, "event_id": detail.get("event_id")}))


def _waiting(arn: str) -> dict | None:
    """The payload (with its ``token``) of the ``waitForTaskToken`` Task the execution is in, from its latest
    history events (scheduled, started, submitted: still waiting); None when it is in no such Task."""
    try:
        events = _sfn().get_execution_history(executionArn=arn, reverseOrder=True, maxResults=5)["events"]
    except _sfn().exceptions.ExecutionDoesNotExist:
        return None
    for e in events:
        if e["type"] == "TaskScheduled":
            payload = json.loads(e["taskScheduledEventDetails"]["parameters"]).get("Payload")
            return payload if isinstance(payload, dict) and payload.get("token") else None
        if e["type"] not in ("TaskStarted", "TaskSubmitted"):
            return None
    return None


def succeed(token: str, output: dict) -> bool:
    """SendTaskSuccess; False when the task closed already (timed out, resumed, stopped)."""
    try:
        _sfn().send_task_success(taskToken=token, output=json.dumps(output))
    except Exception as exc:
        if getattr(exc, "response", {}).get("Error", {}).get("Code") in _ENDED_TASK:
            return False
        raise
    return True


def release(item: dict, output: dict) -> bool:
    """Delete a wait item (conditionally: one resumer wins) and send its task token."""
    if not aws.conditional("delete_item", Key={"pk": item["pk"], "sk": item["sk"]}, ConditionExpression="#t = :t",
                           ExpressionAttributeNames={"#t": "token"}, ExpressionAttributeValues={":t": item["token"]}):
        return False
    try:
        return succeed(item["token"]["S"], output)
    except Exception:
        aws.dynamodb().put_item(TableName=config().table, Item=item)  # keep the wait for the router's retry
        raise
