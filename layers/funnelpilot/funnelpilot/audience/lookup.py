"""Find a person by email, and what support needs to see of them: the "contact card".

No index holds the address: the contact id *is* the keyed hash of the normalised address
(``tokens.contact_id``), so finding a person is computing it and one Query of their partition.
The address travels in the request body only (never in a path, a query string or a log).
"""
import json
import uuid

from funnelpilot import aws, bulk, bus, engagement, funnels, gdpr, scoring, tokens
from funnelpilot.audience import fields
from funnelpilot.contacts import normalise_email
from funnelpilot.errors import InvalidField
from funnelpilot.models import Contact

_HIT_KINDS = {"open": "opened", "click": "clicked"}


def contact_id(email) -> str:
    """The contact id of an address as a form would have stored it; 400 (``email``) when it is no address."""
    if not isinstance(email, str) or "@" not in email or len(email) > 254:
        raise InvalidField("email", "email must be an address")
    return tokens.contact_id(normalise_email(email))


def console_url(execution_arn: str) -> str:
    """The execution's page in the Step Functions console."""
    region = execution_arn.split(":")[3]
    return f"https://{region}.console.aws.amazon.com/states/home?region={region}#/v2/executions/details/{execution_arn}"


def card(cid: str) -> dict | None:
    """Everything support asks about a person, from one Query of their partition (plus, for each
    journey still running, the state it is in from the execution's history); None if unknown."""
    raw = gdpr.raw_items(cid)
    profile = next((i for i in raw if i["sk"]["S"] == "PROFILE"), None)
    if profile is None or profile.get("status", {}).get("S") == "erased":
        return None
    contact = Contact.from_raw_data(profile)
    items = [gdpr.plain(i) for i in raw]
    by_kind: dict[str, list[dict]] = {}
    for item in items:
        by_kind.setdefault(item["sk"].split("#", 1)[0], []).append(item)
    p = by_kind["PROFILE"][0]
    return {
        "contact_id": cid,
        "profile": {k: p.get(k) for k in ("email", "first_name", "status", "status_reason", "timezone", "created_at",
                                          "updated_at", "confirmed_at") if p.get(k) is not None},
        "fields": p.get("properties") or {},
        "tags": p.get("tags") or [],
        "lists": p.get("lists") or [],
        "unsubscribed_lists": p.get("unsubscribed_lists") or [],
        "lead_magnets": p.get("lead_magnets") or [],
        "utm": p.get("utm") or {},
        "consent": sorted(({"at": c["given_at"], "list": c.get("list_name"), "confirmation": c.get("confirmation"),
                            "source": c.get("source"), "ip": c.get("ip"), "user_agent": c.get("user_agent")}
                           for c in by_kind.get("CONSENT", [])), key=lambda c: c["at"]),
        "scores": {"capture": round(scoring.current_score(contact, "capture"), 1),
                   "loyalty": round(scoring.current_score(contact, "loyalty"), 1),
                   "orders": p.get("orders") or 0, "spend": p.get("spend") or 0},
        "segments": p.get("segments") or [],
        "funnels": [_journey(f) for f in sorted(by_kind.get("FUNNEL", []), key=lambda f: f.get("entered_at") or "")],
        "timeline": _timeline(by_kind.get("MSG", []), by_kind.get("REFUSED", [])),
    }


def _journey(entry: dict) -> dict:
    arn = entry.get("execution_arn")
    state = None
    if arn and entry.get("status") in funnels.LIVE:
        state = next(iter(funnels.recent_states(arn)), None)
    out = {"funnel": entry.get("funnel") or entry["sk"].split("#", 1)[1], "status": entry.get("status"),
           "state": state or entry.get("step"), "entered_at": entry.get("entered_at"),
           "completed_at": entry.get("completed_at"), "goal": entry.get("goal"), "entries": entry.get("entries")}
    if arn:
        out |= {"execution_arn": arn, "console_url": console_url(arn)}
    return {k: v for k, v in out.items() if v is not None}


def _timeline(messages: list[dict], refusals: list[dict]) -> list[dict]:
    """Every email and what happened to it, oldest first: sent or blocked (why), delivered,
    bounced, complained, and each open and click, human or machine (with the machine's reason);
    and each hand-off a funnel refused (funnelpilot.funnels.refuse: which, why, from where)."""
    events = [{"at": r.get("at"), "event": "refused", "template": None, "funnel": r.get("funnel"),
               "reason": r.get("reason"), "from": r.get("from")} for r in refusals]
    for m in messages:
        about = {"template": m.get("template"), "funnel": m.get("funnel"), "message_id": m.get("message_id")}
        if m.get("status") == "blocked":
            events.append({"at": m.get("created_at"), "event": "blocked", "reason": m.get("reason"), **about})
        elif m.get("sent_at"):
            events.append({"at": m["sent_at"], "event": "sent", **about})
        for field in ("delivered", "bounced", "complained"):
            if m.get(f"{field}_at"):
                events.append({"at": m[f"{field}_at"], "event": field, **about})
        links = [e if isinstance(e, str) else e["url"] for e in json.loads(m.get("links") or "[]")]
        sent_at = m.get("delivered_at") or m.get("sent_at")
        for hit in engagement.verdicts([{"link": None, "reason": None, **h} for h in m.get("hits") or []],
                                       sent_at=engagement.epoch(sent_at)):
            entry = {"at": hit.get("at"), "event": _HIT_KINDS.get(hit.get("kind"), hit.get("kind")),
                     "human": bool(hit.get("human")), **about}
            if not hit.get("human"):
                entry["reason"] = hit.get("reason")
            index = str(hit.get("link") or "")
            if index.isdigit() and int(index) < len(links):
                entry["url"] = links[int(index)]
            events.append(entry)
    return sorted(events, key=lambda e: (e["at"] or "", e["event"]))


def change(cid: str, body: dict) -> dict | None:
    """``tag`` / ``untag`` (lists of tags) and ``set`` (custom fields) on one contact, each checked as a
    bulk action's (fields as declared) and applied the same way (one conditional write each), each emitting
    ``contact.tagged`` / ``contact.untagged`` / ``contact.updated`` so segments follow. The
    contact's card afterwards, or None if there is no such contact."""
    if not isinstance(body, dict) or not body or set(body) - {"tag", "untag", "set"}:
        raise InvalidField("body", "give tag, untag (lists of tags) and/or set (an object of properties)")
    actions = [("tag", t) for t in _tags(body, "tag")] + [("untag", t) for t in _tags(body, "untag")]
    if "set" in body:
        actions.append(("properties", fields.to_set(body["set"], "set")))
    for kind, value in actions:
        bulk.validate_action({kind: value})
    if gdpr.profile(cid) is None:
        return None
    run_id = f"admin-{uuid.uuid4().hex[:12]}"
    for kind, value in actions:
        for with_map in (True, False):
            try:
                aws.transact_write([bulk.change(cid, kind, value, with_map)])
            except Exception as exc:
                if not aws.failed_conditions(exc):
                    raise
                if kind == "properties" and with_map:
                    continue  # no properties map yet: create it
                return None  # erased meanwhile
            break
        bus.publish(bulk.action_event(kind, value, cid, f"{run_id}-{kind}-{value if isinstance(value, str) else 'set'}"))
    return card(cid)


def _tags(body: dict, key: str) -> list[str]:
    value = body.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise InvalidField(key, f"{key} must be a list of tags")
    return value
