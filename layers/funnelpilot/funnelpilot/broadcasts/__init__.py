"""Broadcasts: one email to the members of lists and segments, sent once - now, at an instant, or at a
local time in each person's zone - optionally with an A/B test of subjects (README "Broadcasts").

The API the admin routes and the CLI call. A broadcast's status goes ``draft -> scheduled -> sending ->
sent``; ``paused`` and ``cancelled`` on the way. Its spec and content are edited only while it is draft or
scheduled. Bad input raises ``InvalidField`` (HTTP 400 naming the field); a change its status does not
allow, ``NotAllowed`` (409). The work is done by the launcher (``launch``, on ``broadcast.due``) and the
send worker (``worker``, on SendQueue); this module only records and announces: AWS calls made here are
DynamoDB on ContactsTable (and MetricsTable for the report), ``events:PutEvents`` (schedule, resume,
cancel), SES ``SendRawEmail`` (a test send) and the signing key (links of a preview or test).
"""
import re
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from funnelpilot import bus, clock, contacts, tokens
from funnelpilot.broadcasts import content, counters, launch, spec as specs, store
from funnelpilot.errors import InvalidField
from funnelpilot.models import PROFILE, Contact

_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
LATEST = "Etc/GMT+12"  # UTC-12: the last zone to reach a local time


class NotAllowed(Exception):
    """A change the broadcast's status does not allow (HTTP 409)."""


def _view(state: dict, with_spec: bool = True) -> dict:
    out = dict(state)
    if with_spec:
        out["spec"] = store.spec(state["id"], state["digest"])
    return out


def _require(bid: str) -> dict:
    state = store.state(bid)
    if state is None:
        raise LookupError(bid)
    return state


def create(spec: dict) -> dict:
    """Check the spec and its content (rendered for a sample person) and store it as a draft."""
    spec = specs.validate(spec)
    content.check(spec["name"], spec)
    if store.state(spec["name"]) is not None:
        raise NotAllowed(f"a broadcast named {spec['name']!r} exists (update it, or choose another name)")
    return _view(store.insert(spec["name"], spec))


def get(bid: str) -> dict | None:
    state = store.state(bid)
    return _view(state) if state else None


def list_all() -> list[dict]:
    return [_view(s, with_spec=False) for s in store.listing()]


def update(bid: str, spec: dict) -> dict:
    """Replace the spec of a draft or scheduled broadcast (its name is its id: it stays)."""
    state = _require(bid)
    spec = specs.validate({**spec, "name": spec.get("name", bid)})
    if spec["name"] != bid:
        raise InvalidField("name", f"name: the broadcast is {bid!r} (its id); create a new one to rename it")
    content.check(bid, spec)
    if "ab" in spec and "local" in (state.get("when") or {}):
        raise InvalidField("ab", "ab: an A/B test sends its sample at one instant; it is scheduled at a local time")
    if not store.transition(bid, state["status"], store.EDITABLE, digest=store.put_spec(bid, spec)):
        raise NotAllowed(f"a {store.state(bid)['status']} broadcast cannot be edited")
    return get(bid)


def _contact(email: str | None) -> Contact:
    if not email:
        return content.sample_contact()
    address = contacts.parse_email(email)
    try:
        return Contact.get(tokens.contact_id(address), PROFILE)
    except Contact.DoesNotExist:
        raise InvalidField("email", "no contact has this address") from None


def audience_size(spec: dict) -> int:
    """Members of the included segments and lists (a contact in two counts twice; exclusions and
    the send-time checks are not subtracted): what a send would consider."""
    from funnelpilot import aws
    from funnelpilot.config import config

    total = 0
    for segment in specs.included(spec):
        request = {"TableName": config().table, "IndexName": "gsi1", "Select": "COUNT",
                   "KeyConditionExpression": "gsi1pk = :s", "ExpressionAttributeValues": {":s": {"S": f"SEG#{segment}"}}}
        while True:
            page = aws.dynamodb().query(**request)
            total += page["Count"]
            if "LastEvaluatedKey" not in page:
                break
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return total


def preview(bid: str, email: str | None = None) -> dict:
    """The email as ``email``'s contact (else a sample person) gets it: ``subject`` (``subjects`` per
    A/B variant), ``preheader``, ``html``, ``text``, and the ``audience`` it would go to."""
    state = _require(bid)
    spec = store.spec(bid, state["digest"])
    person = _contact(email)
    variants = specs.variants(spec)
    rendered = {v: content.render(bid, spec, person, v) for v in variants or [None]}
    first = rendered[variants[0] if variants else None]
    out = {"subject": first.subject, "preheader": spec.get("preheader"), "html": first.html, "text": first.text,
           "audience": audience_size(spec)}
    if variants:
        out["subjects"] = {v: r.subject for v, r in rendered.items()}
    return out


def send_test(bid: str, to: str) -> dict:
    """Send the email (each A/B variant) to ``to``: ``[Test]`` before the subject, untracked (links go
    straight to their targets, no pixel), not counted (no message item; SES feedback ignores it)."""
    from funnelpilot.channels import emails, mime
    from funnelpilot.sending import pace

    state = _require(bid)
    spec = store.spec(bid, state["digest"])
    try:
        address = contacts.parse_email(to)
    except InvalidField:
        raise InvalidField("to", "to: not an email address") from None
    person = _contact(address) if _known(address) else content.sample_contact(address)
    sent = []
    for variant in specs.variants(spec) or [None]:
        _links, raw = content.compose(bid, spec, person, tokens.digest_id("bt", bid, address, variant or ""), variant,
                                      tracked=False)
        raw = mime.as_test(raw, address, "[Test]")
        ses_id = emails.send_raw(address, raw, priority=pace.TRANSACTIONAL)
        sent.append({"variant": variant, "subject": f"[Test] {content.render(bid, spec, person, variant).subject}",
                     "ses_message_id": ses_id})
    return {"to": address, "subject": sent[0]["subject"], "sent": sent}


def _known(address: str) -> bool:
    try:
        Contact.get(tokens.contact_id(address), PROFILE, attributes_to_get=["pk"])
        return True
    except Contact.DoesNotExist:
        return False


def _when(when, spec: dict) -> dict:
    """The schedule, checked: ``{"now": true}``, ``{"at": ISO-8601}`` (a time zone, or UTC) or
    ``{"local": "HH:MM", "date": "YYYY-MM-DD", "fallback_zone": IANA}``."""
    if not isinstance(when, dict) or sum(k in when for k in ("now", "at", "local")) != 1:
        raise InvalidField("when", "schedule: one of {now: true}, {at: ISO-8601}, {local: HH:MM, date, fallback_zone}")
    if "now" in when:
        if when["now"] is not True:
            raise InvalidField("now", "now: true")
        return {"now": True}
    if "at" in when:
        try:
            at = datetime.fromisoformat(str(when["at"]).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidField("at", "at: an ISO-8601 time, e.g. 2026-12-08T09:00:00Z") from None
        at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
        if at.timestamp() <= clock.now():
            raise InvalidField("at", "at: that time has passed")
        return {"at": at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if "ab" in spec:
        raise InvalidField("local", "local: an A/B test sends its sample at one instant; schedule it now or at a time")
    local, day, zone = when.get("local"), when.get("date"), when.get("fallback_zone")
    if not isinstance(local, str) or not _HHMM.match(local):
        raise InvalidField("local", "local: a time of day, HH:MM (24 h)")
    try:
        assert isinstance(day, str) and _DATE.match(day)
        datetime.fromisoformat(day)
    except (AssertionError, ValueError):
        raise InvalidField("date", "date: the day to send on, YYYY-MM-DD") from None
    try:
        assert isinstance(zone, str) and zone
        ZoneInfo(zone)
    except Exception:  # noqa: BLE001 - unknown, empty, a directory: not a zone
        raise InvalidField("fallback_zone", f"fallback_zone: unknown time zone {str(zone)[:64]!r}") from None
    if datetime.fromisoformat(f"{day}T{local}").replace(tzinfo=ZoneInfo(LATEST)).timestamp() <= clock.now():
        raise InvalidField("date", f"date: {day} {local} has passed in every time zone")
    return {"local": local, "date": day, "fallback_zone": zone}


def schedule(bid: str, when: dict) -> dict:
    """Schedule a draft (or move a scheduled broadcast's time): ``now`` starts the launcher at once,
    ``at``/``local`` have it create the one-time schedule (a previous one is replaced)."""
    state = _require(bid)
    spec = store.spec(bid, state["digest"])
    when = _when(when, spec)
    plan = tokens.digest_id("bp", bid, str(clock.now()))
    if not store.transition(bid, store.SCHEDULED, store.EDITABLE, when=when, plan=plan):
        raise NotAllowed(f"a {store.state(bid)['status']} broadcast cannot be scheduled")
    bus.publish(launch.due(bid, launch.MAIN if "now" in when else "plan", plan=plan))
    return get(bid)


def pause(bid: str) -> dict:
    """Nothing more goes out: the worker holds the chunks it meets, the launcher the waves that come due."""
    if not store.transition(bid, store.PAUSED, (store.SCHEDULED, store.SENDING)):
        raise NotAllowed(f"a {_require(bid)['status']} broadcast cannot be paused")
    return get(bid)


def resume(bid: str) -> dict:
    """Send what the pause held, and go on."""
    state = _require(bid)
    status = store.SENDING if state.get("started_at") else store.SCHEDULED
    if not store.transition(bid, status, (store.PAUSED,)):
        raise NotAllowed(f"a {state['status']} broadcast cannot be resumed")
    bus.publish(launch.due(bid, "resume", plan=tokens.digest_id("br", bid, str(clock.now()))))
    return get(bid)


def cancel(bid: str) -> dict:
    """Stop for good: pending schedules are deleted, queued chunks dropped."""
    if not store.transition(bid, store.CANCELLED, (store.DRAFT, store.SCHEDULED, store.SENDING, store.PAUSED),
                            cancelled_at=clock.iso()):
        raise NotAllowed(f"a {_require(bid)['status']} broadcast cannot be cancelled")
    bus.publish(launch.due(bid, "cancel"))
    return get(bid)


def report(bid: str) -> dict:
    """audience, sent, blocked {reason: n}, deferred, skipped (and skipped_reasons), delivered,
    opens_human, clicks_human, machine_opens, machine_clicks, unsubscribes, conversions, revenue,
    bounces, complaints; ``variants``: the same per A/B variant (and ``winner``)."""
    state = _require(bid)
    return counters.report(bid, state, specs.variants(store.spec(bid, state["digest"])))
