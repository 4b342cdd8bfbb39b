"""SES feedback (configuration set -> EventBridge default bus -> functions/ses_feedback).

- hard bounce (``bounceType: Permanent``): suppress the contact at once;
- soft bounce (``Transient``/``Undetermined``; SES reports one only after its own retries
  gave up): count it, suppress after ``SOFT_BOUNCE_LIMIT`` in a row (a delivery resets the count);
- complaint: suppress at once;
- delivery: recorded on the message (``delivered_at``, which the engagement rules use) and
  counted (``delivered``, funnelpilot.metrics) here: no event on the bus, which only the
  counters read, and no counted-once marker: the write that sets the message's first
  ``delivered_at`` is the guard (a copy of the event finds it set and counts nothing).
A bounce and a complaint are counted here the same way (``bounced``, ``complained``: the
write that sets the message's first ``bounced_at``, ``complained_at``), and published
(``email.bounced``, ``email.complained``: funnel triggers and waits may use them).

The contact is found from the recipient address (contact_id is a keyed hash of it), the
message from our ``X-Funnelpilot-Message-Id`` header, which SES copies into ``mail.headers``.
Idempotent on SES's own ids, not on the EventBridge event id (a re-published copy of an SES
event gets a new one): a bounce or complaint on its ``feedbackId``, a delivery on the SES
message id. Emitted events reuse that key, status changes are conditional, and a soft
bounce is one conditional UpdateItem on the profile that records its key too (no marker item,
no transaction). A delivery's reset of the count is conditioned on the last soft bounce being
older than the delivery, so a copy of an old delivery resets nothing and needs no marker; a reset
stamps the delivery's time, and a bounce older than it is not counted in the new row; without
soft bounces a delivery writes nothing.
"""
import os
from datetime import datetime, timezone

from botocore.exceptions import ClientError
from pynamodb.exceptions import UpdateError

from funnelpilot import aws, bus, clock, consent, contacts, metrics, tokens
from funnelpilot.config import config
from funnelpilot.models import PROFILE, Message, is_conditional_failure

def soft_bounce_limit() -> int:
    return int(os.environ.get("SOFT_BOUNCE_LIMIT", "3"))


def _header(mail: dict, name: str) -> str | None:
    for h in mail.get("headers") or []:
        if h.get("name", "").lower() == name.lower():
            return h.get("value")
    return None


def _iso(ses_time: str | None) -> str:
    if not ses_time:
        return clock.iso()
    dt = datetime.fromisoformat(ses_time.replace("Z", "+00:00")).astimezone(timezone.utc)
    return clock.iso(dt.timestamp())


def _mark_message(cid: str, message_id: str | None, attribute, when: str, first: bool = False) -> Message | None:
    """Set ``attribute`` on the message (``first``: only if unset): the item as the write left it
    (its fields name the funnel, step and template: no read for them), None when nothing was set."""
    if not message_id:
        return None
    condition = Message.pk.exists() & attribute.does_not_exist() if first else Message.pk.exists()
    message = Message(cid, f"MSG#{message_id}")
    try:
        aws.retry_conflicts(lambda: message.update(actions=[attribute.set(when)], condition=condition))
    except UpdateError as exc:
        if not is_conditional_failure(exc):
            raise
        return None
    return message


def handle(event: dict) -> list[str]:
    """Apply one SES event (EventBridge shape); returns what was done, per recipient."""
    detail = event["detail"]
    kind = detail.get("eventType") or detail.get("notificationType")
    mail = detail.get("mail", {})
    if _header(mail, "X-Funnelpilot-Test"):  # `funnelpilot send-test`: the identity's default configuration set
        return ["test send: not counted"]  # publishes its events too; a test counts nothing, suppresses nobody
    message_id = _header(mail, "X-Funnelpilot-Message-Id")
    event_id = f"ses-{_feedback_key(kind, detail) or event['id']}"
    done = []
    if kind == "Bounce":
        bounce = detail["bounce"]
        hard = bounce.get("bounceType") == "Permanent"
        for r in bounce.get("bouncedRecipients", []):
            cid = tokens.contact_id(contacts.normalise_email(r["emailAddress"]))
            marked = _mark_message(cid, message_id, Message.bounced_at, _iso(bounce.get("timestamp")), first=True)
            fields = consent.message_fields(cid, message_id, marked)
            entry = bus.event("email.bounced", cid, event_id=f"{event_id}-{cid}", hard=hard,
                              bounce_type=bounce.get("bounceType"), bounce_subtype=bounce.get("bounceSubType"), **fields)
            if marked is not None:  # the message's first bounce: counted once, here
                metrics.counted(entry)
            bus.publish(entry)
            if hard:
                consent.suppress(cid, "hard_bounce", event_id=f"{event_id}-{cid}", **fields)
                done.append(f"{cid}: hard bounce")
            elif _count_soft_bounce(cid, event_id, _iso(bounce.get("timestamp"))) >= soft_bounce_limit():
                consent.suppress(cid, "soft_bounces", event_id=f"{event_id}-{cid}", **fields)
                done.append(f"{cid}: soft bounce limit")
            else:
                done.append(f"{cid}: soft bounce")
    elif kind == "Complaint":
        complaint = detail["complaint"]
        for r in complaint.get("complainedRecipients", []):
            cid = tokens.contact_id(contacts.normalise_email(r["emailAddress"]))
            marked = _mark_message(cid, message_id, Message.complained_at, _iso(complaint.get("timestamp")),
                                   first=True)
            fields = consent.message_fields(cid, message_id, marked)
            entry = bus.event("email.complained", cid, event_id=f"{event_id}-{cid}",
                              feedback_type=complaint.get("complaintFeedbackType"), **fields)
            if marked is not None:  # the message's first complaint: counted once, here
                metrics.counted(entry)
            bus.publish(entry)
            consent.suppress(cid, "complaint", event_id=f"{event_id}-{cid}", **fields)
            done.append(f"{cid}: complaint")
    elif kind == "Delivery":
        delivery = detail["delivery"]
        for address in delivery.get("recipients", []):
            cid = tokens.contact_id(contacts.normalise_email(address))
            delivered_at = _iso(delivery.get("timestamp"))
            marked = _mark_message(cid, message_id, Message.delivered_at, delivered_at, first=True)
            _reset_soft_bounces(cid, delivered_at)
            if marked is not None:
                metrics.record("email.delivered", {"event_id": f"{event_id}-{cid}", "contact_id": cid,
                                                   "occurred_at": clock.iso(),
                                                   **consent.message_fields(cid, message_id, marked)}, guarded=True)
            done.append(f"{cid}: delivered" if marked is not None else f"{cid}: delivery seen before")
    return done


def _feedback_key(kind: str | None, detail: dict) -> str | None:
    """SES's id of this feedback, the same in every copy of the event: ``feedbackId`` of a
    bounce or complaint, the SES message id of a delivery."""
    if kind in ("Bounce", "Complaint"):
        return (detail.get(kind.lower()) or {}).get("feedbackId")
    if kind == "Delivery" and detail.get("mail", {}).get("messageId"):
        return f"{detail['mail']['messageId']}-delivery"
    return None


def _count_soft_bounce(cid: str, event_id: str, bounced_at: str) -> int:
    """Add one soft bounce and stamp ``soft_bounce_at``, in one conditional UpdateItem on the
    profile: once per SES event (its key joins ``soft_bounce_ids``, the keys counted since the last
    reset) and only when it came after the delivery that last reset the count
    (``soft_bounce_reset_at``: an older bounce is not in the row). The contact's count since its
    last delivery, from the write's answer (a duplicate's: the profile as it was)."""
    try:  # retried while it meets a transaction on the profile: a conflict must not lose the bounce
        item = aws.retry_conflicts(lambda: aws.dynamodb().update_item(
            TableName=config().table, Key={"pk": {"S": cid}, "sk": {"S": PROFILE}},
            UpdateExpression="ADD soft_bounces :one, soft_bounce_ids :ids SET soft_bounce_at = :at",
            ConditionExpression="attribute_exists(pk) AND NOT contains(soft_bounce_ids, :id) AND "
                                "(attribute_not_exists(soft_bounce_reset_at) OR soft_bounce_reset_at < :at)",
            ExpressionAttributeValues={":one": {"N": "1"}, ":ids": {"SS": [event_id]}, ":id": {"S": event_id},
                                       ":at": {"S": bounced_at}},
            ReturnValues="UPDATED_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD"))["Attributes"]
    except ClientError as exc:
        if not aws.is_conditional_failure(exc):
            raise
        item = exc.response.get("Item") or {}  # a duplicate, an older bounce, or an address we do not know
    return int(item.get("soft_bounces", {}).get("N", "0"))


def _reset_soft_bounces(cid: str, delivered_at: str) -> None:
    """A delivery starts the count again, if there is one and the last soft bounce came before
    the delivery: a copy of an old delivery re-published after later soft bounces resets nothing.
    Most contacts have no count: one read (half a read unit) instead of a write."""
    table, key = config().table, {"pk": {"S": cid}, "sk": {"S": PROFILE}}
    item = aws.dynamodb().get_item(TableName=table, Key=key, ProjectionExpression="soft_bounces").get("Item")
    if not item:
        return  # no count (or an address we do not know): nothing to reset
    aws.conditional("update_item", TableName=table, Key=key,
                    UpdateExpression="REMOVE soft_bounces, soft_bounce_at, soft_bounce_ids SET soft_bounce_reset_at = :at",
                    ConditionExpression="attribute_not_exists(soft_bounce_at) OR soft_bounce_at <= :at",
                    ExpressionAttributeValues={":at": {"S": delivered_at}})
