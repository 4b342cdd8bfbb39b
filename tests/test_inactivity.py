"""contact.inactive from time-bucketed keys, fired by the daily schedule on the simulated clock."""

import pytest

from test_scoring import new_contact, profile, publish

from funnelpilot import clock, inactivity

DAY = 86_400


def test_daily_job_emits_contact_inactive_for_todays_bucket_only(rt, tap):
    rt.schedules.clear()  # invoked by hand below, for a chosen day
    now = clock.now()
    quiet, engaged, back = new_contact("quiet"), new_contact("engaged"), new_contact("back")
    publish("page.viewed", quiet, now - 29 * DAY, path="/")                   # inactive from tomorrow
    publish("email.clicked", engaged, now - 2 * DAY, human=True, message_id="m")
    publish("page.viewed", back, now - 29 * DAY, path="/")
    publish("email.opened", back, now - 1 * DAY, human=True, message_id="m2")  # came back: moved on
    publish("email.opened", engaged, now - 40 * DAY, human=True, message_id="m3")  # late, older: ignored
    publish("email.opened", quiet, now - 3 * DAY, human=False, reason="apple_mpp", message_id="m4")  # machine
    assert rt.settle()
    # the job of the day after tomorrow reads tomorrow's bucket (a day is read once it is over)
    clock.advance_to(now + 2 * DAY)
    run_on = clock.iso(now + 2 * DAY)[:10]
    result = rt.invoke("ReengageScanFunction", {"scheduled_time": f"{run_on}T10:00:00Z"})
    assert result["inactive"] == 1
    [ev] = tap.events("contact.inactive")
    assert ev["detail"]["contact_id"] == quiet and ev["detail"]["inactive_days"] == 30
    assert rt.settle()
    assert "dormant" in profile(quiet).segments  # contact.inactive re-evaluates last_activity_days
    assert "dormant" not in (profile(engaged).segments or set())
    # repeated run of the same day: same event id (consumers dedupe), cursor prevents a re-scan
    assert rt.invoke("ReengageScanFunction", {"scheduled_time": f"{run_on}T10:00:00Z"})["inactive"] == 0


def test_the_schedule_fires_on_the_simulated_clock(rt, tap):
    now = clock.now()
    cid = new_contact("sleepy")
    publish("page.viewed", cid, now - 29 * DAY, path="/")
    assert rt.settle()
    assert rt.advance(3 * DAY)  # the daily 10:00 job runs on the simulated clock
    [ev] = tap.events("contact.inactive")
    assert ev["detail"]["contact_id"] == cid
    assert inactivity.last_activity(cid) == pytest.approx(now - 29 * DAY, abs=1)


def test_a_day_with_nobody_turning_inactive_writes_no_cursor(rt, tap):
    rt.schedules.clear()  # invoked by hand below
    now = clock.now()
    cid = new_contact("later")
    publish("page.viewed", cid, now - 28 * DAY, path="/")  # inactive in two days
    assert rt.settle()
    ddb = rt.client("dynamodb")
    for offset in (0, 1):  # two empty buckets: nothing written, the cursor stays as it was (none)
        run_on = clock.iso(now + offset * DAY)[:10]
        assert rt.invoke("ReengageScanFunction", {"scheduled_time": f"{run_on}T10:00:00Z"})["inactive"] == 0
        assert "Item" not in ddb.get_item(TableName="ContactsTable", Key=inactivity.JOB_KEY)
    run_on = clock.iso(now + 3 * DAY)[:10]  # the job of the day after: reads the bucket of the day before
    assert rt.invoke("ReengageScanFunction", {"scheduled_time": f"{run_on}T10:00:00Z"})["inactive"] == 1
    cursor = ddb.get_item(TableName="ContactsTable", Key=inactivity.JOB_KEY)["Item"]
    assert cursor["day"]["S"] == clock.iso(now + 2 * DAY)[:10]
    [ev] = tap.events("contact.inactive")
    assert ev["detail"]["contact_id"] == cid
