"""GDPR: access (export) and erasure of everything stored about one person.

Everything about a contact lives under one partition key (``pk = contact_id``), so an
export is one Query (paginated) and an erasure is that Query plus batched deletes. The
profile goes first (funnelpilot.erasure: every writer is conditioned on it, so an event
still in flight writes nothing afterwards), then everything else; the person's running
funnel executions are stopped and their repurchase and win-back schedules deleted. A later signup with
fresh consent is a new person (a new incarnation). Anonymous aggregates (MetricsTable
counters per funnel, step and day) hold no person and stay.
"""
from decimal import Decimal

from boto3.dynamodb.types import TypeDeserializer

from funnelpilot import aws, bus, clock, outbox
from funnelpilot.loyalty import repurchase
from funnelpilot.config import config

_DESERIALIZER = TypeDeserializer()


def _plain(value):
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def raw_items(cid: str) -> list[dict]:
    """Every item under the contact's key, as DynamoDB returns them (one Query, paginated)."""
    items, kwargs = [], {"TableName": config().table, "KeyConditionExpression": "pk = :pk",
                         "ExpressionAttributeValues": {":pk": {"S": cid}}, "ConsistentRead": True}
    while True:
        page = aws.dynamodb().query(**kwargs)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def plain(item: dict) -> dict:
    """A low-level item as plain JSON-able values."""
    return _plain({k: _DESERIALIZER.deserialize(v) for k, v in item.items()})


def profile(cid: str) -> dict | None:
    item = aws.dynamodb().get_item(TableName=config().table, Key={"pk": {"S": cid}, "sk": {"S": "PROFILE"}},
                                   ConsistentRead=True).get("Item")
    return plain(item) if item else None


def export(cid: str) -> dict | None:
    """Every item about the person, grouped by kind (profile, consent, messages with their
    opens and clicks, funnel entries, scores and activity, ...), or None if unknown."""
    items = [plain(i) for i in raw_items(cid)]
    if not items:
        return None
    grouped: dict[str, list] = {}
    for item in items:
        kind = item["sk"].split("#", 1)[0].lower()
        grouped.setdefault(kind, []).append(item)
    # Execution names carry no contact id: this is how an operator finds the person's journeys.
    executions = [{"funnel": i["sk"].split("#", 1)[1], "execution_arn": i["execution_arn"], "status": i.get("status"),
                   "entered_at": i.get("entered_at")} for i in grouped.get("funnel", []) if i.get("execution_arn")]
    return {"contact_id": cid, "exported_at": clock.iso(), "executions": executions, "items": grouped}


def erase(cid: str) -> int | None:
    """Erase the person: the profile is first replaced by a bare ``erased`` marker (no PII;
    it keeps the incarnation, so a retry after a failure half-way still finds the schedule),
    then every other item is deleted, the running executions stopped and the repurchase
    schedule deleted; then the marker, in one transaction with the ``contact.erased`` outbox
    item (the relay publishes it, then deletes it: ``relay_deletes``), and a last Query deletes
    what a writer conditioned only on the profile's existence wrote meanwhile. The number of items
    deleted, or None if there was nothing to erase."""
    table, profile_key = config().table, {"pk": {"S": cid}, "sk": {"S": "PROFILE"}}
    old = aws.dynamodb().get_item(TableName=table, Key=profile_key, ConsistentRead=True).get("Item")
    if old is not None:
        marker = {**profile_key, "status": {"S": "erased"}, "erased_at": {"S": clock.iso()}}
        if "incarnation" in old:
            marker["incarnation"] = old["incarnation"]
        aws.dynamodb().put_item(TableName=table, Item=marker)
    count = _delete_items(cid)
    if old is None and not count:
        return None
    if old is not None:
        repurchase.unschedule(cid, old.get("incarnation", {}).get("S", ""))
        count += 1
    event = outbox.put(bus.event("contact.erased", cid, items=count), relay_deletes=True)
    aws.transact_write([{"Delete": {"TableName": table, "Key": profile_key}}, event] if old is not None else [event])
    _delete_items(cid)
    return count


def _delete_items(cid: str) -> int:
    """Delete the contact's items but the profile and a ``contact.erased`` outbox item (the relay
    deletes that one once published: ``relay_deletes``), stopping the executions of live funnel
    entries first. Earlier events' outbox items go too: the stream holds what the relay publishes."""
    items = [i for i in raw_items(cid) if i["sk"]["S"] != "PROFILE" and "relay_deletes" not in i]
    for item in items:
        if item["sk"]["S"].startswith("FUNNEL#") and item.get("status", {}).get("S") in ("starting", "running"):
            _stop(item["execution_arn"]["S"])
    keys = [{"pk": item["pk"], "sk": item["sk"]} for item in items]
    for i in range(0, len(keys), 25):
        requests = {config().table: [{"DeleteRequest": {"Key": k}} for k in keys[i:i + 25]]}
        while requests:
            requests = aws.dynamodb().batch_write_item(RequestItems=requests).get("UnprocessedItems") or {}
    return len(keys)


def _stop(arn: str) -> None:
    sfn = aws.client("stepfunctions")
    try:
        sfn.stop_execution(executionArn=arn, error="ContactErased", cause="the contact was erased (GDPR)")
    except sfn.exceptions.ExecutionDoesNotExist:
        pass
