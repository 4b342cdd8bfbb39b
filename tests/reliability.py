"""Helpers of the reliability tests: drive the stack like an audience, snapshot everything
it stores and sends, replay deliveries and Task invocations."""
import json
import re
import uuid
from collections import Counter
from email import message_from_bytes, policy

from funnelpilot import clock

from funnelpilot_local.moto_adapter import sent_emails
from funnelpilot_local.template import ACCOUNT, REGION

_URL = re.compile(r"https?://[^\s\"'<>]+")


def sent_count() -> int:
    """Emails SES accepted (by SES message id: a duplicate send is counted, not overwritten)."""
    return len(sent_emails(ACCOUNT, REGION))


def tables(rt) -> dict[str, list[str]]:
    ddb = rt.client("dynamodb")
    out = {}
    for name in ddb.list_tables()["TableNames"]:
        items = [json.dumps(i, sort_keys=True) for page in ddb.get_paginator("scan").paginate(TableName=name)
                 for i in page["Items"]]
        out[name] = sorted(items)
    return out


def world(rt, tap) -> dict:
    """Everything a duplicate must not change: stored items, emails sent, distinct events
    emitted (a consumer may pass a duplicate on with the same event_id: consumers dedupe on it).
    Scheduled jobs' cursors (``JOB#``) are left out: they move as simulated days pass; so are the rate
    gate's per-second counters (``PACE#``, funnelpilot.sending.pace): a duplicate send may spend a slot of
    the second it runs in (a slot, not an email: it finds the message sent and sends nothing)."""
    assert rt.settle(timeout=60)
    items = {name: [i for i in rows if not json.loads(i)["pk"]["S"].startswith(("JOB#", "PACE#"))]
             for name, rows in tables(rt).items()}
    events = {(e["detail-type"], e["detail"].get("event_id")) for e in tap.events()}
    return {"tables": items, "emails": sent_count(), "events": Counter(kind for kind, _ in events)}


def mails(rt) -> list:
    return [message_from_bytes(p.read_bytes(), policy=policy.default) for p in sorted(rt.outbox.glob("*.eml"))]


def links(rt, to: str | None = None) -> list[str]:
    """Paths of every link (under the public URL) in every email sent so far (to ``to`` only, if given)."""
    base = rt.public_url.rstrip("/")
    out = []
    for mail in mails(rt):
        if to is not None and str(mail["To"]) != to:
            continue
        text = " ".join(part.get_content() for part in mail.walk() if part.get_content_maintype() == "text")
        text += " " + str(mail.get("List-Unsubscribe", ""))
        out += [u[len(base):].replace("&amp;", "&") for u in _URL.findall(text) if u.startswith(base + "/")]
    return list(dict.fromkeys(out))


def ses_delivered(rt, mail) -> None:
    """SES's "Email Delivered" event for one sent email, as its EventBridge destination publishes it."""
    to = str(mail["To"])
    detail = {"eventType": "Delivery", "mail": {
        "timestamp": clock.iso(), "source": "hello@example.com", "sendingAccountId": "123456789012",
        "messageId": "ses-" + uuid.uuid4().hex, "destination": [to], "headersTruncated": False,
        "headers": [{"name": "To", "value": to}, {"name": "Subject", "value": str(mail["Subject"])},
                    {"name": "X-Funnelpilot-Message-Id", "value": str(mail["X-Funnelpilot-Message-Id"])}],
        "commonHeaders": {"to": [to], "subject": str(mail["Subject"])},
        "tags": {"ses:configuration-set": ["EmailConfigurationSet"]}},
        "delivery": {"timestamp": clock.iso(), "recipients": [to], "processingTimeMillis": 500,
                     "smtpResponse": "250 ok", "reportingMTA": "a1.smtp-out.amazonses.com"}}
    rt.client("events").put_events(Entries=[{"Source": "aws.ses", "DetailType": "Email Delivered",
                                             "Detail": json.dumps(detail)}])


def routed(rt, method: str, path: str) -> bool:
    return any(r.match(method, path.partition("?")[0]) is not None for r in rt.routes)


def audience(rt, n: int = 3) -> list[str]:
    """Everything a person can do: sign up (twice; a double opt-in list too), open, click,
    confirm, browse and buy (POST /events), get an email delivered (SES event), leave one list in the
    preference centre, unsubscribe."""
    ids = [rt.http("POST", "/signup", json_body={"email": f"p{i}@example.com", "consent": True, "list": "test-single",
                                                 "first_name": f"P{i}"}).json()["contact_id"] for i in range(n)]
    rt.http("POST", "/signup", form={"email": "P0@example.com", "consent": "true", "list": "test-single"})
    rt.http("POST", "/signup", form={"email": "p9@example.com", "consent": "true", "list": "insiders"})
    rt.http("POST", "/signup", form={"email": "p1@example.com", "consent": "true", "list": "insiders"})
    assert rt.settle(timeout=60)
    for path in links(rt):
        if path.startswith(("/o/", "/c/", "/confirm/")) and routed(rt, "GET", path):
            rt.http("GET", path, headers={"user-agent": "Mozilla/5.0"})
    key = {"x-api-key": rt.template.parameters.get("EventsApiKey", "")}
    if routed(rt, "POST", "/events"):
        rt.http("POST", "/events", json_body={"type": "page.viewed", "event_id": "evt-page-1", "contact_id": ids[0],
                                              "path": "/pricing"}, headers=key)
        rt.http("POST", "/events", json_body={"type": "order.placed", "event_id": "evt-order-1",
                                              "contact_id": ids[1], "order_id": "A-1", "amount": 49.9,
                                              "currency": "EUR"}, headers=key)
    sent = mails(rt)
    if sent:
        ses_delivered(rt, sent[0])
    leave = [p for p in links(rt, "p1@example.com") if p.startswith("/u/")]
    if leave and routed(rt, "POST", leave[0]):  # keeps test-single, leaves insiders: contact.list_unsubscribed
        rt.http("POST", leave[0], body="list=test-single&action=save",
                headers={"content-type": "application/x-www-form-urlencoded"})
    unsubscribe = [p for p in links(rt) if p.startswith("/u/")]
    if unsubscribe and routed(rt, "POST", unsubscribe[-1]):
        rt.http("POST", unsubscribe[-1], body="List-Unsubscribe=One-Click",
                headers={"content-type": "application/x-www-form-urlencoded"})
    assert rt.settle(timeout=60)
    return ids


def task_inputs(rt) -> list[tuple[str, dict]]:
    """(function, payload) of every Lambda call the state machines made, from their histories."""
    sfn = rt.client("stepfunctions")
    out = []
    for arn in rt.state_machine_arns():
        for ex in sfn.list_executions(stateMachineArn=arn)["executions"]:
            for e in sfn.get_execution_history(executionArn=ex["executionArn"], maxResults=1000)["events"]:
                if "lambdaFunctionScheduledEventDetails" in e:
                    d = e["lambdaFunctionScheduledEventDetails"]
                    out.append((d["resource"].split(":function:")[-1], json.loads(d["input"])))
                elif e.get("taskScheduledEventDetails", {}).get("resourceType") == "lambda":
                    params = json.loads(e["taskScheduledEventDetails"]["parameters"])
                    out.append((params["FunctionName"].split(":function:")[-1].split(":")[0], params["Payload"]))
    return out
