"""Every shipped funnel executed for real by moto's Step Functions interpreter, branch by branch,
with people acting only through the real routes (signup, pixel, click redirect, one-click
unsubscribe, POST /events). Time is stepped: it moves only with rt.advance()."""
import json

import pytest
from conftest import SINGLE, entered_states, executions, funnel_counts, ip_for

from funnelpilot import bus, clock, report, tokens
from funnelpilot.models import PROFILE, Contact
from funnelpilot.sending import sendtime
from funnelpilot_local.moto_adapter import sent_emails
from funnelpilot_local.template import ACCOUNT, REGION

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
SCANNER = "Mozilla/5.0 (compatible; Mimecast URL Protect)"
APPLE_PROXY = "Mozilla/5.0"
MINUTE, HOUR, DAY = 60, 3600, 86400


def signup(rt, email="ann@example.com", **fields) -> str:
    fields.setdefault("list", SINGLE)  # a single opt-in list: confirmation is tested in test_double_opt_in
    resp = rt.http("POST", "/signup", json_body={"email": email, "consent": True, "first_name": "Ann", **fields},
                   source_ip=ip_for(email))
    assert resp.status == 202, resp.body
    assert rt.settle()
    return resp.json()["contact_id"]


def messages(rt, cid) -> list[dict]:
    """The contact's message items, oldest first: template, status, reason, ..."""
    items = rt.client("dynamodb").query(TableName="ContactsTable", KeyConditionExpression="pk = :c AND "
                                        "begins_with(sk, :m)", ExpressionAttributeValues={
                                            ":c": {"S": cid}, ":m": {"S": "MSG#"}})["Items"]
    plain = [{k: next(iter(v.values())) for k, v in i.items()} for i in items]
    return sorted(plain, key=lambda m: (m["created_at"], m["sk"]))


def sent(rt, cid) -> list[str]:
    return [m["template"] for m in messages(rt, cid) if m["status"] == "sent"]


def message(rt, cid, template) -> dict:
    [m] = [m for m in messages(rt, cid) if m["template"] == template]
    return m


def click(rt, cid, template, link_part, agent=BROWSER) -> int:
    m = message(rt, cid, template)
    links = [link if isinstance(link, str) else link["url"] for link in json.loads(m["links"])]
    index = next(i for i, url in enumerate(links) if link_part in url)
    resp = rt.http("GET", f"/c/{tokens.sign('c', cid, m['message_id'], str(index))}",
                   headers={"user-agent": agent}, source_ip="198.51.100.23")
    return resp.status


def open_email(rt, cid, template, agent=BROWSER) -> None:
    m = message(rt, cid, template)
    rt.http("GET", f"/o/{tokens.sign('o', cid, m['message_id'])}", headers={"user-agent": agent},
            source_ip="17.58.63.9" if agent == APPLE_PROXY else "198.51.100.23")


def journey(rt, funnel, cid) -> tuple[str, list[str]]:
    """(status, states entered) of the contact's only execution of the funnel."""
    sfn = rt.client("stepfunctions")
    [ex] = [e for e in executions(rt, funnel)
            if json.loads(sfn.describe_execution(executionArn=e["executionArn"])["input"])["contact_id"] == cid]
    status = rt.client("stepfunctions").describe_execution(executionArn=ex["executionArn"])["status"]
    return status, entered_states(rt, ex["executionArn"])


def profile(rt, cid) -> dict:
    return rt.client("dynamodb").get_item(TableName="ContactsTable",
                                          Key={"pk": {"S": cid}, "sk": {"S": "PROFILE"}})["Item"]


def publish(rt, detail_type, cid, **fields):
    bus.publish(bus.event(detail_type, cid, **fields))
    assert rt.settle()


def order(rt, email, n=1):
    resp = rt.http("POST", "/events", json_body={
        "type": "order.placed", "event_id": f"order-{email.split('@')[0]}-{n}", "email": email, "order_id": f"o-{n}",
        "amount": 49, "currency": "EUR", "items": [{"sku": "core", "quantity": 1, "price": 49}]},
        headers={"x-api-key": rt.template.parameters["EventsApiKey"]})
    assert resp.status == 202, resp.body
    assert rt.settle()


# ---------------------------------------------------------------- welcome
def test_welcome_opened_branch_sends_three_emails_then_hands_off_to_segmentation(rt, tap):
    cid = signup(rt)
    assert sent(rt, cid) == ["welcome-1"]
    assert rt.advance(2 * DAY)
    assert sent(rt, cid) == ["welcome-1", "welcome-2"]
    assert rt.advance(HOUR)
    open_email(rt, cid, "welcome-2")
    assert rt.advance(3 * DAY)
    assert sent(rt, cid) == ["welcome-1", "welcome-2", "welcome-3"]
    assert rt.advance(2 * DAY)
    status, states = journey(rt, "welcome", cid)
    assert status == "SUCCEEDED"
    assert states == ["Send welcome-1", "Wait 2 days", "Send welcome-2", "Wait 3 days", "Opened welcome-2?",
                      "Send welcome-3", "Wait 2 days (2)", "Go to segmentation"]
    [handoff] = tap.events("funnel.handoff")
    assert handoff["detail"]["to"] == "segmentation" and handoff["detail"]["contact_id"] == cid
    assert rt.advance(DAY)  # segmentation starts a day after the handoff
    assert journey(rt, "segmentation", cid)[1][:2] == ["Wait 1 day", "Send segmentation-1"]
    assert sent(rt, cid)[-1] == "segmentation-1"
    assert funnel_counts(rt, "welcome") == {"entered": 1, "completed": 1}


def test_welcome_without_a_human_open_skips_welcome_3_and_an_apple_prefetch_is_not_an_open(rt):
    cid = signup(rt)
    assert rt.advance(2 * DAY + HOUR)
    open_email(rt, cid, "welcome-2", agent=APPLE_PROXY)  # Mail Privacy Protection fetches every image
    assert rt.advance(3 * DAY)
    status, states = journey(rt, "welcome", cid)
    assert status == "SUCCEEDED" and "Send welcome-3" not in states and states[-1] == "Opened welcome-2?"
    assert sent(rt, cid) == ["welcome-1", "welcome-2"]
    assert journey(rt, "segmentation", cid)[1][0] == "Wait 1 day"  # the question's no handed them off


def test_a_goal_mid_way_stops_the_journey_at_once_and_converts_on_that_step(rt, tap):
    cid = signup(rt, "gus@example.com")
    assert rt.advance(DAY)
    order(rt, "gus@example.com")
    status, states = journey(rt, "welcome", cid)
    assert status == "ABORTED" and states == ["Send welcome-1", "Wait 2 days"]
    [converted] = [e for e in tap.events("funnel.converted") if e["detail"]["funnel"] == "welcome"]
    assert converted["detail"]["goal"] == "order.placed"
    assert converted["detail"]["step"] == "Send welcome-1"  # counted on the last email they got...
    assert converted["detail"]["state"] == "Wait 2 days"  # ...and where exactly they were
    assert rt.advance(6 * DAY)
    assert "welcome-2" not in sent(rt, cid)


def test_unsubscribed_mid_way_the_next_send_is_blocked_and_the_journey_ends(rt, tap):
    cid = signup(rt, "uma@example.com")
    mid = message(rt, cid, "welcome-1")["message_id"]
    assert rt.http("POST", f"/u/{tokens.sign('u', cid, mid)}", form={"List-Unsubscribe": "One-Click"}).status == 200
    assert rt.settle()
    emails_before = len(sent_emails(ACCOUNT, REGION))
    assert rt.advance(2 * DAY)
    status, states = journey(rt, "welcome", cid)
    assert status == "SUCCEEDED" and states[-2:] == ["Send welcome-2", "Left the funnel"]
    blocked = message(rt, cid, "welcome-2")
    assert blocked["status"] == "blocked" and blocked["reason"] == "unsubscribed"
    assert any(e["detail"]["reason"] == "unsubscribed" for e in tap.events("email.blocked"))
    assert len(sent_emails(ACCOUNT, REGION)) == emails_before


def test_duplicate_subscribed_delivery_starts_one_execution_and_sends_one_email(rt, tap):
    signup(rt, "cy@example.com")
    [subscribed] = tap.events("contact.subscribed")
    rt.client("events").put_events(Entries=[{  # at-least-once: the same event (same event_id) again
        "Source": "funnelpilot", "DetailType": "contact.subscribed", "Detail": json.dumps(subscribed["detail"]),
        "EventBusName": "funnelpilot"}])
    assert rt.settle()
    assert len(tap.events("contact.subscribed")) == 2
    assert len(executions(rt, "welcome")) == 1
    assert len(sent_emails(ACCOUNT, REGION)) == 1


# ---------------------------------------------------------------- frequency cap
def test_a_second_marketing_email_within_24_hours_waits_for_the_next_free_slot(rt, tap):
    cid = signup(rt, "fay@example.com")
    welcome_at = clock.now()
    assert rt.advance(HOUR)
    publish(rt, "contact.inactive", cid, days=30)  # re-engagement wants to write an hour after welcome-1
    capped = message(rt, cid, "reengage-1")
    assert capped["status"] == "deferred" and float(capped["deferred_at"]) == welcome_at + HOUR
    assert tap.events("email.blocked") == []
    assert journey(rt, "reengagement", cid)[1][-2:] == ["Frequency cap: time until reengage-1 may go",
                                                        "Wait for a free slot (reengage-1)"]
    assert rt.advance(23 * HOUR)  # welcome-1's 24 hours are over: the slot is free
    m = message(rt, cid, "reengage-1")
    assert m["status"] == "sent" and m["sent_at"] == clock.iso(welcome_at + DAY)
    status, states = journey(rt, "reengagement", cid)
    assert status == "RUNNING" and states[-1] == "Send reengage-1"  # sent, and waiting there for a click
    assert states.count("Send reengage-1") == 2  # the deferral's 3 transitions: time until, the Wait, the send again
    rows = report.build("reengagement", report.query_rows("reengagement", "2026-03-01", "2026-03-31"),
                        "2026-03-01", "2026-03-31")
    [step] = [s for s in rows["steps"] if s["step"] == "Send reengage-1"]
    assert step["sent"] == 1 and step["deferred_by_reason"] == {"frequency_cap": 1} and step["blocked"] == 0


# ---------------------------------------------------------------- delivery
def test_delivery_click_resumes_the_wait_in_the_same_tick_and_a_scanner_does_not(rt):
    cid = signup(rt, "lea@example.com", lead_magnet="seo-ebook")
    assert sorted(sent(rt, cid)) == ["delivery-1", "welcome-1"]  # transactional: not capped
    assert rt.advance(10 * MINUTE)
    assert click(rt, cid, "delivery-1", "/download/", agent=SCANNER) == 302
    assert rt.settle()
    assert journey(rt, "delivery", cid)[0] == "RUNNING"
    assert rt.advance(5 * MINUTE)  # a person, later than the scanner's burst
    before = clock.now()
    assert click(rt, cid, "delivery-1", "/download/") == 302
    assert rt.settle()
    assert clock.now() == before  # resumed by the click itself, not by the timeout
    status, states = journey(rt, "delivery", cid)
    assert status == "SUCCEEDED" and states[-1] == "Tag downloaded"
    assert "downloaded" in profile(rt, cid)["tags"]["SS"]


def test_a_click_resumes_its_wait_once_from_the_executions_history_with_no_wait_item(rt, tap):
    """The send and its wait_for are one Task and store nothing for the wait: the router reads the token from
    the execution's history (funnels._waiting); Step Functions closes the task once, so one resumer wins."""
    from funnelpilot import funnels

    cid = signup(rt, "ida@example.com", lead_magnet="seo-ebook")
    assert rt.advance(10 * MINUTE)
    [arn] = [e["executionArn"] for e in executions(rt, "delivery") if json.loads(rt.client("stepfunctions")
             .describe_execution(executionArn=e["executionArn"])["input"])["contact_id"] == cid]
    waiting = funnels._waiting(arn)  # what a second resumer reads before the first one resumes
    assert waiting["state"] == "Send delivery-1" and waiting["wait_for"]["condition"]["clicked"]["link"] == "/download/"
    assert rt.client("dynamodb").query(TableName="ContactsTable", KeyConditionExpression="pk = :c AND begins_with("
                                       "sk, :w)", ExpressionAttributeValues={":c": {"S": cid}, ":w": {"S": "WAIT#"}}
                                       )["Items"] == []
    assert click(rt, cid, "delivery-1", "/download/") == 302 and rt.settle()
    status, states = journey(rt, "delivery", cid)
    assert status == "SUCCEEDED" and states[-1] == "Tag downloaded"
    assert funnels.succeed(waiting["token"], {"resumed_by": "email.clicked"}) is False  # closed: TaskTimedOut
    [clicked] = [e for e in tap.events("email.clicked") if e["detail"]["contact_id"] == cid]
    again = rt.invoke("FunnelRouterFunction", {"route": "resume", "event": {"detail-type": "email.clicked",
                                                                            "detail": clicked["detail"]}})
    assert again == {"resumed": 0}  # a duplicate delivery of the click finds the journey no longer waiting


def test_delivery_resends_once_when_the_link_was_not_clicked(rt):
    cid = signup(rt, "max@example.com", lead_magnet="seo-ebook")
    assert rt.advance(2 * DAY + MINUTE)
    status, states = journey(rt, "delivery", cid)
    assert status == "SUCCEEDED" and states[-1] == "Send delivery-2"
    assert sorted(t for t in sent(rt, cid) if t.startswith("delivery")) == ["delivery-1", "delivery-2"]


# ---------------------------------------------------------------- segmentation -> engagement / ascension
@pytest.mark.parametrize("topic", ["seo", "ads", "email"])
def test_segmentation_click_tags_the_interest_and_routes_a_prospect_to_engagement(rt, topic):
    cid = signup(rt, f"{topic}@example.com")
    assert rt.advance(HOUR)  # a day after welcome-1, not to the second: the frequency cap
    publish(rt, "funnel.handoff", cid, to="segmentation", **{"from": "test"})
    assert rt.advance(DAY + MINUTE)
    assert "segmentation-1" in sent(rt, cid)
    assert rt.advance(HOUR)
    assert click(rt, cid, "segmentation-1", f"/topics/{topic}") == 302
    assert rt.settle()
    status, states = journey(rt, "segmentation", cid)
    # the topic's question runs its tag and set (folded: a click stays made), the last one hands off
    assert status == "SUCCEEDED" and f"Clicked /topics/{topic} in segmentation-1?" in states
    assert states[-1] == "Customer is True?" and not any(s.startswith(("Tag", "Go to")) for s in states)
    contact = profile(rt, cid)
    assert f"interest-{topic}" in contact["tags"]["SS"] and contact["properties"]["M"]["interest"]["S"] == topic
    assert journey(rt, "engagement", cid)[0] == "RUNNING"


def test_segmentation_routes_a_customer_to_ascension_and_silence_exits(rt):
    buyer, quiet = signup(rt, "cus@example.com"), signup(rt, "sil@example.com")
    assert rt.advance(HOUR)
    order(rt, "cus@example.com")  # ascension-1 goes a day later
    assert rt.advance(2 * DAY)
    for cid in (buyer, quiet):
        publish(rt, "funnel.handoff", cid, to="segmentation", **{"from": "test"})
    assert rt.advance(DAY + HOUR)
    assert click(rt, buyer, "segmentation-1", "/topics/email") == 302
    assert rt.settle()
    assert journey(rt, "segmentation", buyer)[1][-1] == "Customer is True?"  # yes: it hands off to ascension
    assert journey(rt, "ascension", buyer)[0] == "RUNNING" and len(executions(rt, "engagement")) == 0
    assert rt.advance(4 * DAY)
    status, states = journey(rt, "segmentation", quiet)
    assert status == "SUCCEEDED" and states[-1] == "Exit (no topic chosen)"


# ---------------------------------------------------------------- engagement
def test_engagement_pricing_click_scores_alerts_sales_and_records_the_variant(rt, tap):
    cid = signup(rt, "pia@example.com")
    assert rt.advance(HOUR)
    publish(rt, "funnel.handoff", cid, to="engagement", **{"from": "test"})
    assert rt.advance(DAY + MINUTE)
    assert "engagement-1" in sent(rt, cid)
    assert rt.advance(HOUR)
    click(rt, cid, "engagement-1", "/pricing")
    assert rt.advance(2 * DAY)
    status, states = journey(rt, "engagement", cid)
    assert "Clicked /pricing in engagement-1?" in states  # its yes scores and notifies in that Task
    assert any(e["detail"]["contact_id"] == cid for e in tap.events("sales.notify"))
    alerts = [raw for _, raw in sent_emails(ACCOUNT, REGION) if "sales@example.com" in str(raw)[:2000]]
    assert alerts, "the notify step sends an internal email to sales"
    variant = "a" if "Send engagement-2a" in states else "b"
    assert sent(rt, cid)[-1] == f"engagement-2{variant}"
    [sent_event] = [e for e in tap.events("email.sent") if e["detail"]["template"].startswith("engagement-2")]
    assert sent_event["detail"]["variant"] == variant
    open_email(rt, cid, f"engagement-2{variant}")  # the variant's own open rate
    assert rt.settle()
    report = rt.http("GET", "/funnels/engagement/report", headers={"x-api-key": rt.admin_key}).json()
    [row] = report["variants"]
    assert (row["variant"], row["sent"], row["human_opens"]) == (variant, 1, 1)


def test_engagement_without_a_pricing_click_and_an_order_converts_on_the_current_step(rt, tap):
    cid = signup(rt, "oli@example.com")
    assert rt.advance(HOUR)
    publish(rt, "funnel.handoff", cid, to="engagement", **{"from": "test"})
    assert rt.advance(3 * DAY + HOUR)
    status, states = journey(rt, "engagement", cid)
    assert "Score +10" not in states and states[-1] == "Wait 3 days"
    order(rt, "oli@example.com")
    assert journey(rt, "engagement", cid)[0] == "ABORTED"
    [converted] = [e for e in tap.events("funnel.converted") if e["detail"]["funnel"] == "engagement"]
    assert converted["detail"]["state"] == "Wait 3 days"
    assert converted["detail"]["step"] in ("Send engagement-2a", "Send engagement-2b")


def test_an_unsubscribe_is_an_exit_event_of_engagement_that_stops_it_at_once(rt, tap):
    cid = signup(rt, "eve@example.com")
    assert rt.advance(HOUR)
    publish(rt, "funnel.handoff", cid, to="engagement", **{"from": "test"})
    assert rt.advance(DAY + HOUR)
    mid = message(rt, cid, "engagement-1")["message_id"]
    assert rt.http("POST", f"/u/{tokens.sign('u', cid, mid)}", form={"List-Unsubscribe": "One-Click"}).status == 200
    assert rt.settle()
    status, states = journey(rt, "engagement", cid)
    assert status == "ABORTED" and states[-1] == "Wait 2 days"  # stopped by the exit rule, not at the next send
    assert funnel_counts(rt, "engagement")["completed"] == 1  # the exit ends the journey: counted once
    assert not any(e["detail"]["funnel"] == "engagement" for e in tap.events("funnel.converted"))


def test_both_ab_variants_are_reachable():
    from funnelpilot import sequence

    picks = {sequence.pick_variant({"a": 50, "b": 50}, f"c{i}", "engagement", "A/B split") for i in range(40)}
    assert picks == {"a", "b"}


# ---------------------------------------------------------------- ascension
def test_ascension_after_a_purchase_and_the_next_order_is_its_goal(rt, tap):
    cid = signup(rt, "ada@example.com")
    assert rt.advance(HOUR)
    order(rt, "ada@example.com", 1)
    assert journey(rt, "ascension", cid)[0] == "RUNNING"  # the order that started it is not its goal
    assert rt.advance(DAY + MINUTE)
    assert "ascension-1" in sent(rt, cid)
    assert rt.advance(HOUR)
    click(rt, cid, "ascension-1", "/courses/core")
    assert rt.settle()
    assert "interest-core" in profile(rt, cid)["tags"]["SS"]
    status, states = journey(rt, "ascension", cid)
    assert "Tag interest-core + Score +10 loyalty" in states and states[-1] == "Wait 1 day (2)"
    assert rt.advance(DAY)
    assert journey(rt, "ascension", cid)[1][-1] == "Send ascension-2"
    message_count = len(messages(rt, cid))
    order(rt, "ada@example.com", 2)
    assert journey(rt, "ascension", cid)[0] in ("SUCCEEDED", "ABORTED")
    assert len([m for m in messages(rt, cid) if m["template"].startswith("ascension")]) == 2
    assert len(messages(rt, cid)) == message_count


def test_ascension_not_clicked_still_offers_the_complement(rt):
    cid = signup(rt, "bea@example.com")
    assert rt.advance(HOUR)
    order(rt, "bea@example.com")
    assert rt.advance(6 * DAY + HOUR)
    status, states = journey(rt, "ascension", cid)
    assert status == "SUCCEEDED" and "Tag interest-core" not in states and states[-1] == "Send ascension-2"


# ---------------------------------------------------------------- re-engagement and its sunset
def test_reengagement_silence_sunsets_in_its_last_step(rt, tap):
    cid = signup(rt, "zed@example.com")
    assert rt.advance(3 * DAY + HOUR)  # welcome-2 went a day before
    publish(rt, "contact.inactive", cid, days=30)
    assert rt.advance(9 * DAY)  # waiting for a click on reengage-2
    assert journey(rt, "reengagement", cid)[0] == "RUNNING" and profile(rt, cid)["status"]["S"] == "active"
    assert rt.advance(2 * DAY)
    status, states = journey(rt, "reengagement", cid)
    assert status == "SUCCEEDED" and states[-1] == "Sunset"  # one Task, the last
    assert {"reengage-1", "reengage-2"} <= set(sent(rt, cid))
    contact = profile(rt, cid)
    assert (contact["status"]["S"], contact["status_reason"]["S"]) == ("sunset", "no response")  # not suppressed
    [sunset] = {e["detail"]["event_id"]: e["detail"] for e in tap.events("contact.sunset")
                if e["detail"]["contact_id"] == cid}.values()
    assert sunset["reason"] == "no response" and sunset["funnel"] == "reengagement"
    assert not [e for e in tap.events("contact.suppressed") if e["detail"]["contact_id"] == cid]
    # no hand-off, no second machine: the sunset is two states of this execution
    assert not any(e["detail"]["contact_id"] == cid and e["detail"].get("from") == "reengagement"
                   for e in tap.events("funnel.handoff"))
    assert not [a for a in rt.state_machine_arns() if a.endswith("-sunset")]
    assert funnel_counts(rt, "reengagement")["completed"] == 1  # the journey ended in those steps, counted once


@pytest.mark.parametrize("which", ["reengage-1", "reengage-2"])
def test_reengagement_click_returns_to_segmentation(rt, tap, which):
    cid = signup(rt, f"{which}@example.com")
    assert rt.advance(3 * DAY + HOUR)
    publish(rt, "contact.inactive", cid, days=30)
    if which == "reengage-2":
        assert rt.advance(5 * DAY + MINUTE)
    assert rt.advance(HOUR)
    click(rt, cid, which, "/stay")
    assert rt.settle()
    status, states = journey(rt, "reengagement", cid)
    assert status == "SUCCEEDED" and states[-1].startswith("Go to segmentation")  # "(2)": second such state
    assert any(e["detail"]["to"] == "segmentation" and e["detail"]["from"] == "reengagement"
               for e in tap.events("funnel.handoff") if e["detail"]["contact_id"] == cid)


# ---------------------------------------------------------------- quiet hours
def test_a_send_in_quiet_hours_waits_for_the_morning_in_the_contacts_time_zone(rt):
    cid = signup(rt, "kai@example.com", timezone="Europe/Paris")
    assert rt.advance(3 * DAY + 11 * HOUR)  # Thursday 21:00 UTC = 22:00 in Paris; welcome-2 went Wednesday
    publish(rt, "contact.inactive", cid, days=30)
    assert "reengage-1" not in [m["template"] for m in messages(rt, cid)]  # nothing claimed at night
    assert rt.advance(11 * HOUR)
    m = message(rt, cid, "reengage-1")  # 08:00 in Paris, and this contact's own seconds of the hour after it
    assert m["status"] == "sent" and m["sent_at"] == clock.iso(1772780400 + sendtime.spread(cid, 60))
    # the router computed the first Wait (10 hours): no failed send, no detour
    # (then it waits for a click in the send's own Task)
    assert journey(rt, "reengagement", cid)[1] == ["Wait until reengage-1 may go", "Send reengage-1"]


def test_a_wait_that_would_end_in_quiet_hours_is_longer_instead_of_a_detour(rt, tap):
    cid = "c_night_owl"
    Contact(cid, PROFILE, email="owl@example.com", first_name="Owl", status="active",
            timezone="America/New_York").save()
    assert rt.advance(16 * HOUR)  # Tuesday 02:00 UTC = Monday 21:00 in New York
    publish(rt, "funnel.handoff", cid, to="segmentation", **{"from": "welcome"})
    [ex] = executions(rt, "segmentation")
    wait = json.loads(rt.client("stepfunctions").describe_execution(executionArn=ex["executionArn"])["input"])
    # a day later is 21:00 again: until 08:00 the morning after, and this contact's seconds of the spread
    assert wait["wait_seconds"] == 35 * HOUR + sendtime.spread(cid, 60)
    assert rt.advance(DAY + 10 * HOUR)
    assert messages(rt, cid) == []
    assert rt.advance(2 * HOUR)
    assert message(rt, cid, "segmentation-1")["sent_at"] == clock.iso(1772629200 + sendtime.spread(cid, 60))
    assert journey(rt, "segmentation", cid)[1] == ["Wait 1 day", "Send segmentation-1"]  # waiting there for a click
    assert [e for e in tap.events("email.blocked") if e["detail"]["contact_id"] == cid] == []


