"""Publishing to the funnelpilot EventBridge bus (source ``funnelpilot``, contract §4)."""
import json
import uuid

from funnelpilot import aws, clock
from funnelpilot.config import config

SOURCE = "funnelpilot"


def _events():
    return aws.client("events")


def event(detail_type: str, contact_id: str, event_id: str | None = None, **fields) -> dict:
    """A PutEvents entry; ``event_id`` is the consumers' idempotency key."""
    detail = {"event_id": event_id or uuid.uuid4().hex, "contact_id": contact_id,
              "occurred_at": clock.iso(), **fields}
    return {"Source": SOURCE, "DetailType": detail_type, "Detail": json.dumps(detail),
            "EventBusName": config().bus}


def publish(*entries: dict) -> None:
    """Put events (in batches of 10) and raise if any entry failed: an event is never dropped silently."""
    for i in range(0, len(entries), 10):
        resp = _events().put_events(Entries=list(entries[i:i + 10]))
        if resp.get("FailedEntryCount"):
            failed = [e.get("ErrorCode") for e in resp["Entries"] if e.get("ErrorCode")]
            raise RuntimeError(f"PutEvents failed for {len(failed)} entries: {failed}")
