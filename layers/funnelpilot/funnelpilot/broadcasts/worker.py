"""The send worker (functions/broadcast_send, SQS trigger on SendQueue): one chunk of a broadcast's
recipients per message.

Per chunk: the broadcast's state (paused: the chunk is held for ``resume``; cancelled: dropped), the
second's slots for its entries at once (``pace.acquire``, the broadcast's priority; none: the chunk goes
back for the next second, unread), one BatchGetItem of the profiles the slots cover, then per recipient
the checks of every marketing send (``sending.checks.blocked_reason``: unknown, erased, unsubscribed,
suppressed - a hard bounce or a complaint -, opted out of the broadcast's list, unconfirmed, sunset) and
the audience's exclusions again (membership may have changed since the launch). Each eligible one is
claimed (the message item, a conditional write: the duplicate guard; ``SEND_THREADS`` recipients at
once, so one worker keeps up with a high SES rate on an account of few concurrent Lambdas), passes the frequency cap
(``skip``: blocked for good, ``defer``: back in the queue when their next slot frees, up to a funnel's
``defer_up_to_hours``, then skipped; ``ignore``) and is sent through SES. Whatever the second's slots
or SES's ``Throttling`` leave goes back to the queue as a new message, visible when the next second
begins (a chunk that found the second full and got nothing backs off: 1, 2, 4, 8 s, so idle workers do
not keep receiving the backlog while funnel emails take slots), and this one succeeds: nothing is lost, and a redelivery finds the claims (a message already
sent is not sent again; its ``email.sent`` is published again, same id).

Then the sent marks (``_Chunk.flush``), ``email.sent`` (PutEvents, 10 a call: tracking, the timeline, attribution and webhooks see a
broadcast email as any other) and the chunk's counts in ONE UpdateItem (funnelpilot.broadcasts.counters);
the last chunk marks the broadcast sent. A message item names its ``chunk``: a redelivered chunk
recognises its own earlier claims and does not count them twice; a duplicate entry from another
chunk (the contact is in two segments) is counted as handled and nothing else.
"""
import json
import logging
import math
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import ClientError

from funnelpilot import aws, bus, clock, funnel_spec, sequence, tokens
from funnelpilot.broadcasts import content, counters, launch, spec as specs, store
from funnelpilot.channels import emails
from funnelpilot.errors import RecipientRejected, SendRateExceeded, TemplateError, transient
from funnelpilot.models import PROFILE, Contact, Message
from funnelpilot.sending import cap, checks

logger = logging.getLogger(__name__)
DEFER_SECONDS = 900  # a deferred recipient comes back at most this much later (SQS DelaySeconds' maximum)
GONE = ("unknown_contact", "erased")  # blocked without a message item: nothing may be stored about them
SEND_THREADS = 8  # recipients of a chunk sent at once (SES and DynamoDB calls wait on the network)
BACKOFF_MAX = 8  # seconds: a chunk refused n times in a row comes back after min(2**(n-1), this)


def backoff(refusals: int) -> int:
    """Seconds before a chunk that found the second full ``refusals`` times in a row is received again."""
    return min(BACKOFF_MAX, 2 ** max(0, refusals - 1))


class _Chunk:
    """One chunk's outcome: counters, events, and the entries that go back to the queue."""

    def __init__(self, body: dict):
        self.body, self.bid, self.variant = body, body["b"], body.get("v")
        self.counts: Counter = Counter()
        self.events: list[dict] = []
        self.retry: list[str] = []  # back next second (rate)
        self.deferred: dict[str, float] = {}  # cid -> first deferred at
        self.sent: list[Message] = []  # claims SES took, to be marked sent
        self.defer_until: float | None = None  # the earliest next free slot of the deferred ones
        self.refused = False  # the second was full: no slot for any entry
        self.lock = threading.Lock()  # the recipients of a chunk are sent by several threads

    def count(self, *names: str, n: int = 1) -> None:
        with self.lock:
            for name in names:
                self.counts[name] += n
                if self.variant:
                    self.counts[f"{name}@{self.variant}"] += n

    def defer(self, cid: str, first: float, free_at: float) -> None:
        with self.lock:
            self.deferred[cid] = first
            self.defer_until = min(self.defer_until or free_at, free_at)

    def flush(self, requeue_rest: bool = True) -> dict | None:
        """Mark the sent claims sent, publish the events, send back what waits (not when the chunk
        failed: all of it comes back), add the counts; the counters after it (None: nothing to add).

        The marks are one BatchWriteItem of the claims as written plus SES's id (25 a call instead of
        an UpdateItem per email): a hit recorded on a message in the second between SES taking it and
        this write is overwritten (its event was published, its counts stand); a process killed before
        it leaves those claims ``sending``, which a redelivery after their lease sends again."""
        aws.batch_write([{"PutRequest": {"Item": m.serialize()}} for m in self.sent])
        self.sent = []
        bus.publish(*self.events)
        self.events = []
        requeue = []
        if self.retry and requeue_rest:
            refusals = self.body.get("r", 0) + 1 if self.refused else 0
            delay = backoff(refusals) if self.refused else math.ceil(_pace().next_second())
            body = {k: v for k, v in self.body.items() if k != "r"} | ({"r": refusals} if refusals else {})
            requeue.append(({**body, "c": self.retry}, delay))
        if self.deferred and requeue_rest:  # back when the first of them may get it (at most 15 minutes on)
            delay = min(DEFER_SECONDS, max(1, math.ceil(self.defer_until - clock.now())))
            requeue.append(({**self.body, "c": list(self.deferred), "d": self.deferred}, delay))
        launch.send_chunks(requeue)
        self.retry, self.deferred = [], {}
        counts, self.counts = dict(self.counts), Counter()
        return counters.add(self.bid, counts) if counts else None


def _pace():
    from funnelpilot.sending import pace

    return pace


def _slots(priority: str, want: int) -> int:
    """Slots of this second for ``want`` sends: a broadcast takes them in one call, a broadcast
    sent at funnel priority one at a time (the gate grants several only to a broadcast)."""
    pace = _pace()
    if want <= 0:
        return 0
    if priority == "broadcast":
        return pace.acquire(pace.BROADCAST, want)
    granted = 0
    while granted < want and pace.acquire(pace.FUNNEL):
        granted += 1
    return granted


def _message(chunk: _Chunk, spec: dict, cid: str, status: str, **fields) -> Message:
    mid = launch.message_id(chunk.bid, cid)
    return Message(cid, f"MSG#{mid}", message_id=mid, broadcast=chunk.bid, chunk=chunk.body["id"],
                   template=content.name(chunk.bid, chunk.variant), variant=chunk.variant, status=status,
                   list_name=spec["list"], created_at=clock.iso(), **fields)


def _sent_event(chunk: _Chunk, cid: str) -> dict:
    mid = launch.message_id(chunk.bid, cid)
    return bus.event("email.sent", cid, event_id=tokens.digest_id("es", mid), message_id=mid, broadcast=chunk.bid,
                     template=content.name(chunk.bid, chunk.variant),
                     **({"variant": chunk.variant} if chunk.variant else {}))


def _seen(chunk: _Chunk, cid: str, prior: Message) -> None:
    """An entry whose message item exists: a duplicate (counted as handled), or this chunk's own claim
    from an earlier delivery (counted then); a sent one's event is published again."""
    if prior.chunk != chunk.body["id"]:
        chunk.count("processed")
    if prior.status == "sent":
        chunk.events.append(_sent_event(chunk, cid))


def _block(chunk: _Chunk, spec: dict, cid: str, reason: str, kind: str = "blocked") -> None:
    """A recipient who gets no email, counted ``blocked_<reason>`` (or ``skipped_<reason>``) once: the
    message item records it (none for an unknown or erased contact)."""
    if reason not in GONE:
        message = _message(chunk, spec, cid, "blocked", reason=reason)
        prior = sequence._claim(message)
        if prior is not None and prior.status != "sending":
            return _seen(chunk, cid, prior)
        if prior is not None:  # a claim of an attempt that died: now blocked
            message.update(actions=[Message.status.set("blocked"), Message.reason.set(reason),
                                    Message.links.remove(), Message.lease_until.remove()])
    chunk.count("processed", "audience", kind, f"{kind}_{reason}")


def _cap(spec: dict, contact: Contact, mid: str) -> float | None:
    """None: the frequency cap (a funnel's default, across funnels and broadcasts) lets this email go
    now (``ignore``: always); else when the contact's next slot frees (funnelpilot.sending.cap)."""
    if spec["frequency_cap"] == "ignore":
        return None
    return cap.take(contact.pk, mid, funnel_spec.Funnel.frequency_cap, contact.marketing_log)


def _send(chunk: _Chunk, spec: dict, contact: Contact) -> str:
    """Claim, cap, SES, mark sent: ``sent``, ``seen`` (claimed before), ``blocked``, ``deferred`` or
    ``throttled`` (SES refused for the rate: the recipient goes back to the queue)."""
    cid, mid = contact.pk, launch.message_id(chunk.bid, contact.pk)
    try:
        links, raw = content.compose(chunk.bid, spec, contact, mid, chunk.variant)
    except TemplateError as exc:  # the content was rendered at create: a layout changed since
        logger.error("broadcast email cannot be rendered", extra={"broadcast": chunk.bid, "cause": str(exc)})
        raise
    message = _message(chunk, spec, cid, "sending", links=json.dumps(links),
                       lease_until=clock.now() + sequence.LEASE_SECONDS * clock.speed())
    prior = sequence._claim(message)
    if prior is not None:
        if prior.status == "sending" and prior.chunk == chunk.body["id"]:
            chunk.retry.append(cid)  # this chunk's own live claim (a duplicate delivery in flight): later
        else:
            _seen(chunk, cid, prior)
        return "seen"
    free_at = _cap(spec, contact, mid)
    if free_at is not None:
        first = float(chunk.body.get("d", {}).get(cid) or clock.now())
        if spec["frequency_cap"] == "defer" and free_at - first <= funnel_spec.Funnel.defer_up_to * 3600:
            sequence._release(message)
            if cid not in chunk.body.get("d", {}):
                chunk.count("deferred")
            chunk.defer(cid, first, free_at)
            return "deferred"
        message.update(actions=[Message.status.set("blocked"), Message.reason.set("frequency_cap"),
                                Message.links.remove(), Message.lease_until.remove()])
        chunk.count("processed", "audience", "skipped", "skipped_frequency_cap")
        return "blocked"
    try:
        ses_id = emails.send_raw(contact.email, raw, priority=None)
    except RecipientRejected as exc:
        message.update(actions=[Message.status.set("blocked"), Message.reason.set("recipient_rejected"),
                                Message.detail.set(exc.message), Message.links.remove(), Message.lease_until.remove()])
        chunk.count("processed", "audience", "blocked", "blocked_recipient_rejected")
        return "blocked"
    except ClientError as exc:
        sequence._release(message)
        if isinstance(transient(exc), SendRateExceeded):
            return "throttled"
        raise
    except Exception:
        sequence._release(message)
        raise
    message.status, message.ses_message_id, message.sent_at, message.lease_until = "sent", ses_id, clock.iso(), None
    chunk.sent.append(message)
    chunk.count("processed", "audience", "sent")
    chunk.events.append(_sent_event(chunk, cid))
    return "sent"


def _profiles(ids: list[str]) -> dict[str, Contact]:
    return {c.pk: c for c in Contact.batch_get([(cid, PROFILE) for cid in ids], consistent_read=True)}


def send_chunk(body: dict) -> dict:
    """Send one chunk (a queue message's body); what happened, by outcome."""
    chunk = _Chunk(body)
    state = store.state(chunk.bid)
    if state is None or state["status"] == store.CANCELLED:
        chunk.count("processed", "skipped", "skipped_cancelled", n=len(body["c"]))
        chunk.flush()
        return {"cancelled": len(body["c"])}
    if state["status"] == store.PAUSED and store.hold(chunk.bid, body["id"], body):
        return {"held": len(body["c"])}
    spec = store.spec(chunk.bid, state["digest"])
    excluded = specs.excluded(spec)
    # the second's slots first: only the entries they cover are read now (a blocked one wastes its slot)
    granted = _slots(spec["priority"], len(body["c"]))
    now, chunk.retry, chunk.refused = body["c"][:granted], body["c"][granted:], granted == 0
    contacts = _profiles(now) if now else {}
    outcomes: Counter = Counter()
    failed = True
    try:
        eligible = []
        for cid in now:
            contact = contacts.get(cid)
            reason = checks.blocked_reason(contact, {}, None, spec["list"])
            if reason is None and excluded & set(contact.segments or ()):
                reason = "excluded"
            if reason:
                _block(chunk, spec, cid, reason)
                outcomes["blocked"] += 1
            else:
                eligible.append(contact)
        if eligible:  # the second's slots are taken: these go out together (SES counts them in this second)
            with ThreadPoolExecutor(max_workers=min(SEND_THREADS, len(eligible))) as pool:
                sent = list(pool.map(lambda contact: _send(chunk, spec, contact), eligible))
            outcomes.update(sent)
            chunk.retry = [c.pk for c, outcome in zip(eligible, sent) if outcome == "throttled"] + chunk.retry
        failed = False
    finally:  # what was done is counted and announced, also when a send failed (the message comes back)
        counts = chunk.flush(requeue_rest=not failed)
    if counts is not None:
        counters.finish(chunk.bid, counts)
    return dict(outcomes)


def handle(event: dict) -> dict:
    """An SQS batch: each record a chunk (or a launcher's hand-off, ``{"due": detail}``); the failed
    ones are reported (``ReportBatchItemFailures``) and come back after the visibility timeout."""
    failures = []
    for record in event.get("Records", []):
        try:
            body = json.loads(record["body"])
            if "due" in body:
                bus.publish(launch.again(body["due"]))
            else:
                logger.info("chunk", extra={"broadcast": body["b"], "wave": body.get("w"), **send_chunk(body)})
        except Exception:
            logger.exception("chunk failed", extra={"message_id": record.get("messageId")})
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}
