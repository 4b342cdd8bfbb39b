"""The preference centre: which of the lists they joined a person keeps getting, or nothing at all.

An email belongs to a list when its funnel declares one (``list:`` in the funnel file) or was
entered on an event naming one (``contact.subscribed`` of that list); its ``List-Id`` header names
it (RFC 2919) and its unsubscribe link (``/u/{token}``, also RFC 8058 one-click) opts out of that
list only. The page behind the link lets the person pick the lists they keep or unsubscribe from
everything. The profile keeps the lists joined (``lists``) and those opted out of
(``unsubscribed_lists``); a send of a list's email to someone who opted out of it is blocked
(``list_unsubscribed``, the journey ends). Opting out of every list one joined is the global
unsubscribe (``consent.unsubscribe``: status ``unsubscribed``, ``contact.unsubscribed``); an
email of no list is unsubscribed from everything, as before.

Every change is one transaction: the profile's update, conditioned on the profile being as read
(``updated_at``), a consent record per list (``CONSENT#<time>#<list>#withdrawn`` or
``#preferences``) and its event in the outbox (``contact.list_unsubscribed`` /
``contact.list_subscribed``, with ``list`` and ``source``).
"""
from email.utils import parseaddr

from funnelpilot import aws, bus, clock, consent, outbox
from funnelpilot.config import config
from funnelpilot.models import PROFILE, ConsentRecord

_ATTEMPTS = 4  # the profile changing under each attempt


def list_id(list_name: str) -> str:
    """The ``List-Id`` header value (RFC 2919): ``Title <list.sender-domain>``."""
    domain = parseaddr(config().sender)[1].rsplit("@", 1)[-1] or "localhost"
    return f"{title(list_name)} <{list_name}.{domain}>"


def funnel_list_id(funnel: str) -> str:
    """``List-Id`` of an email of no list (a journey entered by a handoff, a score, an order): the
    funnel is the stream it belongs to, ``<funnel> <funnel.funnels.sender-domain>``."""
    domain = parseaddr(config().sender)[1].rsplit("@", 1)[-1] or "localhost"
    return f"{funnel} <{funnel}.funnels.{domain}>"


def title(list_name: str) -> str:
    return str(consent.list_settings(list_name).get("title") or list_name)


def state(cid: str) -> dict | None:
    """``status``, ``lists`` (joined), ``opted_out`` and ``updated_at`` of the profile, or None."""
    item = aws.dynamodb().get_item(TableName=config().table, Key={"pk": {"S": cid}, "sk": {"S": PROFILE}},
                                   ConsistentRead=True).get("Item")
    if item is None:
        return None
    return {"status": item.get("status", {}).get("S"), "lists": set(item.get("lists", {}).get("SS", [])),
            "opted_out": set(item.get("unsubscribed_lists", {}).get("SS", [])),
            "updated_at": item.get("updated_at", {}).get("S")}


def choose(cid: str, *, keep: set[str] | None = None, drop: set[str] = frozenset(), source: str,
           message_id: str | None = None) -> str:
    """Apply a person's choice: keep exactly ``keep`` of the lists they joined (the page's form),
    or opt out of ``drop`` (the unsubscribe link of a list's email). ``unsubscribed`` when nothing is
    left (the global unsubscribe), ``updated``, ``unchanged``, or ``inactive`` (not subscribed:
    unknown, erased, unsubscribed, suppressed)."""
    for _ in range(_ATTEMPTS):
        now = state(cid)
        if now is None or now["status"] not in ("active", "pending", "sunset"):  # sunset: may still opt out
            return "inactive"
        joined = now["lists"]
        if keep is not None:  # the page shows the lists joined: others opted out of stay so
            out = (joined - keep) | (now["opted_out"] - joined)
        else:  # also a list never joined: its emails stop (a funnel of that list reached them)
            out = now["opted_out"] | set(drop)
        if not joined - out:
            consent.unsubscribe(cid, message_id, source)
            return "unsubscribed"
        if out == now["opted_out"]:
            return "unchanged"
        if _write(cid, now, out, source, message_id):
            return "updated"
    raise RuntimeError(f"contact {cid}: its profile kept changing during a preference change")


def _write(cid: str, now: dict, out: set[str], source: str, message_id: str | None) -> bool:
    stamp = clock.iso()
    values = {":now": {"S": stamp}, ":status": {"S": now["status"]}}
    if out:
        expression = "SET unsubscribed_lists = :out, updated_at = :now"
        values[":out"] = {"SS": sorted(out)}
    else:
        expression = "SET updated_at = :now REMOVE unsubscribed_lists"
    condition = "#s = :status AND " + ("updated_at = :seen" if now["updated_at"] else "attribute_not_exists(updated_at)")
    if now["updated_at"]:
        values[":seen"] = {"S": now["updated_at"]}
    items = [{"Update": {"TableName": config().table, "Key": {"pk": {"S": cid}, "sk": {"S": PROFILE}},
                         "UpdateExpression": expression, "ConditionExpression": condition,
                         "ExpressionAttributeNames": {"#s": "status"}, "ExpressionAttributeValues": values}}]
    fields = consent.message_fields(cid, message_id)
    for name, kind, suffix in [*((n, "contact.list_unsubscribed", "withdrawn") for n in sorted(out - now["opted_out"])),
                               *((n, "contact.list_subscribed", "preferences") for n in sorted(now["opted_out"] - out))]:
        record = ConsentRecord(cid, f"CONSENT#{stamp}#{name}#{suffix}", list_name=name, source=source, given_at=stamp,
                               confirmation=suffix, ip=None, user_agent=None)
        items += [{"Put": {"TableName": config().table, "Item": record.serialize()}},
                  outbox.put(bus.event(kind, cid, list=name, source=source, **fields))]
    try:
        aws.transact_write(items)
    except Exception as exc:
        if aws.failed_conditions(exc) == [0]:
            return False  # the profile changed since it was read: read it again
        raise
    return True


def message_list(cid: str, message_id: str | None) -> str | None:
    """The list the message belongs to (None: no list, or no such message)."""
    if not message_id:
        return None
    item = aws.dynamodb().get_item(TableName=config().table, Key={"pk": {"S": cid}, "sk": {"S": f"MSG#{message_id}"}},
                                   ProjectionExpression="list_name").get("Item") or {}
    return item.get("list_name", {}).get("S")
