"""The rate gate every SES send passes once: a slot of the current second, by priority.

One counter item per second in MetricsTable (``pk = PACE#<epoch second>``, ``sk = PACE``, TTL a few
minutes): ``used`` (slots taken in that second, holds included) and ``held`` (slots held for the
funnel sends refused the second before). A take is one conditional UpdateItem (``ADD used :k``
while ``used <= rate - k``): DynamoDB conditions cannot add, so every condition is a plain comparison.

Priorities (README "Sending"), work-conserving: a broadcast takes every slot nobody else took, so
alone it sends at the full rate; it only ever sees ``used``.
- ``FUNNEL``: a free slot of this second, else one of its ``held`` slots; refused, it holds a slot
  of the next second (``ADD used :1, held :1``, never more than the rate), sleeps until that second
  begins (at most a second of Lambda time) and takes a held slot there, which the broadcast workers
  left. When even the holds are full, the caller raises ``SendRateExceeded`` and the Task's jittered
  Retry comes back later. (Waiting for the Retry instead would lose the hold: its jittered delay
  rarely ends in the next second, and a broadcast takes every free slot at each second's start.)
- ``TRANSACTIONAL`` (a confirmation, a sales alert, a step marked transactional): as a funnel send,
  but refused in this second it takes a slot of the next one at once and goes now (a confirmation
  or an alert is sent by an asynchronous Lambda whose retries come minutes later: it must not
  wait behind a broadcast). Refused only when the next second is full too.
- ``BROADCAST``: free slots of this second only (``want`` > 1: one UpdateItem for all of them; a
  refusal answers the item as it was, ``ReturnValuesOnConditionCheckFailure``, and the exact
  remainder is taken).
"""
import os
import time

from funnelpilot import aws, clock
from funnelpilot.config import config
from funnelpilot.errors import SendRateExceeded

TRANSACTIONAL, FUNNEL, BROADCAST = "transactional", "funnel", "broadcast"
PRIORITIES = (TRANSACTIONAL, FUNNEL, BROADCAST)
QUOTA_SECONDS = 300  # GetSendQuota's answer is kept this long per container
KEEP_SECONDS = 300  # a second's item expires (TTL) this long after its second
_quota: dict[str, tuple[float, int]] = {}  # "rate" -> (read at, monotonic; MaxSendRate)


def rate() -> int:
    """Sends per second: ``SEND_RATE`` (template parameter SendRatePerSecond) when > 0, else SES
    ``GetSendQuota`` ``MaxSendRate`` (at least 1), read once per container every 5 minutes."""
    configured = float(os.environ.get("SEND_RATE") or 0)
    if configured > 0:
        return max(1, int(configured))
    read = _quota.get("rate")
    if read is None or time.monotonic() - read[0] > QUOTA_SECONDS:
        read = (time.monotonic(), max(1, int(aws.client("ses").get_send_quota()["MaxSendRate"])))
        _quota["rate"] = read
    return read[1]


def clear_cache() -> None:
    """Forget the quota read (a new container: the local runtime's new stack)."""
    _quota.clear()


def next_second() -> float:
    """Seconds until the next second begins (a requeue delay)."""
    now = clock.now()
    return float(int(now) + 1) - now


def _key(second: int) -> dict:
    return {"pk": {"S": f"PACE#{second}"}, "sk": {"S": "PACE"}}


def _update(second: int, expression: str, condition: str, values: dict) -> dict | None:
    """One conditional UpdateItem on a second's item: None when it was made, else the item as it
    was (``{}``: none yet)."""
    try:
        aws.dynamodb().update_item(
            TableName=config().metrics_table, Key=_key(second), UpdateExpression=f"{expression} SET expires_at = :ttl",
            ConditionExpression=condition, ReturnValuesOnConditionCheckFailure="ALL_OLD",
            ExpressionAttributeValues={**values, ":ttl": {"N": str(second + KEEP_SECONDS)}})
    except Exception as exc:
        if not aws.is_conditional_failure(exc):
            raise
        return exc.response.get("Item") or {}
    return None


def _free(second: int, want: int, limit: int, held: bool = False) -> tuple[int, dict]:
    """Take ``want`` free slots of ``second`` (``held``: also hold as many), or fewer: what is left
    when the item says so. (taken, the item as it was when the last try was refused)."""
    old: dict = {}
    for _attempt in range(3):  # a refusal names what is left; a concurrent take may leave less by the retry
        values = {":k": {"N": str(want)}, ":most": {"N": str(limit - want)}}
        expression = "ADD used :k" + (", held :k" if held else "")
        old = _update(second, expression, "attribute_not_exists(used) OR used <= :most", values)
        if old is None:
            return want, {}
        left = limit - int(old.get("used", {}).get("N", "0"))
        if left <= 0:
            break
        want = min(want, left)
    return 0, old


def acquire(priority: str, want: int = 1) -> int:
    """Slots granted now (0..``want``) in the current second of ``clock.now()``, by ``priority``
    (``want`` > 1 only for a broadcast)."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority {priority!r}: one of {', '.join(PRIORITIES)}")
    if want < 1:
        return 0
    if want > 1 and priority != BROADCAST:
        raise ValueError("only a broadcast takes several slots at once")
    limit = rate()
    for attempt in range(2):
        second = int(clock.now())
        taken, old = _free(second, min(want, limit), limit)
        if taken or priority == BROADCAST:
            return taken
        if int(old.get("held", {}).get("N", "0")) > 0 and _update(
                second, "ADD held :minus", "held > :zero", {":minus": {"N": "-1"}, ":zero": {"N": "0"}}) is None:
            return 1  # a slot held for the funnel sends of this second (its `used` counted it already)
        if priority == TRANSACTIONAL:
            return _free(second + 1, 1, limit)[0]  # the next second's slot, taken now
        # hold a slot of the next second (none when it is full of holds) and wait for it there
        if attempt or not _free(second + 1, 1, limit, held=True)[0] or not clock.sleep(next_second()):
            return 0
    return 0


def take(priority: str) -> None:
    """One slot for one email now, else ``SendRateExceeded`` (a funnel's Task retries it; an
    asynchronous Lambda's retry comes later): what every sender calls before SES."""
    if not acquire(priority):
        raise SendRateExceeded(f"rate gate: the {rate()} sends of this second are taken ({priority})")
