"""Site visitors: recognising people who came from an email, and what the public
``POST /collect`` endpoint accepts from the browser snippet (``GET /t.js``).

Identity hand-off: a human click on an email link to one of the site origins (the
``CORS_ORIGINS`` allow-list, the same origins /collect accepts) lands with ``fp=<token>``
appended, the way HubSpot appends ``_hsenc``; the signup response returns the same token.
The token is ``tokens.sign("fp", contact_id, expiry_day, issued_by)``: it names a contact
and nothing else, is accepted by /collect only, and expires after ``TOKEN_DAYS`` (on the
shared clock). ``issued_by`` is ``e`` for an email click (the visitor reads that inbox) or
``s`` for the signup response (anyone can sign up any address): views under a signup token
are emitted with ``unverified: true`` until the contact proved the address (confirmed a
double opt-in, or clicked an email: ``confirmed_at`` / ``email_proven_at`` on the profile),
and scoring and sales alerts ignore them.

A collected hit with a token costs one GetItem (the contact still exists: an erased person's
token in some browser attaches nothing), then for every hit one conditional UpdateItem per
rate window (per IP; per contact when known), one UpdateItem on the page's daily counter
(``record`` says why not a transaction) and, for a known contact only, one PutEvents.
Anonymous visits are only counted.
Import-light: /collect is public and hot (no pynamodb, no powertools).
"""
import json
import math
import re
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

from funnelpilot import aws, bus, clock, metrics, ratelimit, tokens
from funnelpilot.config import config

TOKEN_KIND = "fp"
SIGNUP, EMAIL = "s", "e"  # who issued an fp token: the signup response, or an email click
TOKEN_DAYS = 365
DAY = 86_400
MAX_BODY = 4096  # bytes; the snippet sends a few hundred
WINDOW = 60  # seconds of a rate-limit window (real time, from API Gateway's request time)
SITE_FUNNEL = "site"  # daily counters in MetricsTable as the "site" funnel: one step per page or event:<name>
OTHER = "(other)"  # the counter of every page or event not declared in infra/site.yaml
FIELDS = {"event", "token", "path", "title", "referrer", "utm", "props"}
_EVENT = re.compile(r"^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){0,2}$")
_PROP = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_UTM = re.compile(r"^utm_[a-z]{1,16}$")


class Refused(Exception):
    """A hit /collect turns away: an HTTP 4xx ``{"error": message, "field": field}``."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


@dataclass(frozen=True)
class Hit:
    event: str  # "page.viewed" or a custom event name ("video.watched")
    path: str
    token: str | None = None
    title: str | None = None
    referrer: str | None = None  # origin and path only: never a query string
    utm: tuple = ()  # ((key, value), ...)
    props: tuple = ()


# ------------------------------------------------------------------ identity hand-off
def token(contact_id: str, issued_by: str = SIGNUP) -> str:
    return tokens.sign(TOKEN_KIND, contact_id, str(int(clock.now() // DAY) + TOKEN_DAYS), issued_by)


def _fields(token_: str) -> tuple[str, str, str]:
    """(contact id, expiry day, issuer); a token from before issuers counts as a signup's."""
    fields = tokens.verify(TOKEN_KIND, token_, 3) or [*(tokens.verify(TOKEN_KIND, token_, 2) or ["", ""]), SIGNUP]
    if not fields[1].isdigit() or fields[2] not in (SIGNUP, EMAIL):
        raise Refused(403, "contact token is not valid", "token")
    return fields[0], fields[1], fields[2]


def contact_of(token_: str) -> str | None:
    """The contact a token names; None once it has expired (the visit then counts as
    anonymous). A token that fails verification is refused (403)."""
    cid, expires_day, _ = _fields(token_)
    return cid if int(expires_day) * DAY > clock.now() else None


def issued_by_email(token_: str) -> bool:
    return _fields(token_)[2] == EMAIL


def is_site(url: str) -> bool:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() in config().cors_origins


def hand_off(url: str, contact_id: str) -> str:
    """``url`` with ``fp=<token>`` added (an existing ``fp`` replaced; the rest of the query
    and the fragment kept as they are) when it points at a site origin; else unchanged:
    the token never leaks to other sites."""
    if not is_site(url):
        return url
    parts = urlsplit(url)
    kept = [p for p in parts.query.split("&") if p and p.split("=", 1)[0] != "fp"]
    return parts._replace(query="&".join([*kept, f"fp={token(contact_id, EMAIL)}"])).geturl()


# ------------------------------------------------------------------ POST /collect
def _string(value, label: str, max_len: int, field: str) -> str:
    if not isinstance(value, str):
        raise Refused(400, f"{label} must be a string", field)
    if len(value) > max_len:
        raise Refused(400, f"{label} is longer than {max_len} characters", field)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise Refused(400, f"{label} contains control characters", field)
    return value


def _text(data: dict, name: str, max_len: int, required: bool = False) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise Refused(400, f"{name} is required", name)
        return None
    return _string(value, name, max_len, name)


def _pairs(data: dict, name: str, key: re.Pattern, max_keys: int, scalars: bool) -> tuple:
    """A small flat object: string values (``scalars``: also numbers and booleans)."""
    value = data.get(name) or {}
    if not isinstance(value, dict):
        raise Refused(400, f"{name} must be an object", name)
    if len(value) > max_keys:
        raise Refused(400, f"{name} has more than {max_keys} keys", name)
    out = []
    for k, v in value.items():
        if not key.match(k):
            raise Refused(400, f"{name} key {k[:40]!r} is not allowed", name)
        number = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 1e12
        if scalars and (isinstance(v, bool) or number):
            out.append((k, v))
        else:
            out.append((k, _string(v, f"{name}.{k}", 200, name)))
    return tuple(sorted(out))


def _referrer(raw: str | None) -> str | None:
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"[:512]


def parse(body: bytes) -> Hit:
    """Validate a /collect body (JSON; the snippet sends it as text/plain to avoid a preflight)."""
    if len(body) > MAX_BODY:
        raise Refused(413, f"body is larger than {MAX_BODY} bytes", "body")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "body must be JSON", "body") from None
    if not isinstance(data, dict):
        raise Refused(400, "body must be a JSON object", "body")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise Refused(400, f"unknown field {unknown[0][:40]!r}", unknown[0][:40])
    event = _text(data, "event", 98, required=True)
    if not _EVENT.match(event):
        raise Refused(400, "event must look like page.viewed or video_watched", "event")
    path = _text(data, "path", 512, required=True)
    if not path.startswith("/"):
        raise Refused(400, "path must start with /", "path")
    return Hit(event=event, path=path.split("?")[0].split("#")[0], token=_text(data, "token", 256),
               title=_text(data, "title", 300), referrer=_referrer(_text(data, "referrer", 2048)),
               utm=_pairs(data, "utm", _UTM, 5, scalars=False),
               props=_pairs(data, "props", _PROP, 10, scalars=True))


@cache
def site() -> dict:
    """``infra/site.yaml``: the pages and custom events with a counter row of their own."""
    import yaml  # at the first hit, not at init: /collect is hot

    doc = yaml.safe_load((config().content_dir / "site.yaml").read_text()) or {}
    pages = [str(p) for p in doc.get("pages") or []]
    return {"pages": {_normal(p) for p in pages if not p.endswith("/*")},
            "prefixes": tuple(p[:-1] for p in pages if p.endswith("/*")),
            "events": set(doc.get("events") or []), "keep_days": int(doc.get("keep_days", 400))}


def _normal(path: str) -> str:
    path = re.sub(r"/{2,}", "/", path)
    return path.rstrip("/") or "/"


def counter_step(hit: Hit) -> str:
    """The counter row of a hit: a declared page or event, else ``(other)`` - a bounded set of rows."""
    cfg = site()
    if hit.event != "page.viewed":
        return f"event:{hit.event if hit.event in cfg['events'] else OTHER}"
    return page_row(hit.path)


def page_row(path: str) -> str:
    """The declared page a path counts under (itself, or its ``/prefix/*``), else ``(other)``."""
    cfg = site()
    path = _normal(path)
    if path in cfg["pages"]:
        return path
    return next((p + "*" for p in cfg["prefixes"] if (path + "/").startswith(p)), OTHER)


def _counter(hit: Hit, known: bool) -> dict:
    """The UpdateItem that adds one to the hit's daily site counter row; the row expires
    ``keep_days`` later."""
    now = clock.now()
    expires = (int(now // DAY) + site()["keep_days"] + 1) * DAY
    return {"TableName": config().metrics_table,
            "Key": metrics.counter_key(SITE_FUNNEL, f"STEP#{counter_step(hit)}", clock.iso(now)[:10]),
            "UpdateExpression": "ADD #m :one SET expires_at = if_not_exists(expires_at, :exp)",
            "ExpressionAttributeNames": {"#m": "known" if known else "anonymous"},
            "ExpressionAttributeValues": {":one": {"N": "1"}, ":exp": {"N": str(expires)}}}


def record(hit: Hit, *, contact_id: str | None, ip: str, at: float) -> None:
    """Rate-limit, count and (for a known contact) emit one hit; ``at`` is the request's real
    arrival time (seconds), so the limits hold whatever speed the simulated clock runs at.

    No transaction: the windows are conditional ADDs taken in turn (per IP first), the page
    counter a plain ADD once they all let the hit in. A page's counter is a hot item, and
    DynamoDB serialises plain writes on an item but cancels transactions that overlap on it
    (``TransactionConflict``), so in a transaction every concurrent hit on a popular page would
    conflict with the others. Nothing is lost by splitting: a window that counted a hit a later
    window refused only counts an attempt from that IP (a limiter should: a flood gains no
    slots), and the counter was never more than at-most-once per request (a hit has no
    idempotency key; a browser retry counts again either way)."""
    cfg = config()
    profile = _profile(contact_id) if contact_id else None
    if profile is None:
        contact_id = None  # erased (or never subscribed): counted, never attached to a person
    limits = [("ip", tokens.keyed_id("ip", ip), cfg.collect_limit_per_ip)]
    if contact_id:
        limits.append(("contact", tokens.keyed_id("contact", contact_id), cfg.collect_limit_per_contact))
    for scope, key, limit in limits:
        if not ratelimit.allow(scope, key, limit, WINDOW, at):
            raise Refused(429, f"more than {limit} events a minute from this {scope}", scope)
    aws.write("update_item", **_counter(hit, known=bool(contact_id)))
    if contact_id:
        proven = issued_by_email(hit.token) or "confirmed_at" in profile or "email_proven_at" in profile
        bus.publish(event(hit, contact_id, unverified=not proven))


def _profile(contact_id: str) -> dict | None:
    """Whether the contact exists, and whether they proved the address (see ``token``)."""
    key = {"pk": {"S": contact_id}, "sk": {"S": "PROFILE"}}
    item = aws.dynamodb().get_item(TableName=config().table, Key=key, ProjectionExpression="pk, #s, confirmed_at, "
                                   "email_proven_at", ExpressionAttributeNames={"#s": "status"}).get("Item")
    return None if item is None or item.get("status", {}).get("S") == "erased" else item


def event(hit: Hit, contact_id: str, unverified: bool = False) -> dict:
    """``page.viewed`` (path, title, referrer, utm_*: the shape POST /events publishes, plus
    ``source: "site"``), or ``custom.<name>`` with ``properties`` for a custom event: the
    namespace POST /events uses too, so a browser can never emit ``order.placed`` or any
    other catalogue event."""
    if hit.event == "page.viewed":
        detail_type = hit.event
    else:
        detail_type = hit.event if hit.event.startswith("custom.") else f"custom.{hit.event}"
    fields = {"path": hit.path, "title": hit.title, "referrer": hit.referrer, "source": "site", **dict(hit.utm)}
    if hit.props:
        fields["properties"] = dict(hit.props)
    if unverified:  # a signup's token, not yet proven: scoring and sales alerts ignore it
        fields["unverified"] = True
    return bus.event(detail_type, contact_id, **{k: v for k, v in fields.items() if v is not None})
