"""Lead scoring (``capture`` track, prospects) and loyalty (``loyalty`` track, customers).
Rules are data: ``infra/scoring.yaml`` (documented in README, "Scoring").

How decay composes with atomic ``ADD`` (no nightly job, no read-modify-write race):
each track is stored on the contact profile as *points at a reference epoch*
``score_at`` (epoch seconds). An event at time ``t`` adds
``points * 2 ** ((t - score_at) / half_life)`` with ``ADD``; the value at any time is
``stored * 2 ** (-(now - score_at) / half_life)``. Decay is a common factor, so the sum
of concurrent ADDs is exact in whatever order DynamoDB applies them, and a contact
nobody touches decays "by itself" when read. ``score_at`` only changes on the first
scored event and when it is rebased (once every ``REBASE_HALF_LIVES`` half-lives, a
conditional write) so the stored numbers stay small; every ADD is conditioned on the
``score_at`` it was computed for, and retried if a rebase won the race.

One scored event = one TransactWriteItems of two items (2 WRU an item): the marker
``SCORED#<event_id>`` (conditional put: idempotency, keyed on the event id alone since a retry may
carry another time), which is also the contact's activity log entry (kind, time, summary, points:
read by sales alerts), and the profile ADD. The day's cap counters of the matching rules are
attributes of the profile (``cap#<day>#<counter>``, ``_counters``), counted by that ADD under a
condition that each is below its limit: no item of their own (2 WRU less a capped event), and the
consistent read of the profile already tells which rules are capped out, so a capped event makes
no failing write; the days older than ``CAP_DAYS`` are removed by the next profile write. An
event that changes no score nor profile field (no rule matched, or their caps are full) writes its
marker alone, one conditional put (1 WRU), and undoes it when the contact turns out to be erased
(funnelpilot.erasure). Concurrent events on one contact overlap on the profile
(``TransactionConflict``): ``aws.transact_write`` retries them, then the Lambda's asynchronous
retries (nothing is written by a cancelled transaction, and the marker makes a retried event
count once).
"""
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache

import yaml
from botocore.exceptions import ClientError

from funnelpilot import aws, bus, clock, erasure, tokens
from funnelpilot.config import config
from funnelpilot.models import PROFILE, Contact

DAY = 86_400
REBASE_HALF_LIVES = 24
ACTIVITY_TTL = 90 * DAY
CAP_DAYS = 3  # a late event finds its day's counters this long (the profile keeps them)
TRACKS = ("capture", "loyalty")
_ATTR = {"capture": "score", "loyalty": "loyalty"}
_FLAG = {"capture": "qualified_until", "loyalty": "vip_until"}
# Fields copied from an event into the activity log (never PII).
_SUMMARY_FIELDS = ("path", "title", "funnel", "step", "template", "link", "order_id", "amount", "currency",
                   "list", "lead_magnet", "segment")


@dataclass(frozen=True)
class Track:
    name: str
    half_life: float  # seconds
    threshold: float | None
    emits: str | None
    audience: str  # prospects | customers | all


@dataclass(frozen=True)
class Rule:
    id: str
    event: str
    track: str = "capture"
    points: float = 0
    when: dict = field(default_factory=dict)
    per_field: str | None = None  # points per unit of a numeric detail field (spend)
    per: float = 1
    max_points: float | None = None
    cap_per_day: int | None = None
    once_per: tuple[str, ...] = ()  # detail fields: the rule scores once per day per their values

    def matches(self, detail_type: str, detail: dict) -> bool:
        return detail_type == self.event and all(matches(detail_field(detail, k), want) for k, want in self.when.items())

    def points_for(self, detail: dict) -> float:
        pts = self.points
        if self.per_field:
            try:
                pts += float(detail.get(self.per_field) or 0) / self.per
            except (TypeError, ValueError):
                pass
        if self.max_points is not None:
            pts = min(pts, self.max_points)
        return pts


@dataclass(frozen=True)
class Settings:
    tracks: dict[str, Track]
    rules: tuple[Rule, ...]
    inactive_after_days: int
    repurchase: dict
    winback: dict

    def event_kinds(self) -> set[str]:
        return {r.event for r in self.rules}


def detail_field(detail: dict, path: str):
    """A detail field by name; a dotted path goes into nested fields and through lists
    (``items.sku`` of an order: the list of its SKUs)."""
    value = detail
    for part in path.split("."):
        if isinstance(value, list):
            value = [v.get(part) for v in value if isinstance(v, dict)]
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return None
    return value


def matches(value, want) -> bool:
    """A rule/segment condition on one field: a scalar (equal), a list (any of), or
    ``{exists: bool}`` / ``{prefix: str}`` / ``{contains: str}`` / ``{gte|gt|lte|lt: number}``.
    A list value (``items.sku``) matches when one of its elements does, as in EventBridge patterns."""
    if isinstance(value, list) and not (isinstance(want, dict) and "exists" in want):
        return any(matches(v, want) for v in value)
    if isinstance(want, list):
        return any(matches(value, w) for w in want)
    if isinstance(want, dict):
        for op, arg in want.items():
            if op == "exists":
                ok = (value is not None) == bool(arg)
            elif op == "prefix":
                ok = isinstance(value, str) and value.startswith(arg)
            elif op == "contains":
                ok = isinstance(value, str) and arg in value
            elif op in ("gte", "gt", "lte", "lt"):
                try:
                    v = float(value)
                except (TypeError, ValueError):
                    return False
                ok = {"gte": v >= arg, "gt": v > arg, "lte": v <= arg, "lt": v < arg}[op]
            else:
                raise ValueError(f"unknown condition operator {op!r}")
            if not ok:
                return False
        return True
    return value == want


@cache
def settings() -> Settings:
    doc = yaml.safe_load((config().content_dir / "scoring.yaml").read_text())
    tracks = {}
    for name in TRACKS:
        t = doc.get("tracks", {}).get(name, {})
        tracks[name] = Track(name, float(t.get("half_life_days", 30)) * DAY, t.get("threshold"),
                             t.get("emits"), t.get("for", "all"))
    rules = []
    for r in doc.get("rules", []):
        per = r.get("points_per") or {}
        rule = Rule(id=r["id"], event=r["event"], track=r.get("track", "capture"),
                    points=float(r.get("points", 0)), when=r.get("when") or {},
                    per_field=per.get("field"), per=float(per.get("per", 1)),
                    max_points=r.get("max_points"), cap_per_day=r.get("cap_per_day"),
                    once_per=tuple(r.get("once_per") or ()))
        if rule.track not in TRACKS:
            raise ValueError(f"scoring.yaml: rule {rule.id}: unknown track {rule.track!r}")
        rules.append(rule)
    return Settings(tracks, tuple(rules), int(doc.get("inactivity", {}).get("after_days", 30)),
                    doc.get("repurchase") or {}, doc.get("winback") or {})


def decay(points: float, elapsed: float, half_life: float) -> float:
    """``points`` after ``elapsed`` seconds: halved every ``half_life`` seconds."""
    return points * 2.0 ** (-elapsed / half_life)


def current_score(contact: Contact, track: str = "capture", at: float | None = None) -> float:
    """The contact's score on a track now (or at ``at``), decay applied. 0 if never scored."""
    stored = getattr(contact, _ATTR[track]) or 0
    if not stored or contact.score_at is None:
        return 0.0
    now = clock.now() if at is None else at
    return decay(float(stored), now - float(contact.score_at), settings().tracks[track].half_life)


def is_customer(contact: Contact) -> bool:
    return bool(contact.orders)


def event_time(detail: dict) -> float:
    try:
        return datetime.fromisoformat(detail["occurred_at"].replace("Z", "+00:00")).timestamp()
    except (KeyError, AttributeError, ValueError):
        return clock.now()


def _n(x: float) -> dict:
    return {"N": repr(round(float(x), 9)) if not float(x).is_integer() else str(int(x))}


@dataclass
class Outcome:
    status: str  # scored | duplicate | unknown_contact | no_rule
    points: dict = field(default_factory=dict)  # track -> points added (before decay scaling)
    rules: list = field(default_factory=list)
    crossed: list = field(default_factory=list)  # events emitted for threshold crossings


def record(detail_type: str, detail: dict) -> Outcome:
    """Apply the matching rules to one event (idempotent on event_id)."""
    t = event_time(detail)
    # a site view under a signup's fp token, before the address is proven, scores nothing
    # (funnelpilot.visitors): anyone can sign up any address and browse as that person
    matched = [] if detail.get("unverified") else [r for r in settings().rules if r.matches(detail_type, detail)]
    return _apply(detail_type, detail, matched, t, f"SCORED#{detail['event_id']}", log_activity=True)


def award(contact_id: str, points: float, *, once_key: str, track: str = "capture",
          reason: str = "funnel") -> Outcome:
    """Points from outside the rules (a funnel's ``score`` step), added at most once per
    ``once_key`` (e.g. execution + state), decay-compatible like every other ADD."""
    from funnelpilot import segments  # (segments imports this module)

    rule = Rule(id=reason, event="score.awarded", track=track, points=float(points))
    detail = {"event_id": once_key, "contact_id": contact_id}
    outcome = _apply("score.awarded", detail, [rule], clock.now(), f"AWARD#{once_key}", log_activity=False)
    if any(outcome.points.values()):
        segments.evaluate(segments.SCORED, detail)
    return outcome


def _apply(detail_type: str, detail: dict, matched: list, t: float, seen_sk: str, *, log_activity: bool) -> Outcome:
    cid, event_id = detail["contact_id"], detail["event_id"]
    day = clock.iso(t)[:10]
    for _attempt in range(8):
        raw = _read(cid)
        if raw is None:
            return Outcome("unknown_contact")
        contact = Contact.from_raw_data(raw)
        counters = _counters(matched, detail, day)
        capped = {rule for attribute, (rule, limit) in counters.items() if float(raw.get(attribute, {}).get("N", 0)) >= limit}
        rules = [r for r in matched if r.id not in capped]
        counters = {a: c for a, c in counters.items() if c[0] not in capped}
        points = {tr: 0.0 for tr in TRACKS}
        for r in rules:
            points[r.track] += r.points_for(detail)
        marker = _marker(cid, seen_sk, detail_type, detail, t, points if log_activity else None)
        profile = _profile_update(contact, points, t, detail_type, detail, counters, _past_caps(raw, t))
        if profile is None:  # nothing to add or set: the marker (the activity log entry) alone
            return _unchanged(cid, marker, points) if log_activity else Outcome("no_rule", points)
        try:
            aws.transact_write([marker, profile])  # retried while it only conflicts with a concurrent event's
        except ClientError as exc:
            failed = aws.failed_conditions(exc)
            if exc.response["Error"]["Code"] != "TransactionCanceledException" or not failed:
                raise
            if 0 in failed:
                return Outcome("duplicate")
            continue  # a cap filled, or score_at moved (first score / rebase) meanwhile: read again
        break
    else:
        raise RuntimeError(f"scoring {event_id}: too many conflicting retries")
    outcome = Outcome("scored" if any(points.values()) else "no_rule", points, [r.id for r in rules])
    if any(points.values()):
        outcome.crossed = _thresholds(cid, event_id, t, points)
    return outcome


def _unchanged(cid: str, marker: dict, points: dict) -> Outcome:
    """An event that changes nothing on the profile: its marker alone (the activity log keeps it), then
    the profile read again (funnelpilot.erasure: erased meanwhile, the marker is deleted again)."""
    if not aws.conditional("put_item", **marker["Put"]):
        return Outcome("duplicate")
    if erasure.incarnation(cid) is None:
        aws.write("delete_item", Key={k: marker["Put"]["Item"][k] for k in ("pk", "sk")})
        return Outcome("unknown_contact")
    return Outcome("no_rule", points)


def _read(cid: str) -> dict | None:
    """The live profile as DynamoDB returns it (its cap counters are no model attributes), or None
    (never subscribed, or erased: nothing is scored)."""
    item = aws.dynamodb().get_item(TableName=config().table, Key=_key(cid, PROFILE), ConsistentRead=True).get("Item")
    return None if item is None or item.get("status", {}).get("S") == "erased" else item


def _get(cid: str) -> Contact | None:
    raw = _read(cid)
    return None if raw is None else Contact.from_raw_data(raw)


def _key(cid: str, sk: str) -> dict:
    return {"pk": {"S": cid}, "sk": {"S": sk}}


def _marker(cid: str, sk: str, detail_type: str, detail: dict, t: float, points: dict | None) -> dict:
    """The idempotency marker (new only); with ``points`` also the activity log entry: kind, time,
    the event's non-PII summary and the points each track got (sales alerts list the newest)."""
    item = {**_key(cid, sk), "expires_at": _n(int(clock.now()) + ACTIVITY_TTL)}
    if points is not None:
        summary = {k: detail[k] for k in _SUMMARY_FIELDS if detail.get(k) is not None}
        item |= {"kind": {"S": detail_type}, "at": _n(t), "summary": {"S": json.dumps(summary, sort_keys=True)}}
        item |= {f"{track}_points": _n(pts) for track, pts in points.items() if pts}
    return {"Put": {"TableName": config().table, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}}


def _counters(rules: list[Rule], detail: dict, day: str) -> dict[str, tuple[str, int]]:
    """The day's counters the rules count on (profile attribute ``cap#<day>#<counter>`` -> (rule id,
    limit)): each rule's daily cap, and once per day per the values of its ``once_per`` fields (a double
    click on one link of one email scores once)."""
    out = {}
    for rule in rules:
        if rule.cap_per_day:
            out[f"cap#{day}#{rule.id}"] = (rule.id, rule.cap_per_day)
        if rule.once_per:
            out[f"cap#{day}#{rule.id}#" + tokens.digest_id("", *(str(detail.get(f)) for f in rule.once_per))] = (rule.id, 1)
    return out


def _past_caps(raw: dict, t: float) -> list[str]:
    """The profile's cap counters (as read) of the days before the last ``CAP_DAYS`` before ``t``."""
    first = clock.iso(t - (CAP_DAYS - 1) * DAY)[:10]
    return [a for a in raw if a.startswith("cap#") and a[4:14] < first]


def _profile_update(contact: Contact, points: dict, t: float, detail_type: str, detail: dict,
                    counters: dict[str, tuple[str, int]], past: list[str]) -> dict | None:
    """The profile ADD, conditioned on the reference epoch it was computed for and on each of the day's
    ``counters`` (``_counters``) being below its limit, which it counts; it removes the ``past`` ones.
    None when the event changes nothing on the profile (no points; not an order nor an address's first proof)."""
    proves = detail_type == "email.clicked" and detail.get("human") is True and contact.email_proven_at is None
    if not any(points.values()) and detail_type != "order.placed" and not proves:
        return None
    tracks = settings().tracks
    names = {"#at": "score_at"}
    values: dict = {}
    adds, sets = [], []
    ref = contact.score_at
    shortest = min(tr.half_life for tr in tracks.values())
    if ref is None:
        cond = "attribute_exists(pk) AND attribute_not_exists(#at)"
        ref = t
        sets.append("#at = :ref")
    elif t - ref > REBASE_HALF_LIVES * shortest:
        # Rebase: re-express the stored values at t (exact: the condition pins what we read).
        cond_parts = ["#at = :old"]
        values[":old"] = _n(ref)
        for track, attr in _ATTR.items():
            names[f"#{attr}"] = attr
            stored = getattr(contact, attr)
            if stored is None:
                cond_parts.append(f"attribute_not_exists(#{attr})")
            else:
                cond_parts.append(f"#{attr} = :was_{attr}")
                values[f":was_{attr}"] = _n(stored)
            rebased = decay(float(stored or 0), t - ref, tracks[track].half_life)
            sets.append(f"#{attr} = :rb_{attr}")
            values[f":rb_{attr}"] = _n(rebased + points[track])
        points = {tr: 0.0 for tr in TRACKS}  # already included above
        cond = " AND ".join(cond_parts)
        ref = t
        sets.append("#at = :ref")
    else:
        cond = "#at = :ref"
    values[":ref"] = _n(ref)
    for track, pts in points.items():
        if pts:
            attr = _ATTR[track]
            names[f"#{attr}"] = attr
            adds.append(f"#{attr} :p_{attr}")
            values[f":p_{attr}"] = _n(pts * 2.0 ** ((t - ref) / tracks[track].half_life))
    if proves:
        sets.append("email_proven_at = if_not_exists(email_proven_at, :proven)")  # visitors: the address is theirs
        values[":proven"] = _n(t)
    if detail_type == "order.placed":
        month = clock.iso(t)[5:7]
        adds += ["orders :one", "order_months :month"]
        values[":one"] = _n(1)
        values[":month"] = {"SS": [month]}
        sets += ["first_order_at = if_not_exists(first_order_at, :t)", "last_order_at = :t"]
        values[":t"] = _n(t)
        try:
            spend = float(detail.get("amount") or 0)
        except (TypeError, ValueError):
            spend = 0
        if spend:
            adds.append("spend :spend")
            values[":spend"] = _n(spend)
    if counters:
        values[":one"] = _n(1)
    for i, (attribute, (_, limit)) in enumerate(counters.items()):
        names[f"#c{i}"] = attribute
        adds.append(f"#c{i} :one")
        values[f":l{i}"] = _n(limit)
        cond += f" AND (attribute_not_exists(#c{i}) OR #c{i} < :l{i})"
    names |= {f"#x{i}": attribute for i, attribute in enumerate(past)}
    expr = []
    if sets:
        expr.append("SET " + ", ".join(sets))
    if adds:
        expr.append("ADD " + ", ".join(adds))
    if past:
        expr.append("REMOVE " + ", ".join(f"#x{i}" for i in range(len(past))))
    if not sets and not adds:  # only a rebase's zero points: still pin the reference so the update is valid
        expr.insert(0, "SET #at = :ref")
    return {"Update": {"TableName": config().table, "Key": _key(contact.pk, PROFILE),
                       "UpdateExpression": " ".join(expr), "ConditionExpression": cond,
                       "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}}


def _thresholds(cid: str, event_id: str, t: float, points: dict) -> list[str]:
    """Emit, once per upward crossing, the track's threshold event. (A change of score is no bus
    event: the segments that depend on it are evaluated by the scorer, ``segments.SCORED``.)

    Each track has an episode flag (``qualified_until`` / ``vip_until``): the time the
    score will decay below the threshold if nothing else happens. A crossing claims the
    flag with a conditional write that succeeds only if the previous episode had ended
    by ``t`` - so it is emitted once, and again only after the score fell below (by decay
    or negative points) and rose again.
    """
    contact = _get(cid)
    entries, crossed = [], []
    if contact is None:  # erased since the scoring transaction
        return crossed
    for name, track in settings().tracks.items():
        if not points[name]:
            continue
        now_score = current_score(contact, name, at=t)
        if track.threshold is None or not track.emits:
            continue
        eligible = track.audience == "all" or (track.audience == "customers") == is_customer(contact)
        flag = _FLAG[name]
        if now_score >= track.threshold and eligible:
            stored = float(getattr(contact, _ATTR[name]))
            until = float(contact.score_at) + track.half_life * math.log2(stored / track.threshold)
            # the conditions decide under concurrency; the read (consistent) skips the writes it
            # already knows would fail (a failed conditional write is billed too)
            running = getattr(contact, flag) is not None and getattr(contact, flag) >= t
            if not running and _set_flag(cid, flag, until, f"attribute_not_exists({flag}) OR {flag} < :t", t):
                crossed.append(track.emits)
                entries.append(bus.event(track.emits, cid, event_id=tokens.digest_id("q", event_id, name),
                                         track=name, score=round(now_score, 2), threshold=track.threshold))
            elif getattr(contact, flag) is None or getattr(contact, flag) < until:
                _set_flag(cid, flag, until, f"{flag} < :v", t)  # extend the running episode
        elif now_score < track.threshold and getattr(contact, flag) and getattr(contact, flag) > t:
            _set_flag(cid, flag, t, f"{flag} > :v", t)  # fell below: the episode ends now
    bus.publish(*entries)
    return crossed


def _set_flag(cid: str, flag: str, value: float, condition: str, t: float) -> bool:
    values = {":v": _n(value)}
    if ":t" in condition:
        values[":t"] = _n(t)
    return aws.conditional("update_item", Key=_key(cid, PROFILE), UpdateExpression=f"SET {flag} = :v",
                           ConditionExpression=f"attribute_exists(pk) AND ({condition})",  # never re-creates a profile
                           ExpressionAttributeValues=values)
