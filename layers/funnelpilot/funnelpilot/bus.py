"""Publishing to the funnelpilot EventBridge bus (source ``funnelpilot``, contract §4)."""
import json
import uuid

from funnelpilot import aws, clock
from funnelpilot.config import config
from funnelpilot.errors import TransientError

SOURCE = "funnelpilot"
RETRYABLE = {"InternalFailure", "ThrottlingException"}  # PutEventsResultEntry: the codes worth a retry


def _events():
    return aws.client("events")


def event(detail_type: str, contact_id: str, event_id: str | None = None, **fields) -> dict:
    """A PutEvents entry; ``event_id`` is the consumers' idempotency key."""
    detail = {"event_id": event_id or uuid.uuid4().hex, "contact_id": contact_id,
              "occurred_at": clock.iso(), **fields}
    return {"Source": SOURCE, "DetailType": detail_type, "Detail": json.dumps(detail),
            "EventBusName": config().bus}


def publish(*entries: dict, attempts: int = 6, base_delay: float = 0.02) -> None:
    """Put events in batches of 10. PutEvents may accept a batch but fail some of its entries
    (HTTP 200, ``FailedEntryCount`` > 0): only those are put again, with full-jitter
    backoff, while their error is retryable; raise when any is still failing, so that an
    event is never dropped silently (the caller's own retry then runs again, and consumers
    are idempotent on ``event_id``)."""
    for i in range(0, len(entries), 10):
        pending = list(entries[i:i + 10])
        for attempt in range(attempts):
            resp = _events().put_events(Entries=pending)
            failed = [(entry, result.get("ErrorCode")) for entry, result in zip(pending, resp["Entries"])
                      if result.get("ErrorCode")]
            if not failed:
                break
            pending = [entry for entry, _ in failed]
            if attempt == attempts - 1 or any(code not in RETRYABLE for _, code in failed):
                retryable = all(code in RETRYABLE for _, code in failed)  # a funnel step's Retry takes it
                raise (TransientError if retryable else RuntimeError)(
                    f"PutEvents failed for {len(failed)} entries: {[c for _, c in failed]}")
            import random  # here, like aws.transact_write: only a failure pays for it
            import time

            time.sleep(random.uniform(0, base_delay * 2 ** attempt))
