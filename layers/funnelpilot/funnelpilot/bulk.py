"""Bulk actions over a segment, run by the ``bulk`` state machine (infra/statemachines/bulk.asl.json):
page through the members (Query on gsi1), apply a tag, properties or a funnel entry to each
with a bounded Map, and report how many were changed.

Resumable and idempotent per contact: each contact's change is one transaction holding a
marker ``pk = BULK#<run_id>, sk = DONE#<contact_id>`` (conditional put) and the profile update.
Re-running the same run id (e.g. after stopping it half-way) skips the members already
done; the report counts the markers (run item: ``pk = BULK#<run_id>, sk = RUN``).
Each Map item is a batch of members (``batch_size``), so 1,000 members are 40 Map
iterations rather than 1,000 Lambda invocations.
"""
import json
import re
import uuid

import boto3
from botocore.exceptions import ClientError

from funnelpilot import aws, bus, clock, segments, tokens
from funnelpilot.config import config
from funnelpilot.errors import InvalidField

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_PROP = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def validate(segment: str, action: dict) -> dict:
    """The action, checked: exactly one of ``tag``, ``untag``, ``properties`` or ``funnel``."""
    if segment not in segments.definitions():
        raise InvalidField("segment", f"unknown segment {segment!r}")
    if not isinstance(action, dict) or len(action) != 1:
        raise InvalidField("action", "give exactly one of tag, untag, properties, funnel")
    (kind, value), = action.items()
    if kind in ("tag", "untag", "funnel"):
        if not isinstance(value, str) or not _SLUG.match(value):
            raise InvalidField(kind, f"{kind} must be a short slug")
    elif kind == "properties":
        if not isinstance(value, dict) or not value or not all(_PROP.match(k) for k in value):
            raise InvalidField("properties", "properties must map lower_snake_case names to values")
    else:
        raise InvalidField("action", f"unknown action {kind!r}")
    return action


def _run_key(run_id: str) -> dict:
    return {"pk": {"S": f"BULK#{run_id}"}, "sk": {"S": "RUN"}}


def start_run(event: dict) -> dict:
    action = validate(event["segment"], event["action"])
    aws.dynamodb().update_item(TableName=config().table, Key=_run_key(event["run_id"]),
                               UpdateExpression="SET #seg = if_not_exists(#seg, :s), #a = if_not_exists(#a, :a), "
                                                "started_at = if_not_exists(started_at, :t), attempts = "
                                                "if_not_exists(attempts, :zero) + :one, #st = :running",
                               ExpressionAttributeNames={"#a": "action", "#st": "status", "#seg": "segment"},
                               ExpressionAttributeValues={":s": {"S": event["segment"]},
                                                          ":a": {"S": json.dumps(action)}, ":t": {"S": clock.iso()},
                                                          ":zero": {"N": "0"}, ":one": {"N": "1"},
                                                          ":running": {"S": "running"}})
    return {"cursor": None}


def page(event: dict) -> dict:
    """One page of members, cut into batches for the Map state."""
    size = int(event.get("batch_size", 25))
    members, cursor = segments.members(event["segment"], limit=int(event.get("page_size", 100)),
                                       cursor=event.get("cursor"))
    return {"batches": [members[i:i + size] for i in range(0, len(members), size)], "cursor": cursor}


def apply(event: dict) -> dict:
    """Apply the action to a batch of contacts; each at most once per run."""
    run_id, action = event["run_id"], event["action"]
    cids = list(dict.fromkeys(event["contact_ids"]))
    done = _already_done(run_id, cids)
    todo = [c for c in cids if c not in done]
    (kind, value), = action.items()
    # Events first, with ids derived from run + contact: a retry republishes the same ids
    # (consumers dedupe), and no change is ever left without its event.
    entries = [_event(kind, value, cid, run_id) for cid in todo]
    bus.publish(*[e for e in entries if e])
    changed = 0
    for cid in todo:
        if _apply_one(run_id, cid, kind, value):
            changed += 1
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


def _event(kind: str, value, cid: str, run_id: str) -> dict | None:
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
        items = [marker, _change(cid, kind, value, with_map)]
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


def _change(cid: str, kind: str, value, with_map: bool) -> dict:
    key = {"pk": {"S": cid}, "sk": {"S": "PROFILE"}}
    base = {"TableName": config().table, "Key": key}
    now = {":now": {"S": clock.iso()}}
    if kind in ("tag", "untag"):
        verb = "ADD" if kind == "tag" else "DELETE"
        return {"Update": {**base, "UpdateExpression": f"{verb} tags :t SET updated_at = :now",
                           "ConditionExpression": "attribute_exists(pk)",
                           "ExpressionAttributeValues": {":t": {"SS": [value]}, **now}}}
    if kind == "properties":
        values = {f":v{i}": _attr(v) for i, v in enumerate(value.values())}
        names = {"#p": "properties", **{f"#k{i}": k for i, k in enumerate(value)}}
        if with_map:
            sets = ", ".join(f"#p.#k{i} = :v{i}" for i in range(len(value)))
            return {"Update": {**base, "UpdateExpression": f"SET {sets}, updated_at = :now",
                               "ConditionExpression": "attribute_exists(pk) AND attribute_exists(#p)",
                               "ExpressionAttributeNames": names, "ExpressionAttributeValues": {**values, **now}}}
        return {"Update": {**base, "UpdateExpression": "SET #p = :m, updated_at = :now",
                           "ConditionExpression": "attribute_exists(pk) AND attribute_not_exists(#p)",
                           "ExpressionAttributeNames": {"#p": "properties"},
                           "ExpressionAttributeValues": {":m": {"M": {k: _attr(v) for k, v in value.items()}}, **now}}}
    return {"ConditionCheck": {**base, "ConditionExpression": "attribute_exists(pk)"}}  # funnel: event only


def _attr(value) -> dict:
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float)):
        return {"N": str(value)}
    if value is None:
        return {"NULL": True}
    return {"S": str(value)}


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
    item = aws.dynamodb().get_item(TableName=config().table, Key=_run_key(event["run_id"]), ConsistentRead=True)["Item"]
    aws.dynamodb().update_item(TableName=config().table, Key=_run_key(event["run_id"]),
                               UpdateExpression="SET #st = :done, finished_at = :t",
                               ExpressionAttributeNames={"#st": "status"},
                               ExpressionAttributeValues={":done": {"S": "done"}, ":t": {"S": clock.iso()}})
    return {"run_id": event["run_id"], "segment": item["segment"]["S"], "action": json.loads(item["action"]["S"]),
            "changed": changed(event["run_id"]), "attempts": int(item["attempts"]["N"])}


OPERATIONS = {"start": start_run, "page": page, "apply": apply, "report": report}


def start(state_machine_arn: str, segment: str, action: dict, *, run_id: str | None = None,
          page_size: int = 100, batch_size: int = 25) -> dict:
    """Start (or resume, with the same ``run_id``) a bulk action; returns run id and execution ARN."""
    validate(segment, action)
    run_id = run_id or f"{segment}-{clock.iso()[:10]}-{uuid.uuid4().hex[:8]}"
    if not _SLUG.match(run_id.lower()) or len(run_id) > 60:
        raise InvalidField("run_id", "run_id must be a short slug")
    sfn = boto3.client("stepfunctions", region_name=config().region)
    execution = sfn.start_execution(
        stateMachineArn=state_machine_arn, name=f"{run_id}-{uuid.uuid4().hex[:8]}"[:80],
        input=json.dumps({"run_id": run_id, "segment": segment, "action": action,
                          "page_size": page_size, "batch_size": batch_size}))
    return {"run_id": run_id, "execution_arn": execution["executionArn"]}

