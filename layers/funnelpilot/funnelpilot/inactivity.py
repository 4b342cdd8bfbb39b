"""Inactivity without scanning the base: time-bucketed keys on a sparse GSI.

Each contact has one ``ACTIVITY`` item (``pk = <contact_id>``) holding ``last_at``, the time
of its latest human engagement, and ``gsi1pk = INACTIVE#<day it becomes inactive>``. Every
engagement moves it to a later bucket (a conditional write: an older, late-delivered
event never moves it back). The daily job Queries only that day's bucket, so its reads
grow with the contacts becoming inactive that day, not with the size of the base.
"""
import hashlib
import json
from datetime import datetime, timedelta, timezone

from funnelpilot import aws, bus, clock, scoring, tokens
from funnelpilot.config import config

# Human engagement (email.opened/clicked arrive here only with human: true: the rule's pattern), touched
# by the score function. A confirmation is recorded by the contact.subscribed it always comes with:
# contact.confirmed reaches the segment function, which would judge the activity segments (dormant)
# before that touch, so it is not one of these.
ENGAGEMENT = {"email.opened", "email.clicked", "page.viewed", "order.placed", "contact.subscribed",
              "contact.reactivated"}
JOB_KEY = {"pk": {"S": "JOB#reengage_scan"}, "sk": {"S": "CURSOR"}}
MAX_CATCH_UP_DAYS = 7
PAGE_SIZE = 250  # contacts a Query page (25 PutEvents calls): a cut-off run re-publishes at most one
PAGE_RESERVE_SECONDS = 20  # a page takes 1-2 s on AWS: below this much time left, continue in a new invocation
SPREAD_SECONDS = 3 * 3600  # the journeys a run starts send over this window (template.yaml: the run's hour)


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


def _page(day: str, start_key: dict | None) -> dict:
    """One page of the contacts whose inactivity starts on ``day`` (Query on the sparse GSI)."""
    kwargs = {"TableName": config().table, "IndexName": "gsi1", "Limit": PAGE_SIZE,
              "KeyConditionExpression": "gsi1pk = :b", "ExpressionAttributeValues": {":b": {"S": f"INACTIVE#{day}"}},
              "ProjectionExpression": "pk, last_at"}
    if start_key:
        kwargs["ExclusiveStartKey"] = start_key
    return aws.dynamodb().query(**kwargs)


def not_before(contact_id: str, day: str, run_at: float) -> float:
    """When the journeys a contact's ``contact.inactive`` starts may send their first email: a
    deterministic offset within SPREAD_SECONDS after the run (the same on every re-run), so a
    day's bucket does not reach SES, nor the recipients' inboxes, at one instant."""
    digest = hashlib.sha256(f"spread\x1f{contact_id}\x1f{day}".encode()).digest()
    return run_at + int.from_bytes(digest[:8], "big") % SPREAD_SECONDS


def scan(today: str, run_at: float | None = None, time_left=None) -> dict:
    """Emit ``contact.inactive`` for every bucket from the last processed day to ``today``
    (catching up at most MAX_CATCH_UP_DAYS), a page of PAGE_SIZE at a time. The daily job passes
    yesterday: a bucket is read once its day is over; ``run_at``: its scheduled time (the spread's
    start, clock.now() if None). After each page the job item keeps the cursor (the day in
    progress and the page's LastEvaluatedKey): a run that stops (``time_left()``, seconds, under
    PAGE_RESERVE_SECONDS) puts ``inactivity.scan_continued`` on the bus for the next invocation,
    and a run killed mid-page re-publishes at most that page. A day that emitted nothing moves no
    cursor: later runs read its empty bucket again (at most MAX_CATCH_UP_DAYS of them). Safe to
    repeat: event ids and ``not_before`` are per contact+day."""
    run_at = clock.now() if run_at is None else run_at
    ddb = aws.dynamodb()
    cursor = ddb.get_item(TableName=config().table, Key=JOB_KEY, ConsistentRead=True).get("Item") or {}
    end = datetime.fromisoformat(today).replace(tzinfo=timezone.utc)
    start = end
    if "day" in cursor:
        start = max(datetime.fromisoformat(cursor["day"]["S"]).replace(tzinfo=timezone.utc) + timedelta(days=1),
                    end - timedelta(days=MAX_CATCH_UP_DAYS))
    days = max(scoring.settings().inactive_after_days, 1)
    emitted = pages = 0
    day = start
    while day <= end:
        name = day.date().isoformat()
        key = json.loads(cursor["open_key"]["S"]) if cursor.get("open_day", {}).get("S") == name else None
        before, first_page, resumed = emitted, pages, key is not None
        while True:
            if pages and time_left is not None and time_left() < PAGE_RESERVE_SECONDS:
                bus.publish({"Source": bus.SOURCE, "DetailType": "inactivity.scan_continued", "EventBusName": config().bus,
                             "Detail": json.dumps({"event_id": tokens.digest_id("sc", name, json.dumps(key)),
                                                   "scheduled_time": clock.iso(run_at)})})
                return {"from": start.date().isoformat(), "to": today, "inactive": emitted, "pages": pages,
                        "continued": name}
            page = _page(name, key)
            entries = []
            for item in page["Items"]:
                last_at = float(item["last_at"]["N"])
                if inactive_on(last_at) != name:  # moved by an engagement after the index was read
                    continue
                cid = item["pk"]["S"]
                entries.append(bus.event("contact.inactive", cid, event_id=tokens.digest_id("in", cid, name),
                                         inactive_days=days, last_engaged_at=clock.iso(last_at),
                                         not_before=clock.iso(not_before(cid, name, run_at))))
            bus.publish(*entries)
            emitted, pages, key = emitted + len(entries), pages + 1, page.get("LastEvaluatedKey")
            if key is None:
                break
            ddb.put_item(TableName=config().table, Item={**JOB_KEY, **({"day": cursor["day"]} if "day" in cursor else {}),
                                                           "open_day": {"S": name}, "open_key": {"S": json.dumps(key)}})
        if emitted > before or resumed or pages - first_page > 1:  # an empty day is not recorded (a write):
            cursor = {"day": {"S": name}}  # the next run reads its empty bucket again instead (a Query)
            ddb.put_item(TableName=config().table, Item={**JOB_KEY, **cursor})
        day += timedelta(days=1)
    return {"from": start.date().isoformat(), "to": today, "inactive": emitted, "pages": pages}
