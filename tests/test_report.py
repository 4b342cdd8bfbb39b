"""Counters and the funnel report against a scenario whose true counts are known."""
import json
import re
from collections import Counter
from email import message_from_bytes, policy

from funnelpilot import bus, clock, engagement, metrics, report, tokens
from funnelpilot_local.runtime import LOCAL_ADMIN_KEY


BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15"
APPLE_MPP = {"user-agent": "Mozilla/5.0"}  # Apple's image proxy, from 17.0.0.0/8
SCANNER = {"user-agent": "Barracuda Sentinel (EE)"}
TOKEN = re.compile(r"http://127\.0\.0\.1:3000/([oc])/([A-Za-z0-9_\-.]+)")


def welcome_emails(rt, *emails) -> dict[str, tuple[str, str, dict]]:
    """Sign the people up; email -> (contact_id, message_id, {"o": pixel path, "c": first link path})."""
    ids = {e: rt.http("POST", "/signup", json_body={"email": e, "consent": True, "list": "test-single"}).json()["contact_id"] for e in emails}
    assert rt.settle() and rt.advance(600)  # read ten minutes after delivery (not "too soon")
    out = {}
    for path in rt.outbox.glob("*.eml"):
        mail = message_from_bytes(path.read_bytes(), policy=policy.default)
        mid = mail["X-Funnelpilot-Message-Id"]
        links = {}
        for kind, token in TOKEN.findall(mail.get_body(("html",)).get_content()):
            if kind == "o" or tokens.verify("c", token, 3)[2] == "0":
                links[kind] = f"/{kind}/{token}"
        links["u"] = re.match(r"<http://127\.0\.0\.1:3000(/u/[^>]+)>", mail["List-Unsubscribe"]).group(1)
        out[mail["To"]] = (ids[mail["To"]], mid, links)
    assert set(out) == set(emails)
    return out


def hit(detail_type, cid, mid, **fields):
    return bus.event(detail_type, cid, message_id=mid, funnel="welcome", step="Send welcome-1",
                     template="welcome-1", **fields)


def get_report(rt, funnel="welcome", query=""):
    return rt.http("GET", f"/funnels/{funnel}/report{query}", headers={"x-api-key": LOCAL_ADMIN_KEY})


def test_report_counts_humans_once_and_machines_apart(rt):
    people = welcome_emails(rt, "a@example.com", "b@example.com", "c@example.com", "d@example.com")
    (a, ma, la), (b, mb, lb), (c, mc, lc), (d, md, ld) = (people[e] for e in sorted(people))
    human = {"user-agent": BROWSER}
    assert rt.http("GET", la["o"], headers=human).status == 200
    assert rt.http("GET", la["o"], headers=human).status == 200  # opened again: still one open
    assert rt.http("GET", lb["c"], headers=human).status == 302  # a click without the images: also an open
    assert rt.http("GET", lc["o"], headers=APPLE_MPP, source_ip="17.58.1.2").status == 200
    assert rt.http("GET", ld["o"], headers=APPLE_MPP, source_ip="17.58.1.3").status == 200
    assert rt.http("GET", ld["c"], headers=SCANNER, source_ip="203.0.113.9").status == 302
    converted = bus.event("funnel.converted", b, funnel="welcome", step="Send welcome-1", goal="order.placed")
    metrics.counted(converted)  # as the router counts a conversion (guarded by its status change)
    bus.publish(converted, converted)  # at-least-once delivery of one event: counted nowhere else
    assert rt.http("POST", ld["u"], form={"List-Unsubscribe": "One-Click"}).status == 200
    assert rt.settle()
    resp = get_report(rt)
    assert resp.status == 200
    body = resp.json()
    [step] = body["steps"]
    assert step["step"] == "Send welcome-1"
    assert (step["entered"], step["sent"], step["blocked"]) == (4, 4, 0)
    assert (step["human_opens"], step["machine_opens"]) == (2, 2)
    assert (step["human_clicks"], step["machine_clicks"]) == (1, 1)
    assert step["open_rate"] == 50.0  # 2 of 4: the MPP prefetches are not opens
    assert step["click_rate"] == 25.0
    assert step["conversions"] == 1 and step["conversion_rate"] == 25.0
    assert step["unsubscribes"] == 1
    assert body["conversions"] == 1
    [email] = body["emails"]
    assert email["template"] == "welcome-1" and email["sent"] == 4 and email["human_opens"] == 2
    assert "Send welcome-1" in report.table(body)


def test_conversion_is_attributed_to_the_step_the_contact_was_on(rt):
    metrics.entered("welcome")  # the router counts an entry when it starts the execution
    metrics.entered("welcome")
    for cid, mid, step, template, variant in (("c1", "m1", "Send welcome-1", "welcome-1", None),
                                              ("c2", "m2", "Send welcome-1", "welcome-1", None),
                                              ("c2", "m3", "Send welcome-2", "welcome-2", "b")):
        # as the sequence step counts its sends (guarded by its own sent mark), with no bus event to count
        sent = bus.event("email.sent", cid, message_id=mid, funnel="welcome", step=step, template=template,
                         **({"variant": variant} if variant else {}))
        assert metrics.record("email.sent", json.loads(sent["Detail"]), guarded=True)
    bus.publish(bus.event("email.blocked", "c1", message_id="m4", funnel="welcome", step="Send welcome-2",
                          template="welcome-2", reason="frequency_cap"))
    for converted in (bus.event("funnel.converted", "c2", funnel="welcome", step="Wait 2 days"),
                      bus.event("funnel.converted", "c1", funnel="welcome", step="Send welcome-2")):
        metrics.counted(converted)  # as the router counts a conversion (guarded by its status change)
    assert rt.settle()
    body = get_report(rt).json()
    steps = {s["step"]: s for s in body["steps"]}
    assert list(steps)[0] == "Send welcome-1"  # the state machine's own order first
    assert steps["Send welcome-2"]["conversions"] == 1
    assert steps["Wait 2 days"]["conversions"] == 1
    assert steps["Send welcome-1"]["conversions"] == 0
    assert steps["Send welcome-2"]["blocked_by_reason"] == {"frequency_cap": 1}
    assert steps["Send welcome-1"]["entered"] == 2 and steps["Send welcome-1"]["drop_off"] == 0.0
    # welcome-2 is an A/B branch here (variant b): branches run side by side, no drop-off between them
    assert steps["Send welcome-2"]["entered"] == 2 and steps["Send welcome-2"]["drop_off"] is None
    assert body["entered"] == 2 and body["conversions"] == 2
    assert body["variants"][0]["variant"] == "b" and body["variants"][0]["sent"] == 1


def test_counting_is_idempotent_per_event_and_unique_per_message(rt):
    sent = json.loads(bus.event("email.sent", "c1", message_id="m1", funnel="welcome", step="S",
                                template="t")["Detail"])
    assert metrics.record("email.sent", sent) is True
    assert metrics.record("email.sent", sent) is False
    opens = [json.loads(hit("email.opened", "c1", "m1", human=True)["Detail"]) for _ in range(3)]
    assert [metrics.record("email.opened", o) for o in opens] == [True, False, False]


def test_report_route_errors(rt):
    assert get_report(rt, "no-such-funnel").status == 404
    assert get_report(rt, "bulk").status == 404  # a state machine of ours, but not a funnel
    bad = get_report(rt, query="?from=yesterday")
    assert bad.status == 400 and bad.json()["field"] == "from"
    assert get_report(rt, query="?from=2026-02-02&to=2026-01-01").status == 400
    empty = get_report(rt, query="?from=2020-01-01&to=2020-01-31").json()
    assert empty["steps"] == [] and empty["entered"] == 0


def test_chart_is_self_contained_svg(rt):
    body = report.build("welcome", [{"sk": "DAY#2026-01-01#FUNNEL", "entered": 10, "conversions": 2},
                                    {"sk": "DAY#2026-01-01#STEP#Send welcome-1", "entered": 10, "sent": 9,
                                     "human_opens": 5, "human_clicks": 2, "conversions": 2}],
                        "2026-01-01", "2026-01-01")
    page = report.chart_html([body])
    assert "<svg" in page and "<script" not in page and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "opened 5 (55.6%)" in page and "<title>opened: 5</title>" in page


def test_report_route_needs_authorisation(rt):
    assert rt.http("GET", "/funnels/welcome/report").status == 403


def test_the_svg_chart_stacks_every_funnel_that_had_contacts():
    from xml.dom.minidom import parseString

    rows = [{"pk": "FUNNEL#welcome", "sk": "DAY#2026-03-02#FUNNEL", "entered": 4, "conversions": 1},
            {"pk": "FUNNEL#welcome", "sk": "DAY#2026-03-02#STEP#Send welcome-1", "sent": 4, "entered": 4,
             "human_opens": 2, "machine_opens": 3}]
    reports = [report.build("welcome", rows, "2026-03-02", "2026-03-02", ["Send welcome-1"]),
               report.build("sunset", [], "2026-03-02", "2026-03-02", [])]
    svg = report.chart_svg(reports, title="demo <1>")
    doc = parseString(svg)  # well-formed, standalone
    texts = [t.firstChild.data for t in doc.getElementsByTagName("text") if t.firstChild]
    assert "demo <1>" in texts and "welcome" in texts and "Send welcome-1" in texts and "sunset" not in texts
    assert "3 machine hits not counted" in svg  # named, never drawn


def test_every_delivery_made_twice_gives_the_report_the_message_items_give(tmp_path):
    """Strict mode delivers every event twice to every consumer: the report equals what the
    message items themselves say (sent, delivered, first human open and click), counted once."""
    from email import message_from_bytes as parse

    from conftest import START
    from test_consent import ses_event
    from test_funnels import order

    from funnelpilot_local.aws_rules import Rules
    from funnelpilot_local.runtime import ROOT, Runtime

    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "twice", log_level="WARNING",
                 rules=Rules(duplicate_rate=1.0)) as rt:
        people = welcome_emails(rt, "a@example.com", "b@example.com", "c@example.com")
        (a, ma, la), (b, mb, lb), (c, mc, lc) = (people[e] for e in sorted(people))
        mails = {m["To"]: m for m in (parse(p.read_bytes(), policy=policy.default) for p in rt.outbox.glob("*.eml"))}
        for email in ("a@example.com", "b@example.com"):
            ses_event(rt, "Email Delivered", "Delivery", mails[email],
                      {"delivery": {"timestamp": clock.iso(), "recipients": [email], "smtpResponse": "250 ok"}},
                      recipient=email)
        assert rt.settle() and rt.advance(600)
        human = {"user-agent": BROWSER}
        assert rt.http("GET", la["o"], headers=human).status == 200
        assert rt.http("GET", la["o"], headers=human).status == 200
        assert rt.http("GET", lb["c"], headers=human).status == 302
        assert rt.http("GET", lc["o"], headers=APPLE_MPP, source_ip="17.58.1.2").status == 200
        assert rt.http("GET", lc["c"], headers=SCANNER, source_ip="203.0.113.9").status == 302
        order(rt, "b@example.com")
        assert rt.http("POST", lc["u"], form={"List-Unsubscribe": "One-Click"}).status == 200
        assert rt.settle()
        metrics_arn = rt.template.attributes[("MetricsFunction", "Arn")]
        copies = Counter(p["detail"]["event_id"] for arn, p in rt.delivered if arn == metrics_arn)
        # each event metrics counts (opens, clicks, the unsubscribe, the order's attribution; entries and
        # conversions are counted by the router, sends by the sequence step, deliveries by ses_feedback, machine
        # hits by the tracking handlers, each guarded by its own write) reached it twice or more
        assert len(copies) >= 5 and min(copies.values()) >= 2
        assert "funnel.converted" not in {p["detail-type"] for arn, p in rt.delivered if arn == metrics_arn}
        assert not {p["detail-type"] for arn, p in rt.delivered if arn == metrics_arn} & {"email.sent", "Email Delivered"}
        feedback_arn = rt.template.attributes[("SesFeedbackFunction", "Arn")]
        assert Counter(p["detail-type"] for arn, p in rt.delivered if arn == feedback_arn)["Email Delivered"] >= 4
        messages = [i for i in rt.client("dynamodb").scan(TableName="ContactsTable")["Items"]
                    if i["sk"]["S"].startswith("MSG#") and i.get("funnel", {}).get("S") == "welcome"]
        body = get_report(rt).json()
    [step] = body["steps"]
    truth = {"sent": sum(m["status"]["S"] == "sent" for m in messages),
             "delivered": sum("delivered_at" in m for m in messages),
             "human_opens": sum(any(h["human"] for h in engagement.message_verdicts(m)) for m in messages),
             "human_clicks": sum(any(h["human"] and h["kind"] == "click" for h in engagement.message_verdicts(m))
                                 for m in messages)}
    assert truth == {"sent": 3, "delivered": 2, "human_opens": 2, "human_clicks": 1}
    assert {k: step[k] for k in truth} == truth
    assert (step["entered"], step["machine_opens"], step["machine_clicks"]) == (3, 1, 1)
    assert (step["conversions"], step["unsubscribes"], body["entered"], body["conversions"]) == (1, 1, 3, 1)
    [email] = body["emails"]  # the template's figures: its step's, without the step's conversions
    assert email["template"] == "welcome-1"
    assert {k: email[k] for k in (*truth, "machine_opens", "unsubscribes")} == {
        k: step[k] for k in (*truth, "machine_opens", "unsubscribes")} and email["conversions"] == 0
