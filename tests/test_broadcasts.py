"""Broadcasts end to end on the strict runtime: the domain API (funnelpilot.broadcasts), the launcher
(BroadcastFunction on broadcast.due), SendQueue and its worker (BroadcastSendFunction, an SQS event
source), SES and the report. Contacts are seeded by the importer's own batch write (no funnel starts);
people then act through the real paths (unsubscribe, opt-out, signup, site events, pixel, click)."""
import email
import functools
import json
from email import policy
from email.message import EmailMessage

import pytest
from conftest import SINGLE, ip_for

from funnelpilot import broadcasts, clock, consent, preferences, tokens
from funnelpilot.audience import importer
from funnelpilot.errors import InvalidField
from funnelpilot_local.moto_adapter import sent_emails
from funnelpilot_local.template import ACCOUNT, REGION

HTML = """{% extends "layout.html.j2" %}
{% block title %}March news{% endblock %}
{% block body %}
<p>Hi {{ first_name }},</p>
<p>Three short reads this month.</p>
<p><a href="{{ site_url }}/blog/three-habits">Read the three habits</a></p>
{% endblock %}
"""
TEXT = """{% extends "layout.txt.j2" %}
{% block body %}
Hi {{ first_name }},

Three short reads this month: {{ site_url }}/blog/three-habits
{% endblock %}
"""
HOUR = 3600


def spec(**over) -> dict:
    return {"name": "march-news", "subject": "March news for {{ first_name }}", "preheader": "Three short reads",
            "content": {"html": HTML, "text": TEXT}, "list": "newsletter", "audience": {"lists": ["newsletter"]},
            **over}


def seed(rows: list[dict], list_name: str = "newsletter") -> dict[str, str]:
    """Import rows (the importer's batch write: profile, list memberships, consent); email -> contact id."""
    importer.apply(rows, {"file": "seed.csv", "imported_at": "2026-03-01", "list": list_name, "mapping": {}})
    return {r["email"]: tokens.contact_id(r["email"]) for r in rows}


def people(n: int, prefix: str = "p", **fields) -> list[dict]:
    return [{"email": f"{prefix}{i}@example.com", "first_name": f"P{i}", **fields} for i in range(n)]


@functools.lru_cache(maxsize=4096)
def parsed(raw: str | bytes) -> EmailMessage:
    """An email SES accepted, parsed once: a test counts who got what again and again as the broadcast
    goes on, and parsing every email each time was a tenth of a broadcast test. Read it, never change it."""
    return email.message_from_bytes(raw.encode() if isinstance(raw, str) else raw, policy=policy.default)


def deliveries(rt) -> dict[str, list]:
    """recipient -> the emails SES accepted for them (parsed)."""
    out: dict[str, list] = {}
    for _sid, raw in sent_emails(ACCOUNT, REGION):
        msg = parsed(raw)
        out.setdefault(str(msg["To"]).lower(), []).append(msg)
    return out


def broadcast_emails(rt, bid: str) -> dict[str, list]:
    return {to: [m for m in msgs if f"broadcast={bid}" in (m.get("X-SES-MESSAGE-TAGS") or "")]
            for to, msgs in deliveries(rt).items()} | {}


def sent_to(rt, bid: str) -> dict[str, int]:
    return {to: len(ms) for to, ms in broadcast_emails(rt, bid).items() if ms}


def run(rt, seconds: float = 0) -> None:
    assert rt.settle()
    if seconds:
        assert rt.advance(seconds)


# ---------------------------------------------------------------- create, validate, preview, test send
def test_create_checks_every_field_and_renders_the_content(rt):
    made = broadcasts.create(spec())
    assert made["status"] == "draft" and made["spec"]["frequency_cap"] == "skip"
    assert made["spec"]["priority"] == "broadcast"
    assert [b["id"] for b in broadcasts.list_all()] == ["march-news"]
    with pytest.raises(broadcasts.NotAllowed):
        broadcasts.create(spec())
    bad = {**spec(name="b2"), "content": {"html": HTML.replace("{% endblock %}\n", "{% endblok %}\n", 1),
                                           "text": TEXT}}
    with pytest.raises(InvalidField) as err:
        broadcasts.create(bad)
    assert err.value.field == "content" and "content.html line 2" in err.value.message
    with pytest.raises(InvalidField) as err:
        broadcasts.create({**spec(name="b3"), "content": {"html": HTML.replace("first_name", "frist_name"),
                                                          "text": TEXT}})
    assert err.value.field == "content" and "content.html line 4" in err.value.message and "frist_name" in err.value.message
    for field, value in (("list", "nope"), ("frequency_cap", "sometimes"), ("priority", "urgent"),
                         ("audience", {"segments": ["no-such-segment"]}), ("audience", {}), ("name", "Bad Name")):
        with pytest.raises(InvalidField) as err:
            broadcasts.create({**spec(name="b4"), field: value})
        assert err.value.field.split(".")[0] == field, (field, err.value.field)
    with pytest.raises(InvalidField) as err:
        broadcasts.create({k: v for k, v in spec(name="b5").items() if k != "preheader"})
    assert err.value.field == "preheader"


def test_preview_and_test_send_are_not_counted(rt):
    seed(people(3))
    broadcasts.create(spec())
    shown = broadcasts.preview("march-news")
    assert shown["subject"] == "March news for Ada" and shown["audience"] == 3
    assert "Three short reads" in shown["html"] and "/blog/three-habits" in shown["text"]
    assert "/blog/three-habits" in broadcasts.preview("march-news", "p1@example.com")["html"]
    assert broadcasts.preview("march-news", "p1@example.com")["subject"] == "March news for P1"
    done = broadcasts.send_test("march-news", "me@example.com")
    assert done["subject"] == "[Test] March news for Ada"
    [msg] = deliveries(rt)["me@example.com"]
    assert msg["Subject"] == "[Test] March news for Ada" and msg["X-Funnelpilot-Test"] == "true"
    html = msg.get_body(("html",)).get_content()
    assert "/o/" not in html and "/c/" not in html and "https://example.com/blog/three-habits" in html
    run(rt)
    assert broadcasts.report("march-news")["sent"] == 0


# ---------------------------------------------------------------- send now: who gets it, who does not
def test_send_now_reaches_each_eligible_member_once_and_reports_who_was_blocked(rt):
    ids = seed(people(3, "a") + [{"email": "both@example.com", "lists": "newsletter;insiders"},
                                 {"email": "excluded@example.com", "lists": f"newsletter;{SINGLE}"},
                                 {"email": "optout@example.com", "lists": "newsletter;insiders"},
                                 {"email": "unsub@example.com"}, {"email": "bounced@example.com"},
                                 {"email": "sunset@example.com"}])
    resp = rt.http("POST", "/signup", json_body={"email": "pending@example.com", "consent": True, "list": "newsletter"},
                   source_ip=ip_for("pending@example.com"))
    assert resp.status == 202
    for who in ("unsub", "bounced", "sunset", "pending"):  # webinar attendees stay there whatever their status
        resp = rt.http("POST", "/events", json_body={"type": "custom.webinar.attended", "event_id": f"webinar-{who}", "email": f"{who}@example.com"},
                       headers={"x-api-key": "local-EventsApiKey"})
        assert resp.status == 202, resp.body
    run(rt)
    assert preferences.choose(ids["optout@example.com"], drop={"newsletter"}, source="test") == "updated"
    consent.unsubscribe(ids["unsub@example.com"], None, "test")
    consent.suppress(ids["bounced@example.com"], "hard_bounce")
    assert consent.sunset(ids["sunset@example.com"], "no response", since=0, event_id="t-sunset", funnel="test")
    run(rt)
    broadcasts.create(spec(audience={"lists": ["newsletter", "insiders"], "segments": ["webinar-attendees"],
                                     "exclude_lists": [SINGLE]}))
    assert broadcasts.schedule("march-news", {"now": True})["status"] in ("scheduled", "sending")
    run(rt, 60)
    assert sent_to(rt, "march-news") == {f"a{i}@example.com": 1 for i in range(3)} | {"both@example.com": 1}
    report = broadcasts.report("march-news")
    assert report["status"] == "sent"
    assert (report["sent"], report["audience"], report["enqueued"], report["processed"]) == (4, 10, 11, 11)
    assert report["blocked"] == {"excluded": 1, "list_unsubscribed": 1, "unconfirmed": 1, "unsubscribed": 1,
                                 "suppressed": 1, "sunset": 1}  # both lists: one email, one entry a duplicate
    [msg] = broadcast_emails(rt, "march-news")["a1@example.com"]
    assert msg["Subject"] == "March news for P1"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click" and "newsletter." in msg["List-Id"]
    html = msg.get_body(("html",)).get_content()
    assert "/o/" in html and "/c/" in html and "Newsletter" in html  # tracked; the footer names the list


# ---------------------------------------------------------------- engagement counts on the broadcast
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
APPLE_PROXY = "Mozilla/5.0"


def link(msg, route: str) -> str:
    """The path of the email's open pixel (route "o") or of its "Read ..." link ("c")."""
    import re

    html = msg.get_body(("html",)).get_content()
    after = r'"[^>]*>Read' if route == "c" else ""
    return re.search(rf'http://127\.0\.0\.1:3000(/{route}/[A-Za-z0-9_.=-]+){after}', html).group(1)


def ses_event(rt, detail_type: str, event_type: str, msg, body: dict) -> None:
    """An SES event as a configuration set's EventBridge destination publishes it."""
    recipient = str(msg["To"])
    detail = {"eventType": event_type, "mail": {
        "timestamp": clock.iso(), "source": "hello@example.com", "messageId": f"ses-{event_type}-{recipient}",
        "destination": [recipient], "tags": {"ses:configuration-set": ["EmailConfigurationSet"]},
        "headers": [{"name": "X-Funnelpilot-Message-Id", "value": msg["X-Funnelpilot-Message-Id"]}]}, **body}
    resp = rt.client("events").put_events(Entries=[{"Source": "aws.ses", "DetailType": detail_type,
                                                    "Detail": json.dumps(detail)}])
    assert resp["FailedEntryCount"] == 0


def test_opens_clicks_unsubscribes_bounces_and_orders_count_on_the_broadcast(rt):
    seed(people(5))
    broadcasts.create(spec())
    broadcasts.schedule("march-news", {"now": True})
    run(rt, 30)
    mail = {to: msgs[0] for to, msgs in broadcast_emails(rt, "march-news").items()}
    assert len(mail) == 5
    for msg in mail.values():
        ses_event(rt, "Email Delivered", "Delivery", msg, {"delivery": {"timestamp": clock.iso(),
                                                                         "recipients": [str(msg["To"])]}})
    run(rt, 600)  # clicks right after the delivery look like scanners
    p0, p1, p2, p3 = (mail[f"p{i}@example.com"] for i in range(4))
    assert rt.http("GET", link(p0, "o"), headers={"user-agent": BROWSER}, source_ip="198.51.100.23").status == 200
    assert rt.http("GET", link(p0, "c"), headers={"user-agent": BROWSER}, source_ip="198.51.100.23").status == 302
    rt.http("GET", link(p1, "o"), headers={"user-agent": APPLE_PROXY}, source_ip="17.58.63.9")  # Apple's prefetch
    unsubscribe = p2["List-Unsubscribe"].strip("<>").removeprefix("http://127.0.0.1:3000")
    assert rt.http("POST", unsubscribe, form={"List-Unsubscribe": "One-Click"}).status == 200
    ses_event(rt, "Email Bounced", "Bounce", p3, {"bounce": {
        "bounceType": "Permanent", "bounceSubType": "General", "feedbackId": "fb-p3", "timestamp": clock.iso(),
        "bouncedRecipients": [{"emailAddress": "p3@example.com"}]}})
    run(rt, 60)
    resp = rt.http("POST", "/events", json_body={
        "type": "order.placed", "event_id": "order-p0-1", "email": "p0@example.com", "order_id": "o-1",
        "amount": 49, "currency": "EUR", "items": [{"sku": "core-course", "quantity": 1, "price": 49}]},
        headers={"x-api-key": "local-EventsApiKey"})
    assert resp.status == 202, resp.body
    run(rt)
    report = broadcasts.report("march-news")
    assert {k: report[k] for k in ("sent", "delivered", "opens_human", "clicks_human", "machine_opens",
                                   "unsubscribes", "bounces", "conversions", "revenue")} == {
        "sent": 5, "delivered": 5, "opens_human": 1, "clicks_human": 1, "machine_opens": 1, "unsubscribes": 1,
        "bounces": 1, "conversions": 1, "revenue": {"EUR": 49.0}}
