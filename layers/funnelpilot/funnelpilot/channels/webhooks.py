"""Outbound webhooks: event subscriptions (``infra/webhooks.yaml``) and the funnels' ``webhook``
step, delivered by EventBridge API destinations (README "Webhooks").

Every delivery is one ``webhook.delivery`` event on the bus whose ``payload`` is the body the
endpoint receives: its subscription's rule (generated into template.yaml by ``make funnels``)
targets the subscription's API destination with ``InputPath: $.detail.payload``, and EventBridge
retries (429, 5xx, timeouts), dead-letters and authenticates it (the connection's API-key header
or basic auth, holding the subscription's secret). The payload is built here and only here, with
the profile fields the subscription lists (``fields``: nothing about the person but their
contact id unless listed); a delivery's ``id`` is stable across retries and duplicates, so a
receiver deduplicates on it.

- a subscribed bus event reaches ``functions/webhooks`` (one rule per subscription, its name
  and fields in the rule's input), which publishes the delivery: one invocation, one event;
- a ``webhook`` step publishes it from the funnel's Task (an instant step, merged with its
  neighbours: no state of its own when it follows a tag, set, score or notify).
"""
import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from funnelpilot import bus, tokens

DELIVERY = "webhook.delivery"
STEP = "funnel.webhook"  # the ``type`` of a webhook step's payload
# Profile fields a subscription may list (besides the custom fields of fields.yaml).
PROFILE_FIELDS = ("email", "first_name", "status", "lists", "tags", "segments", "score", "loyalty", "customer",
                  "timezone")
PII = ("email", "first_name")  # named in the README: listing them sends personal data
_KEYS = {"url", "events", "fields", "auth", "secret", "rate_per_second", "description"}
_NAME = re.compile(r"^(?=.{1,30}$)[a-z][a-z0-9]*(-[a-z0-9]+)*$")
SALES_ALERT = "sales-alert"  # the Slack alert's own API destination (SalesWebhookUrl, template.yaml)
_PARAMETER = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,254}$")
_HEADER = re.compile(r"^[A-Za-z0-9-]{1,100}$")
DEFAULT_HEADER = "X-Funnelpilot-Secret"


class WebhookError(ValueError):
    """Problems in webhooks.yaml, one ``<file>:<line>: <what is wrong>`` per line."""


@dataclass(frozen=True)
class Subscription:
    name: str
    url: str
    events: tuple[str, ...]
    fields: tuple[str, ...]
    auth: str  # api_key | basic
    user: str  # api_key: the header's name; basic: the user name
    secret: str  # the stack parameter (NoEcho) holding the API key or password
    rate: int  # InvocationRateLimitPerSecond
    line: int

    @property
    def logical_id(self) -> str:
        return "Webhook" + "".join(part.capitalize() for part in self.name.split("-"))


def _event_kinds() -> frozenset:
    from funnelpilot.funnel_spec import EVENTS

    return EVENTS | {"sales.alerted", "funnel.failed"}


def load(path: Path) -> dict[str, Subscription]:
    """webhooks.yaml's subscriptions by name ({} for a missing or empty file), every problem at once."""
    if not path.exists():
        return {}
    from funnelpilot.funnel_spec import _Loader, unknown_event
    from funnelpilot.segments import announced

    try:
        doc = yaml.load(path.read_text(), Loader=_Loader) or {}  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise WebhookError(f"{path}:{mark.line + 1 if mark else 1}: not valid YAML: {getattr(exc, 'problem', exc)}")
    errors, out = [], {}
    if not isinstance(doc, dict) or set(doc) - {"subscriptions"}:
        raise WebhookError(f"{path}:1: webhooks.yaml is `subscriptions:` mapping names to {{url, events, fields, ...}}")
    custom = _custom_fields(path.parent / "fields.yaml")
    for name, spec in (doc.get("subscriptions") or {}).items():
        line = getattr(spec, "line", doc.line)
        found = []

        def error(message: str) -> None:
            found.append(f"{path}:{line}: subscription {name}: {message}")

        if not isinstance(name, str) or not _NAME.match(name) or name == SALES_ALERT:
            errors.append(f"{path}:{line}: subscription {name!r}: " + (
                f"{SALES_ALERT} is the Slack alert's (the SalesWebhookUrl parameter)" if name == SALES_ALERT else
                "a name is words of lowercase letters and digits joined by - (at most 30 characters)"))
            continue
        if not isinstance(spec, dict):
            errors.append(f"{path}:{line}: subscription {name}: expected a mapping with url, events and fields")
            continue
        for key in spec:
            if key not in _KEYS:
                close = difflib.get_close_matches(str(key), sorted(_KEYS), n=1)
                error(f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else
                                                 f" (allowed: {', '.join(sorted(_KEYS))})"))
        url = spec.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme != "https" or not parts.hostname or len(url) > 2048 or any(
                c.isspace() for c in url):
            error(f"url {url!r}: an https:// URL (EventBridge API destinations call HTTPS endpoints only)")
        events = spec.get("events") or []
        events = [events] if isinstance(events, str) else events
        kinds = _event_kinds()
        for event in events:
            if problem := unknown_event(event, kinds):
                error(problem)
            elif event in ("segment.entered", "segment.left") and not announced(path.parent / "segments.yaml"):
                error(f"{event}: published only for the segments with `events: true` in segments.yaml (none has it)")
        fields = spec.get("fields") or []
        fields = [fields] if isinstance(fields, str) else fields
        allowed = (*PROFILE_FIELDS, *custom)
        for field in fields:
            if field not in allowed:
                close = difflib.get_close_matches(str(field), allowed, n=1)
                error(f"unknown field {field!r}" + (f" (did you mean {close[0]!r}?)" if close else "") +
                      f"; fields: {', '.join(allowed)}")
        auth, user = _auth(spec.get("auth"), error)
        secret = spec.get("secret", name.title().replace("-", "") + "WebhookSecret")
        if not isinstance(secret, str) or not _PARAMETER.match(secret):
            error(f"secret {secret!r}: the name of the stack parameter holding it (letters and digits)")
        rate = spec.get("rate_per_second", 10)
        if not isinstance(rate, int) or isinstance(rate, bool) or not 1 <= rate <= 300:
            error("rate_per_second is a whole number from 1 to 300 (InvocationRateLimitPerSecond)")
        errors += found
        if not found:
            out[name] = Subscription(name, url, tuple(events), tuple(dict.fromkeys(fields)), auth, user, secret,
                                     rate, line)
    secrets = {}
    for sub in out.values():
        other = secrets.setdefault(sub.secret, sub)
        if other is not sub:
            errors.append(f"{path}:{sub.line}: subscription {sub.name}: secret {sub.secret} is {other.name}'s too; "
                          "give each endpoint its own")
    if errors:
        raise WebhookError("\n".join(errors))
    return out


def _auth(node, error) -> tuple[str, str]:
    if node is None:
        return "api_key", DEFAULT_HEADER
    if isinstance(node, dict) and set(node) == {"header"} and isinstance(node["header"], str) and _HEADER.match(
            node["header"]):
        return "api_key", node["header"]
    if isinstance(node, dict) and set(node) == {"basic"} and isinstance(node["basic"], str) and node["basic"] and \
            ":" not in node["basic"]:
        return "basic", node["basic"]
    error("auth: `{header: X-Funnelpilot-Secret}` (the secret in that header) or `{basic: <user name>}`")
    return "api_key", DEFAULT_HEADER


def _custom_fields(path: Path) -> tuple[str, ...]:
    doc = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    return tuple(doc.get("fields") or {})


# ---------------------------------------------------------------- run time
def _profile(cid: str, fields: list[str]) -> dict | None:
    """The listed profile fields of a contact (None: unknown or erased)."""
    from funnelpilot import scoring
    from funnelpilot.models import PROFILE, Contact

    try:
        contact = Contact.get(cid, PROFILE)
    except Contact.DoesNotExist:
        return None
    if contact.status == "erased":
        return None
    values = {"email": contact.email, "first_name": contact.first_name, "status": contact.status,
              "lists": sorted(contact.lists or []), "tags": sorted(contact.tags or []),
              "segments": sorted(contact.segments or []), "timezone": contact.timezone}
    props = contact.properties.as_dict() if contact.properties else {}
    out = {}
    for field in fields:
        if field in ("score", "loyalty"):
            out[field] = round(scoring.current_score(contact, "capture" if field == "score" else field), 1)
        elif field == "customer":
            out[field] = scoring.is_customer(contact)
        else:
            out[field] = values[field] if field in values else props.get(field)
    return out


def payload(webhook: str, delivery_id: str, detail_type: str, detail: dict, fields: list[str]) -> dict | None:
    """The body an endpoint receives; None when profile fields are listed and the person is unknown or erased."""
    cid = detail["contact_id"]
    body = {"id": delivery_id, "webhook": webhook, "type": detail_type, "occurred_at": detail.get("occurred_at"),
            "contact_id": cid,
            "data": {k: v for k, v in detail.items() if k not in ("event_id", "contact_id", "occurred_at")}}
    if fields:
        contact = _profile(cid, fields)
        if contact is None:
            return None
        body["contact"] = contact
    return body


def delivery(webhook: str, cid: str, body: dict, event_id: str) -> dict:
    """The PutEvents entry that hands ``body`` to the subscription's API destination (through its rule)."""
    return bus.event(DELIVERY, cid, event_id=event_id, webhook=webhook, payload=body)


def deliver(webhook: str, fields: list[str], detail_type: str, detail: dict, delivery_id: str | None = None) -> str:
    """Deliver one event to a subscription; what happened (``sent``, ``unknown_contact``)."""
    delivery_id = delivery_id or tokens.digest_id("wh", webhook, detail["event_id"])
    body = payload(webhook, delivery_id, detail_type, detail, fields)
    if body is None:
        return "unknown_contact"
    bus.publish(delivery(webhook, detail["contact_id"], body, delivery_id))
    return "sent"
