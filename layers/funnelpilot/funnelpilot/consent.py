"""Consent: unsubscribing, suppressing, and double opt-in per list.

Every change of a contact's status is one conditional UpdateItem, so a repeat (a second
one-click POST, a duplicate bounce) changes nothing and emits nothing. A status other
than ``active`` blocks every marketing send (``sequence.blocked_reason``).
"""
from functools import cache

import yaml
from pynamodb.exceptions import DoesNotExist, UpdateError

from funnelpilot import bus, clock, tokens
from funnelpilot.config import config
from funnelpilot.models import PROFILE, ConsentRecord, Contact, Message, is_conditional_failure

DEFAULT_CONFIRM_HOURS = 48


def message_fields(cid: str, message_id: str | None) -> dict:
    """funnel/step/template of a message, for the events counters are built from."""
    if not message_id:
        return {}
    try:
        m = Message.get(cid, f"MSG#{message_id}")
    except DoesNotExist:
        return {"message_id": message_id}
    fields = {"message_id": message_id, "funnel": m.funnel, "step": m.step, "template": m.template}
    return fields | ({"variant": m.variant} if m.variant else {})


def _set_status(cid: str, status: str, reason: str, allowed_from: tuple[str, ...]) -> bool:
    """Move the contact to ``status`` if it is in one of ``allowed_from``; False otherwise."""
    now = clock.iso()
    condition = Contact.pk.exists() & Contact.status.is_in(*allowed_from)
    try:
        Contact(cid, PROFILE).update(actions=[Contact.status.set(status), Contact.status_reason.set(reason),
                                              Contact.updated_at.set(now)], condition=condition)
    except UpdateError as exc:
        if is_conditional_failure(exc):
            return False
        raise
    return True


def unsubscribe(cid: str, message_id: str | None, source: str) -> bool:
    """Stop all marketing email to the contact; records the withdrawal of consent and
    emits ``contact.unsubscribed`` (once). True when this call changed the status."""
    if not _set_status(cid, "unsubscribed", source, ("active", "pending")):
        return False
    now = clock.iso()
    ConsentRecord(cid, f"CONSENT#{now}#withdrawn", list_name="*", source=source, given_at=now,
                  ip=None, user_agent=None).save()
    bus.publish(bus.event("contact.unsubscribed", cid, source=source, **message_fields(cid, message_id)))
    return True


def suppress(cid: str, reason: str, *, event_id: str | None = None, **fields) -> bool:
    """Never email this contact again (hard bounce, complaint, too many soft bounces).
    Overrides an unsubscribe; emits ``contact.suppressed`` once."""
    if not _set_status(cid, "suppressed", reason, ("active", "pending", "unsubscribed")):
        return False
    bus.publish(bus.event("contact.suppressed", cid, event_id=event_id and f"{event_id}-suppressed",
                          reason=reason, **fields))
    return True


# ------------------------------------------------------------------ double opt-in
@cache
def _lists() -> dict:
    path = config().content_dir / "lists.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def list_settings(name: str) -> dict:
    """Settings of a list from ``lists.yaml`` (``default`` applies to unnamed lists)."""
    doc = _lists()
    return {"double_opt_in": False, "confirm_hours": DEFAULT_CONFIRM_HOURS,
            **(doc.get("default") or {}), **((doc.get("lists") or {}).get(name) or {})}


def confirm_url(cid: str, list_name: str, lead_magnet: str | None) -> str:
    expires = int(clock.now() + float(list_settings(list_name)["confirm_hours"]) * 3600)
    return tokens.url("confirm", "confirm", cid, list_name, lead_magnet or "", str(expires))


def confirm(token: str) -> str | None:
    """Confirm a double opt-in link; the contact id, or None for an invalid or expired link.

    The first confirmation activates the contact and emits ``contact.confirmed`` and then
    ``contact.subscribed`` (which starts the funnels); a repeat click emits nothing."""
    fields = tokens.verify("confirm", token, 4)
    if fields is None:
        return None
    cid, list_name, lead_magnet, expires = fields
    if not expires.isdigit() or clock.now() > int(expires):
        return None
    now = clock.iso()
    try:
        Contact(cid, PROFILE).update(
            actions=[Contact.status.set("active"), Contact.confirmed_at.set(now), Contact.updated_at.set(now)],
            condition=Contact.pk.exists() & (Contact.status == "pending"))
    except UpdateError as exc:
        if not is_conditional_failure(exc):
            raise
        try:
            contact = Contact.get(cid, PROFILE)
        except DoesNotExist:
            return None
        return cid if contact.status != "erased" else None
    contact = Contact.get(cid, PROFILE)
    utm = contact.utm.as_dict() if contact.utm else {}
    bus.publish(bus.event("contact.confirmed", cid, list=list_name),
                bus.event("contact.subscribed", cid, list=list_name, resubscribed=False, confirmed=True,
                          **({"lead_magnet": lead_magnet} if lead_magnet else {}), **utm))
    return cid


CONFIRM_RESEND_SECONDS = 600  # a form resubmitted by a bot does not flood someone's inbox


def send_confirmation(cid: str, list_name: str, lead_magnet: str | None, event_id: str) -> str | None:
    """Email the double opt-in link to a pending contact (at most once per 10 minutes);
    the message id, or None when nothing was sent."""
    from funnelpilot import emails  # jinja2 only where an email is rendered

    now = clock.now()
    try:
        Contact(cid, PROFILE).update(
            actions=[Contact.confirm_sent_at.set(clock.iso(now))],
            condition=Contact.pk.exists() & (Contact.status == "pending")
            & (Contact.confirm_sent_at.does_not_exist()
               | (Contact.confirm_sent_at < clock.iso(now - CONFIRM_RESEND_SECONDS))))
    except UpdateError as exc:
        if is_conditional_failure(exc):
            return None
        raise
    contact = Contact.get(cid, PROFILE)
    message_id = tokens.digest_id("c", event_id)
    rendered = emails.render("confirm", {"first_name": contact.first_name or "there", "list": list_name,
                                         "confirm_url": confirm_url(cid, list_name, lead_magnet),
                                         "confirm_hours": list_settings(list_name)["confirm_hours"]})
    raw = emails.build_mime(to=contact.email, rendered=rendered, message_id=message_id, headers={})
    emails.send_raw(contact.email, raw)
    return message_id
