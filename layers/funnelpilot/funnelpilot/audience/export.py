"""Members of a segment or of a list, a page at a time (the CLI streams them as CSV).

No Scan: segment membership items are on the sparse index (``gsi1pk = SEG#<segment>``), and
each declared list is a segment too (``list:<name>``, funnelpilot.segments: joined, not opted out,
active or pending), so a page is one Query of the index plus BatchGetItem of the profiles.
"""
import base64
import binascii
import json
import random
import time

from funnelpilot import aws, gdpr, segments
from funnelpilot.config import config
from funnelpilot.errors import InvalidField, TransientError

PAGE = 500  # index entries per page: 5 BatchGetItem calls of 100 profiles
COLUMNS = ["contact_id", "email", "first_name", "status", "lists", "unsubscribed_lists", "tags", "segments",
           "timezone", "created_at", "confirmed_at", "fields"]
_ATTRS = ["pk", "email", "first_name", "status", "lists", "unsubscribed_lists", "tags", "segments", "timezone",
          "created_at", "confirmed_at", "properties"]


def page(segment: str, cursor: str | None = None) -> dict | None:
    """``{"columns", "rows", "next"}``: one page of the segment's members (``next``: the cursor of
    the following page, absent on the last); None for an unknown segment."""
    if segment not in segments.definitions():
        return None
    request = {"TableName": config().table, "IndexName": "gsi1", "KeyConditionExpression": "gsi1pk = :s",
               "ExpressionAttributeValues": {":s": {"S": f"SEG#{segment}"}}, "Limit": PAGE}
    if cursor:
        request["ExclusiveStartKey"] = _decode(cursor)
    found = aws.dynamodb().query(**request)
    cids = [item["pk"]["S"] for item in found["Items"]]
    profiles = {p["pk"]: p for p in _profiles(cids)}
    rows = [_row(profiles[c]) for c in cids if c in profiles]
    out = {"columns": COLUMNS, "rows": rows}
    if "LastEvaluatedKey" in found:
        out["next"] = base64.urlsafe_b64encode(json.dumps(found["LastEvaluatedKey"]).encode()).decode()
    return out


def _decode(cursor: str) -> dict:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        assert isinstance(key, dict) and set(key) == {"pk", "sk", "gsi1pk", "gsi1sk"}
        return key
    except (ValueError, AssertionError, binascii.Error, UnicodeDecodeError):
        raise InvalidField("cursor", "cursor is not one this export returned") from None


def _profiles(cids: list[str]) -> list[dict]:
    names = {f"#a{i}": a for i, a in enumerate(_ATTRS)}
    out = []
    for i in range(0, len(cids), 100):
        keys = {config().table: {"Keys": [{"pk": {"S": c}, "sk": {"S": "PROFILE"}} for c in cids[i:i + 100]],
                                 "ProjectionExpression": ", ".join(names), "ExpressionAttributeNames": names}}
        for attempt in range(10):
            resp = aws.dynamodb().batch_get_item(RequestItems=keys)
            out += [gdpr.plain(p) for p in resp["Responses"].get(config().table, [])]
            keys = resp.get("UnprocessedKeys") or {}
            if not keys:
                break
            time.sleep(random.uniform(0, 0.05 * 2 ** attempt))  # what DynamoDB could not read yet: back off
        else:
            raise TransientError("BatchGetItem kept returning unprocessed keys")
    return out


def _row(p: dict) -> dict:
    row = {k: p.get(k) for k in ("email", "first_name", "status", "timezone", "created_at", "confirmed_at")}
    row |= {k: " ".join(p.get(k) or []) for k in ("lists", "unsubscribed_lists", "tags", "segments")}
    return row | {"contact_id": p["pk"], "fields": json.dumps(p.get("properties") or {}, sort_keys=True)}
