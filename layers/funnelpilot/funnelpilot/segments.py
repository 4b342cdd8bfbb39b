"""Segments: definitions in ``infra/segments.yaml`` (README, "Segments"), evaluated for one
contact at a time when an event touches something a segment depends on - never a rebuild.

Membership is stored twice: an item ``pk = <contact_id>, sk = SEG#<segment>`` on the sparse
GSI (``gsi1pk = SEG#<segment>``: "members of S" is a Query), and the ``segments`` string set on
the profile (``if segment`` in a funnel is one GetItem). Single writes, not a transaction (2 WRU
an item): a conditional put of each item entered and a conditional delete of each item left, then
one UpdateItem of the profile's set for all of them (``_profile_set``; conditioned on a live
profile: when the contact was erased meanwhile the items entered are deleted again,
funnelpilot.erasure). The items' conditions are the counted-once guard, so concurrent or repeated
evaluations change a membership once; the profile write is also made when the item was already
right (it repairs a profile left behind by a process that died between the two).
"""
import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml
from botocore.exceptions import ClientError

from funnelpilot import aws, bus, clock, consent, inactivity, scoring, tokens
from funnelpilot.config import config
from funnelpilot.errors import TransientError
from funnelpilot.models import PROFILE, Contact

DAY = 86_400
LIST_STATUSES = ("active", "pending")  # who a list's segment counts (opted out of it: not)
ENGAGEMENT = sorted(inactivity.ENGAGEMENT)
_PROFILE_EVENTS = ["contact.updated", "contact.tagged", "contact.untagged"]
# (contact.confirmed is not one: the contact.subscribed it always comes with changes the status segments too,
# evaluated by the score function with the activity ones, one profile write for all)
_STATUS_EVENTS = ["contact.subscribed", "contact.unsubscribed", "contact.suppressed",
                  "contact.sunset", "contact.reactivated", "contact.erased"]
# Not a bus event: a change of score, evaluated where it happens (funnelpilot.scoring).
SCORED = "score.changed"
_SET_ATTEMPTS = 5  # the profile's segments set changing under each (concurrent evaluations of one contact)
# Which events can change each kind of condition (the segment's dependencies).
DEPENDS = {
    "tag": _PROFILE_EVENTS, "not_tag": _PROFILE_EVENTS, "property": _PROFILE_EVENTS,
    "list": ["contact.subscribed", "contact.unsubscribed", "contact.list_unsubscribed", "contact.list_subscribed",
             "contact.sunset", "contact.reactivated", *_PROFILE_EVENTS],
    "lead_magnet": ["contact.subscribed", *_PROFILE_EVENTS],
    "status": _STATUS_EVENTS,
    "score": [SCORED], "loyalty": [SCORED],
    "customer": ["order.placed"],
    "last_activity_days": [*ENGAGEMENT, "contact.inactive"],
}


@dataclass(frozen=True)
class Segment:
    name: str
    mode: str  # all | any
    conditions: tuple[dict, ...]
    description: str = ""
    events: bool = False  # publish segment.entered / segment.left (segments.yaml ``events: true``)

    def depends_on(self) -> set[str]:
        kinds: set[str] = set()
        for cond in self.conditions:
            (kind, arg), = cond.items()
            kinds.update([arg["event"]] if kind == "did" else DEPENDS[kind])
        return kinds


def fact_key(did: dict) -> str:
    """Stable id of a ``did`` condition (event + where), shared by segments using the same one."""
    raw = json.dumps({"event": did["event"], "where": did.get("where") or {}}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


@cache
def definitions() -> dict[str, Segment]:
    doc = yaml.safe_load((config().content_dir / "segments.yaml").read_text()) or {}
    out = {}
    for name, spec in (doc.get("segments") or {}).items():
        mode = "any" if "any" in spec else "all"
        conditions = tuple(spec.get(mode) or [])
        for cond in conditions:
            if len(cond) != 1:
                raise ValueError(f"segments.yaml: {name}: each condition has exactly one kind: {cond}")
            (kind, arg), = cond.items()
            if kind != "did" and kind not in DEPENDS:
                raise ValueError(f"segments.yaml: {name}: unknown condition {kind!r}")
            if kind == "did" and "event" not in arg:
                raise ValueError(f"segments.yaml: {name}: did needs an event")
        if not isinstance(spec.get("events", False), bool):
            raise ValueError(f"segments.yaml: {name}: events is true or false")
        out[name] = Segment(name, mode, conditions, spec.get("description", ""), spec.get("events", False))
    # every declared list is a segment too, so its members are a Query (funnelpilot.audience.export)
    for list_name in consent.declared_lists():
        out[list_segment(list_name)] = Segment(list_segment(list_name), "all", (
            {"list": list_name}, {"status": list(LIST_STATUSES)}), f"on the {list_name} list (not opted out)")
    return out


def announced(path: Path) -> set[str]:
    """The segments of a segments.yaml that publish segment.entered / segment.left (``events: true``):
    a funnel or webhook using those events names one of them (funnelpilot.funnel_spec, channels.webhooks).
    Events no consumer wants are not put on the bus: each costs a PutEvents entry and, where a rule
    matches, an invocation."""
    doc = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    return {name for name, spec in (doc.get("segments") or {}).items() if (spec or {}).get("events") is True}


def event_kinds() -> set[str]:
    """Every bus event type some segment depends on (the segment and score functions' rules must
    match them between them: the score function evaluates the segments of the events it scores)."""
    return set().union(*(s.depends_on() for s in definitions().values())) - {SCORED}


class Facts:
    """What evaluating one contact needs, read lazily (one GetItem each, at most once)."""

    def __init__(self, contact: Contact):
        self.contact = contact
        self._last_activity = ...
        self._did: dict[str, float | None] = {}

    def last_activity(self) -> float | None:
        if self._last_activity is ...:
            self._last_activity = inactivity.last_activity(self.contact.pk)
        return self._last_activity

    def did_at(self, key: str) -> float | None:
        if key not in self._did:
            item = aws.dynamodb().get_item(TableName=config().table, ConsistentRead=True,
                                           Key={"pk": {"S": self.contact.pk}, "sk": {"S": f"DID#{key}"}}).get("Item")
            self._did[key] = float(item["at"]["N"]) if item else None
        return self._did[key]


def with_threshold(arg, track: str):
    """A score condition with ``threshold`` (``{gte: threshold}``) read as the track's threshold
    in infra/scoring.yaml, so a funnel or segment follows it when it changes."""
    if not isinstance(arg, dict):
        return arg
    return {op: scoring.settings().tracks[track].threshold if value == "threshold" else value
            for op, value in arg.items()}


def holds(kind: str, arg, facts: Facts, now: float) -> bool:
    """Whether one condition (``{kind: arg}`` of segments.yaml) holds for the contact now;
    funnels' ``if`` steps use it too (funnelpilot.sequence)."""
    c = facts.contact
    if kind == "tag":
        return arg in (c.tags or set())
    if kind == "not_tag":
        return arg not in (c.tags or set())
    if kind == "list":  # joined and not opted out of (funnelpilot.preferences)
        return arg in (c.lists or set()) and arg not in (c.unsubscribed_lists or set())
    if kind == "lead_magnet":
        return arg in (c.lead_magnets or set())
    if kind == "status":
        return scoring.matches(c.status, arg)
    if kind == "property":
        props = c.properties.as_dict() if c.properties else {}
        return all(scoring.matches(props.get(k), want) for k, want in arg.items())
    if kind in ("score", "loyalty"):
        track = "capture" if kind == "score" else "loyalty"
        return scoring.matches(scoring.current_score(c, track, at=now), with_threshold(arg, track))
    if kind == "customer":
        return scoring.is_customer(c) == bool(arg)
    if kind == "last_activity_days":
        last = facts.last_activity()
        return scoring.matches(float("inf") if last is None else (now - last) / DAY, arg)
    if kind == "did":
        at = facts.did_at(fact_key(arg))
        if at is None:
            return False
        return "within_days" not in arg or now - at <= float(arg["within_days"]) * DAY
    raise ValueError(f"unknown condition {kind!r}")


def is_member(segment: Segment, facts: Facts, now: float) -> bool:
    if facts.contact.status == "erased":
        return False
    results = (holds(*next(iter(cond.items())), facts, now) for cond in segment.conditions)
    return all(results) if segment.mode == "all" else any(results)


def record_facts(detail_type: str, detail: dict) -> list[str]:
    """Remember events that ``did`` conditions look for (latest time per condition); the
    ``DID#`` keys it wrote (``evaluate`` deletes them when the contact turns out to be gone)."""
    seen, written = set(), []
    for seg in definitions().values():
        for cond in seg.conditions:
            did = cond.get("did")
            if not did or did["event"] != detail_type or fact_key(did) in seen:
                continue
            if not all(scoring.matches(scoring.detail_field(detail, k), want) for k, want in (did.get("where") or {}).items()):
                continue
            key = fact_key(did)
            seen.add(key)
            t = scoring.event_time(detail)
            try:
                aws.dynamodb().update_item(
                    TableName=config().table, Key={"pk": {"S": detail["contact_id"]}, "sk": {"S": f"DID#{key}"}},
                    UpdateExpression="SET #at = :t", ConditionExpression="attribute_not_exists(#at) OR #at < :t",
                    ExpressionAttributeNames={"#at": "at"}, ExpressionAttributeValues={":t": {"N": str(t)}})
                written.append(f"DID#{key}")
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
    return written


def evaluate(detail_type: str, detail: dict, also: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Re-evaluate, for the event's contact, the segments that depend on this event type (or on
    one of ``also``: ``SCORED`` when the event changed the contact's score)."""
    cid = detail["contact_id"]
    facts_written = record_facts(detail_type, detail)
    kinds = {detail_type, *also}
    affected = [s for s in definitions().values() if kinds & s.depends_on()]
    changes: dict[str, list[str]] = {"entered": [], "left": []}
    if not affected:  # (a did fact always has its segment among the affected ones)
        return changes
    try:  # read after writing the facts: an erasure that came first is seen here (funnelpilot.erasure)
        contact = Contact.get(cid, PROFILE, consistent_read=True)
    except Contact.DoesNotExist:
        contact = None
    if contact is None or contact.status == "erased":
        for sk in facts_written:  # an event in flight for an erased person: leave nothing behind
            aws.dynamodb().delete_item(TableName=config().table, Key={"pk": {"S": cid}, "sk": {"S": sk}})
        return changes
    facts, now = Facts(contact), clock.now()
    current = set(contact.segments or set())
    members = {seg.name: is_member(seg, facts, now) for seg in affected}
    changes["entered"], changes["left"] = _change(cid, [n for n, member in members.items() if member and n not in current],
                                                  [n for n, member in members.items() if not member and n in current], current)
    segs = definitions()
    bus.publish(*[bus.event(f"segment.{kind}", cid, segment=name, trigger=detail_type,
                            event_id=tokens.digest_id("se" if kind == "entered" else "sl", detail["event_id"], name))
                  for kind in ("entered", "left") for name in changes[kind] if segs[name].events])
    return changes


def membership_key(cid: str, segment: str) -> dict:
    return {"pk": {"S": cid}, "sk": {"S": f"SEG#{segment}"}}


def membership_item(cid: str, segment: str) -> dict:
    """The item that makes ``cid`` a member of ``segment`` (on the sparse index)."""
    return {**membership_key(cid, segment), "gsi1pk": {"S": f"SEG#{segment}"}, "gsi1sk": {"S": cid},
            "segment": {"S": segment}, "entered_at": {"S": clock.iso()}}


def list_segment(list_name: str) -> str:
    return f"list:{list_name}"


def _profile_set(cid: str, entering: list[str], leaving: list[str], current: set[str]) -> bool:
    """Add ``entering`` to and remove ``leaving`` from the live profile's set in one UpdateItem; False
    when there is no live profile (erased). Only one of them: an ``ADD`` or a ``DELETE`` (idempotent,
    no condition on the set). Both (an ``ADD`` and a ``DELETE`` of one set cannot share an update): the
    set as a whole, conditioned on ``current``, the set as read; made again on the one DynamoDB returns
    when another evaluation changed it meanwhile."""
    key, names = {"pk": {"S": cid}, "sk": {"S": PROFILE}}, {"#segs": "segments", "#st": "status"}
    live = "attribute_exists(pk) AND #st <> :erased"
    values = {":erased": {"S": "erased"}}
    if not (entering and leaving):
        return aws.conditional("update_item", Key=key, UpdateExpression=f"{'ADD' if entering else 'DELETE'} #segs :s",
                               ConditionExpression=live, ExpressionAttributeNames=names,
                               ExpressionAttributeValues=values | {":s": {"SS": entering or leaving}})
    for _attempt in range(_SET_ATTEMPTS):
        new = (current | set(entering)) - set(leaving)  # (never empty: it holds ``entering``)
        was = {":was": {"SS": sorted(current)}} if current else {}
        try:
            aws.write("update_item", Key=key, UpdateExpression="SET #segs = :new",
                      ConditionExpression=f"{live} AND " + ("#segs = :was" if current else "attribute_not_exists(#segs)"),
                      ExpressionAttributeNames=names, ReturnValuesOnConditionCheckFailure="ALL_OLD",
                      ExpressionAttributeValues=values | was | {":new": {"SS": sorted(new)}})
            return True
        except ClientError as exc:
            if not aws.is_conditional_failure(exc):
                raise
            item = exc.response.get("Item")
            if not item or item.get("status", {}).get("S") == "erased":
                return False
            current = set(item.get("segments", {}).get("SS", []))
    raise TransientError(f"segments of {cid}: the profile's set kept changing")


def _change(cid: str, entering: list[str], leaving: list[str], current: set[str]) -> tuple[list[str], list[str]]:
    """Make ``cid`` a member of the ``entering`` segments and end its membership of the ``leaving`` ones
    (``current``: the profile's set as read); (entered, left): the changes this call made, the items'
    conditions deciding (``segment.entered`` / ``segment.left``)."""
    entered = [n for n in entering if aws.conditional("put_item", Item=membership_item(cid, n),
                                                      ConditionExpression="attribute_not_exists(pk)")]
    left = [n for n in leaving if aws.conditional("delete_item", Key=membership_key(cid, n),
                                                  ConditionExpression="attribute_exists(pk)")]
    if (entering or leaving) and not _profile_set(cid, entering, leaving, current):
        for name in entered:  # erased since it was read: leave nothing behind
            aws.write("delete_item", Key=membership_key(cid, name))
        return [], left
    return entered, left


def members(segment: str, *, limit: int = 100, cursor: str | None = None) -> tuple[list[str], str | None]:
    """One page of a segment's members (Query on gsi1) and the cursor for the next page."""
    kwargs = {"TableName": config().table, "IndexName": "gsi1", "Limit": limit,
              "KeyConditionExpression": "gsi1pk = :s", "ExpressionAttributeValues": {":s": {"S": f"SEG#{segment}"}},
              "ProjectionExpression": "gsi1sk"}
    if cursor:
        kwargs["ExclusiveStartKey"] = json.loads(cursor)
    page = aws.dynamodb().query(**kwargs)
    nxt = page.get("LastEvaluatedKey")
    return [i["gsi1sk"]["S"] for i in page["Items"]], (json.dumps(nxt, sort_keys=True) if nxt else None)
