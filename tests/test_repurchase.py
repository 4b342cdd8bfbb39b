"""customer.repurchase_due from the customer's own rhythm, through EventBridge Scheduler on the simulated clock."""
from datetime import datetime, timezone

from test_scoring import new_contact, publish

from funnelpilot import clock
from funnelpilot.loyalty import repurchase
from funnelpilot.models import PROFILE, Contact

DAY = 86_400


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def test_due_from_the_mean_interval_and_from_the_season(rt):
    c = Contact("x", PROFILE, orders=3, first_order_at=ts("2026-01-01"), last_order_at=ts("2026-03-02"),
                order_months={"01", "02", "03"})
    when, basis = repurchase.due_at(c)
    assert basis == "interval" and when == ts("2026-03-02") + 30 * DAY - 3 * DAY
    seasonal = Contact("y", PROFILE, orders=3, first_order_at=ts("2024-11-10"), last_order_at=ts("2025-12-05"),
                       order_months={"11", "12"})
    assert repurchase.due_at(seasonal) == (ts("2026-11-01T09:00:00") - 3 * DAY, "season")
    around_new_year = Contact("z", PROFILE, orders=2, first_order_at=ts("2024-12-20"), last_order_at=ts("2026-01-10"),
                              order_months={"12", "01"})
    assert repurchase.due_at(around_new_year) == (ts("2026-12-01T09:00:00") - 3 * DAY, "season")
    assert repurchase.due_at(Contact("n", PROFILE, orders=1, first_order_at=1, last_order_at=1)) is None


def test_orders_schedule_one_reminder_that_fires_on_the_simulated_clock(rt, tap):
    cid = new_contact("buyer")
    now = clock.now()
    publish("order.placed", cid, now - 30 * DAY, order_id="o1", amount=40)
    assert rt.settle()
    [lapse] = rt.client("scheduler").list_schedules()["Schedules"]  # one order: no rhythm yet, a win-back date
    assert lapse["Name"].startswith("lapsed-")
    publish("order.placed", cid, now - DAY, order_id="o2", amount=60)
    assert rt.settle()
    [summary] = [s for s in rt.client("scheduler").list_schedules()["Schedules"] if s["Name"].startswith("repurchase-")]
    sched = rt.client("scheduler").get_schedule(Name=summary["Name"], GroupName=summary["GroupName"])
    due = now - DAY + 29 * DAY - 3 * DAY
    assert sched["ScheduleExpression"] == f"at({clock.iso(int(due))[:-1]})"
    assert sched["GroupName"] == "funnelpilot-repurchase"
    assert tap.events("customer.repurchase_due") == []
    assert rt.advance(due + 3600 - clock.now())  # past the due date on the simulated clock
    [ev] = tap.events("customer.repurchase_due")
    assert ev["detail"]["contact_id"] == cid and ev["detail"]["basis"] == "interval"
    assert ev["source"] == "funnelpilot"
    # one-time: the reminder is deleted after firing; the lapse date (2 x 29 days after the last order) is ahead
    assert [s["Name"] for s in rt.client("scheduler").list_schedules()["Schedules"]] == [lapse["Name"]]
    assert not rt.errors
