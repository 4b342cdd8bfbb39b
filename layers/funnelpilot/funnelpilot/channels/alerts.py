"""Instant sales alerts (rules: ``infra/alerts.yaml``): an internal email to SALES_EMAIL
naming the contact, why, and their recent activity (the ``SCORED#`` markers scoring
writes, ``recent_activity``), at most one per contact per ``rate_limit_hours``; and a text to each of the
business's own numbers in its ``sms`` (funnelpilot.channels.sms).

The rate limit is a conditional write on the contact's ``ALERT`` item claimed *before*
sending and released if the send fails, so duplicates and bursts (three pricing views in
a minute, then lead.qualified) produce one email. A recipient SES rejects (SALES_EMAIL not
verified while the account is in the sandbox) keeps the claim and is not retried. After
sending, ``sales.alerted`` (no PII) is published, and with ``SalesWebhookUrl`` set, in the same
PutEvents, the Slack message (``slack_message``: the person's first name, their email only if
alerts.yaml says so, a link to their profile) as a ``webhook.delivery`` for the ``sales-alert``
API destination.
"""
import json
import logging
from functools import cache

import yaml

from funnelpilot import aws, bus, clock, erasure, scoring, tokens
from funnelpilot.channels import emails, sms, webhooks
from funnelpilot.channels.phone import parse_phone
from funnelpilot.config import config
from funnelpilot.errors import RecipientRejected
from funnelpilot.models import PROFILE, Contact
from funnelpilot.sending import pace

logger = logging.getLogger(__name__)


@cache
def settings() -> dict:
    doc = yaml.safe_load((config().content_dir / "alerts.yaml").read_text()) or {}
    slack = doc.get("slack") or {}
    return {"events": set(doc.get("events") or []), "pages": set(doc.get("pages") or []),
            "rate_limit": float(doc.get("rate_limit_hours", 24)) * 3600,
            "recent": int(doc.get("recent_activity", 10)),
            "slack_email": slack.get("email") is True, "profile_url": str(slack.get("profile_url") or ""),
            "sms": [parse_phone(n, "alerts.yaml sms") for n in doc.get("sms") or []]}


def profile_url(cid: str) -> str:
    """Where the alert links the person: alerts.yaml's ``profile_url``, else their profile item in
    the DynamoDB console (the console asks the reader to sign in to the account)."""
    if settings()["profile_url"]:
        return settings()["profile_url"].replace("{contact_id}", cid)
    region, table = config().region, config().table
    return (f"https://{region}.console.aws.amazon.com/dynamodbv2/home?region={region}#edit-item?itemMode=2"
            f"&pk={cid}&route=ROUTE_ITEM_EXPLORER&sk=PROFILE&table={table}")


def _slack(text: str) -> str:
    """Slack's three control characters, escaped (a name cannot make a link or a mention)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(contact: Contact, reason: str, score: float) -> dict:
    """The incoming-webhook body: ``{"text": ...}`` in Slack's mrkdwn."""
    who = f"*{_slack(contact.first_name)}*" if contact.first_name else "A contact"
    if settings()["slack_email"] and contact.email:
        who += f" ({_slack(contact.email)})"
    return {"text": f"Sales alert: {who} {_slack(reason)} (score {score:g}) <{profile_url(contact.pk)}|profile>"}


def reason_for(detail_type: str, detail: dict) -> str | None:
    """Why this event deserves an alert, or None."""
    cfg = settings()
    if detail_type == "page.viewed":  # not a view under an unproven signup token (funnelpilot.visitors)
        listed = detail.get("path") in cfg["pages"] and not detail.get("unverified")
        return f"viewed {detail.get('path')}" if listed else None
    if detail_type in cfg["events"]:
        return detail.get("reason") or {"lead.qualified": "qualified lead", "customer.vip": "VIP customer"}.get(
            detail_type, detail_type)
    return None


def recent_activity(cid: str, limit: int) -> list[dict]:
    """The newest ``limit`` entries of the contact's activity log: the scoring markers (``SCORED#<event_id>``,
    keyed on the event, so all of them are read, at most 90 days' worth: an alert is rare), and the
    time-ordered ``EVT#`` entries written before the markers carried the log (their TTL ends them)."""
    query = {"TableName": config().table, "KeyConditionExpression": "pk = :c AND begins_with(sk, :p)",
             "ExpressionAttributeValues": {":c": {"S": cid}, ":p": {"S": "SCORED#"}},
             "ProjectionExpression": "kind, #at, summary", "ExpressionAttributeNames": {"#at": "at"}}
    items = []
    while True:
        page = aws.dynamodb().query(**query)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            break
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    items += aws.dynamodb().query(TableName=config().table, KeyConditionExpression="pk = :c AND begins_with(sk, :p)",
                                  ExpressionAttributeValues={":c": {"S": cid}, ":p": {"S": "EVT#"}},
                                  ScanIndexForward=False, Limit=limit)["Items"]
    newest = sorted((i for i in items if "kind" in i), key=lambda i: float(i["at"]["N"]), reverse=True)[:limit]
    return [{"at": clock.iso(float(i["at"]["N"])), "kind": i["kind"]["S"],
             "summary": json.loads(i.get("summary", {}).get("S", "{}"))} for i in newest]


def _claim(cid: str, reason: str) -> bool:
    """Take the contact's alert window, in one transaction with a check that the profile
    is still there (an event in flight for an erased person creates no ALERT item)."""
    now = clock.now()
    until = now + settings()["rate_limit"]
    claim = {"Update": {"TableName": config().table, "Key": {"pk": {"S": cid}, "sk": {"S": "ALERT"}},
                        "UpdateExpression": "SET #until = :until, reason = :r, expires_at = :exp",
                        "ConditionExpression": "attribute_not_exists(#until) OR #until <= :now",
                        "ExpressionAttributeNames": {"#until": "until"},
                        "ExpressionAttributeValues": {":until": {"N": str(until)}, ":now": {"N": str(now)},
                                                      ":r": {"S": reason}, ":exp": {"N": str(int(until))}}}}
    try:
        aws.transact_write([erasure.alive(cid), claim])
    except Exception as exc:
        if aws.failed_conditions(exc):
            return False  # rate-limited (or erased meanwhile)
        raise
    return True


def _release(cid: str) -> None:
    aws.dynamodb().delete_item(TableName=config().table, Key={"pk": {"S": cid}, "sk": {"S": "ALERT"}})


def alert_context(contact: Contact, reason: str, activity: list[dict]) -> dict:
    """What the alert email (``sales-alert``) may use."""
    return {
        "headline": f"{contact.first_name or contact.email} {reason}",
        "name": contact.first_name or contact.email, "email": contact.email, "contact_id": contact.pk,
        "status": contact.status, "customer": scoring.is_customer(contact), "orders": int(contact.orders or 0),
        "score": round(scoring.current_score(contact, "capture"), 1),
        "loyalty": round(scoring.current_score(contact, "loyalty"), 1),
        "tags": sorted(contact.tags or []), "segments": sorted(contact.segments or []),
        "activity": activity,
    }


def alert_email(context: dict, message_id: str) -> bytes:
    """The alert email to SALES_EMAIL as SES gets it (raw MIME), for an ``alert_context``."""
    return emails.build_mime(to=config().sales_email, rendered=emails.render("sales-alert", context),
                             message_id=message_id, headers={}, email="sales-alert")


def alert(detail_type: str, detail: dict) -> str:
    """Send the alert for this event if it deserves one; returns what happened."""
    reason = reason_for(detail_type, detail)
    if reason is None:
        return "not_alerting"
    cid = detail["contact_id"]
    try:
        contact = Contact.get(cid, PROFILE)
    except Contact.DoesNotExist:
        return "unknown_contact"
    if contact.status == "erased" or not contact.email:
        return "unknown_contact"
    if not _claim(cid, reason):
        return "rate_limited"
    context = alert_context(contact, reason, recent_activity(cid, settings()["recent"]))
    message_id = tokens.digest_id("a", detail["event_id"])
    raw = alert_email(context, message_id)
    try:
        emails.send_raw(config().sales_email, raw, priority=pace.TRANSACTIONAL)
    except RecipientRejected:
        return "recipient_rejected"  # SALES_EMAIL unverified in the sandbox: the claim stays, no retry storm
    except Exception:
        _release(cid)
        raise
    for number in settings()["sms"]:  # best effort once the email went: a failure is logged, never retried
        try:
            sms.send_alert(number, f"Sales alert: {context['headline']}", message_id)
        except Exception as exc:  # noqa: BLE001
            logger.warning("sales alert SMS failed", extra={"contact_id": cid, "error": type(exc).__name__})
    entries = [bus.event("sales.alerted", cid, event_id=tokens.digest_id("sa", detail["event_id"]),
                         reason=reason, trigger=detail_type, path=detail.get("path"))]
    if config().sales_webhook:
        entries.append(webhooks.delivery(webhooks.SALES_ALERT, cid, slack_message(contact, reason, context["score"]),
                                         tokens.digest_id("sw", detail["event_id"])))
    bus.publish(*entries)
    return "sent"
