"""Consent: unsubscribing, suppressing, sunsetting, and double opt-in per list.

Every change of a contact's status is one conditional update, in one transaction with the
event it emits (written to the outbox, funnelpilot.outbox, or carried by the change's consent
record: ``outbox.carry``), so a repeat (a second one-click
POST, a duplicate bounce) changes nothing and emits nothing, and no change goes without its
event. A status other than ``active`` blocks every marketing send (``sending.checks.blocked_reason``).

``sunset`` is not a suppression: it is what the re-engagement funnel does to someone who stopped
responding, and it stops marketing only (a transactional email still goes). Fresh consent brings
the person back to ``active``: a signup (contacts.subscribe: at once on a single opt-in list, through
the confirmation link on a double opt-in one), the preference centre's re-subscribe, or a purchase
(``reactivate``). ``unsubscribed`` and ``suppressed`` (bounce, complaint) are never revived by either.
"""
import logging
from functools import cache

import yaml
from pynamodb.exceptions import DoesNotExist, UpdateError

from funnelpilot import aws, bus, clock, outbox, tokens
from funnelpilot.config import config
from funnelpilot.errors import InvalidField, RecipientRejected
from funnelpilot.models import PROFILE, ConsentRecord, Contact, Message, is_conditional_failure

DEFAULT_CONFIRM_HOURS = 48
RESUBSCRIBABLE = ("unsubscribed", "sunset")  # statuses a signup's confirmed link brings back to active
logger = logging.getLogger(__name__)


def message_fields(cid: str, message_id: str | None, m: Message | None = None) -> dict:
    """funnel/step/template (variant, broadcast) of a message, for the events counters are built from
    (``m``: the item as a write returned it, else one GetItem)."""
    if not message_id:
        return {}
    if m is None:
        try:
            m = Message.get(cid, f"MSG#{message_id}")
        except DoesNotExist:
            return {"message_id": message_id}
    fields = {"message_id": message_id, "funnel": m.funnel, "step": m.step, "template": m.template}
    return fields | {k: v for k, v in (("variant", m.variant), ("broadcast", m.broadcast)) if v}


def _set_status(cid: str, status: str, reason: str | None, allowed_from: tuple[str, ...], *also: dict) -> bool:
    """Move the contact to ``status`` if it is in one of ``allowed_from``, with the
    transaction items ``also`` (its event in the outbox, a consent record, a condition check) in
    the same transaction; False when its status was none of them or a check of ``also`` failed
    (nothing is written). ``reason`` None: back to ``active``, the old reason and any pending
    re-subscription request are removed."""
    allowed = {f":from{i}": {"S": s} for i, s in enumerate(allowed_from)}
    values = {":status": {"S": status}, ":now": {"S": clock.iso()}, **allowed}
    if reason is None:
        expression = "SET #s = :status, updated_at = :now REMOVE status_reason, resubscribe_requested_at"
    else:
        expression = "SET #s = :status, status_reason = :reason, updated_at = :now"
        values[":reason"] = {"S": reason}
    update = {"Update": {
        "TableName": config().table, "Key": {"pk": {"S": cid}, "sk": {"S": PROFILE}},
        "UpdateExpression": expression,
        "ConditionExpression": f"attribute_exists(pk) AND #s IN ({', '.join(allowed)})",
        "ExpressionAttributeNames": {"#s": "status"}, "ExpressionAttributeValues": values}}
    try:
        aws.transact_write([update, *also])
    except Exception as exc:
        if aws.failed_conditions(exc):
            return False
        raise
    return True


def _record(cid: str, kind: str, source: str, event: dict) -> dict:
    """The transaction ``Put`` of a ``CONSENT#<time>#*#<kind>`` line (every list) of the consent history,
    carrying the change's ``event`` (funnelpilot.outbox.carry: no outbox item)."""
    now = clock.iso()
    record = ConsentRecord(cid, f"CONSENT#{now}#*#{kind}", list_name="*", source=source, given_at=now,
                           confirmation=kind, ip=None, user_agent=None)
    return outbox.carry(record.serialize(), event)


def unsubscribe(cid: str, message_id: str | None, source: str) -> bool:
    """Stop all marketing email to the contact; records the withdrawal of consent and
    emits ``contact.unsubscribed`` (once). True when this call changed the status."""
    event = bus.event("contact.unsubscribed", cid, source=source, **message_fields(cid, message_id))
    return _set_status(cid, "unsubscribed", source, ("active", "pending", "sunset"),
                       _record(cid, "withdrawn", source, event))


def suppress(cid: str, reason: str, *, event_id: str | None = None, **fields) -> bool:
    """Never email this contact again (hard bounce, complaint, too many soft bounces).
    Overrides an unsubscribe and a sunset; emits ``contact.suppressed`` once."""
    event = bus.event("contact.suppressed", cid, event_id=event_id and f"{event_id}-suppressed", reason=reason,
                      **fields)
    return _set_status(cid, "suppressed", reason, ("active", "pending", "unsubscribed", "sunset"), outbox.put(event))


def sunset(cid: str, reason: str, *, since: float, event_id: str, funnel: str) -> bool:
    """Stop marketing to an active contact who stopped responding: status ``sunset`` (``reason``), a
    ``#sunset`` line in the consent history and ``contact.sunset``, in one transaction, conditioned on
    no human engagement since ``since`` (the re-engagement journey's start; funnelpilot.inactivity's
    ``ACTIVITY`` item): someone who opened, clicked, visited or bought meanwhile stays. True when it
    changed the status."""
    quiet = {"ConditionCheck": {"TableName": config().table, "Key": {"pk": {"S": cid}, "sk": {"S": "ACTIVITY"}},
                                "ConditionExpression": "attribute_not_exists(last_at) OR last_at <= :since",
                                "ExpressionAttributeValues": {":since": {"N": str(since)}}}}
    event = bus.event("contact.sunset", cid, event_id=event_id, reason=reason, funnel=funnel)
    return _set_status(cid, "sunset", reason, ("active",), quiet,
                       _record(cid, "sunset", f"funnel {funnel}: {reason}", event))


def reactivate(cid: str, source: str, *, event_id: str | None = None) -> bool:
    """Fresh consent from a sunset contact outside a signup (a purchase, ``order.placed``; the
    preference centre's re-subscribe): back to ``active``, a ``#reactivated`` line in the consent
    history and ``contact.reactivated`` (``source``), once. Any other status is left as it is."""
    event = bus.event("contact.reactivated", cid, event_id=event_id, source=source)
    return _set_status(cid, "active", None, ("sunset",), _record(cid, "reactivated", source, event))


# ------------------------------------------------------------------ double opt-in
@cache
def _lists() -> dict:
    path = config().content_dir / "lists.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def declared_lists() -> list[str]:
    """The names of the lists declared in ``lists.yaml``."""
    return list(_lists().get("lists") or {})


def require_list(name: str) -> None:
    """A signup names a list declared in ``lists.yaml``, or is refused (400, field ``list``)."""
    if name not in (_lists().get("lists") or {}):
        raise InvalidField("list", f"unknown list {name[:64]!r}")


def list_settings(name: str) -> dict:
    """Settings of a declared list from ``lists.yaml``, over its ``default`` (double opt-in
    unless a list says otherwise)."""
    doc = _lists()
    return {"double_opt_in": True, "confirm_hours": DEFAULT_CONFIRM_HOURS,
            **(doc.get("default") or {}), **((doc.get("lists") or {}).get(name) or {})}


def confirm_url(cid: str, list_name: str, lead_magnet: str | None) -> str:
    expires = int(clock.now() + float(list_settings(list_name)["confirm_hours"]) * 3600)
    return tokens.url("confirm", "confirm", cid, list_name, lead_magnet or "", str(expires))


def confirm(token: str, *, ip: str | None = None, user_agent: str | None = None) -> str | None:
    """Confirm a double opt-in link; the contact id, or None for an invalid or expired link or a
    contact it cannot activate (suppressed, erased, unsubscribed with no signup since).

    The link is the only way from ``pending`` to ``active``, and from ``unsubscribed`` (or, on a double
    opt-in list, ``sunset``) back to ``active`` once a signup asked for it (``resubscribe_requested_at``): it was sent to the
    address, so the click is its owner's. The first confirmation activates the contact, stores a
    ``CONSENT#…#confirmed`` record (when, from which IP and browser) and emits
    ``contact.confirmed`` and then ``contact.subscribed`` (which starts the funnels), carried by that
    record (funnelpilot.outbox.carry), all in one transaction; a repeat click emits nothing."""
    fields = tokens.verify("confirm", token, 4)
    if fields is None:
        return None
    cid, list_name, lead_magnet, expires = fields
    if not expires.isdigit() or clock.now() > int(expires):
        return None
    try:
        contact = Contact.get(cid, PROFILE, consistent_read=True)
    except DoesNotExist:
        return None
    resubscribe = contact.status in RESUBSCRIBABLE and contact.resubscribe_requested_at is not None
    if contact.status != "pending" and not resubscribe:
        return cid if contact.status == "active" else None
    now = clock.iso()
    utm = contact.utm.as_dict() if contact.utm else {}
    activate = {"Update": {
        "TableName": config().table, "Key": {"pk": {"S": cid}, "sk": {"S": PROFILE}},
        "UpdateExpression": "SET #s = :active, confirmed_at = :now, updated_at = :now "
                            "REMOVE resubscribe_requested_at, status_reason",
        "ConditionExpression": "#s = :pending OR (#s IN (:unsubscribed, :sunset) "
                               "AND attribute_exists(resubscribe_requested_at))",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {":active": {"S": "active"}, ":pending": {"S": "pending"},
                                      ":unsubscribed": {"S": "unsubscribed"}, ":sunset": {"S": "sunset"},
                                      ":now": {"S": now}}}}
    record = ConsentRecord(cid, f"CONSENT#{now}#{list_name}#confirmed", list_name=list_name, source="confirm",
                           ip=ip, user_agent=user_agent, given_at=now, confirmation="confirmed", confirmed_at=now)
    try:
        aws.transact_write([
            activate,  # the consent record carries the two events, in order (funnelpilot.outbox.carry)
            outbox.carry(record.serialize(), bus.event("contact.confirmed", cid, list=list_name),
                         bus.event("contact.subscribed", cid, list=list_name, resubscribed=resubscribe, confirmed=True,
                                   **({"lead_magnet": lead_magnet} if lead_magnet else {}), **utm))])
    except Exception as exc:
        if 0 not in aws.failed_conditions(exc):
            raise
        # the status changed since it was read (a click at once with this one also made the record of
        # this second: its condition failed too): answer for the status it has now
        return confirm(token, ip=ip, user_agent=user_agent)
    return cid


CONFIRM_RESEND_SECONDS = 600  # a form resubmitted by a bot does not flood someone's inbox


def confirmation_context(contact: Contact, list_name: str, lead_magnet: str | None) -> dict:
    """What the confirmation email (``confirm``) may use (with ``emails.sender_context()``)."""
    from funnelpilot import preferences  # it imports this module

    return {"first_name": contact.first_name or "there", "contact": {"first_name": contact.first_name or None},
            "list": list_name, "list_title": preferences.title(list_name),
            "confirm_url": confirm_url(contact.pk, list_name, lead_magnet),
            "confirm_hours": list_settings(list_name)["confirm_hours"]}


def confirmation_email(contact: Contact, list_name: str, lead_magnet: str | None, message_id: str) -> bytes:
    """The confirmation email as SES gets it (raw MIME)."""
    from funnelpilot.channels import emails# jinja2 only where an email is rendered

    rendered = emails.render("confirm", confirmation_context(contact, list_name, lead_magnet))
    return emails.build_mime(to=contact.email, rendered=rendered, message_id=message_id, headers={}, email="confirm")


def send_confirmation(cid: str, list_name: str, lead_magnet: str | None, event_id: str) -> str | None:
    """Email the double opt-in link to a pending contact, or to an unsubscribed (sunset) one a signup
    asked to re-subscribe (at most once per 10 minutes); the message id, or None when nothing
    was sent. A recipient SES rejects (the sandbox's unverified addresses) is logged and not
    retried; any other failure releases the 10-minute claim and is raised, so the asynchronous
    retry sends it."""
    from funnelpilot.channels import emails  # jinja2 only where an email is rendered
    from funnelpilot.sending import pace

    now = clock.now()
    stamp = clock.iso(now)
    try:
        Contact(cid, PROFILE).update(
            actions=[Contact.confirm_sent_at.set(stamp)],
            condition=Contact.pk.exists()
            & ((Contact.status == "pending")
               | (Contact.status.is_in(*RESUBSCRIBABLE) & Contact.resubscribe_requested_at.exists()))
            & (Contact.confirm_sent_at.does_not_exist()
               | (Contact.confirm_sent_at < clock.iso(now - CONFIRM_RESEND_SECONDS))))
    except UpdateError as exc:
        if is_conditional_failure(exc):
            return None
        raise
    contact = Contact.get(cid, PROFILE)
    message_id = tokens.digest_id("c", event_id)
    raw = confirmation_email(contact, list_name, lead_magnet, message_id)
    try:
        emails.send_raw(contact.email, raw, priority=pace.TRANSACTIONAL)
    except RecipientRejected as exc:
        logger.warning("confirmation rejected by SES", extra={"contact_id": cid, "detail": exc.message})
        return None
    except Exception:
        try:
            Contact(cid, PROFILE).update(actions=[Contact.confirm_sent_at.remove()],
                                         condition=Contact.confirm_sent_at == stamp)
        except UpdateError:  # the claim then lasts its 10 minutes
            pass
        raise
    return message_id
