"""Contacts: validating a signup, creating or updating the person, recording consent."""
import re
import uuid
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from urllib.parse import urlsplit

from funnelpilot import aws, bus, clock, outbox, ratelimit, tokens, urls
from funnelpilot.audience import fields as custom_fields
from funnelpilot.channels.phone import parse_phone
from funnelpilot.config import config
from funnelpilot.consent import RESUBSCRIBABLE, list_settings, require_list
from funnelpilot.errors import InvalidField, RateLimited
from funnelpilot.models import PROFILE

# Deliberately strict: what a landing page should accept, not everything RFC 5322 allows.
_EMAIL = re.compile(r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_TRUE = {"true", "on", "yes", "1"}
# A "first name" that is a link, an address or an RFC 2047 encoded word is no name: it is dropped
# (the emails say "there"), so it can never become a link or an address in an email or its subject.
_NOT_A_NAME = re.compile(r"://|@|=\?|\bwww\.", re.IGNORECASE)
UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
DEFAULT_LIST = "newsletter"
# What a signup form may send besides the custom fields declared in infra/fields.yaml.
SIGNUP_FIELDS = {"email", "list", "first_name", "consent", "consent_version", "lead_magnet", "redirect", "timezone",
                 "website", "phone", "sms_consent", *UTM_KEYS}


@dataclass(frozen=True)
class Signup:
    email: str
    list_name: str = DEFAULT_LIST
    first_name: str | None = None
    lead_magnet: str | None = None
    utm: dict = field(default_factory=dict)
    redirect: str | None = None
    timezone: str | None = None
    properties: dict = field(default_factory=dict)  # custom fields (funnelpilot.audience.fields)
    consent_version: str | None = None
    phone: str | None = None  # E.164 (funnelpilot.channels.phone)
    sms_consent: bool = False  # its own checkbox: email consent never implies SMS consent
    is_bot: bool = False


def normalise_email(raw: str) -> str:
    return raw.strip().lower()


def parse_email(raw: str | None) -> str:
    """The normalised address, or ``InvalidField("email")``."""
    if not raw:
        raise InvalidField("email", "email is required")
    email = normalise_email(raw)
    local = email.split("@", 1)[0]
    # "=?": an RFC 2047 encoded word, which a header parser would decode inside an address
    if not _EMAIL.match(email) or len(local) > 64 or ".." in email or "=?" in email:
        raise InvalidField("email", "email is not a valid address")
    return email


def check_timezone(name: str | None) -> str | None:
    if name and name not in _zones():
        raise InvalidField("timezone", "timezone must be an IANA time zone such as Europe/Paris")
    return name


def _text(fields: dict, name: str, max_len: int) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidField(name, f"{name} must be a string")
    value = value.strip()
    if len(value) > max_len:
        raise InvalidField(name, f"{name} is longer than {max_len} characters")
    if any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f or c in "\u2028\u2029" for c in value):
        raise InvalidField(name, f"{name} contains control characters")
    return value or None


def _checked(value) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in _TRUE)


def parse_signup(fields: dict) -> Signup:
    """Validate a signup form (JSON or form-encoded, already decoded to a dict)."""
    if _text(fields, "website", 2000):  # honeypot: humans never see this field
        return Signup(email="", is_bot=True)
    email = parse_email(_text(fields, "email", 254))
    if not _checked(fields.get("consent")):
        raise InvalidField("consent", "consent must be given (true)")
    list_name = (_text(fields, "list", 64) or DEFAULT_LIST).lower()
    if not _SLUG.match(list_name):
        raise InvalidField("list", "list must be a short slug (a-z, 0-9, - and _)")
    require_list(list_name)
    lead_magnet = _text(fields, "lead_magnet", 64)
    if lead_magnet and not _SLUG.match(lead_magnet.lower()):
        raise InvalidField("lead_magnet", "lead_magnet must be a short slug")
    redirect = _text(fields, "redirect", 2000)
    if redirect:
        redirect = urls.allowed_redirect(redirect, config().redirect_hosts)
    first_name = _text(fields, "first_name", 100)
    timezone = check_timezone(_text(fields, "timezone", 64))
    utm = {k: v for k in UTM_KEYS if (v := _text(fields, k, 200))}
    properties = custom_fields.parse({k: v for k, v in fields.items() if k not in SIGNUP_FIELDS})
    consent_version = custom_fields.check_consent_version(_text(fields, "consent_version", 32))
    phone = parse_phone(_text(fields, "phone", 32))
    sms_consent = _checked(fields.get("sms_consent"))
    if sms_consent and not phone:
        raise InvalidField("phone", "phone is required for SMS consent")
    return Signup(
        email=email,
        list_name=list_name,
        first_name=None if first_name and _NOT_A_NAME.search(first_name) else first_name,
        lead_magnet=lead_magnet.lower() if lead_magnet else None,
        utm=utm,
        redirect=redirect,
        timezone=timezone,
        properties=properties,
        consent_version=consent_version,
        phone=phone,
        sms_consent=sms_consent,
    )


@cache
def _zones() -> frozenset[str]:
    """The IANA zone keys in tzdata's list (what zoneinfo loads on Lambda, which has no system
    database; cheaper than ``available_timezones``, which also walks the system's): never a
    directory such as ``Europe``, nor a path such as ``localtime``."""
    return frozenset(resources.files("tzdata").joinpath("zones").read_text().split())


def consent_source(page: str | None) -> str:
    """The form a consent came from: the page's scheme, host and path (never its query
    string, which may carry personal data), or ``signup`` when the browser sent none."""
    parts = urlsplit(page or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "signup"
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"[:300]


def _limits(ip: str, at: float) -> list[tuple[str, int, int, dict]]:
    """(field, limit, window, its counter's transaction ``Update``) of the per-source-IP limit
    (``config().signup_limits``), counted in its fixed window (``ratelimit``). The per-address one is
    counted on the profile itself (``_window``)."""
    return [(name, limit, window, {"Update": ratelimit.counter(f"signup-{name}", tokens.keyed_id(name, ip),
                                                               limit, window, at)})
            for name, limit, window in config().signup_limits if name == "ip"]


def _window(at: float, old: dict) -> tuple[str, int, int, list[str]]:
    """The per-address limit's counter on the profile: (its attribute ``signups_<window index>``, limit,
    window, the attributes of past windows on the profile as read, which the update removes)."""
    [(limit, window)] = [(limit, window) for name, limit, window in config().signup_limits if name == "email"]
    attribute = f"signups_{int(at // window)}"
    return attribute, limit, window, [a for a in old if a.startswith("signups_") and a != attribute]


_SUBSCRIBE_ATTEMPTS = 4  # a status changing under each attempt (concurrent signups, unsubscribes)


def subscribe(signup: Signup, *, ip: str, user_agent: str | None, at: float, page: str | None = None) -> str:
    """Count the signup against its limits, create or update the contact, record consent and write
    its event on that consent record, all in one TransactWriteItems (``outbox.carry``: the relay
    publishes the event; low-level client, like every write of the signup path). A record of the
    same list and second (a form posted twice at once) is overwritten, its event then in an outbox item. Repeating it updates the same person,
    never duplicates. ``at``: the request's arrival time (real seconds, whatever the simulated clock
    does), which picks the limits' windows; a full window raises ``RateLimited`` (the source IP's
    first) and, the transaction being cancelled, stores nothing at all, not even a count.

    Anyone can post any address, so a signup never moves a contact to ``active``
    but for a new person on a single opt-in list (``lists.yaml``) or one already active:

    - new, double opt-in list (the default): ``pending`` and ``contact.pending``
      (functions/confirm_mailer sends the link; ``consent.confirm`` activates);
    - new, single opt-in list, or already ``active``: ``contact.subscribed`` (starts funnels);
    - ``pending``: stays pending, whatever the list; ``contact.pending`` again (a new link, the
      10-minute resend throttle applies) and the confirmation covers every list asked for;
    - ``unsubscribed``: stays unsubscribed and is marked ``resubscribe_requested_at``;
      ``contact.pending`` sends the owner a confirmation link, the only way back to ``active``;
    - ``sunset`` (no response, funnelpilot.consent): the signup is fresh consent. On a single opt-in
      list ``active`` again and ``contact.subscribed`` (``resubscribed``); on a double opt-in list as
      ``unsubscribed`` above, the confirmation link brings them back;
    - ``suppressed`` (bounce, complaint), ``erased`` (an erasure in progress): nothing changes
      but the lists, and no event.

    The ``CONSENT#`` record says which of these it was (``confirmation``); the caller answers the
    same in every case. The new status and the event depend on the status the profile has, which
    the write does not know in advance: it assumes a new person (one call, the common case)
    under a condition on that status; when the condition fails, DynamoDB returns the profile
    (``CancellationReasons``, ``ReturnValuesOnConditionCheckFailure``) and the transaction is made
    again for the status it holds (two calls).
    """
    double_opt_in = bool(list_settings(signup.list_name)["double_opt_in"])
    cid = tokens.contact_id(signup.email)
    now = clock.iso()
    limits = _limits(ip, at)
    profile = len(limits)  # the profile's index in the transaction
    seen = None  # the profile's status as last read; None: no profile (or one without a status)
    old = {}  # that profile, as DynamoDB returned it (``ALL_OLD``)
    carried = True  # the consent record carries the event: it is a new item (not one of this second and list)
    for _ in range(_SUBSCRIBE_ATTEMPTS):
        window = _window(at, old)
        status, kind, confirmation = _next_status(seen, double_opt_in)
        consent = _consent_record(cid, f"CONSENT#{now}#{signup.list_name}", list_name=signup.list_name,
                                  source=consent_source(page), ip=ip, user_agent=user_agent, given_at=now,
                                  confirmation=confirmation, wording_version=signup.consent_version,
                                  sms="given" if signup.sms_consent else None)
        events = []
        if kind == "pending":
            events.append(bus.event("contact.pending", cid, list=signup.list_name,
                                    lead_magnet=signup.lead_magnet, resubscribe=seen in RESUBSCRIBABLE))
        elif kind == "subscribed":  # lead_magnet only when there is one: funnels trigger on its existence (delivery)
            magnet = {"lead_magnet": signup.lead_magnet} if signup.lead_magnet else {}
            events.append(bus.event("contact.subscribed", cid, list=signup.list_name,
                                    resubscribed=seen == "sunset",
                                    **magnet, **signup.utm))
        items = [*(update for *_, update in limits), _profile_update(signup, cid, now, seen, status, "properties" in old, window)]
        if events and carried:  # the new record carries the event (no outbox item: 2 WRU less)
            items.append(outbox.carry(consent, *events))
        else:  # no event; or a record of this second and list exists, which a Put overwrites
            items += [{"Put": {"TableName": config().table, "Item": consent}}, *map(outbox.put, events)]
        try:
            aws.transact_write(items)
            return cid
        except Exception as exc:
            failed = aws.failed_conditions(exc)
            if profile in failed:
                old = exc.response["CancellationReasons"][profile].get("Item", {})
            attribute, limit, seconds, _ = window
            full = [limits[i][:3] for i in failed if i < profile]
            full += [("email", limit, seconds)] if profile in failed and int(old.get(attribute, {}).get("N", 0)) >= limit else []
            if full:
                name, limit, seconds = full[0]
                per = "source IP" if name == "ip" else "address"
                raise RateLimited(name, f"more than {limit} signups in {seconds} s from this {per}",
                                  ratelimit.retry_after(seconds, at)) from None
            collided = bool(events) and carried and profile + 1 in failed  # a signup of this list this second
            if profile not in failed and not collided:
                raise
            carried = carried and not collided
            if profile in failed:
                seen = old.get("status", {}).get("S")
    raise RuntimeError(f"contact {cid}: its status kept changing during the signup")


def _consent_record(cid: str, sk: str, **fields: str | None) -> dict:
    """A ``CONSENT#`` item (the attributes of ``models.ConsentRecord``, which reads it) as the low-level
    client writes it; a None field is left out."""
    return {"pk": {"S": cid}, "sk": {"S": sk}} | {k: {"S": v} for k, v in fields.items() if v is not None}


def _next_status(seen: str | None, double_opt_in: bool) -> tuple[str | None, str | None, str]:
    """(status after this signup, the event it writes: ``pending``, ``subscribed`` or None,
    the consent record's ``confirmation``) from the status the contact has."""
    if seen is None:
        return ("pending", "pending", "unconfirmed") if double_opt_in else ("active", "subscribed", "single_opt_in")
    if seen == "active":
        return seen, "subscribed", "already_active"
    if seen == "sunset" and not double_opt_in:
        return "active", "subscribed", "resubscribed"  # fresh consent ends a sunset (funnelpilot.consent)
    if seen in ("pending", *RESUBSCRIBABLE):
        return seen, "pending", "unconfirmed"  # only the owner's click on the link activates (consent.confirm)
    return seen, None, seen  # suppressed, erased: never reactivated by a signup


def _profile_update(signup: Signup, cid: str, now: str, seen: str | None, status: str, has_properties: bool,
                    window: tuple[str, int, int, list[str]]) -> dict:
    """The profile's Update, valid only while its status is still ``seen`` (and its properties map
    exists, or not, as read) and the address's ``window`` (``_window``) is not full: it counts the
    signup there (an ``ADD``, no item of its own) and removes the past windows' counters."""
    sets = ["email = :email", "created_at = if_not_exists(created_at, :now)", "updated_at = :now",
            "incarnation = if_not_exists(incarnation, :inc)"]  # new on every new profile (funnelpilot.erasure)
    adds = ["lists :list"]
    names = {"#s": "status"}
    values = {":email": {"S": signup.email}, ":now": {"S": now}, ":list": {"SS": [signup.list_name]},
              ":inc": {"S": uuid.uuid4().hex[:12]}}
    if status != seen:
        sets.append("#s = :status")
        values[":status"] = {"S": status}
    if seen in RESUBSCRIBABLE and status == seen:
        sets.append("resubscribe_requested_at = :now")  # lets the owner's confirmation reactivate
    if seen is not None:
        values[":seen"] = {"S": seen}
    if signup.first_name:
        sets.append("first_name = :first_name")
        values[":first_name"] = {"S": signup.first_name}
    if signup.lead_magnet:
        adds.append("lead_magnets :magnet")
        values[":magnet"] = {"SS": [signup.lead_magnet]}
    removes = []
    if signup.phone:  # the form showed the SMS checkbox: its state is the number's consent (given anew, or not)
        sets.append("phone = :phone")
        values[":phone"] = {"S": signup.phone}
        if signup.sms_consent:
            sets.append("sms_consent_at = :now")
            removes.append("sms_opted_out_at")  # the service's own opt-out list still decides (channels.sms)
        else:
            removes.append("sms_consent_at")
    if signup.timezone:
        sets.append("#tz = :tz")  # a DynamoDB reserved word
        names["#tz"] = "timezone"
        values[":tz"] = {"S": signup.timezone}
    if signup.utm:
        sets.append("utm = if_not_exists(utm, :utm)")
        values[":utm"] = {"M": {k: {"S": v} for k, v in signup.utm.items()}}
    condition = "attribute_not_exists(#s)" if seen is None else "#s = :seen"
    attribute, limit, _, past = window
    adds.append("#w :one")
    names["#w"] = attribute
    values |= {":one": {"N": "1"}, ":limit": {"N": str(limit)}}
    condition += " AND (attribute_not_exists(#w) OR #w < :limit)"
    if signup.properties:
        names["#p"] = "properties"
        if has_properties:  # set the fields the form sent, keep the others
            for i, (name, value) in enumerate(signup.properties.items()):
                sets.append(f"#p.#f{i} = :f{i}")
                names[f"#f{i}"] = name
                values[f":f{i}"] = custom_fields.attribute(value)
            condition += " AND attribute_exists(#p)"
        else:
            sets.append("#p = :props")
            values[":props"] = {"M": {k: custom_fields.attribute(v) for k, v in signup.properties.items()}}
            condition += " AND attribute_not_exists(#p)"
    if seen == "sunset" and status == "active":
        removes += ["status_reason", "resubscribe_requested_at"]
    for i, name in enumerate(past):
        names[f"#old{i}"] = name
        removes.append(f"#old{i}")
    expression = f"SET {', '.join(sets)} ADD {', '.join(adds)}" + (f" REMOVE {', '.join(removes)}" if removes else "")
    return {"Update": {"TableName": config().table, "Key": {"pk": {"S": cid}, "sk": {"S": PROFILE}},
                       "UpdateExpression": expression, "ExpressionAttributeNames": names,
                       "ExpressionAttributeValues": values, "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                       "ConditionExpression": condition}}
