"""Lead scoring through the real handler on moto: atomic ADD, idempotency, lazy decay, crossings."""
import json
import threading
import uuid

import botocore.client
import pytest
from botocore.exceptions import ClientError

from funnelpilot import bus, clock, scoring
from funnelpilot.models import PROFILE, Contact

DAY = 86_400
H = 14 * DAY  # capture half-life in infra/scoring.yaml


def new_contact(cid: str = "c-score") -> str:
    Contact(cid, PROFILE, email=f"{cid}@example.com", first_name="Sam", status="active").save()
    return cid


def eb(detail_type: str, cid: str, at: float, event_id: str | None = None, **fields) -> dict:
    """An EventBridge event as a rule target receives it."""
    entry = bus.event(detail_type, cid, event_id=event_id, occurred_at=clock.iso(at), **fields)
    return {"version": "0", "id": uuid.uuid4().hex, "source": entry["Source"], "detail-type": detail_type,
            "account": "123456789012", "region": "us-east-1", "time": clock.iso(at), "resources": [],
            "detail": json.loads(entry["Detail"])}


def publish(detail_type: str, cid: str, at: float, **fields) -> None:
    bus.publish(bus.event(detail_type, cid, occurred_at=clock.iso(at), **fields))


def profile(cid: str) -> Contact:
    return Contact.get(cid, PROFILE, consistent_read=True)


def test_100_concurrent_events_on_one_contact_sum_exactly(rt):
    cid = new_contact()
    t0 = float(int(clock.now()))
    events = [eb("order.placed", cid, t0, order_id=f"o{i}", amount=100) for i in range(100)]
    errors = []

    def score(ev):
        try:
            rt.invoke("ScoreFunction", ev)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=score, args=(ev,)) for ev in events]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    c = profile(cid)
    assert c.score_at == t0
    assert c.score == 100 * 50
    assert c.loyalty == 100 * (30 + 10)
    assert c.orders == 100 and c.spend == 100 * 100
    assert scoring.current_score(c, at=t0) == pytest.approx(5000)


def test_same_event_delivered_twice_scores_once(rt, tap):
    cid = new_contact()
    t0 = clock.now()
    ev = eb("page.viewed", cid, t0, path="/pricing")
    assert rt.invoke("ScoreFunction", ev)["status"] == "scored"
    assert rt.invoke("ScoreFunction", ev)["status"] == "duplicate"
    bus.publish({"Source": "funnelpilot", "DetailType": "page.viewed", "Detail": json.dumps(ev["detail"]),
                 "EventBusName": "funnelpilot"})
    assert rt.settle()
    assert scoring.current_score(profile(cid), at=t0) == pytest.approx(21)  # pricing 20 + page view 1
    assert not tap.events("score.changed")  # a change of score is no bus event (segments.SCORED)


def test_decay_after_30_days_matches_the_half_life(rt):
    cid = new_contact()
    t0 = clock.now()
    rt.invoke("ScoreFunction", eb("page.viewed", cid, t0, path="/pricing"))
    c = profile(cid)
    assert scoring.current_score(c, at=t0) == pytest.approx(21)
    assert scoring.current_score(c, at=t0 + 30 * DAY) == pytest.approx(21 * 2 ** (-30 * DAY / H))
    assert scoring.current_score(c, at=t0 + 14 * DAY) == pytest.approx(10.5)


def test_rebase_after_many_half_lives_keeps_the_formula(rt):
    cid = new_contact()
    t0 = clock.now()
    t1 = t0 + 400 * DAY  # beyond REBASE_HALF_LIVES: the reference epoch moves to t1
    rt.invoke("ScoreFunction", eb("page.viewed", cid, t0, path="/pricing"))
    rt.invoke("ScoreFunction", eb("email.clicked", cid, t1, human=True, message_id="m1"))
    c = profile(cid)
    assert c.score_at == pytest.approx(t1)
    expected = 21 * 2 ** (-(t1 + DAY - t0) / H) + 5 * 2 ** (-DAY / H)
    assert scoring.current_score(c, at=t1 + DAY) == pytest.approx(expected)


def test_machine_clicks_and_unmatched_conditions_score_nothing(rt):
    cid = new_contact()
    t0 = clock.now()
    publish("email.clicked", cid, t0, human=False, reason="scanner", message_id="m1")
    publish("page.viewed", cid, t0, path="/blog/x")
    assert rt.settle()
    assert scoring.current_score(profile(cid), at=t0) == pytest.approx(1)  # the page view only


def test_cap_per_day_limits_a_rule(rt):
    cid = new_contact()
    t0 = clock.now()
    cap = next(r.cap_per_day for r in scoring.settings().rules if r.id == "email-click")
    results = [rt.invoke("ScoreFunction", eb("email.clicked", cid, t0 + i, human=True, message_id=f"m{i}"))
               for i in range(cap + 2)]
    assert [r["points"]["capture"] for r in results] == [5] * cap + [0, 0]
    assert scoring.current_score(profile(cid), at=t0) == pytest.approx(5 * cap, rel=1e-4)
    nxt = rt.invoke("ScoreFunction", eb("email.clicked", cid, t0 + DAY, human=True, message_id="next-day"))
    assert nxt["points"]["capture"] == 5


def test_threshold_crossing_emits_lead_qualified_once_per_crossing(rt, tap):
    cid = new_contact()
    t0 = clock.now()
    publish("page.viewed", cid, t0, path="/pricing")       # 21
    publish("page.viewed", cid, t0 + 1, path="/pricing")   # 42
    assert rt.settle()
    assert tap.events("lead.qualified") == []
    publish("page.viewed", cid, t0 + 2, path="/pricing")   # 63 >= 50: crossing
    assert rt.settle()
    publish("email.clicked", cid, t0 + 3, human=True, message_id="m1")  # still above
    assert rt.settle()
    [q] = tap.events("lead.qualified")
    assert q["detail"]["contact_id"] == cid and q["detail"]["score"] >= 50
    publish("contact.unsubscribed", cid, t0 + 4)            # falls below
    assert rt.settle()
    for i in range(3):                                      # the next day: rises again
        publish("page.viewed", cid, t0 + DAY + i, path="/pricing")
    publish("order.placed", cid, t0 + DAY + 5, order_id="o1", amount=10)
    assert rt.settle()
    assert len(tap.events("lead.qualified")) == 1  # a customer now: capture track is for prospects


def test_a_running_episode_is_extended_without_a_failing_write(rt, tap, monkeypatch):
    """Above the threshold, the read already made tells the crossing's claim would fail (a
    failed conditional write is billed): only the episode's extension is written."""
    cid = new_contact()
    t0 = clock.now()
    for i in range(3):
        publish("page.viewed", cid, t0 + i, path="/pricing")  # 63: qualified
    assert rt.settle() and len(tap.events("lead.qualified")) == 1
    until = profile(cid).qualified_until
    flag_writes, original = [], botocore.client.BaseClient._make_api_call

    def record(client, operation, params):
        if operation == "UpdateItem" and "qualified_until" in params.get("UpdateExpression", ""):
            try:
                result = original(client, operation, params)
            except ClientError as exc:
                flag_writes.append(exc.response["Error"]["Code"])
                raise
            flag_writes.append("ok")
            return result
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    assert rt.invoke("ScoreFunction", eb("email.clicked", cid, t0 + 3, human=True, message_id="m1"))["crossed"] == []
    assert flag_writes == ["ok"] and profile(cid).qualified_until > until  # 5 more points: a later end
    flag_writes.clear()
    rt.invoke("ScoreFunction", eb("page.viewed", cid, t0 + 4, path="/blog"))
    assert "ConditionalCheckFailedException" not in flag_writes
    monkeypatch.undo()
    assert len(tap.events("lead.qualified")) == 1


def test_falling_below_by_decay_then_rising_qualifies_again(rt, tap):
    cid = new_contact()
    t0 = clock.now()
    for i in range(3):
        publish("page.viewed", cid, t0 + i, path="/pricing")
    assert rt.settle()
    assert len(tap.events("lead.qualified")) == 1
    t1 = t0 + 30 * DAY  # 63 decays to ~14: below 50 without any event
    for i in range(3):
        publish("page.viewed", cid, t1 + i, path="/pricing")
    assert rt.settle()
    assert len(tap.events("lead.qualified")) == 2
    assert not rt.errors


def test_award_from_a_funnel_step_counts_once_and_decays_like_rules(rt, tap):
    cid = new_contact()
    t0 = clock.now()
    rt.invoke("ScoreFunction", eb("page.viewed", cid, t0 - 14 * DAY, path="/pricing"))  # 21 -> ~10.5 now
    awarded = scoring.award(cid, 10, once_key="exec-1#Score +10")
    assert (awarded.status, awarded.points["capture"]) == ("scored", 10)
    assert scoring.award(cid, 10, once_key="exec-1#Score +10").status == "duplicate"
    assert scoring.current_score(profile(cid)) == pytest.approx(10.5 + 10, rel=0.03)  # the clock runs on


def test_a_retry_carrying_another_time_still_scores_once(rt):
    cid = new_contact()
    t0 = clock.now()
    first = eb("order.placed", cid, t0, event_id="order-A-1", order_id="A-1", amount=20)
    retry = eb("order.placed", cid, t0 + 60, event_id="order-A-1", order_id="A-1", amount=20)
    assert rt.invoke("ScoreFunction", first)["status"] == "scored"
    assert rt.invoke("ScoreFunction", retry)["status"] == "duplicate"
    assert profile(cid).orders == 1


def test_loyalty_crossing_emits_customer_vip_once(rt, tap):
    cid = new_contact()
    t0 = clock.now()
    publish("order.placed", cid, t0, order_id="o1", amount=500)       # loyalty 30 + 50
    assert rt.settle()
    assert tap.events("customer.vip") == []
    publish("order.placed", cid, t0 + 60, order_id="o2", amount=500)  # 160 >= 150
    publish("order.placed", cid, t0 + 120, order_id="o3", amount=20)
    assert rt.settle()
    [vip] = tap.events("customer.vip")
    assert vip["detail"]["contact_id"] == cid and vip["detail"]["track"] == "loyalty"
    assert tap.events("lead.qualified") == []  # a customer, not a prospect


def _writes(monkeypatch) -> list[tuple[str, list[str]]]:
    """(operation, the sort keys it writes) of every DynamoDB write made from now on."""
    writes, original = [], botocore.client.BaseClient._make_api_call

    def record(client, operation, params):
        if operation == "TransactWriteItems":
            writes.append((operation, [next(iter(i.values())).get("Key", next(iter(i.values())).get("Item"))["sk"]["S"]
                                       for i in params["TransactItems"]]))
        elif operation in ("PutItem", "UpdateItem", "DeleteItem"):
            writes.append((operation, [params.get("Key", params.get("Item"))["sk"]["S"]]))
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    return writes


def test_one_transaction_per_scored_event_and_a_lone_marker_for_one_that_changes_nothing(rt, monkeypatch):
    cid = new_contact()
    t0 = clock.now()
    day = clock.iso(t0)[:10]
    writes = _writes(monkeypatch)
    click = eb("email.clicked", cid, t0, human=True, message_id="m1", link="0")
    assert rt.invoke("ScoreFunction", click)["points"]["capture"] == 5
    # the marker (also the activity log entry) and the profile, which holds the day's counters (the cap and the once_per)
    assert ("TransactWriteItems", [f"SCORED#{click['detail']['event_id']}", PROFILE]) in writes
    stored = rt.client("dynamodb").get_item(TableName="ContactsTable", Key={"pk": {"S": cid}, "sk": {"S": PROFILE}})["Item"]
    assert {k.count("#"): v for k, v in stored.items() if k.startswith(f"cap#{day}#email-click")} == {
        2: {"N": "1"}, 3: {"N": "1"}}
    writes.clear()
    again = eb("email.clicked", cid, t0 + 5, human=True, message_id="m1", link="0")  # the same link: once_per
    assert rt.invoke("ScoreFunction", again)["points"]["capture"] == 0
    assert writes[-1] == ("PutItem", [f"SCORED#{again['detail']['event_id']}"])  # logged, nothing else written
    assert not any(PROFILE in keys for op, keys in writes if op == "TransactWriteItems" and len(keys) == 2)
    writes.clear()
    other = eb("contact.reactivated", cid, t0 + 6)  # no rule: the marker alone
    assert rt.invoke("ScoreFunction", other)["status"] == "no_rule"
    assert [w for w in writes if w[1] != ["ACTIVITY"]] == [("PutItem", [f"SCORED#{other['detail']['event_id']}"])]
    assert rt.invoke("ScoreFunction", other)["status"] == "duplicate"
    log = rt.client("dynamodb").get_item(TableName="ContactsTable", Key={
        "pk": {"S": cid}, "sk": {"S": f"SCORED#{other['detail']['event_id']}"}})["Item"]
    assert log["kind"] == {"S": "contact.reactivated"} and "capture_points" not in log
    assert scoring.current_score(profile(cid), at=t0) == pytest.approx(5)


def test_a_capped_out_event_makes_no_transaction_and_the_profile_keeps_three_days_of_counters(rt, monkeypatch):
    cid = new_contact()
    t0 = clock.now()
    cap = next(r.cap_per_day for r in scoring.settings().rules if r.id == "email-click")
    for i in range(cap):
        assert rt.invoke("ScoreFunction", eb("email.clicked", cid, t0 + i, human=True, message_id=f"m{i}"))["points"]["capture"] == 5
    writes = _writes(monkeypatch)
    over = eb("email.clicked", cid, t0 + cap, human=True, message_id="over")
    assert rt.invoke("ScoreFunction", over)["points"]["capture"] == 0
    # the consistent read of the profile showed the cap full: the marker alone, no transaction to fail
    assert [w for w in writes if w[1] != ["ACTIVITY"]] == [("PutItem", [f"SCORED#{over['detail']['event_id']}"])]

    def days() -> set[str]:
        stored = rt.client("dynamodb").get_item(TableName="ContactsTable", Key={"pk": {"S": cid}, "sk": {"S": PROFILE}})["Item"]
        return {k.split("#")[1] for k in stored if k.startswith("cap#")}

    day = [clock.iso(t0 + n * DAY)[:10] for n in range(4)]
    assert rt.invoke("ScoreFunction", eb("email.clicked", cid, t0 + 2 * DAY, human=True, message_id="d2"))["points"]["capture"] == 5
    assert days() == {day[0], day[2]}  # a late event of day 0 still finds its counters
    assert rt.invoke("ScoreFunction", eb("email.clicked", cid, t0 + 3 * DAY, human=True, message_id="d3"))["points"]["capture"] == 5
    assert days() == {day[2], day[3]}  # removed by the write of a day CAP_DAYS later


def test_an_event_that_changes_nothing_for_a_contact_erased_meanwhile_leaves_nothing(rt, monkeypatch):
    cid = new_contact()
    ev = eb("contact.reactivated", cid, clock.now())
    erase = rt.client("dynamodb").delete_item  # erased between scoring's read and its put (the profile goes first)
    monkeypatch.setattr(scoring.erasure, "incarnation", lambda c: erase(
        TableName="ContactsTable", Key={"pk": {"S": c}, "sk": {"S": PROFILE}}) and None)
    assert rt.invoke("ScoreFunction", ev)["status"] == "unknown_contact"
    assert rt.client("dynamodb").query(TableName="ContactsTable", KeyConditionExpression="pk = :c",
                                       ExpressionAttributeValues={":c": {"S": cid}})["Items"] == []
