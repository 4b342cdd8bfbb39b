"""Loyalty and score-aware journeys through the real runtime: the repurchase reminder at the
customer's own interval (and season), the win-back of a lapsed customer, the engagement
funnel varying by score, and segments by what people actually did."""
import json
from datetime import datetime, timezone

from conftest import entered_states, executions
from test_funnels import BROWSER, DAY, HOUR, MINUTE, SCANNER, click, message, order, publish, sent, signup

from test_scoring import new_contact

from funnelpilot import clock
from funnelpilot.loyalty import repurchase
from funnelpilot.models import PROFILE, Contact


def journeys(rt, funnel, cid) -> list[tuple[str, list[str]]]:
    """(status, states entered) of each of the contact's executions of the funnel, oldest first."""
    sfn, out = rt.client("stepfunctions"), []
    for ex in sorted(executions(rt, funnel), key=lambda e: e["startDate"]):
        described = sfn.describe_execution(executionArn=ex["executionArn"])
        if json.loads(described["input"])["contact_id"] == cid:
            out.append((described["status"], entered_states(rt, ex["executionArn"])))
    return out


def schedules(rt) -> dict[str, str]:
    """Schedule name prefix (repurchase, lapsed) -> its expression."""
    scheduler, out = rt.client("scheduler"), {}
    for summary in scheduler.list_schedules()["Schedules"]:
        got = scheduler.get_schedule(Name=summary["Name"], GroupName=summary["GroupName"])
        out[summary["Name"].split("-", 1)[0]] = got["ScheduleExpression"]
    return out


def at(when: float) -> str:
    return f"at({clock.iso(int(when))[:-1]})"


def live_until(rt, cid, until: float) -> None:
    """Months of a customer's quiet life, fast: with no journey running, the clock jumps four
    weeks at a time (the runtime's hourly stepping would take minutes of real time), then the
    runtime catches up on what was due (the daily inactivity job's runs, Scheduler's schedules)
    and the customer visits the site (so she is not inactive, nor sunset by re-engagement)."""
    key, n = rt.template.parameters["EventsApiKey"], 0
    while clock.now() < until:
        assert not rt.running_executions(), "a journey is running: advance the runtime instead"
        n += 1
        resp = rt.http("POST", "/events", json_body={"type": "page.viewed", "event_id": f"visit-{n:04d}-{cid[:8]}",
                                                      "contact_id": cid, "path": "/blog/news"},
                       headers={"x-api-key": key})
        assert resp.status == 202 and rt.settle()
        step = min(28 * DAY, until - clock.now())  # inactive after 30 days
        clock.advance_to(clock.now() + step - min(step, HOUR))
        assert rt.advance(min(step, HOUR))


def test_a_repeat_buyer_is_reminded_at_their_own_interval_and_the_order_ends_the_reminders(rt, tap):
    cid = signup(rt, "rhea@example.com")
    order(rt, "rhea@example.com", 1)
    first = clock.now()
    assert set(schedules(rt)) == {"lapsed"}  # one order: no rhythm yet, but a win-back date (after_days)
    assert schedules(rt)["lapsed"] == at(first + 90 * DAY)
    assert rt.advance(12 * DAY)
    order(rt, "rhea@example.com", 2)
    second = clock.now()
    due = second + (second - first) - 3 * DAY  # her interval, 3 days early (scoring.yaml)
    assert schedules(rt) == {"repurchase": at(due), "lapsed": at(second + 24 * DAY)}  # 2 x 12 days
    assert not journeys(rt, "repurchase", cid)
    assert rt.advance(due - clock.now() + HOUR)
    [(status, states)] = journeys(rt, "repurchase", cid)
    assert status == "RUNNING" and "Send repurchase-1" in states and sent(rt, cid)[-1] == "repurchase-1"
    [due_event] = tap.events("customer.repurchase_due")
    assert due_event["detail"]["basis"] == "interval"
    assert rt.advance(HOUR)
    assert click(rt, cid, "repurchase-1", "/account/orders") == 302
    order(rt, "rhea@example.com", 3)  # the goal: no follow-up
    [(status, states)] = journeys(rt, "repurchase", cid)
    assert status == "ABORTED" and "Send repurchase-2" not in states
    [converted] = [e for e in tap.events("funnel.converted") if e["detail"]["funnel"] == "repurchase"]
    assert converted["detail"]["step"] == "Send repurchase-1"
    assert "repurchase" in schedules(rt)  # the next reminder, from the new order
    assert rt.advance(5 * DAY)
    assert "repurchase-2" not in sent(rt, cid)
    assert not rt.errors


def test_silence_gets_the_follow_up_then_the_win_back_when_the_customer_lapses(rt, tap):
    cid = signup(rt, "theo@example.com")
    order(rt, "theo@example.com", 1)
    assert rt.advance(10 * DAY)
    order(rt, "theo@example.com", 2)
    last = clock.now()
    assert rt.advance(7 * DAY + HOUR)  # due at 10 - 3 days
    assert journeys(rt, "repurchase", cid)[0][1][-1] == "Wait 4 days"
    assert rt.advance(4 * DAY)
    [(status, states)] = journeys(rt, "repurchase", cid)
    assert status == "SUCCEEDED" and states[-1] == "Send repurchase-2"
    assert not journeys(rt, "winback", cid)
    assert rt.advance(last + 21 * DAY - clock.now() + HOUR)  # 2 x 10 days, but at least min_days (21)
    [lapsed] = tap.events("customer.lapsed")
    assert lapsed["detail"]["basis"] == "interval" and lapsed["detail"]["orders"] == 2
    assert sent(rt, cid)[-1] == "winback-1"
    assert rt.advance(7 * DAY + HOUR)
    [(status, states)] = journeys(rt, "winback", cid)
    assert status == "SUCCEEDED" and states[-1] == "Send winback-2"
    assert [t for t in sent(rt, cid) if t.startswith(("repurchase", "winback"))] == [
        "repurchase-1", "repurchase-2", "winback-1", "winback-2"]
    assert not rt.errors


def test_a_win_back_click_skips_the_second_email_and_an_order_is_its_goal(rt, tap):
    cid = signup(rt, "uma@example.com")
    order(rt, "uma@example.com", 1)
    lapses = clock.now() + 90 * DAY  # one order: lapsed after_days (90) later
    assert rt.advance(7 * DAY)  # ascension, after the order
    live_until(rt, cid, lapses + HOUR)
    assert tap.events("customer.lapsed")[0]["detail"]["basis"] == "one_order"
    assert sent(rt, cid)[-1] == "winback-1"
    assert rt.advance(HOUR)
    assert click(rt, cid, "winback-1", "/whats-new", agent=SCANNER) == 302  # a scanner is no click
    assert rt.settle()
    assert journeys(rt, "winback", cid)[0][0] == "RUNNING"
    assert rt.advance(MINUTE)
    assert click(rt, cid, "winback-1", "/whats-new", agent=BROWSER) == 302
    assert rt.settle()
    [(status, states)] = journeys(rt, "winback", cid)
    assert status == "SUCCEEDED" and states[-1] == "Tag winback-clicked"
    assert "winback-2" not in sent(rt, cid)
    assert not rt.errors


def test_a_seasonal_buyer_is_reminded_a_year_later_at_the_start_of_their_season(rt, tap):
    """Two orders a year apart, both in February: the reminder comes the next February (its 1st,
    minus remind_days_before), not after the mean interval counted from the last order."""
    cid = signup(rt, "sol@example.com")
    publish(rt, "order.placed", cid, occurred_at="2025-02-14T10:00:00Z", order_id="s1", amount=80, currency="EUR")
    publish(rt, "order.placed", cid, occurred_at="2026-02-20T10:00:00Z", order_id="s2", amount=90, currency="EUR")
    season = datetime(2027, 2, 1, 9, tzinfo=timezone.utc).timestamp()
    assert schedules(rt) == {"repurchase": at(season - 3 * DAY), "lapsed": at(season + 90 * DAY)}
    c = Contact.get(cid, PROFILE, consistent_read=True)
    assert repurchase.due_at(c) == (season - 3 * DAY, "season")
    assert rt.advance(7 * DAY)  # ascension, after the order
    live_until(rt, cid, season - 3 * DAY + HOUR)  # most of a year on the simulated clock
    [due] = tap.events("customer.repurchase_due")
    assert due["detail"]["basis"] == "season" and due["detail"]["due_at"].startswith("2027-01-29")
    assert sent(rt, cid)[-1] == "repurchase-1"
    assert not rt.errors


# ---------------------------------------------------------------- engagement by score
def test_a_hot_lead_gets_the_offer_and_a_sales_alert_at_once(rt, tap):
    cid = signup(rt, "hal@example.com")
    key = rt.template.parameters["EventsApiKey"]
    for i in range(3):  # 3 x 20 points (scoring.yaml: pricing-page, cap 3 a day) + signup: over 50
        resp = rt.http("POST", "/events", json_body={"type": "page.viewed", "event_id": f"pricing-view-{i:03d}",
                                                      "contact_id": cid, "path": "/pricing"},
                       headers={"x-api-key": key})
        assert resp.status == 202
    assert rt.settle()
    assert [e["detail"]["contact_id"] for e in tap.events("lead.qualified")] == [cid]
    assert rt.advance(3 * DAY + HOUR)  # a day, engagement-1, two days: the score check
    [(status, states)] = journeys(rt, "engagement", cid)
    assert "Notify sales: hot lead (capture score at the threshold) - the offer goes out now" in states[-3]
    assert [t for t in sent(rt, cid) if t.startswith("engagement")] == ["engagement-1", "engagement-3"]
    reasons = [e["detail"]["reason"] for e in tap.events("sales.notify")]
    assert any(r.startswith("hot lead") for r in reasons)
    assert not rt.errors


def test_a_cold_lead_gets_proof_and_education_before_the_offer(rt):
    cid = new_contact("c" * 26)  # no signup: no welcome journey competing for the frequency cap
    publish(rt, "funnel.handoff", cid, to="engagement", **{"from": "test"})
    assert rt.advance(9 * DAY + HOUR)
    [(status, states)] = journeys(rt, "engagement", cid)
    assert any(s.endswith("threshold?") for s in states)  # the question (moto's history escapes its "≥")
    assert not any(s.startswith("Notify sales: hot lead") for s in states)
    got = [t for t in sent(rt, cid) if t.startswith("engagement")]
    assert got[0] == "engagement-1" and got[1] in ("engagement-2a", "engagement-2b")
    assert got[2:] == ["engagement-learn", "engagement-3"]


def test_a_threshold_condition_without_a_threshold_is_refused_at_compile_time(tmp_path):
    import pytest

    from funnelpilot.funnel_spec import parse

    (tmp_path / "funnels").mkdir()
    (tmp_path / "scoring.yaml").write_text("tracks: {capture: {half_life_days: 14}}\n")
    path = tmp_path / "funnels" / "f.yaml"
    path.write_text("id: f\nsteps:\n  - if: {score: {gte: threshold}}\n    then: [{tag: hot}]\n"
                    "  - if: {loyalty: {gte: lots}}\n    then: [{tag: vip}]\n")
    funnel, errors = parse(path)
    assert funnel is None and len(errors) == 2
    assert "the capture track has no threshold in scoring.yaml" in errors[0]
    assert "compare with a number or `threshold`, not 'lots'" in errors[1]
    with pytest.raises(ValueError):
        from funnelpilot.funnel_spec import _Checker
        _Checker(path).score_condition("score", {"about": 3})


# ---------------------------------------------------------------- segments by action
def test_segments_by_what_people_did_download_click_and_product_bought(rt):
    cid = signup(rt, "dora@example.com", lead_magnet="starter-guide")
    other = signup(rt, "sven@example.com", lead_magnet="starter-guide")
    assert rt.advance(10 * MINUTE)
    assert click(rt, other, "delivery-1", "/download/", agent=SCANNER) == 302  # the gateway, not Sven
    assert click(rt, cid, "delivery-1", "/download/starter-guide") == 302
    assert rt.settle()
    segs = Contact.get(cid, PROFILE, consistent_read=True).segments or set()
    assert {"downloaded-lead-magnet", "downloaded-starter-guide"} <= segs
    assert not {"downloaded-lead-magnet"} & (Contact.get(other, PROFILE, consistent_read=True).segments or set())
    resp = rt.http("POST", "/events", json_body={
        "type": "order.placed", "event_id": "order-sven-course", "email": "sven@example.com", "order_id": "c-1",
        "amount": 99, "currency": "EUR", "items": [{"sku": "templates", "quantity": 1, "price": 20},
                                                     {"sku": "core-course", "quantity": 1, "price": 79}]},
        headers={"x-api-key": rt.template.parameters["EventsApiKey"]})
    assert resp.status == 202 and rt.settle()
    order(rt, "dora@example.com")  # another product
    assert "core-course-buyers" in Contact.get(other, PROFILE, consistent_read=True).segments
    assert "core-course-buyers" not in Contact.get(cid, PROFILE, consistent_read=True).segments
    assert message(rt, cid, "delivery-1")["status"] == "sent"
    assert not rt.errors
