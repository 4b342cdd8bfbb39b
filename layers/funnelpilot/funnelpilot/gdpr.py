"""GDPR: access (export) and erasure of everything stored about one person.

Everything about a contact lives under one partition key (``pk = contact_id``), so an
export is one Query (paginated) and an erasure is that Query plus batched deletes. The
profile goes too: a later signup with fresh consent starts a new person, and funnel
steps still running for the old one find no contact and send nothing
(``unknown_contact``). Anonymous aggregates (MetricsTable counters per funnel, step and
day) hold no person and stay.
"""
from decimal import Decimal

from boto3.dynamodb.types import TypeDeserializer

from funnelpilot import aws, bus, clock, outbox
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


def _raw_items(cid: str) -> list[dict]:
    items, kwargs = [], {"TableName": config().table, "KeyConditionExpression": "pk = :pk",
                         "ExpressionAttributeValues": {":pk": {"S": cid}}, "ConsistentRead": True}
    while True:
        page = aws.dynamodb().query(**kwargs)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _items(cid: str) -> list[dict]:
    return [_plain({k: _DESERIALIZER.deserialize(v) for k, v in item.items()}) for item in _raw_items(cid)]


def profile(cid: str) -> dict | None:
    item = aws.dynamodb().get_item(TableName=config().table, Key={"pk": {"S": cid}, "sk": {"S": "PROFILE"}},
                                   ConsistentRead=True).get("Item")
    return _plain({k: _DESERIALIZER.deserialize(v) for k, v in item.items()}) if item else None


def export(cid: str) -> dict | None:
    """Every item about the person, grouped by kind (profile, consent, messages with their
    opens and clicks, funnel entries, scores and activity, ...), or None if unknown."""
    items = _items(cid)
    if not items:
        return None
    grouped: dict[str, list] = {}
    for item in items:
        kind = item["sk"].split("#", 1)[0].lower()
        grouped.setdefault(kind, []).append(item)
    return {"contact_id": cid, "exported_at": clock.iso(), "items": grouped}


def erase(cid: str) -> int | None:
    """Delete every item under the contact's key and emit ``contact.erased``; the number of
    items deleted, or None if there was nothing to erase.

    The last item is deleted in one transaction with the event's outbox item: a retry after
    a failure half-way still finds it and erases the rest, and the event is written when
    nothing else is left. The relay deletes that outbox item once it has published it, so
    afterwards no item holds the contact id."""
    keys = [{"pk": item["pk"], "sk": item["sk"]} for item in _raw_items(cid)]
    if not keys:
        return None
    *others, last = keys
    for i in range(0, len(others), 25):
        requests = {config().table: [{"DeleteRequest": {"Key": k}} for k in others[i:i + 25]]}
        while requests:
            requests = aws.dynamodb().batch_write_item(RequestItems=requests).get("UnprocessedItems") or {}
    aws.transact_write([{"Delete": {"TableName": config().table, "Key": last}},
                        outbox.put(bus.event("contact.erased", cid, items=len(keys)))])
    return len(keys)
