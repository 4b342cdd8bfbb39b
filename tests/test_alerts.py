"""Instant sales alerts: one internal email naming the contact and the page, rate-limited."""
import json
from email import message_from_bytes, policy

from test_scoring import new_contact, publish

from funnelpilot import bus, clock
from funnelpilot.channels import alerts
from funnelpilot_local.runtime import ROOT
from funnelpilot_local.template import Template


def sales_mail(rt):
    mails = [message_from_bytes(p.read_bytes(), policy=policy.default) for p in sorted(rt.outbox.glob("*.eml"))]
    return [m for m in mails if m["To"] == "sales@example.com"]


def test_pricing_visit_by_a_known_contact_sends_one_internal_email(rt, tap):
    cid = rt.http("POST", "/signup", json_body={"email": "pia@example.com", "consent": True, "list": "test-single",
                                                "first_name": "Pia"}).json()["contact_id"]
    assert rt.settle()
    t0 = clock.now()
    publish("page.viewed", cid, t0, path="/features")
    assert rt.settle()
    assert sales_mail(rt) == []
    for i in range(3):  # three pricing views from the site (POST /events), then lead.qualified: one alert
        resp = rt.http("POST", "/events", json_body={"type": "page.viewed", "event_id": f"view-{i:04d}",
                                                      "contact_id": cid, "path": "/pricing", "title": "Pricing"},
                       headers={"x-api-key": "local-EventsApiKey"})
        assert resp.status == 202
    assert rt.settle()
    assert tap.events("lead.qualified")
    [mail] = sales_mail(rt)
    text = mail.get_body(("plain",)).get_content()
    assert "Pia" in mail["Subject"] and "/pricing" in mail["Subject"]
    assert "pia@example.com" in text and cid in text
    assert "page.viewed path=/features" in text  # recent activity
    [alerted] = tap.events("sales.alerted")
    assert alerted["detail"]["contact_id"] == cid and alerted["detail"]["path"] == "/pricing"
    assert "pia@example.com" not in str(alerted)
    assert not rt.errors


def test_unknown_contacts_and_other_events_send_nothing(rt):
    publish("page.viewed", "nobody", clock.now(), path="/pricing")
    cid = new_contact("quiet")
    publish("page.viewed", cid, clock.now(), path="/blog/post")
    bus.publish(bus.event("funnel.handoff", cid, to="welcome", **{"from": "test"}))
    assert rt.settle()
    assert sales_mail(rt) == []


def test_funnel_can_ask_for_an_alert_with_sales_notify(rt):
    cid = new_contact("asked")
    bus.publish(bus.event("sales.notify", cid, reason="asked for a demo", funnel="engagement"))
    assert rt.settle()
    [mail] = sales_mail(rt)
    assert "asked for a demo" in mail["Subject"]


def test_notify_rule_covers_configured_events():
    pattern = Template.load(ROOT).resources["NotifyFunction"]["Properties"]["Events"]["Alerting"]["Properties"]["Pattern"]
    assert alerts.settings()["events"] | {"page.viewed"} <= set(pattern["detail-type"])


def test_slack_alert_names_the_person_and_links_their_profile(tmp_path, monkeypatch):
    """With SalesWebhookUrl set, the alert also goes to it through its API destination: the person's
    first name and a link to their profile, their email only when alerts.yaml's `slack.email` says so."""
    from conftest import START, SINGLE

    from funnelpilot_local.runtime import Runtime

    url = "https://hooks.slack.example.com/services/T000/B000/XXXX"
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local",
                 parameters={"SalesWebhookUrl": url}) as rt:
        cid = rt.http("POST", "/signup", json_body={"email": "pia@example.com", "consent": True, "list": SINGLE,
                                                    "first_name": "Pia <b>"}).json()["contact_id"]
        assert rt.settle()
        bus.publish(bus.event("sales.notify", cid, reason="asked for a demo", funnel="engagement"))
        assert rt.settle()
        [attempt] = rt.api_destinations.attempts
        sent = json.loads(attempt.outbox.read_text())  # an example domain: written to .local/outbox-webhooks/
        assert attempt.outbox.parent == tmp_path / "local" / "outbox-webhooks" and sent["url"] == url
        text = sent["body"]["text"]
        assert text.startswith("Sales alert: *Pia &lt;b&gt;* asked for a demo (score ")
        assert f"&pk={cid}&" in text and "|profile>" in text and "dynamodbv2" in text
        assert "pia@example.com" not in text
        monkeypatch.setitem(alerts.settings(), "slack_email", True)
        monkeypatch.setitem(alerts.settings(), "profile_url", "https://crm.example.com/people/{contact_id}")
        other = rt.http("POST", "/signup", json_body={"email": "tom@example.com", "consent": True, "list": SINGLE,
                                                      "first_name": "Tom"}).json()["contact_id"]
        assert rt.settle()
        bus.publish(bus.event("sales.notify", other, reason="asked for a demo", funnel="engagement"))
        assert rt.settle()
        text = json.loads(rt.api_destinations.attempts[1].outbox.read_text())["body"]["text"]
        assert "*Tom* (tom@example.com)" in text and f"<https://crm.example.com/people/{other}|profile>" in text
        assert not rt.denied and not rt.errors


def test_the_slack_url_must_be_https():
    """An API destination calls HTTPS endpoints only: CloudFormation would fail creating it; the
    parameter refuses it first (as CloudFormation's AllowedPattern check does)."""
    import pytest

    with pytest.raises(ValueError, match="SalesWebhookUrl='http://hooks.slack.example.com/x': empty, or an https://"):
        Template.load(ROOT, {"SalesWebhookUrl": "http://hooks.slack.example.com/x"})
    assert Template.load(ROOT, {"SalesWebhookUrl": "https://hooks.slack.example.com/x"}).condition("HasSalesWebhook")
