"""SMS (issue 18, item 4): the `sms` funnel step through AWS End User Messaging SMS (pinpoint-sms-voice-v2,
answered by the local runtime: aws_rules/sms.py), its eligibility (SMS consent, opt-out, quiet hours, the
frequency cap shared with email), its delivery events, the phone number at signup and import, and its IAM."""
import json
import uuid

import pytest
from conftest import SINGLE, START, ip_for
from test_import import cli_args

from funnelpilot import bus, clock, tokens
from funnelpilot import report as funnel_report
from funnelpilot.channels import alerts, sms
from funnelpilot.errors import QuietHours
from funnelpilot.funnel_spec import parse
from funnelpilot.models import PROFILE, Contact
from funnelpilot_local import contacts_cli
from funnelpilot_local.aws_rules import principal
from funnelpilot_local.runtime import LOCAL_SMS_ORIGINATION, ROOT, Runtime

HOUR, DAY = 3600, 86400
PHONE = "+14155550123"
EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:funnelpilot-engagement:"


def person(rt, phone=PHONE, sms_consent=True, **fields) -> str:
    cid = f"c{uuid.uuid4().hex[:12]}"
    Contact(cid, PROFILE, email=f"{cid}@example.com", first_name="Ann", status="active", phone=phone,
            sms_consent_at=clock.iso() if sms_consent else None, **fields).save()
    return cid


def sms_step(rt, cid, execution=None, state="Send SMS engagement-call"):
    return rt.invoke("SequenceStepFunction", {"action": "sms", "funnel": "engagement", "contact_id": cid,
                                              "execution": execution or EXECUTION + uuid.uuid4().hex, "state": state,
                                              "template": "engagement-call", "lead_magnet": None})


def outbox(rt) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((rt.state_dir / "outbox-sms").glob("*.json"))]


def message(rt, cid, execution, state="Send SMS engagement-call") -> dict:
    key = {"pk": {"S": cid}, "sk": {"S": f"MSG#{tokens.digest_id('m', execution, state)}"}}
    item = rt.client("dynamodb").get_item(TableName="ContactsTable", Key=key)["Item"]
    return {k: next(iter(v.values())) for k, v in item.items()}


def profile(rt, cid) -> dict:
    item = rt.client("dynamodb").get_item(TableName="ContactsTable", Key={"pk": {"S": cid}, "sk": {"S": PROFILE}})
    return {k: next(iter(v.values())) for k, v in item["Item"].items()}


# ---------------------------------------------------------------- the funnel, end to end
def test_engagement_texts_a_hot_lead_who_gave_a_phone_and_sms_consent(rt, tap):
    resp = rt.http("POST", "/signup", json_body={"email": "hal@example.com", "consent": True, "list": SINGLE,
                                                 "first_name": "Hal", "phone": "+1 (415) 555-0123",
                                                 "sms_consent": "on"}, source_ip=ip_for("hal@example.com"))
    assert resp.status == 202
    cid = resp.json()["contact_id"]
    assert rt.settle() and rt.advance(HOUR)
    tap.events()
    bus.publish(bus.event("lead.qualified", cid))
    assert rt.settle()
    assert rt.advance(16 * DAY)  # the longest path: a cold lead gets the proof, more education, then the offer
    [text] = outbox(rt)
    assert text["DestinationPhoneNumber"] == PHONE and text["MessageType"] == "PROMOTIONAL"
    assert text["MessageBody"].startswith("Hi Hal, questions before you decide?")
    assert "Reply STOP" in text["MessageBody"]
    assert (text["encoding"], text["segments"]) == ("GSM-7", 1)
    assert text["ConfigurationSetName"] == "funnelpilot-sms" and text["Context"]["funnel"] == "engagement"
    sfn = rt.client("stepfunctions")
    [ex] = [e for arn in rt.state_machine_arns() if arn.endswith("-engagement")
            for e in sfn.list_executions(stateMachineArn=arn)["executions"]]
    assert sfn.describe_execution(executionArn=ex["executionArn"])["status"] == "SUCCEEDED"
    sent = message(rt, cid, ex["executionArn"])
    assert (sent["channel"], sent["status"], sent["sms_message_id"]) == ("sms", "sent", text["MessageId"])
    assert "delivered_at" in sent  # the configuration set's TEXT_DELIVERED, through SNS and functions/sms_feedback
    [event] = tap.events("sms.sent")
    assert event["detail"]["template"] == "engagement-call" and PHONE not in json.dumps(event)
    report = rt.http("GET", "/funnels/engagement/report", headers={"x-api-key": rt.admin_key}).json()
    [row] = [s for s in report["steps"] if s["step"] == "Send SMS engagement-call"]
    assert (row["entered"], row["sms_sent"], row["sms_delivered"], row["sms_failed"], row["sent"]) == (1, 1, 1, 0, 0)
    assert not rt.errors and not rt.dead_letters


def test_a_failed_delivery_is_counted_and_marked(rt):
    cid = person(rt, phone="+14155550199")
    rt.sms.unreachable.add("+14155550199")
    ex = EXECUTION + "failed"
    assert sms_step(rt, cid, ex)["status"] == "sent"
    assert rt.settle()
    assert message(rt, cid, ex)["detail"] == "TEXT_CARRIER_UNREACHABLE"
    report = rt.http("GET", "/funnels/engagement/report", headers={"x-api-key": rt.admin_key}).json()
    [row] = report["steps"]
    assert (row["sms_sent"], row["sms_delivered"], row["sms_failed"]) == (1, 0, 1)
    assert "SMS: sent 1, delivered 0, failed 1" in funnel_report.table(report)
    [line] = [ln.split() for ln in funnel_report.table(report).splitlines() if "Send SMS engagement-call" in ln]
    assert line[3:6] == ["1", "1", "0"]  # the step's row: entered 1, sent 1 (its text), blocked 0
    assert "texted 1 (delivered 0, failed 1)" in funnel_report.chart_html([report])


# ---------------------------------------------------------------- eligibility
def test_without_a_phone_or_sms_consent_the_step_is_blocked_with_its_reason_and_the_journey_goes_on(rt, tap):
    no_consent, no_phone = person(rt, sms_consent=False), person(rt, phone=None)
    for cid, reason in ((no_consent, "no_sms_consent"), (no_phone, "no_phone")):
        result = sms_step(rt, cid)  # no FunnelLeft: the journey's next step runs
        assert (result["status"], result["reason"]) == ("blocked", reason)
    blocked = {e["detail"]["contact_id"]: e["detail"]["reason"] for e in tap.events("sms.blocked")}
    assert blocked == {no_consent: "no_sms_consent", no_phone: "no_phone"}
    assert outbox(rt) == [] and rt.sms.sent == []


def test_an_opted_out_number_is_blocked_marked_and_never_tried_again(rt):
    cid = person(rt)
    rt.sms.reply(PHONE, "STOP")  # the service puts a number that replies STOP on the opt-out list
    result = sms_step(rt, cid)
    assert (result["status"], result["reason"]) == ("blocked", "sms_opted_out")
    assert "sms_opted_out_at" in profile(rt, cid)
    # even off the service's list, funnelpilot keeps the opt-out: no further SendTextMessage
    rt.client("pinpoint-sms-voice-v2").delete_opted_out_number(OptOutListName="Default", OptedOutNumber=PHONE)
    assert sms_step(rt, cid)["reason"] == "sms_opted_out"
    assert rt.sms.sent == [] and outbox(rt) == []


def test_quiet_hours_defer_an_sms_until_they_end(rt):
    cid = person(rt)
    rt.advance(12 * HOUR)  # 22:00 UTC: engagement's quiet hours (21:00-08:00)
    ex = EXECUTION + "quiet"
    with pytest.raises(QuietHours):
        sms_step(rt, cid, ex)
    assert outbox(rt) == []
    rt.advance(10 * HOUR + 60)  # 08:01
    assert sms_step(rt, cid, ex)["status"] == "sent"
    assert len(outbox(rt)) == 1


def test_a_retried_step_sends_one_sms(rt):
    cid = person(rt)
    ex = EXECUTION + "retry"
    first, again = sms_step(rt, cid, ex), sms_step(rt, cid, ex)
    assert first == {"message_id": first["message_id"], "status": "sent"}
    assert again == first | {"duplicate": True}
    assert len(rt.sms.sent) == 1 and len(outbox(rt)) == 1


def test_the_frequency_cap_is_shared_with_email(rt):
    cid = person(rt)
    ex = EXECUTION + "cap"
    email = rt.invoke("SequenceStepFunction", {"action": "send", "funnel": "engagement", "contact_id": cid,
                                               "execution": ex, "state": "Send engagement-1",
                                               "template": "engagement-1", "lead_magnet": None})
    assert email["status"] == "sent"
    assert sms_step(rt, cid, ex)["reason"] == "frequency_cap"  # engagement: 1 marketing message per 24 h
    rt.advance(DAY + HOUR)
    assert sms_step(rt, cid, EXECUTION + "later")["status"] == "sent"


def test_with_sms_off_a_step_does_nothing(tmp_path):
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local",
                 parameters={"SmsOriginationIdentity": ""}) as off:
        assert "SmsFeedbackFunction" not in off.functions and not off.sns_subscribers
        cid = person(off)
        ex = EXECUTION + "off"
        assert sms_step(off, cid, ex) == {"message_id": tokens.digest_id("m", ex, "Send SMS engagement-call"),
                                         "status": "skipped", "reason": "sms_off"}
        key = {"pk": {"S": cid}, "sk": {"S": f"MSG#{tokens.digest_id('m', ex, 'Send SMS engagement-call')}"}}
        assert "Item" not in off.client("dynamodb").get_item(TableName="ContactsTable", Key=key)
        assert off.sms.sent == [] and not off.denied


# ---------------------------------------------------------------- sales alerts by SMS
def test_a_sales_alert_also_goes_to_the_business_phone(rt, monkeypatch):
    shipped = alerts.settings()
    monkeypatch.setattr(alerts, "settings", lambda: {**shipped, "sms": ["+14155550000"]})
    cid = rt.http("POST", "/signup", json_body={"email": "pia@example.com", "consent": True, "list": SINGLE,
                                                "first_name": "Pia"}, source_ip=ip_for("pia@example.com")
                  ).json()["contact_id"]
    assert rt.settle()
    bus.publish(bus.event("lead.qualified", cid))
    assert rt.settle()
    [alert] = [t for t in outbox(rt) if t["DestinationPhoneNumber"] == "+14155550000"]
    assert alert["MessageType"] == "TRANSACTIONAL" and alert["MessageBody"] == "Sales alert: Pia qualified lead"


# ---------------------------------------------------------------- phone and SMS consent captured
def test_signup_validates_the_phone_and_records_sms_consent(rt):
    for body, field in (({"phone": "4155550123"}, "phone"), ({"phone": "+1 415 CALL ME"}, "phone"),
                        ({"sms_consent": True}, "phone")):
        resp = rt.http("POST", "/signup", json_body={"email": "ivy@example.com", "consent": True, **body},
                       source_ip=ip_for("ivy@example.com"))
        assert resp.status == 400 and resp.json()["field"] == field, resp.body
    resp = rt.http("POST", "/signup", form={"email": "ivy@example.com", "consent": "on", "list": SINGLE,
                                            "phone": "+44 20 7946 0958", "sms_consent": "on"},
                   source_ip=ip_for("ivy@example.com"))
    assert resp.status == 202
    cid = resp.json()["contact_id"]
    p = profile(rt, cid)
    assert p["phone"] == "+442079460958" and "sms_consent_at" in p
    consent = rt.client("dynamodb").query(TableName="ContactsTable", KeyConditionExpression="pk = :c AND "
                                          "begins_with(sk, :s)", ExpressionAttributeValues={
                                              ":c": {"S": cid}, ":s": {"S": "CONSENT#"}})["Items"]
    assert [c["sms"]["S"] for c in consent] == ["given"]
    # the same form again, the SMS box left unticked: no SMS consent for that number any more
    rt.http("POST", "/signup", form={"email": "ivy@example.com", "consent": "on", "list": SINGLE,
                                     "phone": "+442079460958"}, source_ip=ip_for("ivy@example.com"))
    assert "sms_consent_at" not in profile(rt, cid)


def test_import_takes_phone_and_sms_consent_columns(rt, tmp_path):
    path = tmp_path / "members.csv"
    path.write_text("email,first_name,phone,sms_consent,consent_date\n"
                    "a@example.com,Ann,+1 415 555 0101,yes,2024-05-01\n"
                    "b@example.com,Bob,+14155550102,,2024-05-01\n"
                    "c@example.com,Cy,0415 555,no,2024-05-01\n"
                    "d@example.com,Di,,true,2024-05-01\n")
    batch = contacts_cli.batch_input(cli_args(path), path.name)
    validation = contacts_cli.read_and_validate(path, batch)
    assert [e.split(": ", 1) for e in validation.errors] == [
        ["line 4, column phone", "phone must be an international number in E.164 form, e.g. +14155550123"],
        ["line 5, column sms_consent", "sms_consent needs the row's phone"]]
    path.write_text("\n".join(path.read_text().splitlines()[:3]) + "\n")
    validation = contacts_cli.read_and_validate(path, batch)
    assert validation.errors == []
    assert contacts_cli.import_rows(rt.invoke, validation.rows, batch)["created"] == 2
    ann, bob = profile(rt, tokens.contact_id("a@example.com")), profile(rt, tokens.contact_id("b@example.com"))
    assert (ann["phone"], ann["sms_consent_at"]) == ("+14155550101", "2024-05-01")
    assert bob["phone"] == "+14155550102" and "sms_consent_at" not in bob
    consent = rt.client("dynamodb").query(TableName="ContactsTable", KeyConditionExpression="pk = :c AND "
                                          "begins_with(sk, :s)", ExpressionAttributeValues={
                                              ":c": {"S": tokens.contact_id("a@example.com")}, ":s": {"S": "CONSENT#"}}
                                          )["Items"]
    assert [(c["given_at"]["S"], c["sms"]["S"]) for c in consent] == [("2024-05-01", "given")]


# ---------------------------------------------------------------- strict IAM
def test_a_function_without_the_sms_statement_is_denied(rt):
    with principal.acting_as(rt.role_of("SignupFunction")):
        with pytest.raises(Exception) as denied:
            sms.send_text(PHONE, "hello", message_type="TRANSACTIONAL", context={})
    assert "AccessDeniedException" in str(denied.value) and "sms-voice:SendTextMessage" in str(denied.value)
    assert [d.action for d in rt.denied] == ["sms-voice:SendTextMessage"]
    rt.denied.clear()
    assert rt.sms.sent == []


# ---------------------------------------------------------------- cost
def test_texts_are_billed_per_message_part_only_with_sms_on():
    from test_costs import lifecycle_usage

    from funnelpilot_local import costs
    from funnelpilot_local.template import Template

    measured = lifecycle_usage(60)
    price = costs.load_prices()["aws"]
    on = costs.estimate(measured, 1000, template=Template.load(ROOT, {"SmsOriginationIdentity": LOCAL_SMS_ORIGINATION}))
    [texts] = [x for x in on["lines"] if x["item"].startswith("SMS to the US")]
    assert texts["quantity"] > 0
    assert texts["cost"] == pytest.approx(texts["quantity"] * price["sms_us_message_part"]["price"])
    [number] = [x for x in on["lines"] if x["item"] == "SMS origination number"]
    assert number["cost"] == price["sms_us_toll_free_number"]["price"]
    off = costs.estimate(measured, 1000)  # the template's default: SMS off
    [texts] = [x for x in off["lines"] if x["item"].startswith("SMS to the US")]
    assert texts["cost"] == 0 and texts["note"].startswith("off (SmsOriginationIdentity empty")


# ---------------------------------------------------------------- compile-time checks of a text
def test_segments_are_counted_per_encoding():
    assert sms.measure("a" * 160) == {"encoding": "GSM-7", "units": 160, "segments": 1}
    assert sms.measure("a" * 161)["segments"] == 2 and sms.measure("a" * 307)["segments"] == 3  # 153 a segment
    assert sms.measure("{" * 80) == {"encoding": "GSM-7", "units": 160, "segments": 1}  # extension: 2 septets
    assert sms.measure("é" * 10 + "ç")["encoding"] == "UCS-2"  # ç (lower case) is not in GSM 03.38
    assert sms.measure("🎉" * 35) == {"encoding": "UCS-2", "units": 70, "segments": 1}
    assert sms.measure("🎉" * 36)["segments"] == 2  # 72 units: 67 a segment


@pytest.mark.parametrize("text, segments, problem", [
    ("Hi {{ first_name }}! " + "x" * 300 + " Reply STOP to opt out", None, "3 segments"),
    ("Hi {{ first_name }}, see {{ site_url }}", None, "must say how to opt out"),
    ("Hi {{ first_name }}! " + "x" * 300 + " Reply STOP to opt out", 3, None),
])
def test_the_funnel_checks_each_text_at_its_longest(tmp_path, text, segments, problem):
    (tmp_path / "emails").mkdir()
    (tmp_path / "sms").mkdir()
    (tmp_path / "sms" / "long.txt.j2").write_text(text)
    (tmp_path / "funnels").mkdir()
    path = tmp_path / "funnels" / "t.yaml"
    extra = f"\n    segments: {segments}" if segments else ""
    path.write_text(f"id: t\ntrigger: lead.qualified\nsteps:\n  - sms: long{extra}\n")
    funnel, errors = parse(path)
    if problem is None:
        assert errors == [] and funnel.steps[0].segments == 3
    else:
        assert funnel is None and problem in errors[0], errors
        assert errors[0].startswith(f"{path}:4: ")
