"""Opens and clicks: recording every hit and classifying it honestly as human or machine.

This module serves the two hottest routes (``/o`` and ``/c``) with the low-level boto3
clients (no pynamodb): two AWS calls per hit, one conditional UpdateItem that appends the
hit and returns the message as it was, then one PutEvents for a person's hit, or the
counters' ADD for a machine's (``_record``). The rules and their sources are documented in
README.md ("Engagement: human or machine").

Every recorded hit is appended to the message item (``hits``: time, kind, link index, and
``human``/``reason`` as the request's own rules label it; never an IP address or user agent).
A person's is emitted as ``email.opened`` / ``email.clicked`` (``human: true``), for funnels,
scoring, segments, alerts and the counters; a machine's is counted here (``machine_opens``,
``machine_clicks``: funnelpilot.metrics, guarded by the append) and put on no bus, where no
consumer acts on it. Hits are appended with ``list_append``, so concurrent hits on one
message are all kept, and never rewritten: the rules that need the message's history (a burst,
too soon after delivery, around a honeypot hit) are applied when the hits are read
(``message_verdicts``, for this request and for every reader), so no hit costs a second write.
"""
import ipaddress
import json
import logging
from dataclasses import dataclass
from datetime import datetime

from funnelpilot import aws, bus, clock, metrics, tokens, visitors
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
RECORDABLE = ("sent", "sending")  # a message's statuses that record hits (sending: SES may have accepted it)
# Set only on a message whose hits list is full (MAX_STORED_HITS): its first human open/click past it
_FIRSTS = {"open": ("first_open_at",), "click": ("first_open_at", "first_click_at")}  # a human click is also an open


@dataclass(frozen=True)
class Verdict:
    human: bool
    reason: str | None = None


@dataclass(frozen=True)
class Result:
    recorded: bool
    url: str | None = None  # where a click goes (None: unknown, tampered or honeypot)
    honeypot: bool = False


def epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


def classify(kind: str, *, method: str, user_agent: str, ip: str, now: float, sent_at: float | None,
             link: str | None = None, honeypot_at: float | None = None, hits: list[dict] = ()) -> Verdict:
    """Human or machine, with the first rule that matched (see README for the sources)."""
    verdict = request_verdict(kind, method=method, user_agent=user_agent, ip=ip, link=link)
    return history_verdict(now=now, sent_at=sent_at, honeypot_at=honeypot_at, hits=hits) if verdict.human else verdict


def history_verdict(*, now: float, sent_at: float | None, honeypot_at: float | None = None,
                    hits: list[dict] = ()) -> Verdict:
    """The last rules of ``classify``, which need the message's history: for a hit the request's
    own rules (``request_verdict``) call human."""
    if honeypot_at is not None and abs(now - honeypot_at) <= BURST_WINDOW:
        return Verdict(False, "honeypot_burst")
    if any(not h["human"] and abs(now - epoch(h["at"])) <= BURST_WINDOW for h in hits):
        return Verdict(False, "burst")
    if sent_at is None or now - sent_at < DELIVERY_WINDOW:
        return Verdict(False, "too_soon")
    return Verdict(True)


def request_verdict(kind: str, *, method: str, user_agent: str, ip: str, link: str | None = None) -> Verdict:
    """The first rules of ``classify``, which need only the request: human here means human unless
    the message's history says otherwise (``history_verdict``)."""
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


def verdicts(hits: list[dict], *, sent_at: float | None) -> list[dict]:
    """The stored ``hits`` (plain: at, kind, link, human, reason as labelled by their request), each
    with the verdict of the message's history too, in the order they were made: machine within
    ``BURST_WINDOW`` of a honeypot hit (either side: the whole burst was a machine) or after a
    machine hit, or too soon after ``sent_at`` (the delivery, else the send)."""
    honeypots = [epoch(h["at"]) for h in hits if h["reason"] == "honeypot"]
    out: list[dict] = []
    for h in hits:
        verdict = Verdict(h["human"], h["reason"])
        if verdict.human:
            t = epoch(h["at"])
            near = min(honeypots, key=lambda x: abs(x - t), default=None)
            verdict = history_verdict(now=t, sent_at=sent_at, honeypot_at=near, hits=out)
        out.append({**h, "human": verdict.human, "reason": verdict.reason})
    return out


def message_verdicts(item: dict) -> list[dict]:
    """``verdicts`` of a message item (DynamoDB's typed form): what a reader of its hits relies on."""
    return verdicts(_hits(item), sent_at=epoch(_attr(item, "delivered_at") or _attr(item, "sent_at")))


def _verdict(label: Verdict, item: dict, now: float) -> Verdict:
    """The hit's verdict: its request's (``label``), completed by what the message item knows
    (delivery time, honeypot, earlier hits)."""
    if not label.human:
        return label
    return history_verdict(now=now, sent_at=epoch(_attr(item, "delivered_at") or _attr(item, "sent_at")),
                           honeypot_at=epoch(_attr(item, "honeypot_at")), hits=message_verdicts(item))


def _hits(item: dict) -> list[dict]:
    return [_hit(h["M"]) for h in item.get("hits", {}).get("L", [])]


def _link(item: dict, link: str | None) -> tuple[str | None, bool] | None:
    """(URL, whether it gets the identity hand-off) of the clicked link; (None, False) for an open or
    the honeypot; None when the message has no such link."""
    if link is None or link == HONEYPOT:
        return None, False
    links = json.loads(_attr(item, "links") or "[]")
    if int(link) >= len(links):
        return None
    entry = links[int(link)]  # a URL, or {"url", "fp": false} for a link opted out of the hand-off
    return (entry["url"], False) if isinstance(entry, dict) else (entry, True)


def hit(kind: str, token: str, *, method: str, user_agent: str, ip: str) -> Result:
    """Record an open (``kind="open"``, token from ``/o``) or a click (``"click"``, ``/c``).

    A token that fails verification, or names a message we do not have (or a link it does not
    have), records nothing.
    """
    fields = tokens.verify("o", token, 2) if kind == "open" else tokens.verify("c", token, 3)
    if fields is None:
        return Result(False)
    cid, message_id = fields[0], fields[1]
    link = fields[2] if kind == "click" else None
    if link is not None and link != HONEYPOT and not link.isdigit():
        return Result(False)
    key = {"pk": {"S": cid}, "sk": {"S": f"MSG#{message_id}"}}
    label = request_verdict(kind, method=method, user_agent=user_agent, ip=ip, link=link)
    now = clock.now()
    recorded = True
    try:
        found = _record(kind, cid, message_id, key, link, label, now)
    except Exception:  # the person still gets their page or image; the hit is lost, not the click
        logger.exception("hit not recorded", extra={"contact_id": cid})
        found, recorded = _message(key, link, label, now), False
    if found is None:
        return Result(False)
    (url, hand_off), verdict = found
    # identity hand-off to the site (never for machines); events keep the link as sent
    landing = visitors.hand_off(url, cid) if hand_off and verdict.human else url
    return Result(recorded, url=landing, honeypot=link == HONEYPOT)


def _message(key: dict, link: str | None, label: Verdict, now: float) -> tuple[tuple, Verdict] | None:
    """Where the click goes when the hit could not be recorded: like ``_record``'s answer, from a GetItem."""
    item = aws.dynamodb().get_item(TableName=config().table, Key=key).get("Item")
    target = item and _attr(item, "status") in RECORDABLE and _link(item, link)
    return (target, _verdict(label, item, now)) if target else None


def _record(kind: str, cid: str, message_id: str, key: dict, link: str | None, label: Verdict,
            now: float) -> tuple[tuple[str | None, bool], Verdict] | None:
    """Append the hit to the message and emit its events: one UpdateItem, then one PutEvents.

    The write stores the hit as the request labels it (``label``: ``request_verdict``) and returns
    the message as it was before it (``ALL_OLD``): its earlier hits complete the verdict
    (``history_verdict`` over ``message_verdicts``) and tell, atomically, whether the hit is the
    message's first human open or click (``unique``: DynamoDB applies the writes on one item one
    after the other, so of two concurrent first opens the second sees the first). A second write
    happens only for a link the message does not have (a forged index: the hit is taken back, as if
    never made). Returns the link (``_link``) and the verdict; None when nothing was recorded."""
    stamp = clock.iso(now)
    entry = {"at": stamp, "kind": kind, "link": link, "human": label.human, "reason": label.reason}
    old, stored = _append(key, kind, link, entry)
    if old is None:
        return None
    target = _link(old, link)
    if target is None:
        index = len(old.get("hits", {}).get("L", []))  # where list_append put the hit: the list only grows at its end
        marked = [a for a in _FIRSTS[kind] if label.human and not stored and _attr(old, a) is None]  # set by this hit
        last = _attr(old, "last_hit_at")
        _correct(key, drop=(index, stamp) if stored else None, remove=marked + ([] if last else ["last_hit_at"]),
                 last_hit_at=last)
        return None
    verdict = _verdict(label, old, now)
    earlier = message_verdicts(old)
    first_open = verdict.human and not any(h["human"] for h in earlier) and (stored or _attr(old, "first_open_at") is None)
    first_click = verdict.human and kind == "click" and not any(h["human"] and h["kind"] == "click" for h in earlier) \
        and (stored or _attr(old, "first_click_at") is None)
    common = {"message_id": message_id, "funnel": _attr(old, "funnel"), "step": _attr(old, "step"),
              "template": _attr(old, "template"), "human": verdict.human}
    for name in ("variant", "broadcast"):  # A/B: counted per variant too; a broadcast's counts its own
        if _attr(old, name):
            common[name] = _attr(old, name)
    if verdict.reason:
        common["reason"] = verdict.reason
    entries = []
    if kind == "open" or first_open:  # a human click is also an open
        entries.append(bus.event("email.opened", cid, unique=first_open,
                                 **common, **({"via": "click"} if kind == "click" else {})))
    if kind == "click":
        entries.append(bus.event("email.clicked", cid, link=link, url=target[0], unique=first_click, **common))
    if verdict.human:
        bus.publish(*entries)
    else:  # a machine's hit opens nothing (a click implies no open): one event's counters, here
        [entry] = entries
        if metrics.record(entry["DetailType"], json.loads(entry["Detail"]), guarded=True):
            metrics.emit(entry["DetailType"], {"human": False})
    return target, verdict


def _append(key: dict, kind: str, link: str | None, entry: dict) -> tuple[dict | None, bool]:
    """The UpdateItem that records a hit on a sent message: (the message as it was, whether the hit
    went into its ``hits``); (None, False) when there is no sent message (nothing written). A message
    already holding ``MAX_STORED_HITS`` hits gets its timestamps but not the hit (a second UpdateItem,
    for those rare messages: the first one's condition failed), and there ``first_open_at`` /
    ``first_click_at`` keep its first human hits counted once."""
    sets = ["last_hit_at = :now"]
    if link == HONEYPOT:
        sets.append("honeypot_at = :now")
    sent = "#s IN (:sent, :sending)"
    values = {":now": {"S": entry["at"]}, ":sent": {"S": RECORDABLE[0]}, ":sending": {"S": RECORDABLE[1]}}
    firsts = [f"{a} = if_not_exists({a}, :now)" for a in _FIRSTS[kind] if entry["human"]]
    with_hit = {"UpdateExpression": "SET " + ", ".join(sets + ["hits = list_append(if_not_exists(hits, :empty), :hit)"]),
                "ConditionExpression": f"{sent} AND (attribute_not_exists(hits) OR size(hits) < :max)",
                "ExpressionAttributeValues": {**values, ":empty": {"L": []}, ":hit": {"L": [_typed(entry)]},
                                              ":max": {"N": str(MAX_STORED_HITS)}}}
    without = {"UpdateExpression": "SET " + ", ".join(sets + firsts), "ConditionExpression": sent,
               "ExpressionAttributeValues": values}
    for stored, request in ((True, with_hit), (False, without)):
        try:
            return aws.write("update_item", Key=key, ExpressionAttributeNames={"#s": "status"}, ReturnValues="ALL_OLD",
                             ReturnValuesOnConditionCheckFailure="ALL_OLD", **request).get("Attributes", {}), stored
        except Exception as exc:
            if not aws.is_conditional_failure(exc):
                raise
            item = exc.response.get("Item")
            if not item or _attr(item, "status") not in RECORDABLE:
                return None, False
    return None, False  # its status changed between the two writes


def _correct(key: dict, *, remove: list[str] = (), drop: tuple[int, str] | None = None,
             last_hit_at: str | None = None) -> None:
    """The rare second write on a message (see ``_record``): take back the hit ``drop`` (index, its ``at``)
    and the attributes ``remove`` it set, set ``last_hit_at`` back. The hit is removed only while it is
    still the one at its index; when it is not, the correction is logged and given up."""
    sets, removes, conditions, values = [], list(remove), [], {}
    if drop:
        conditions.append(f"hits[{drop[0]}].#at = :at")  # "at" is a reserved word
        values[":at"] = {"S": drop[1]}
        removes.append(f"hits[{drop[0]}]")
    if last_hit_at:
        sets.append("last_hit_at = :last")
        values[":last"] = {"S": last_hit_at}
    if not sets and not removes:
        return
    request = {"UpdateExpression": " ".join(([f"SET {', '.join(sets)}"] if sets else [])
                                            + ([f"REMOVE {', '.join(removes)}"] if removes else []))}
    if conditions:
        request["ConditionExpression"] = " AND ".join(conditions)
        request["ExpressionAttributeNames"] = {"#at": "at"}
    if values:
        request["ExpressionAttributeValues"] = values
    if not aws.conditional("update_item", Key=key, **request):
        logger.warning("hit correction given up: the message's hits changed", extra={"message": key["sk"]["S"]})
