"""Transactional outbox: a lifecycle event commits in the same DynamoDB transaction as the
change it announces, and is published from the table's stream.

``put(entry)`` is the TransactWriteItems ``Put`` of an outbox item (``pk`` = the event's
contact, ``sk`` = ``OUTBOX#<event_id>``, the PutEvents entry as JSON, a TTL). A change and
its event are then written together or not at all: never a signup whose
``contact.subscribed`` was lost because PutEvents failed after the commit. The inserts of
these items reach functions/outbox_relay (DynamoDB stream, filtered in template.yaml),
which publishes them and deletes the items (``relay``). Delivery is at least once: a
retried batch publishes again, and every consumer is idempotent on ``event_id``.
"""
import json

from funnelpilot import aws, bus, clock
from funnelpilot.config import config

PREFIX = "OUTBOX#"
# A backstop only: the relay deletes an item as soon as it is published. An item whose batch
# failed for good (its stream position went to the dead-letter queue) waits this long, as
# long as the queue keeps the message, for an operator to replay it.
TTL_SECONDS = 14 * 86400


def put(entry: dict) -> dict:
    """The transaction item that writes ``entry`` (a ``bus.event``) to the outbox."""
    detail = json.loads(entry["Detail"])
    return {"Put": {"TableName": config().table, "Item": {
        "pk": {"S": detail["contact_id"]}, "sk": {"S": PREFIX + detail["event_id"]},
        "entry": {"S": json.dumps(entry)}, "expires_at": {"N": str(int(clock.now()) + TTL_SECONDS)}}}}


def relay(records: list[dict]) -> int:
    """Publish the events of a batch of stream records (outbox inserts), then delete their
    items; the number of events. When PutEvents fails nothing is deleted and the error
    propagates, so that the event source mapping retries the batch."""
    bus.publish(*[json.loads(r["dynamodb"]["NewImage"]["entry"]["S"]) for r in records])
    for record in records:
        aws.dynamodb().delete_item(TableName=config().table, Key=record["dynamodb"]["Keys"])
    return len(records)
