"""Transactional outbox: a lifecycle event commits in the same DynamoDB transaction as the
change it announces, and is published from the table's stream.

``put(entry)`` is the TransactWriteItems ``Put`` of an outbox item (``pk`` = the event's
contact, ``sk`` = ``OUTBOX#<event_id>``, the PutEvents entry as JSON, a TTL). A change that
writes a new item anyway can carry its events on it instead (``carry``: ``entries``, a JSON
list published in order, on a Put of an item that must not exist yet, so its stream record is an
INSERT): no outbox item, 2 WRU less (a confirmation's two events ride on its consent record). A change and
its event are then written together or not at all: never a signup whose
``contact.subscribed`` was lost because PutEvents failed after the commit. The inserts of
these items reach functions/outbox_relay (DynamoDB stream, filtered in template.yaml),
which publishes them (``relay``). Delivery is at least once: a retried batch publishes
again, and every consumer is idempotent on ``event_id``.

A relayed item is left to its TTL: DynamoDB's TTL deletes cost no write (a DeleteItem per
event would), and their stream records are REMOVEs, which the relay's filter (INSERTs) never
sees. Only the item of an erasure (``put(..., relay_deletes=True)``) is deleted once published:
after an erasure no item may hold the contact id (funnelpilot.gdpr).
"""
import json

from funnelpilot import aws, bus, clock
from funnelpilot.config import config

PREFIX = "OUTBOX#"
# Every item stays this long (TTL): an item whose batch failed for good (its stream position
# went to the dead-letter queue) waits, as long as the queue keeps the message, for an
# operator to replay it.
TTL_SECONDS = 14 * 86400


def put(entry: dict, relay_deletes: bool = False) -> dict:
    """The transaction item that writes ``entry`` (a ``bus.event``) to the outbox; ``relay_deletes``:
    the relay deletes it once published (an erasure's), instead of its TTL."""
    detail = json.loads(entry["Detail"])
    item = {"pk": {"S": detail["contact_id"]}, "sk": {"S": PREFIX + detail["event_id"]},
            "entry": {"S": json.dumps(entry)}, "expires_at": {"N": str(int(clock.now()) + TTL_SECONDS)}}
    if relay_deletes:
        item["relay_deletes"] = {"BOOL": True}
    return {"Put": {"TableName": config().table, "Item": item}}


def carry(item: dict, *events: dict) -> dict:
    """The transaction ``Put`` of a new ``item`` (its sort key not ``OUTBOX#``) carrying ``events`` (``bus.event``s
    about its contact) for the relay, new only: an overwrite would be a MODIFY, which the relay never sees."""
    if any(json.loads(e["Detail"])["contact_id"] != item["pk"]["S"] for e in events):
        raise ValueError("an item carries the events of its own contact")
    return {"Put": {"TableName": config().table, "Item": {**item, "entries": {"S": json.dumps(list(events))}},
                    "ConditionExpression": "attribute_not_exists(pk)"}}


def entries(image: dict) -> list[dict]:
    """The PutEvents entries of an outbox item or of an item carrying events (a stream record's ``NewImage``)."""
    return [json.loads(image["entry"]["S"])] if "entry" in image else json.loads(image["entries"]["S"])


def relay(records: list[dict]) -> int:
    """Publish the events of a batch of stream records (inserts of outbox items and of items carrying
    events), then delete the items marked ``relay_deletes``; the number of events. When PutEvents
    fails nothing is deleted and the error propagates, so that the event source mapping retries the batch."""
    published = [e for r in records for e in entries(r["dynamodb"]["NewImage"])]
    bus.publish(*published)
    for record in records:
        if record["dynamodb"]["NewImage"].get("relay_deletes", {}).get("BOOL"):
            aws.dynamodb().delete_item(TableName=config().table, Key=record["dynamodb"]["Keys"])
    return len(published)
