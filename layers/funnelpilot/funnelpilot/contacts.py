"""Contacts: validating a signup, creating or updating the person, recording consent."""
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pynamodb.exceptions import UpdateError
from pynamodb.transactions import TransactWrite

from funnelpilot import bus, clock, tokens
from funnelpilot.config import config
from funnelpilot.consent import list_settings
from funnelpilot.errors import InvalidField
from funnelpilot.models import PROFILE, ConsentRecord, Contact, connection

# Deliberately strict: what a landing page should accept, not everything RFC 5322 allows.
_EMAIL = re.compile(r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_TRUE = {"true", "on", "yes", "1"}
UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
DEFAULT_LIST = "newsletter"


@dataclass(frozen=True)
class Signup:
    email: str
    list_name: str = DEFAULT_LIST
    first_name: str | None = None
    lead_magnet: str | None = None
    utm: dict = field(default_factory=dict)
    redirect: str | None = None
    timezone: str | None = None
    is_bot: bool = False


def normalise_email(raw: str) -> str:
    return raw.strip().lower()


def _text(fields: dict, name: str, max_len: int) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidField(name, f"{name} must be a string")
    value = value.strip()
    if len(value) > max_len:
        raise InvalidField(name, f"{name} is longer than {max_len} characters")
    if any(ord(c) < 32 for c in value):
        raise InvalidField(name, f"{name} contains control characters")
    return value or None


def parse_signup(fields: dict) -> Signup:
    """Validate a signup form (JSON or form-encoded, already decoded to a dict)."""
    if _text(fields, "website", 2000):  # honeypot: humans never see this field
        return Signup(email="", is_bot=True)
    raw_email = _text(fields, "email", 254)
    if not raw_email:
        raise InvalidField("email", "email is required")
    email = normalise_email(raw_email)
    local = email.split("@", 1)[0]
    if not _EMAIL.match(email) or len(local) > 64 or ".." in email:
        raise InvalidField("email", "email is not a valid address")
    consent = fields.get("consent")
    if not (consent is True or (isinstance(consent, str) and consent.strip().lower() in _TRUE)):
        raise InvalidField("consent", "consent must be given (true)")
    list_name = (_text(fields, "list", 64) or DEFAULT_LIST).lower()
    if not _SLUG.match(list_name):
        raise InvalidField("list", "list must be a short slug (a-z, 0-9, - and _)")
    lead_magnet = _text(fields, "lead_magnet", 64)
    if lead_magnet and not _SLUG.match(lead_magnet.lower()):
        raise InvalidField("lead_magnet", "lead_magnet must be a short slug")
    redirect = _text(fields, "redirect", 2000)
    if redirect:
        parts = urlsplit(redirect)
        if parts.scheme not in ("https", "http") or (parts.hostname or "") not in config().redirect_hosts:
            raise InvalidField("redirect", "redirect must be an http(s) URL on an allowed host")
    utm = {k: v for k in UTM_KEYS if (v := _text(fields, k, 200))}
    return Signup(
        email=email,
        list_name=list_name,
        first_name=_text(fields, "first_name", 100),
        lead_magnet=lead_magnet.lower() if lead_magnet else None,
        utm=utm,
        redirect=redirect,
        timezone=_text(fields, "timezone", 64),
    )


def consent_source(page: str | None) -> str:
    """The form a consent came from: the page's scheme, host and path (never its query
    string, which may carry personal data), or ``signup`` when the browser sent none."""
    parts = urlsplit(page or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "signup"
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"[:300]


def subscribe(signup: Signup, *, ip: str | None, user_agent: str | None, page: str | None = None) -> str:
    """Create or update the contact and record consent in one transaction, then emit
    ``contact.subscribed``. Repeating it updates the same person, never duplicates.
    A suppressed contact (bounce, complaint) stays suppressed; one who unsubscribed and
    signs up again with fresh consent is active again.

    Double opt-in lists (``lists.yaml``): a contact not yet active stays ``pending`` and
    ``contact.pending`` is emitted instead (functions/confirm_mailer sends the link);
    ``contact.subscribed``, which starts funnels, follows the confirmation.
    """
    double_opt_in = bool(list_settings(signup.list_name)["double_opt_in"])
    cid = tokens.contact_id(signup.email)
    now = clock.iso()
    contact = Contact(cid, PROFILE)
    actions = [
        Contact.email.set(signup.email),
        Contact.lists.add({signup.list_name}),
        Contact.created_at.set(Contact.created_at | now),
        Contact.updated_at.set(now),
        Contact.status.set(Contact.status | ("pending" if double_opt_in else "active")),
    ]
    if signup.first_name:
        actions.append(Contact.first_name.set(signup.first_name))
    if signup.lead_magnet:
        actions.append(Contact.lead_magnets.add({signup.lead_magnet}))
    if signup.timezone:
        actions.append(Contact.timezone.set(signup.timezone))
    if signup.utm:
        actions.append(Contact.utm.set(Contact.utm | signup.utm))
    consent = ConsentRecord(cid, f"CONSENT#{now}#{signup.list_name}", list_name=signup.list_name,
                            source=consent_source(page), ip=ip, user_agent=user_agent, given_at=now)
    with TransactWrite(connection=connection()) as tx:
        tx.update(contact, actions=actions)
        tx.save(consent)
    resubscribed = _reactivate_if_unsubscribed(contact, double_opt_in)
    if double_opt_in and Contact.get(cid, PROFILE, attributes_to_get=["status"]).status == "pending":
        bus.publish(bus.event("contact.pending", cid, list=signup.list_name, lead_magnet=signup.lead_magnet))
        return cid
    # lead_magnet only when there is one: funnels trigger on its existence (delivery)
    magnet = {"lead_magnet": signup.lead_magnet} if signup.lead_magnet else {}
    bus.publish(bus.event("contact.subscribed", cid, list=signup.list_name, resubscribed=resubscribed,
                          **magnet, **signup.utm))
    return cid


def _reactivate_if_unsubscribed(contact: Contact, double_opt_in: bool) -> bool:
    """Fresh consent after an unsubscribe re-activates (pending again on a double opt-in
    list); a single opt-in signup also activates a pending contact; suppression stays."""
    condition = Contact.status == "unsubscribed"
    if not double_opt_in:
        condition = Contact.status.is_in("unsubscribed", "pending")
    try:
        contact.update(actions=[Contact.status.set("pending" if double_opt_in else "active"),
                                Contact.status_reason.remove()], condition=condition)
        return True
    except UpdateError:
        return False
