"""The frequency cap: at most ``emails`` marketing messages per contact per ``hours``, across funnels.

The contact's ``marketing_log`` (``<epoch>#<message id>`` entries, kept ``LOG_KEEP``) is the count.
A send takes a slot with one write conditioned on the log being what was read, so two funnels
sending at once cannot both take the last slot. A capped funnel email is deferred until the
contact's next free slot (``FrequencyCapped``; sequence.send), up to the funnel's
``defer_up_to_hours``, then skipped with reason ``frequency_cap``.
"""
from funnelpilot import aws, clock
from funnelpilot.config import config
from funnelpilot.errors import TransientError
from funnelpilot.models import PROFILE

LOG_KEEP = 720 * 3600  # marketing_log entries kept: the longest frequency-cap window a funnel may set


def _key(cid: str) -> dict:
    return {"pk": {"S": cid}, "sk": {"S": PROFILE}}


def next_free(log: list[str] | None, cap: tuple[int, float], now: float) -> float | None:
    """When the contact may get a marketing message again (epoch): None when a slot is free now,
    else when the oldest entry that fills the window leaves it."""
    emails, hours = cap
    window = float(hours) * 3600
    stamps = sorted(float(e.split("#", 1)[0]) for e in log or () if float(e.split("#", 1)[0]) > now - window)
    return None if len(stamps) < int(emails) else stamps[len(stamps) - int(emails)] + window


def free_at(log: list[str] | None, cap: tuple[int, float], message_id: str, now: float) -> float | None:
    """``next_free`` for this message: None also when it took its slot already (a retry)."""
    if any(e.endswith(f"#{message_id}") for e in log or ()):
        return None
    return next_free(log, cap, now)


def take(cid: str, message_id: str, cap: tuple[int, float], log: list[str] | None) -> float | None:
    """Add this message to the contact's ``marketing_log`` unless the window is full: None when it
    may send (also for a retry that took its slot already), else when a slot frees (``next_free``).
    Optimistic: first the ``log`` the send already read, then a fresh read on a lost race."""
    for _attempt in range(10):
        if any(e.endswith(f"#{message_id}") for e in log or ()):
            return None
        now = clock.now()
        full = next_free(log, cap, now)
        if full is not None:
            return full
        kept = [e for e in log or () if float(e.split("#", 1)[0]) > now - max(LOG_KEEP, float(cap[1]) * 3600)]
        values = {":new": {"L": [{"S": e} for e in kept + [f"{int(now)}#{message_id}"]]}}
        if log is None:
            condition = "attribute_exists(pk) AND attribute_not_exists(marketing_log)"
        else:
            condition = "attribute_exists(pk) AND marketing_log = :old"
            values[":old"] = {"L": [{"S": e} for e in log]}
        if aws.conditional("update_item", Key=_key(cid), UpdateExpression="SET marketing_log = :new",
                           ConditionExpression=condition, ExpressionAttributeValues=values):
            return None
        log = read_log(cid)
    raise TransientError("frequency cap: the contact's log kept changing; retry")


def read_log(cid: str) -> list[str] | None:
    """The contact's ``marketing_log`` as it is now (a consistent read)."""
    item = aws.dynamodb().get_item(TableName=config().table, Key=_key(cid), ConsistentRead=True,
                                   ProjectionExpression="marketing_log").get("Item", {})
    return [v["S"] for v in item["marketing_log"]["L"]] if "marketing_log" in item else None
