"""Strict mode for SES (funnelpilot_local.aws_rules.ses): the sandbox, the sending rate and the
daily quota answered as SES answers them, and journeys that survive them: a rejected
recipient is a recorded block and the journey goes on; throttled and over-quota sends are
retried by the state machine until they go out, once each."""
import json
from datetime import datetime
from email import message_from_string

import pytest
from conftest import START, EventTap, executions, history
from test_funnels import DAY, HOUR, click, journey, message, messages, signup

from funnelpilot import clock
from funnelpilot_local.aws_rules import Rules
from funnelpilot_local.moto_adapter import sent_emails
from funnelpilot_local.runtime import ROOT, Runtime
from funnelpilot_local.template import ACCOUNT, REGION

NOT_VERIFIED = "Email address is not verified. The following identities failed the check in region US-EAST-1: "


@pytest.fixture
def strict(tmp_path):
    """strict(**rules): a stepped runtime with these SES rules (one per test)."""
    started = []

    def make(**rules) -> Runtime:
        rt = Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local", rules=Rules(**rules))
        rt.start()
        started.append(rt)
        return rt

    yield make
    for rt in started:
        rt.stop()


def recipients() -> list[str]:
    """The recipient of every email SES accepted, in order (duplicates kept)."""
    return [message_from_string(raw)["To"] for _, raw in sent_emails(ACCOUNT, REGION)]


def mail(ses, to: str):
    return ses.send_email(Source="hello@example.com", Destination={"ToAddresses": [to]},
                          Message={"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}})


def lambda_errors(rt, funnel="welcome") -> list[str]:
    return [e["lambdaFunctionFailedEventDetails"]["error"] for ex in executions(rt, funnel)
            for e in history(rt, ex["executionArn"]) if "lambdaFunctionFailedEventDetails" in e]


# ---------------------------------------------------------------- the rules, on the SES API
def test_sandbox_sends_only_to_verified_identities_one_per_second_200_a_day(strict):
    rt = strict(ses_sandbox=True, ses_verified=("qa@example.org", "team.example"))
    ses = rt.client("ses")
    with pytest.raises(ses.exceptions.MessageRejected) as rejected:
        ses.send_email(Source="hello@example.com", Destination={"ToAddresses": ["qa@example.org", "x@example.net"],
                                                               "BccAddresses": ["Y <y@example.net>"]},
                       Message={"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}})
    assert rejected.value.response["Error"]["Message"] == NOT_VERIFIED + "x@example.net, y@example.net"
    mail(ses, "hello@example.com")  # the template's identity (SenderEmail)
    clock.advance_to(clock.now() + 1)
    mail(ses, "anyone@team.example")  # a verified domain covers its addresses
    with pytest.raises(ses.exceptions.ClientError, match="Maximum sending rate exceeded."):
        mail(ses, "qa@example.org")  # a second one within the second
    ses.verify_email_identity(EmailAddress="new@example.net")  # verified through the API (moto: at once)
    clock.advance_to(clock.now() + 1)
    mail(ses, "new@example.net")
    for _ in range(197):
        clock.advance_to(clock.now() + 1)
        mail(ses, "success@simulator.amazonses.com")
    quota = ses.get_send_quota()
    assert (quota["Max24HourSend"], quota["MaxSendRate"], quota["SentLast24Hours"]) == (200.0, 1.0, 200.0)
    clock.advance_to(clock.now() + 60)
    with pytest.raises(ses.exceptions.ClientError, match="Daily message quota exceeded.") as over:
        mail(ses, "qa@example.org")
    assert over.value.response["Error"]["Code"] == "Throttling"
    clock.advance_to(START + DAY + 1)  # the first two of the window are out of it: two more may go
    mail(ses, "qa@example.org")
    assert ses.get_send_quota()["SentLast24Hours"] == 199.0


def test_production_quota_is_the_rules_and_get_send_quota_says_so(strict):
    rt = strict(ses_max_send_rate=3, ses_max_24h=5)
    ses = rt.client("ses")
    assert ses.get_send_quota()["MaxSendRate"] == 3.0 and ses.get_send_quota()["Max24HourSend"] == 5.0
    for _ in range(3):
        mail(ses, "anyone@example.net")  # production: any recipient
    with pytest.raises(ses.exceptions.ClientError, match="Maximum sending rate exceeded."):
        mail(ses, "anyone@example.net")
    clock.advance_to(clock.now() + 0.34)  # one message's worth of the second refilled
    mail(ses, "anyone@example.net")
    clock.advance_to(clock.now() + 10)
    mail(ses, "a@example.net")
    with pytest.raises(ses.exceptions.ClientError, match="Daily message quota exceeded."):
        mail(ses, "b@example.net")
    assert ses.get_send_quota()["SentLast24Hours"] == 5.0  # refused sends do not count


# ---------------------------------------------------------------- journeys in the sandbox
def test_sandbox_journey_to_an_unverified_address_records_recipient_rejected_and_goes_on(strict):
    rt = strict(ses_sandbox=True)
    tap = EventTap(rt)
    cid = signup(rt, "ann@example.com")
    first = message(rt, cid, "welcome-1")
    assert first["status"] == "blocked" and first["reason"] == "recipient_rejected"
    assert first["detail"] == NOT_VERIFIED + "<recipient>"  # SES's words; the address is stored once, on the contact
    assert "links" not in first and "lease_until" not in first
    [blocked] = tap.events("email.blocked")
    assert blocked["detail"]["reason"] == "recipient_rejected" and blocked["detail"]["message_id"] == first["message_id"]
    assert "ann@example.com" not in json.dumps(blocked)
    assert rt.advance(5 * DAY + HOUR)
    status, states = journey(rt, "welcome", cid)
    assert status == "SUCCEEDED" and "Record failure" not in states
    assert {"Send welcome-2", "Opened welcome-2?"} <= set(states)  # "no" hands off within the question's Task
    assert [e["detail"]["to"] for e in tap.events("funnel.handoff")] == ["segmentation"]
    assert [(m["template"], m["reason"]) for m in messages(rt, cid)] == [("welcome-1", "recipient_rejected"),
                                                                         ("welcome-2", "recipient_rejected")]
    assert lambda_errors(rt) == []  # refused once each, never retried
    assert tap.events("email.sent") == [] and sent_emails(ACCOUNT, REGION) == []
    report = rt.http("GET", "/funnels/welcome/report", headers={"x-api-key": rt.admin_key}).json()
    step = next(s for s in report["steps"] if s["step"] == "Send welcome-1")
    assert step["blocked_by_reason"] == {"recipient_rejected": 1}
    assert rt.errors == [] and rt.dead_letters == []


def test_sandbox_journey_to_a_verified_address_sends(strict):
    rt = strict(ses_sandbox=True, ses_verified=("example.com",))
    cid = signup(rt, "bo@example.com")
    assert message(rt, cid, "welcome-1")["status"] == "sent"
    assert click(rt, cid, "welcome-1", "http") == 302
    assert recipients() == ["bo@example.com"]


def test_sandbox_confirmation_and_sales_alert_to_unverified_recipients_are_not_retried(strict):
    rt = strict(ses_sandbox=True, ses_verified=("dana@example.com",))
    pending = rt.http("POST", "/signup", json_body={"email": "eve@example.net", "consent": True,
                                                    "list": "insiders"}).json()["contact_id"]
    assert rt.settle()
    cid = signup(rt, "dana@example.com")
    for i in range(2):
        resp = rt.http("POST", "/events", json_body={"type": "page.viewed", "event_id": f"view-{i:04d}",
                                                     "contact_id": cid, "path": "/pricing"},
                       headers={"x-api-key": "local-EventsApiKey"})
        assert resp.status == 202 and rt.settle()
    assert rt.advance(60)  # the sandbox's 1 email a second: the welcome waits for one the confirmation left
    assert recipients() == ["dana@example.com"]  # the welcome; not the confirmation, not sales@
    assert rt.errors == [] and rt.dead_letters == []  # no asynchronous retry, no dead letter
    item = rt.client("dynamodb").get_item(TableName="ContactsTable", Key={"pk": {"S": pending}, "sk": {"S": "PROFILE"}})
    assert item["Item"]["status"]["S"] == "pending"
    alert = rt.client("dynamodb").get_item(TableName="ContactsTable", Key={"pk": {"S": cid}, "sk": {"S": "ALERT"}})
    assert "Item" in alert  # the rate limit's claim stays: the next view does not try again


# ---------------------------------------------------------------- production quotas
def test_a_burst_above_the_sending_rate_all_goes_out_once(strict):
    rt = strict(ses_max_send_rate=2)
    tap = EventTap(rt)
    people = [f"p{n}@example.com" for n in range(20)]
    for email in people:  # twenty signups at once: twenty welcome-1 sends in the same second
        assert rt.http("POST", "/signup", json_body={"email": email, "consent": True, "list": "test-single"}).status == 202
    assert rt.settle(timeout=120)
    assert len(recipients()) == 2
    assert rt.advance(HOUR)
    assert sorted(recipients()) == sorted(people)  # all of them, each once
    sent = tap.events("email.sent")
    assert len({e["detail"]["event_id"] for e in sent}) == 20 == len({e["detail"]["message_id"] for e in sent})
    assert "SendRateExceeded" in lambda_errors(rt) and "Record failure" not in str(lambda_errors(rt))
    assert all(ex["status"] == "RUNNING" for ex in executions(rt))  # on to "Wait 2 days"
    assert rt.errors == []


def test_over_the_daily_quota_sends_are_deferred_and_delivered_after_the_window(strict):
    rt = strict(ses_max_24h=3)
    tap = EventTap(rt)
    people = [signup(rt, f"q{n}@example.com") for n in range(5)]
    assert len(recipients()) == 3
    deferred = [cid for cid in people if message(rt, cid, "welcome-1")["status"] != "sent"]
    assert len(deferred) == 2
    for cid in deferred:  # claimed with its links, released for the Retry
        m = message(rt, cid, "welcome-1")
        assert m["status"] == "sending" and json.loads(m["links"]) and float(m["lease_until"]) < clock.now()
    assert rt.client("ses").get_send_quota()["SentLast24Hours"] == 3.0
    assert rt.advance(23 * HOUR)
    assert len(recipients()) == 3  # the rolling window is still full
    assert rt.advance(3 * HOUR)
    assert sorted(recipients()) == sorted(f"q{n}@example.com" for n in range(5))
    for cid in deferred:
        m = message(rt, cid, "welcome-1")
        sent_at = datetime.fromisoformat(m["sent_at"].replace("Z", "+00:00")).timestamp()
        assert m["status"] == "sent" and sent_at >= START + DAY
        assert click(rt, cid, "welcome-1", "http") == 302
    assert set(lambda_errors(rt)) == {"DailyQuotaExceeded"}
    assert len(tap.events("email.sent")) == 5
    assert all(ex["status"] == "RUNNING" for ex in executions(rt))
