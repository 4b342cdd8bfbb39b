"""EventBridge: at-least-once delivery and partial PutEvents failures.

moto delivers each matched event to each target exactly once and accepts every PutEvents
entry. EventBridge does neither: a rule may deliver an event twice (so consumers must be
idempotent on ``event_id``), and PutEvents can answer 200 with ``FailedEntryCount > 0``,
each failed entry carrying ``ErrorCode``/``ErrorMessage`` (``InternalFailure`` and
``ThrottlingException`` are the retryable ones) and no ``EventId``: the caller must put
those entries again.

Both faults are drawn from a hash of ``Rules.seed`` and what they happen to, not from a
shared random stream, so the order in which threads meet them does not matter:
a duplicate from the event id and the target, a failed entry from its source, detail type
and how many entries of that kind were put before it (a retried entry gets a fresh draw).
Only calls of deployed code (a function or a state machine) see failed entries: the
runtime itself, standing in for AWS services and tests, does not.
"""
import hashlib
import threading
from collections import Counter

from funnelpilot_local.aws_rules import Call, Rule

RETRYABLE = (("InternalFailure", "Internal service error."), ("ThrottlingException", "Rate exceeded."))


def draw(seed: int, *parts) -> float:
    """A number in [0, 1) fixed by ``seed`` and ``parts``."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


class Events(Rule):
    def __init__(self, seed: int, duplicate_rate: float, put_events_failure_rate: float):
        self.seed = seed
        self.duplicate_rate = duplicate_rate
        self.failure_rate = put_events_failure_rate
        self.failed_entries = 0  # PutEvents entries answered as failed so far
        self._seen: Counter = Counter()
        self._lock = threading.Lock()

    def copies(self, event_id: str, target_arn: str) -> int:
        """How many times a rule delivers this event to this target (at least once)."""
        if self.duplicate_rate and draw(self.seed, "duplicate", event_id, target_arn) < self.duplicate_rate:
            return 2
        return 1

    def before(self, call: Call) -> None:
        """Keep back the entries that fail: moto puts only the others (none at all: the gate
        answers without calling moto, see ``after``)."""
        if not (self.failure_rate and call.operation == "PutEvents" and call.service == "events"
                and call.principal is not None):
            return
        entries, failed = call.params.get("Entries") or [], {}
        with self._lock:
            for i, entry in enumerate(entries):
                kind = (entry.get("Source"), entry.get("DetailType"))
                self._seen[kind] += 1
                x = draw(self.seed, "put", *kind, self._seen[kind])
                if x < self.failure_rate:
                    failed[i] = RETRYABLE[int(x / self.failure_rate * len(RETRYABLE))]
            self.failed_entries += len(failed)
        if not failed:
            return
        call.extra["failed"] = (len(entries), failed)
        kept = [e for i, e in enumerate(entries) if i not in failed]
        if kept:
            call.params["Entries"] = kept
        else:  # PutEvents needs at least one entry: answer for moto
            call.extra["result"] = {"FailedEntryCount": 0, "Entries": [],
                                    "ResponseMetadata": {"HTTPStatusCode": 200}}

    def after(self, call: Call, result: dict | None, error: Exception | None) -> None:
        """Put the failed entries back in their places in the answer, as EventBridge does."""
        if result is None or "failed" not in call.extra:
            return
        count, failed = call.extra["failed"]
        accepted = iter(result.get("Entries", []))
        result["Entries"] = [{"ErrorCode": failed[i][0], "ErrorMessage": failed[i][1]} if i in failed
                             else next(accepted) for i in range(count)]
        result["FailedEntryCount"] = result.get("FailedEntryCount", 0) + len(failed)
