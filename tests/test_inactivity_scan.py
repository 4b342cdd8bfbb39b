"""The daily inactivity job at scale (issue 14 item 3): a page at a time with a cursor on the job item,
continued in a new invocation when its time runs short, never re-publishing the pages already done;
the journeys it starts spread over a window; and its hour outside the shipped funnels' quiet hours.
Through the real schedule, bus rule and reengagement funnel on the strict runtime."""
import re
from collections import Counter
from datetime import datetime, time, timezone

from conftest import START
from test_funnels import DAY, HOUR, messages, signup

from funnelpilot import bus, funnel_spec, inactivity, scoring
from funnelpilot_local import runtime
from funnelpilot_local.runtime import ROOT
from funnelpilot_local.template import load_yaml


def into_bucket(rt, cids: list[str], day_ts: float) -> None:
    """Their ACTIVITY items as the score function writes them, last engaged so that they turn
    inactive on the (UTC) day of ``day_ts``."""
    last_at = day_ts - scoring.settings().inactive_after_days * DAY
    for cid in cids:
        rt.client("dynamodb").put_item(TableName="ContactsTable", Item={
            "pk": {"S": cid}, "sk": {"S": "ACTIVITY"}, "last_at": {"N": str(last_at)},
            "gsi1pk": {"S": f"INACTIVE#{inactivity.inactive_on(last_at)}"}, "gsi1sk": {"S": cid}})


def test_a_bucket_of_many_pages_is_published_once_across_continuations_and_a_crash(rt, tap, monkeypatch):
    monkeypatch.setattr(inactivity, "PAGE_SIZE", 2)
    cids = [f"idle{i:02d}" for i in range(11)]  # 6 pages
    into_bucket(rt, cids, START)  # Monday's bucket: read by Tuesday's run

    def remaining(context):  # the invocation's clock: two pages take 130 s each of the 300 s timeout
        context.checks = getattr(context, "checks", 0) + 1
        return max(0, 300_000 - 130_000 * context.checks)

    monkeypatch.setattr(runtime.LambdaContext, "get_remaining_time_in_millis", remaining)
    real_publish, calls = bus.publish, Counter()

    def killed_after_the_fourth_page(*entries, **kwargs):  # a timeout between a page's PutEvents and its cursor
        real_publish(*entries, **kwargs)
        if any(e["DetailType"] == "contact.inactive" for e in entries):
            calls["pages"] += 1
            if calls["pages"] == 4:
                raise TimeoutError("Task timed out after 300.00 seconds")

    monkeypatch.setattr(inactivity.bus, "publish", killed_after_the_fourth_page)
    assert rt.advance(DAY + HOUR)  # Tuesday 10:00 UTC: the daily run, its continuations, the retry

    seen = Counter(e["detail"]["contact_id"] for e in tap.events("contact.inactive"))
    ids = {e["detail"]["contact_id"]: {x["detail"]["event_id"] for x in tap.events("contact.inactive")
                                       if x["detail"]["contact_id"] == e["detail"]["contact_id"]}
           for e in tap.events("contact.inactive")}
    assert set(seen) == set(cids)
    fourth = sorted(cids)[6:8]  # the page published by the invocation that was killed
    assert {cid: n for cid, n in seen.items() if n > 1} == {cid: 2 for cid in fourth}
    assert all(len(v) == 1 for v in ids.values())  # the re-published page carries the same event ids
    # the run: pages 1-3 (then its time ran short) -> its continuation: page 4, killed before its cursor ->
    # Lambda's retry of the continuation: from the cursor after page 3 (page 4 again), 5, 6.
    assert len(tap.events("inactivity.scan_continued")) == 1
    assert calls["pages"] == 7
    cursor = rt.client("dynamodb").get_item(TableName="ContactsTable", Key=inactivity.JOB_KEY)["Item"]
    assert cursor["day"]["S"] == "2026-03-02" and "open_key" not in cursor
    assert not rt.dead_letters
    # the next day's run reads Tuesday's (empty) bucket only
    assert rt.advance(DAY)
    assert len(tap.events("contact.inactive")) == len(cids) + 2


def test_the_reengagement_starts_it_causes_are_spread_over_the_window(rt, tap):
    cids = [signup(rt, f"quiet{i}@example.com") for i in range(8)]
    into_bucket(rt, cids, START)
    assert rt.advance(DAY - 1)  # just before Tuesday's 10:00 run
    run_at = START + DAY
    assert rt.advance(inactivity.SPREAD_SECONDS + HOUR)
    sends = {cid: [m for m in messages(rt, cid) if m["template"] == "reengage-1"] for cid in cids}
    at = sorted(datetime.fromisoformat(m["sent_at"]).timestamp() for [m] in sends.values())
    assert len(at) == len(cids) and len(set(at)) == len(cids)
    assert run_at <= at[0] and at[-1] < run_at + inactivity.SPREAD_SECONDS + 60
    assert at[-1] - at[0] > inactivity.SPREAD_SECONDS / 3  # not bunched at one instant
    # the same contact and day always get the same instant (a re-run publishes identical events)
    events = tap.events("contact.inactive")
    assert all(e["detail"]["not_before"] == datetime.fromtimestamp(
        inactivity.not_before(e["detail"]["contact_id"], "2026-03-02", run_at), timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ") for e in events)


def test_the_daily_run_and_its_spread_are_outside_the_shipped_quiet_hours():
    doc = load_yaml(ROOT / "template.yaml")
    schedule = doc["Resources"]["ReengageScanFunction"]["Properties"]["Events"]["Daily"]["Properties"]
    assert "ScheduleExpressionTimezone" not in schedule  # the cron is in UTC
    minute, hour = (int(x) for x in re.match(r"cron\((\d+) (\d+) ", schedule["ScheduleExpression"]).groups())
    first = hour * 60 + minute
    last = first + inactivity.SPREAD_SECONDS // 60
    assert last < 24 * 60  # the window ends the same day
    quiet = []
    for spec in funnel_spec.load_all(ROOT / "infra" / "funnels").values():
        if spec.quiet_hours and spec.timezone == "UTC":
            start, end = (time.fromisoformat(t) for t in spec.quiet_hours[:2])
            quiet.append((start.hour * 60 + start.minute, end.hour * 60 + end.minute))
    assert quiet, "the shipped funnels declare quiet hours"
    for start, end in quiet:  # a window over midnight (21:00-08:00): allowed from end to start
        assert end <= first and last <= start if start > end else last <= start or first >= end
