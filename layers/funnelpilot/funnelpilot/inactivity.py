"""Inactivity without scanning the base: time-bucketed keys on a sparse GSI.

Each contact has one ``ACTIVITY`` item (``pk = <contact_id>``) holding ``last_at``, the time
of its latest human engagement, and ``gsi1pk = INACTIVE#<day it becomes inactive>``. Every
engagement moves it to a later bucket (a conditional write: an older, late-delivered
event never moves it back). The daily job Queries only that day's bucket, so its reads
grow with the contacts becoming inactive that day, not with the size of the base.
"""
from datetime import datetime, timedelta, timezone


from funnelpilot import aws, bus, clock, scoring, tokens
from funnelpilot.config import config

# Human engagement (email.opened/clicked arrive here only with human: true: the rule's pattern).
ENGAGEMENT = {"email.opened", "email.clicked", "page.viewed", "order.placed", "contact.subscribed",
              "contact.confirmed", "contact.reactivated"}
JOB_KEY = {"pk": {"S": "JOB#reengage_scan"}, "sk": {"S": "CURSOR"}}
MAX_CATCH_UP_DAYS = 7


def inactive_on(last_at: float) -> str:
    return clock.iso(last_at + scoring.settings().inactive_after_days * 86_400)[:10]


def touch(contact_id: str, at: float) -> bool:
    """Record a human engagement at ``at``; False if a later one was already recorded."""
    return aws.conditional("update_item", Key={"pk": {"S": contact_id}, "sk": {"S": "ACTIVITY"}},
                           UpdateExpression="SET last_at = :t, gsi1pk = :bucket, gsi1sk = :cid",
                           ConditionExpression="attribute_not_exists(last_at) OR last_at < :t",
                           ExpressionAttributeValues={":t": {"N": str(at)}, ":cid": {"S": contact_id},
                                                      ":bucket": {"S": f"INACTIVE#{inactive_on(at)}"}})


def forget(contact_id: str) -> None:
    """Undo a ``touch`` for a contact that turned out not to exist (erased while the event
    was in flight: the score handler touches first, then scoring reads the profile)."""
    aws.dynamodb().delete_item(TableName=config().table, Key={"pk": {"S": contact_id}, "sk": {"S": "ACTIVITY"}})


def last_activity(contact_id: str) -> float | None:
    item = aws.dynamodb().get_item(TableName=config().table, Key={"pk": {"S": contact_id}, "sk": {"S": "ACTIVITY"}},
                                   ProjectionExpression="last_at").get("Item")
    return float(item["last_at"]["N"]) if item else None


def bucket(day: str):
    """Contacts whose inactivity starts on ``day`` (Query on the sparse GSI, paginated)."""
    kwargs = {"TableName": config().table, "IndexName": "gsi1",
              "KeyConditionExpression": "gsi1pk = :b", "ExpressionAttributeValues": {":b": {"S": f"INACTIVE#{day}"}},
              "ProjectionExpression": "pk, last_at"}
    while True:
        page = aws.dynamodb().query(**kwargs)
        yield from page["Items"]
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def scan(today: str) -> dict:
    """Emit ``contact.inactive`` for every bucket from the last processed day to ``today``
    (catching up at most MAX_CATCH_UP_DAYS). Safe to repeat: event ids are per contact+day.
    The daily job passes yesterday: a bucket is read once its day is over."""
    cursor = aws.dynamodb().get_item(TableName=config().table, Key=JOB_KEY).get("Item")
    end = datetime.fromisoformat(today).replace(tzinfo=timezone.utc)
    start = end
    if cursor:
        start = max(datetime.fromisoformat(cursor["day"]["S"]).replace(tzinfo=timezone.utc) + timedelta(days=1),
                    end - timedelta(days=MAX_CATCH_UP_DAYS))
    days = max(scoring.settings().inactive_after_days, 1)
    emitted = 0
    day = start
    while day <= end:
        name = day.date().isoformat()
        entries = []
        for item in bucket(name):
            last_at = float(item["last_at"]["N"])
            if inactive_on(last_at) != name:  # moved by an engagement after the index was read
                continue
            cid = item["pk"]["S"]
            entries.append(bus.event("contact.inactive", cid, event_id=tokens.digest_id("in", cid, name),
                                     inactive_days=days, last_engaged_at=clock.iso(last_at)))
        bus.publish(*entries)
        emitted += len(entries)
        aws.dynamodb().put_item(TableName=config().table, Item={**JOB_KEY, "day": {"S": name}})
        day += timedelta(days=1)
    return {"from": start.date().isoformat(), "to": today, "inactive": emitted}
