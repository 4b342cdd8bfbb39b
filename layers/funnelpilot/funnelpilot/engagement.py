"""Opens and clicks: recording every hit and classifying it honestly as human or machine.

This module serves the two hottest routes (``/o`` and ``/c``): it uses low-level boto3
clients (no pynamodb) and does one GetItem, at most one UpdateItem and at most one
PutEvents per hit. The rules and their sources are documented in README.md
("Engagement: human or machine").

Every recorded hit is appended to the message item (``hits``: time, kind, link index,
human, reason; never an IP address or user agent) and emitted as ``email.opened`` /
``email.clicked`` with ``human`` true or false. Consumers act only on ``human: true``.
Hits are appended with ``list_append``, so concurrent hits on one message are all kept;
only a honeypot hit rewrites the list (to re-label the burst before it).
"""
import ipaddress
import json
import logging
from dataclasses import dataclass
from datetime import datetime


from funnelpilot import aws, bus, clock, tokens, visitors
from funnelpilot.agents import AUTOMATED
from funnelpilot.config import config
from funnelpilot.tokens import HONEYPOT

# Apple Mail Privacy Protection fetches images through Apple-owned addresses (17.0.0.0/8,
# Apple's ARIN allocation) with a bare "Mozilla/5.0" user agent, whether or not anyone reads.
APPLE_RANGES = (ipaddress.ip_network("17.0.0.0/8"),)
APPLE_MPP_AGENTS = frozenset({"mozilla/5.0"})
logger = logging.getLogger(__name__)
DELIVERY_WINDOW = 10  # seconds after the send in which no human opens or clicks
BURST_WINDOW = 10  # seconds around a machine hit in which other hits of the message are machine
MAX_STORED_HITS = 100  # hits kept on a message item; later ones are still emitted


@dataclass(frozen=True)
class Verdict:
    human: bool
    reason: str | None = None


@dataclass(frozen=True)
class Result:
    recorded: bool
    url: str | None = None  # where a click goes (None: unknown, tampered or honeypot)
    honeypot: bool = False


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


def classify(kind: str, *, method: str, user_agent: str, ip: str, now: float, sent_at: float | None,
             link: str | None = None, honeypot_at: float | None = None, hits: list[dict] = ()) -> Verdict:
    """Human or machine, with the first rule that matched (see README for the sources)."""
    agent = (user_agent or "").strip()
    if kind == "click" and link == HONEYPOT:
        return Verdict(False, "honeypot")
    if method == "HEAD":
        return Verdict(False, "head_request")
    if not agent:
        return Verdict(False, "no_user_agent")
    if kind == "open" and (agent.lower() in APPLE_MPP_AGENTS or _in(ip, APPLE_RANGES)):
        return Verdict(False, "apple_mpp")
    if AUTOMATED.search(agent):
        return Verdict(False, "scanner")
    if honeypot_at is not None and abs(now - honeypot_at) <= BURST_WINDOW:
        return Verdict(False, "honeypot_burst")
    if any(not h["human"] and abs(now - _epoch(h["at"])) <= BURST_WINDOW for h in hits):
        return Verdict(False, "burst")
    if sent_at is None or now - sent_at < DELIVERY_WINDOW:
        return Verdict(False, "too_soon")
    return Verdict(True)


def _in(ip: str, networks) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks)


def _hit(m: dict) -> dict:
    return {"at": m["at"]["S"], "kind": m["kind"]["S"], "link": m.get("link", {}).get("S"),
            "human": m["human"]["BOOL"], "reason": m.get("reason", {}).get("S")}


def _typed(hit: dict) -> dict:
    return {"M": {k: {"BOOL": v} if isinstance(v, bool) else {"S": v} if v is not None else {"NULL": True}
                  for k, v in hit.items()}}


def _attr(item: dict, name: str):
    value = item.get(name)
    return None if value is None else next(iter(value.values()))


def hit(kind: str, token: str, *, method: str, user_agent: str, ip: str) -> Result:
    """Record an open (``kind="open"``, token from ``/o``) or a click (``"click"``, ``/c``).

    A token that fails verification, or names a message we do not have, records nothing.
    """
    fields = tokens.verify("o", token, 2) if kind == "open" else tokens.verify("c", token, 3)
    if fields is None:
        return Result(False)
    cid, message_id = fields[0], fields[1]
    link = fields[2] if kind == "click" else None
    key = {"pk": {"S": cid}, "sk": {"S": f"MSG#{message_id}"}}
    item = aws.dynamodb().get_item(TableName=config().table, Key=key).get("Item")
    if not item or _attr(item, "status") not in ("sent", "sending"):  # sending: SES may have accepted it
        return Result(False)
    links = json.loads(_attr(item, "links") or "[]")
    url, hand_off = None, False
    if link is not None and link != HONEYPOT:
        if not link.isdigit() or int(link) >= len(links):
            return Result(False)
        entry = links[int(link)]  # a URL, or {"url", "fp": false} for a link opted out of the hand-off
        url, hand_off = (entry["url"], False) if isinstance(entry, dict) else (entry, True)
    hits = [_hit(h["M"]) for h in item.get("hits", {}).get("L", [])]
    now = clock.now()
    verdict = classify(kind, method=method, user_agent=user_agent, ip=ip, now=now,
                       sent_at=_epoch(_attr(item, "delivered_at") or _attr(item, "sent_at")), link=link,
                       honeypot_at=_epoch(_attr(item, "honeypot_at")), hits=hits)
    # identity hand-off to the site (never for machines); events keep the link as sent
    landing = visitors.hand_off(url, cid) if hand_off and verdict.human else url
    try:
        _record(kind, cid, message_id, key, item, link, url, verdict, hits, now)
    except Exception:  # the person still gets their page or image; the hit is lost, not the click
        logger.exception("hit not recorded", extra={"contact_id": cid})
        return Result(False, url=landing, honeypot=link == HONEYPOT)
    return Result(True, url=landing, honeypot=link == HONEYPOT)


def _record(kind: str, cid: str, message_id: str, key: dict, item: dict, link: str | None, url: str | None,
            verdict: Verdict, hits: list[dict], now: float) -> None:
    """One UpdateItem on the message, then one PutEvents."""
    stamp = clock.iso(now)
    first_open = verdict.human and _attr(item, "first_open_at") is None
    first_click = verdict.human and kind == "click" and _attr(item, "first_click_at") is None
    new = {"at": stamp, "kind": kind, "link": link, "human": verdict.human, "reason": verdict.reason}
    sets = ["last_hit_at = :now"]
    values = {":now": {"S": stamp}}
    if link == HONEYPOT:  # the whole burst was a machine: re-label the hits just before it
        for h in hits:
            if h["human"] and abs(now - _epoch(h["at"])) <= BURST_WINDOW:
                h.update(human=False, reason="honeypot_burst")
        sets.append("hits = :hits")
        values[":hits"] = {"L": [_typed(h) for h in (hits + [new])[-MAX_STORED_HITS:]]}
    elif len(hits) < MAX_STORED_HITS:
        sets.append("hits = list_append(if_not_exists(hits, :empty), :hit)")
        values.update({":empty": {"L": []}, ":hit": {"L": [_typed(new)]}})
    if first_open:
        sets.append("first_open_at = :now")
    if first_click:
        sets.append("first_click_at = :now")
    if link == HONEYPOT:
        sets.append("honeypot_at = :now")
    aws.dynamodb().update_item(TableName=config().table, Key=key, UpdateExpression="SET " + ", ".join(sets),
                               ConditionExpression="attribute_exists(pk)", ExpressionAttributeValues=values)

    common = {"message_id": message_id, "funnel": _attr(item, "funnel"), "step": _attr(item, "step"),
              "template": _attr(item, "template"), "human": verdict.human}
    if _attr(item, "variant"):  # A/B: counted per variant too
        common["variant"] = _attr(item, "variant")
    if verdict.reason:
        common["reason"] = verdict.reason
    entries = []
    if kind == "open" or first_open:  # a human click is also an open
        entries.append(bus.event("email.opened", cid, unique=first_open,
                                 **common, **({"via": "click"} if kind == "click" else {})))
    if kind == "click":
        entries.append(bus.event("email.clicked", cid, link=link, url=url, unique=first_click, **common))
    bus.publish(*entries)
