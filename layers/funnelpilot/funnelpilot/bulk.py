"""Bulk actions over a segment, run by the ``bulk`` state machine (infra/statemachines/bulk.asl.json):
page through the members (Query on gsi1), apply a tag, properties or a funnel entry to each
with a bounded Map over batches of a page, and report how many were changed.

Runs of any size. A Standard execution fails when its history reaches 25,000 events, and
each page costs ``PAGE_EVENTS + BATCH_EVENTS`` per batch of them, so one execution reads at
most ``pages_per_execution`` pages (what fits in ``HISTORY_BUDGET``) and then the page
Lambda starts the next execution of the same state machine with the cursor ("continue as
new"; execution names ``<run_id>-<chain>-<n>``), until the last page.

Resumable and idempotent per contact: each contact's change is one transaction holding a
marker ``pk = BULK#<run_id>, sk = DONE#<contact_id>`` (conditional put) and the profile
update. The run item (``pk = BULK#<run_id>, sk = RUN``) keeps the cursor of the first page
not yet applied (written by the page Lambda before it reads the next page, so after the Map
of the previous one completed). Re-running the same run id (after a stop or failure) starts
at that cursor, and the members of that page already done are skipped. Each attempt takes a
new chain token on the run item; a stopped attempt's executions can no longer move its cursor.
"""
import json
import math
import re
import uuid

from botocore.exceptions import ClientError

from funnelpilot import aws, bus, clock, segments, tokens
from funnelpilot.audience import fields as custom_fields
from funnelpilot.config import config
from funnelpilot.errors import InvalidField, TransientError
from funnelpilot.report import known_funnels

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
PAGE_SIZE, BATCH_SIZE = 2000, 500  # 2,000 ids (~60 KB) stay far below the 256 KB state limit
# History events (inline Map): per page "Read a page" 5, "What next?" 2, the Map 4, per batch 7
# (iteration started/succeeded and a Task's 5); per execution start, last page read, report: 20.
PAGE_EVENTS, BATCH_EVENTS, EXECUTION_EVENTS = 11, 7, 20
HISTORY_BUDGET = 20_000  # of AWS's 25,000: the rest is room for Retry attempts (3 events each)


def validate(segment: str, action: dict) -> dict:
    """The action, checked: exactly one of ``tag``, ``untag``, ``properties`` or ``funnel``."""
    if segment not in segments.definitions():
        raise InvalidField("segment", f"unknown segment {segment!r}")
    return validate_action(action)


def validate_action(action: dict) -> dict:
    """One action (bulk, or one contact's change from the admin route), checked."""
    if not isinstance(action, dict) or len(action) != 1:
        raise InvalidField("action", "give exactly one of tag, untag, properties, funnel")
    (kind, value), = action.items()
    if kind in ("tag", "untag", "funnel"):
        if not isinstance(value, str) or not _SLUG.match(value):
            raise InvalidField(kind, f"{kind} must be a short slug")
        if kind == "funnel" and value not in (known := known_funnels()):
            raise InvalidField("funnel", f"unknown funnel {value!r} (funnels: {', '.join(known)})")
    elif kind == "properties":  # custom fields, checked and converted as infra/fields.yaml declares them
        return {"properties": custom_fields.to_set(value)}
    else:
        raise InvalidField("action", f"unknown action {kind!r}")
    return action


def pages_per_execution(page_size: int, batch_size: int, history_budget: int = HISTORY_BUDGET) -> int:
    """How many pages one execution reads within ``history_budget`` history events."""
    per_page = PAGE_EVENTS + BATCH_EVENTS * math.ceil(page_size / batch_size)
    pages = (history_budget - EXECUTION_EVENTS) // per_page
    if pages < 1:
        raise InvalidField("history_budget", f"a page of {page_size} in batches of {batch_size} needs "
                                             f"{per_page + EXECUTION_EVENTS} history events")
    return pages


def _run_key(run_id: str) -> dict:
    return {"pk": {"S": f"BULK#{run_id}"}, "sk": {"S": "RUN"}}


def _run_update(run_id: str, expression: str, values: dict, condition: str, names: dict | None = None) -> dict | None:
    """A conditional UpdateItem on the run item: its new attributes, None if the condition failed."""
    try:
        return aws.dynamodb().update_item(
            TableName=config().table, Key=_run_key(run_id), UpdateExpression=expression, ConditionExpression=condition,
            ExpressionAttributeValues=values, ReturnValues="ALL_NEW",
            **({"ExpressionAttributeNames": names} if names else {}))["Attributes"]
    except ClientError as exc:
        if aws.is_conditional_failure(exc):
            return None
        raise


def start_run(event: dict) -> dict:
    """First state of every execution: a new attempt (generation 0) takes the run's chain and
    resumes at its saved cursor; a continuation checks its chain is still the run's."""
    run_id, chain, values = event["run_id"], event["chain"], {":chain": {"S": event["chain"]},
                                                              ":exec": {"S": event["execution"]}, ":one": {"N": "1"}}
    if event["generation"]:
        item = _run_update(run_id, "SET execution = :exec ADD executions :one", values, "chain = :chain")
        return {"status": "superseded" if item is None else "start", "cursor": event["cursor"], "pages": 0}
    action = validate(event["segment"], event["action"])
    values.update({":s": {"S": event["segment"]}, ":a": {"S": json.dumps(action, sort_keys=True)},
                   ":t": {"S": clock.iso()}, ":running": {"S": "running"}})
    item = _run_update(run_id, "SET #seg = if_not_exists(#seg, :s), #a = if_not_exists(#a, :a), started_at = "
                               "if_not_exists(started_at, :t), #st = if_not_exists(#st, :running), chain = :chain, "
                               "execution = :exec ADD attempts :one, executions :one",
                       values, "attribute_not_exists(#a) OR #a = :a",
                       {"#a": "action", "#st": "status", "#seg": "segment"})
    if item is None:
        raise InvalidField("run_id", f"run {run_id!r} was started with another action: give a new run id")
    finished = item["status"]["S"] == "done" or "exhausted" in item
    return {"status": "done" if finished else "start", "cursor": item.get("cursor", {}).get("S"), "pages": 0}


def page(event: dict) -> dict:
    """Save the cursor (the previous page is applied), then read the next page, cut into
    batches for the Map; or hand the run on to a new execution, or say it is done."""
    status, cursor, pages = event["status"], event.get("cursor"), int(event["pages"])
    if status in ("done", "superseded"):
        return {"status": status}
    last_applied = status == "page" and cursor is None
    values = {":chain": {"S": event["chain"]}}
    if last_applied:
        expression, values[":yes"] = "SET exhausted = :yes", {"BOOL": True}
    elif cursor:
        expression, values[":c"] = "SET #c = :c", {"S": cursor}
    else:
        expression = "REMOVE #c"
    if _run_update(event["run_id"], expression, values, "chain = :chain",
                   None if last_applied else {"#c": "cursor"}) is None:
        return {"status": "superseded"}  # a newer attempt of this run took over
    if last_applied:
        return {"status": "done"}
    if status == "page" and pages >= int(event["pages_per_execution"]):
        return {"status": "continued", "execution": _continue(event, cursor)}
    size = int(event["batch_size"])
    members, nxt = segments.members(event["segment"], limit=int(event["page_size"]), cursor=cursor)
    return {"status": "page", "batches": [members[i:i + size] for i in range(0, len(members), size)],
            "cursor": nxt, "pages": pages + 1}


def _continue(event: dict, cursor: str) -> str:
    """Start the run's next execution at ``cursor`` (once: its name is fixed by the chain)."""
    generation = int(event["generation"]) + 1
    machine = event["state_machine"]
    name = f"{event['run_id']}-{event['chain']}-{generation}"
    try:
        return _execute(machine, name, {**_settings(event), "generation": generation, "cursor": cursor})
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code == "ExecutionAlreadyExists":  # this Lambda's retry: it was started already
            return f"{machine.replace(':stateMachine:', ':execution:')}:{name}"
        if code == "ThrottlingException":
            raise TransientError(f"StartExecution throttled: {exc}") from exc  # the state's Retry
        raise


def _settings(event: dict) -> dict:
    return {k: event[k] for k in ("run_id", "segment", "action", "chain", "page_size", "batch_size",
                                  "pages_per_execution")}


def _execute(state_machine_arn: str, name: str, payload: dict) -> str:
    return aws.client("stepfunctions").start_execution(stateMachineArn=state_machine_arn, name=name,
                                                       input=json.dumps(payload))["executionArn"]


def apply(event: dict) -> dict:
    """Apply the action to a batch of contacts; each at most once per run."""
    run_id, action = event["run_id"], event["action"]
    cids = list(dict.fromkeys(event["contact_ids"]))
    done = _already_done(run_id, cids)
    todo = [c for c in cids if c not in done]
    (kind, value), = action.items()
    # Events first, with ids derived from run + contact: a retry republishes the same ids
    # (consumers dedupe), and no change is ever left without its event.
    entries = [action_event(kind, value, cid, run_id) for cid in todo]
    bus.publish(*[e for e in entries if e])
    changed = 0
    for cid in todo:
        if _apply_one(run_id, cid, kind, value):
            changed += 1
    if changed:  # progress for `funnelpilot bulk --wait` (the report counts the markers)
        aws.dynamodb().update_item(TableName=config().table, Key=_run_key(run_id),
                                   UpdateExpression="ADD members_done :n", ExpressionAttributeValues={":n": {"N": str(changed)}})
    return {"changed": changed, "skipped": len(cids) - changed}


def _already_done(run_id: str, cids: list[str]) -> set[str]:
    if not cids:
        return set()
    keys = [{"pk": {"S": f"BULK#{run_id}"}, "sk": {"S": f"DONE#{c}"}} for c in cids]
    found: set[str] = set()
    for i in range(0, len(keys), 100):
        request = {config().table: {"Keys": keys[i:i + 100], "ProjectionExpression": "sk", "ConsistentRead": True}}
        while request:
            resp = aws.dynamodb().batch_get_item(RequestItems=request)
            found |= {item["sk"]["S"].removeprefix("DONE#") for item in resp["Responses"].get(config().table, [])}
            request = resp.get("UnprocessedKeys") or None
    return found


def action_event(kind: str, value, cid: str, run_id: str) -> dict | None:
    """The event announcing an action's change (segments follow it)."""
    event_id = tokens.digest_id("bk", run_id, cid)
    if kind == "tag":
        return bus.event("contact.tagged", cid, event_id=event_id, tag=value, source_run=run_id)
    if kind == "untag":
        return bus.event("contact.untagged", cid, event_id=event_id, tag=value, source_run=run_id)
    if kind == "properties":
        return bus.event("contact.updated", cid, event_id=event_id, fields=sorted(value), source_run=run_id)
    return bus.event("funnel.handoff", cid, event_id=event_id, to=value, **{"from": "bulk"}, source_run=run_id)


def _apply_one(run_id: str, cid: str, kind: str, value) -> bool:
    """One transaction: marker + change. False if done before (or no such contact)."""
    marker = {"Put": {"TableName": config().table, "ConditionExpression": "attribute_not_exists(pk)",
                      "Item": {"pk": {"S": f"BULK#{run_id}"}, "sk": {"S": f"DONE#{cid}"}, "at": {"S": clock.iso()}}}}
    for with_map in (True, False):
        items = [marker, change(cid, kind, value, with_map)]
        try:
            aws.transact_write(items)
            return True
        except ClientError as exc:
            failed = aws.failed_conditions(exc)
            if 0 in failed:
                return False  # this contact was done by an earlier attempt of the run
            if kind == "properties" and failed and with_map:
                continue  # no properties map yet (or no contact): try creating the map
            if failed:
                return False  # contact gone (erased) since it was listed
            raise
    return False


def change(cid: str, kind: str, value, with_map: bool) -> dict:
    """The transaction item making one action's change on the profile."""
    key = {"pk": {"S": cid}, "sk": {"S": "PROFILE"}}
    base = {"TableName": config().table, "Key": key}
    now = {":now": {"S": clock.iso()}}
    if kind in ("tag", "untag"):
        verb = "ADD" if kind == "tag" else "DELETE"
        return {"Update": {**base, "UpdateExpression": f"{verb} tags :t SET updated_at = :now",
                           "ConditionExpression": "attribute_exists(pk)",
                           "ExpressionAttributeValues": {":t": {"SS": [value]}, **now}}}
    if kind == "properties":
        values = {f":v{i}": custom_fields.attribute(v) for i, v in enumerate(value.values())}
        names = {"#p": "properties", **{f"#k{i}": k for i, k in enumerate(value)}}
        if with_map:
            sets = ", ".join(f"#p.#k{i} = :v{i}" for i in range(len(value)))
            return {"Update": {**base, "UpdateExpression": f"SET {sets}, updated_at = :now",
                               "ConditionExpression": "attribute_exists(pk) AND attribute_exists(#p)",
                               "ExpressionAttributeNames": names, "ExpressionAttributeValues": {**values, **now}}}
        return {"Update": {**base, "UpdateExpression": "SET #p = :m, updated_at = :now",
                           "ConditionExpression": "attribute_exists(pk) AND attribute_not_exists(#p)",
                           "ExpressionAttributeNames": {"#p": "properties"},
                           "ExpressionAttributeValues": {":m": {"M": {k: custom_fields.attribute(v) for k, v in value.items()}}, **now}}}
    return {"ConditionCheck": {**base, "ConditionExpression": "attribute_exists(pk)"}}  # funnel: event only


def changed(run_id: str) -> int:
    """How many contacts the run has changed: its markers, counted (Query, COUNT)."""
    kwargs = {"TableName": config().table, "KeyConditionExpression": "pk = :p AND begins_with(sk, :done)",
              "Select": "COUNT", "ExpressionAttributeValues": {":p": {"S": f"BULK#{run_id}"}, ":done": {"S": "DONE#"}},
              "ConsistentRead": True}
    total = 0
    while True:
        page = aws.dynamodb().query(**kwargs)
        total += page["Count"]
        if "LastEvaluatedKey" not in page:
            return total
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def report(event: dict) -> dict:
    item = aws.dynamodb().update_item(TableName=config().table, Key=_run_key(event["run_id"]),
                                      UpdateExpression="SET #st = :done, finished_at = :t REMOVE #c",
                                      ExpressionAttributeNames={"#st": "status", "#c": "cursor"},
                                      ExpressionAttributeValues={":done": {"S": "done"}, ":t": {"S": clock.iso()}},
                                      ReturnValues="ALL_NEW")["Attributes"]
    return {"run_id": event["run_id"], "segment": item["segment"]["S"], "action": json.loads(item["action"]["S"]),
            "changed": changed(event["run_id"]), "attempts": int(item["attempts"]["N"]),
            "executions": int(item["executions"]["N"])}


def progress(run_id: str, table: str | None = None) -> dict | None:
    """The run item as plain values: status, members_done, executions, execution (the current one)."""
    item = aws.dynamodb().get_item(TableName=table or config().table, Key=_run_key(run_id),
                                   ConsistentRead=True).get("Item")
    if item is None:
        return None
    return {"status": item["status"]["S"], "members_done": int(item.get("members_done", {}).get("N", 0)),
            "executions": int(item["executions"]["N"]), "execution": item["execution"]["S"]}


OPERATIONS = {"start": start_run, "page": page, "apply": apply, "report": report}


def start(state_machine_arn: str, segment: str, action: dict, *, run_id: str | None = None,
          page_size: int = PAGE_SIZE, batch_size: int = BATCH_SIZE, history_budget: int = HISTORY_BUDGET) -> dict:
    """Start (or resume, with the same ``run_id``) a bulk action; returns run id and execution ARN."""
    action = validate(segment, action)  # the fields' values converted (the CLI's "12" is a number)
    run_id = run_id or f"{segment}-{clock.iso()[:10]}-{uuid.uuid4().hex[:8]}"
    if not _SLUG.match(run_id.lower()) or len(run_id) > 60:
        raise InvalidField("run_id", "run_id must be a short slug")
    if not 1 <= batch_size <= page_size <= PAGE_SIZE:
        raise InvalidField("page_size", f"need 1 <= batch_size <= page_size <= {PAGE_SIZE}")
    chain = uuid.uuid4().hex[:8]
    settings = {"run_id": run_id, "segment": segment, "action": action, "chain": chain, "page_size": page_size,
                "batch_size": batch_size, "pages_per_execution": pages_per_execution(page_size, batch_size,
                                                                                    history_budget)}
    arn = _execute(state_machine_arn, f"{run_id}-{chain}", {**settings, "generation": 0, "cursor": None})
    return {"run_id": run_id, "execution_arn": arn}
