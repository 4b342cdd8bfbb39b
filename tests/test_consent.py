"""Unsubscribe (page and RFC 8058 one-click) and SES feedback (bounces, complaints, deliveries)."""
import json
import re
import uuid
from email import message_from_bytes, policy

import pytest
from conftest import SINGLE

from funnelpilot import clock, tokens
from funnelpilot.errors import FunnelLeft
from funnelpilot_local.runtime import LOCAL_ADMIN_KEY

BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15"


def signup_and_mail(rt, email="ann@example.com"):
    cid = rt.http("POST", "/signup", json_body={"email": email, "consent": True, "list": SINGLE}).json()["contact_id"]
    assert rt.settle()
    [path] = [p for p in rt.outbox.glob("*.eml") if email in p.read_text()]
    return cid, message_from_bytes(path.read_bytes(), policy=policy.default)


def unsubscribe_path(mail) -> str:
    return re.match(r"<http://127\.0\.0\.1:3000(/u/[^>]+)>", mail["List-Unsubscribe"]).group(1)


def status(rt, cid):
    item = rt.client("dynamodb").get_item(TableName="ContactsTable",
                                          Key={"pk": {"S": cid}, "sk": {"S": "PROFILE"}})["Item"]
    return item["status"]["S"]


def send_step(rt, cid, state="Send welcome-2", **params):
    """What a funnel's next Task state does: ask sequence_step to send."""
    return rt.invoke("SequenceStepFunction", {"action": "send", "funnel": "welcome", "template": "welcome-1",
                                              "contact_id": cid, "execution": f"exec-{uuid.uuid4().hex}",
                                              "state": state, **params})


def sent_count(rt):
    rt.flush_outbox()
    return len(list(rt.outbox.glob("*.eml")))


def test_get_shows_a_confirm_page_and_does_not_unsubscribe(rt, tap):
    cid, mail = signup_and_mail(rt)
    resp = rt.http("GET", unsubscribe_path(mail), headers={"user-agent": BROWSER})
    assert resp.status == 200 and b"<form method=\"post\">" in resp.body and b"Unsubscribe from everything</button>" in resp.body
    assert status(rt, cid) == "active" and tap.events("contact.unsubscribed") == []


def test_one_click_unsubscribe_blocks_the_next_send(rt, tap):
    cid, mail = signup_and_mail(rt)
    mid = mail["X-Funnelpilot-Message-Id"]
    # sanity: a send step sends while active (transactional: welcome-1 just took the day's marketing slot)
    assert send_step(rt, cid, "Send welcome-0", transactional=True)["status"] == "sent"
    before = sent_count(rt)
    resp = rt.http("POST", unsubscribe_path(mail), body="List-Unsubscribe=One-Click",
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert resp.status == 200
    assert status(rt, cid) == "unsubscribed"
    with pytest.raises(FunnelLeft, match="unsubscribed"):  # the blocked send ends the journey
        send_step(rt, cid)
    assert sent_count(rt) == before
    [event] = tap.events("contact.unsubscribed")
    assert event["detail"]["source"] == "one_click" and event["detail"]["message_id"] == mid
    assert event["detail"]["funnel"] == "welcome" and event["detail"]["step"] == "Send welcome-1"
    # a repeat (mail clients retry) changes nothing and emits nothing
    assert rt.http("POST", unsubscribe_path(mail), body="List-Unsubscribe=One-Click",
                   headers={"content-type": "application/x-www-form-urlencoded"}).status == 200
    assert len(tap.events("contact.unsubscribed")) == 1
    # the withdrawal of consent is on record
    items = rt.client("dynamodb").query(TableName="ContactsTable", KeyConditionExpression="pk = :p",
                                        ExpressionAttributeValues={":p": {"S": cid}})["Items"]
    assert any(i["sk"]["S"].endswith("#withdrawn") for i in items)


def test_page_button_unsubscribes(rt, tap):
    cid, mail = signup_and_mail(rt)
    resp = rt.http("POST", unsubscribe_path(mail), form={}, headers={"user-agent": BROWSER})
    assert resp.status == 200 and b"You are unsubscribed" in resp.body
    assert status(rt, cid) == "unsubscribed"
    assert tap.events("contact.unsubscribed")[0]["detail"]["source"] == "unsubscribe_page"


def test_invalid_unsubscribe_token_is_404_and_changes_nothing(rt, tap):
    cid, mail = signup_and_mail(rt)
    path = unsubscribe_path(mail)
    for bad in (path[:-2] + "zz", "/u/nothing", "/u/" + tokens.sign("c", cid, "m1", "0")):
        assert rt.http("GET", bad).status == 404
        assert rt.http("POST", bad, body="List-Unsubscribe=One-Click",
                       headers={"content-type": "application/x-www-form-urlencoded"}).status == 404
    assert status(rt, cid) == "active" and tap.events("contact.unsubscribed") == []


# ---------------------------------------------------------------- SES feedback
def ses_event(rt, detail_type: str, event_type: str, mail, body: dict, recipient="ann@example.com"):
    """Publish an SES event exactly as SES does through a configuration set's EventBridge destination."""
    now = clock.iso()
    detail = {
        "eventType": event_type,
        "mail": {
            "timestamp": now, "source": "hello@example.com", "sendingAccountId": "123456789012",
            "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/hello@example.com",
            "messageId": "0100018f-ses-" + uuid.uuid4().hex, "destination": [recipient], "headersTruncated": False,
            "headers": [{"name": "From", "value": "hello@example.com"}, {"name": "To", "value": recipient},
                        {"name": "Subject", "value": mail["Subject"]},
                        {"name": "X-Funnelpilot-Message-Id", "value": mail["X-Funnelpilot-Message-Id"]}],
            "commonHeaders": {"from": ["hello@example.com"], "to": [recipient], "subject": mail["Subject"]},
            "tags": {"ses:configuration-set": ["EmailConfigurationSet"], "ses:source-ip": ["192.0.2.10"],
                     "ses:from-domain": ["example.com"], "ses:caller-identity": ["funnelpilot"]},
        },
        **body,
    }
    resp = rt.client("events").put_events(Entries=[{
        "Source": "aws.ses", "DetailType": detail_type, "Detail": json.dumps(detail),
        "Resources": ["arn:aws:ses:us-east-1:123456789012:configuration-set/EmailConfigurationSet"]}])
    assert resp["FailedEntryCount"] == 0
    assert rt.settle()
    assert rt.errors == []
    return detail


def bounce(kind: str, recipient="ann@example.com") -> dict:
    return {"bounce": {"feedbackId": uuid.uuid4().hex, "bounceType": kind,
                       "bounceSubType": "General" if kind == "Permanent" else "MailboxFull",
                       "bouncedRecipients": [{"emailAddress": recipient, "action": "failed", "status": "5.1.1",
                                              "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
                       "timestamp": clock.iso(), "reportingMTA": "dsn; a1-2.smtp-out.amazonses.com"}}


def message_item(rt, cid, mail):
    return rt.client("dynamodb").get_item(TableName="ContactsTable", Key={
        "pk": {"S": cid}, "sk": {"S": f"MSG#{mail['X-Funnelpilot-Message-Id']}"}})["Item"]


def test_hard_bounce_suppresses_at_once(rt, tap):
    cid, mail = signup_and_mail(rt)
    ses_event(rt, "Email Bounced", "Bounce", mail, bounce("Permanent"))
    assert status(rt, cid) == "suppressed"
    assert "bounced_at" in message_item(rt, cid, mail)
    [bounced] = tap.events("email.bounced")
    assert bounced["detail"]["hard"] is True and bounced["detail"]["funnel"] == "welcome"
    [suppressed] = tap.events("contact.suppressed")
    assert suppressed["detail"]["reason"] == "hard_bounce"
    with pytest.raises(FunnelLeft, match="suppressed"):
        send_step(rt, cid)
    # a re-signup does not lift a suppression
    rt.http("POST", "/signup", json_body={"email": "ann@example.com", "consent": True, "list": SINGLE})
    assert rt.settle() and status(rt, cid) == "suppressed"
    assert "ann@example.com" not in json.dumps(tap.events())


def test_soft_bounces_suppress_after_the_limit_and_delivery_resets(rt, tap):
    cid, mail = signup_and_mail(rt)
    ses_event(rt, "Email Bounced", "Bounce", mail, bounce("Transient"))
    ses_event(rt, "Email Bounced", "Bounce", mail, bounce("Transient"))
    ses_event(rt, "Email Delivered", "Delivery", mail, {"delivery": {
        "timestamp": clock.iso(), "processingTimeMillis": 812, "recipients": ["ann@example.com"],
        "smtpResponse": "250 2.6.0 Message received", "reportingMTA": "a8-70.smtp-out.amazonses.com"}})
    assert "delivered_at" in message_item(rt, cid, mail)
    assert tap.events("email.delivered") == []  # counted by the SES feedback function itself, not on the bus
    report = rt.http("GET", "/funnels/welcome/report", headers={"x-api-key": LOCAL_ADMIN_KEY}).json()
    assert [s["delivered"] for s in report["steps"]] == [1]
    assert rt.advance(60)  # later bounces (one stamped in the delivery's second is not after it)
    for _ in range(2):
        ses_event(rt, "Email Bounced", "Bounce", mail, bounce("Transient"))
    assert status(rt, cid) == "active"
    ses_event(rt, "Email Bounced", "Bounce", mail, bounce("Transient"))
    assert status(rt, cid) == "suppressed"
    assert [e["detail"]["reason"] for e in tap.events("contact.suppressed")] == ["soft_bounces"]


def test_a_copy_of_an_old_delivery_resets_no_later_soft_bounce(rt):
    cid, mail = signup_and_mail(rt)
    ses_event(rt, "Email Bounced", "Bounce", mail, bounce("Transient"))
    delivery = ses_event(rt, "Email Delivered", "Delivery", mail, {"delivery": {
        "timestamp": clock.iso(), "recipients": ["ann@example.com"], "smtpResponse": "250 ok"}})
    profile = {"pk": {"S": cid}, "sk": {"S": "PROFILE"}}
    assert "soft_bounces" not in rt.client("dynamodb").get_item(TableName="ContactsTable", Key=profile)["Item"]
    assert rt.advance(3600)
    ses_event(rt, "Email Bounced", "Bounce", mail, bounce("Transient"))
    rt.client("events").put_events(Entries=[{"Source": "aws.ses", "DetailType": "Email Delivered",
                                             "Detail": json.dumps(delivery)}])  # re-published: a new event id
    assert rt.settle() and rt.errors == []
    item = rt.client("dynamodb").get_item(TableName="ContactsTable", Key=profile)["Item"]
    assert item["soft_bounces"] == {"N": "1"}  # the bounce after the delivery still counts
    report = rt.http("GET", "/funnels/welcome/report", headers={"x-api-key": LOCAL_ADMIN_KEY}).json()
    assert [s["delivered"] for s in report["steps"]] == [1]  # and the delivery counted once


def test_duplicate_soft_bounce_delivery_counts_once(rt):
    cid, mail = signup_and_mail(rt)
    ses_event(rt, "Email Bounced", "Bounce", mail, bounce("Transient"))
    # replay the same EventBridge event to the handler three times (at-least-once delivery)
    rt.client("events").put_events(Entries=[{"Source": "aws.ses", "DetailType": "Email Bounced", "Detail": json.dumps(
        {"eventType": "Bounce", **bounce("Transient"), "mail": {"headers": [], "tags": {
            "ses:configuration-set": ["EmailConfigurationSet"]}}})}])
    queued = list(rt._deliveries.queue)
    assert len(queued) == 1
    for _ in range(2):
        rt._deliver(queued[0][0], queued[0][1])
    assert rt.settle()
    item = rt.client("dynamodb").get_item(TableName="ContactsTable",
                                          Key={"pk": {"S": cid}, "sk": {"S": "PROFILE"}})["Item"]
    assert item["soft_bounces"]["N"] == "2" and item["status"]["S"] == "active"


def test_complaint_suppresses(rt, tap):
    cid, mail = signup_and_mail(rt)
    ses_event(rt, "Email Complaint Received", "Complaint", mail, {"complaint": {
        "feedbackId": uuid.uuid4().hex, "complaintSubType": None, "complaintFeedbackType": "abuse",
        "complainedRecipients": [{"emailAddress": "ann@example.com"}], "timestamp": clock.iso(),
        "userAgent": "Yahoo!-Mail-Feedback/2.0", "arrivalDate": clock.iso()}})
    assert status(rt, cid) == "suppressed"
    assert [e["detail"]["reason"] for e in tap.events("contact.suppressed")] == ["complaint"]
    assert tap.events("email.complained")[0]["detail"]["message_id"] == mail["X-Funnelpilot-Message-Id"]


def test_events_of_another_configuration_set_are_ignored(rt, tap):
    cid, mail = signup_and_mail(rt)
    rt.client("events").put_events(Entries=[{"Source": "aws.ses", "DetailType": "Email Bounced", "Detail": json.dumps(
        {"eventType": "Bounce", **bounce("Permanent"), "mail": {"headers": [], "tags": {
            "ses:configuration-set": ["some-other-app"]}}})}])
    assert rt.settle()
    assert status(rt, cid) == "active" and tap.events("email.bounced") == []


def test_a_delivery_is_one_write_on_its_message_and_one_count_and_reads_no_message(rt, aws_calls):
    cid, mail = signup_and_mail(rt)
    delivered = {"delivery": {"timestamp": clock.iso(), "recipients": ["ann@example.com"], "smtpResponse": "250 ok"}}
    aws_calls.clear()
    ses_event(rt, "Email Delivered", "Delivery", mail, delivered)
    # the message's first delivered_at (its fields come back with the write), the profile's soft-bounce
    # count (none: no write), the step's delivered counter
    assert [c for c in aws_calls if c.startswith("dynamodb:")] == ["dynamodb:UpdateItem", "dynamodb:GetItem",
                                                                  "dynamodb:UpdateItem"]
    report = rt.http("GET", "/funnels/welcome/report", headers={"x-api-key": LOCAL_ADMIN_KEY}).json()
    assert [s["delivered"] for s in report["steps"]] == [1] and "delivered_at" in message_item(rt, cid, mail)
    ses_event(rt, "Email Delivered", "Delivery", mail, delivered)  # a copy (a new event id): counted once
    report = rt.http("GET", "/funnels/welcome/report", headers={"x-api-key": LOCAL_ADMIN_KEY}).json()
    assert [s["delivered"] for s in report["steps"]] == [1]


def test_a_soft_bounce_is_one_write_counted_once_per_ses_id_and_not_when_older_than_the_last_reset(rt, aws_calls):
    cid, mail = signup_and_mail(rt)
    first, profile = bounce("Transient"), {"pk": {"S": cid}, "sk": {"S": "PROFILE"}}
    aws_calls.clear()
    ses_event(rt, "Email Bounced", "Bounce", mail, first)
    assert "dynamodb:TransactWriteItems" not in aws_calls  # one conditional UpdateItem, no marker item
    ses_event(rt, "Email Bounced", "Bounce", mail, first)  # a copy re-published with a new EventBridge id
    item = rt.client("dynamodb").get_item(TableName="ContactsTable", Key=profile, ConsistentRead=True)["Item"]
    assert item["soft_bounces"] == {"N": "1"} and not [i for i in rt.client("dynamodb").query(
        TableName="ContactsTable", KeyConditionExpression="pk = :c AND begins_with(sk, :s)",
        ExpressionAttributeValues={":c": {"S": cid}, ":s": {"S": "SEEN#"}})["Items"]]
    late = bounce("Transient")  # SES's report of a bounce that came before the next delivery, arriving after it
    assert rt.advance(60)
    ses_event(rt, "Email Delivered", "Delivery", mail, {"delivery": {
        "timestamp": clock.iso(), "recipients": ["ann@example.com"], "smtpResponse": "250 ok"}})
    ses_event(rt, "Email Bounced", "Bounce", mail, first)  # the copy again, after the reset
    ses_event(rt, "Email Bounced", "Bounce", mail, late)
    item = rt.client("dynamodb").get_item(TableName="ContactsTable", Key=profile, ConsistentRead=True)["Item"]
    assert "soft_bounces" not in item and item["status"]["S"] == "active"  # neither is in the new row
    assert rt.advance(60)
    ses_event(rt, "Email Bounced", "Bounce", mail, bounce("Transient"))
    item = rt.client("dynamodb").get_item(TableName="ContactsTable", Key=profile, ConsistentRead=True)["Item"]
    assert item["soft_bounces"] == {"N": "1"}


def test_bounces_and_complaints_are_counted_by_ses_feedback_once_per_message(rt, tap):
    cid, mail = signup_and_mail(rt)
    invoked, invoke = [], rt.invoke
    rt.invoke = lambda function, payload: invoked.append(function) or invoke(function, payload)
    soft = bounce("Transient")
    for event in (soft, soft, bounce("Transient")):  # a bounce, its copy, a second bounce of the same message
        ses_event(rt, "Email Bounced", "Bounce", mail, event)
    complaint = {"complaint": {"feedbackId": uuid.uuid4().hex, "complaintFeedbackType": "abuse",
                               "complainedRecipients": [{"emailAddress": "ann@example.com"}], "timestamp": clock.iso()}}
    for _ in range(2):  # the complaint and its copy
        ses_event(rt, "Email Complaint Received", "Complaint", mail, complaint)
    report = rt.http("GET", "/funnels/welcome/report", headers={"x-api-key": LOCAL_ADMIN_KEY}).json()
    assert [(s["bounced"], s["complained"]) for s in report["steps"]] == [(1, 1)]
    assert "MetricsFunction" not in invoked and invoked.count("SesFeedbackFunction") == 5
    markers = rt.client("dynamodb").scan(TableName="MetricsTable", FilterExpression="begins_with(pk, :s)",
                                         ExpressionAttributeValues={":s": {"S": "SEEN#"}})["Items"]
    assert markers == []  # the message's first bounced_at / complained_at is the guard
    assert {e["detail"]["funnel"] for e in tap.events("email.bounced") + tap.events("email.complained")} == {"welcome"}
