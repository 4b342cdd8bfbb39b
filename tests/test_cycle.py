"""The journey the seeds describe is a cycle (issue 18): welcome -> segmentation -> engagement, silence,
re-engagement, and back through segmentation to a new need. One person lives it over weeks of the
stepped clock, acting only through the real routes (signup, click redirects); the daily inactivity job
fires on its schedule. Every hand-off must end in an entry or a recorded refusal (event + counter)."""
import json

from conftest import funnel_counts
from test_funnels import DAY, HOUR, messages, profile, sent, signup

from funnelpilot import tokens
from funnelpilot_local.runtime import Runtime

FUNNELS = ("welcome", "delivery", "segmentation", "engagement", "ascension", "reengagement", "insiders")
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


def click_latest(rt, cid: str, template: str, link_part: str) -> None:
    """A person's click on a link of the latest email of ``template`` they got."""
    m = [m for m in messages(rt, cid) if m["template"] == template and m["status"] == "sent"][-1]
    links = [link if isinstance(link, str) else link["url"] for link in json.loads(m["links"])]
    index = next(i for i, url in enumerate(links) if link_part in url)
    resp = rt.http("GET", f"/c/{tokens.sign('c', cid, m['message_id'], str(index))}",
                   headers={"user-agent": BROWSER}, source_ip="198.51.100.23")
    assert resp.status == 302
    assert rt.settle()


def journeys(rt: Runtime, cid: str) -> list[tuple[str, str, str, dict]]:
    """(funnel, status, last state, input) of every execution of the contact, in the order they started."""
    sfn = rt.client("stepfunctions")
    found = []
    for arn in rt.state_machine_arns():
        funnel = arn.rsplit("-", 1)[-1]
        for ex in sfn.list_executions(stateMachineArn=arn)["executions"]:
            described = sfn.describe_execution(executionArn=ex["executionArn"])
            given = json.loads(described["input"])
            if given.get("contact_id") != cid:
                continue
            states = [e["stateEnteredEventDetails"]["name"] for e in
                      sfn.get_execution_history(executionArn=ex["executionArn"])["events"]
                      if "stateEnteredEventDetails" in e]
            found.append((ex["startDate"], funnel, described["status"], states[-1], given))
    return [row[1:] for row in sorted(found, key=lambda row: row[0])]


def assert_no_handoff_lost(rt, tap, cid: str) -> None:
    """Every hand-off of the person started an execution or was refused with its event and counter."""
    handoffs = {e["detail"]["event_id"]: e["detail"] for e in tap.events("funnel.handoff")
                if e["detail"]["contact_id"] == cid}
    started = {given["event_id"] for *_, given in journeys(rt, cid) if given["trigger"] == "funnel.handoff"}
    refused = {e["detail"]["event_id"]: e["detail"] for e in tap.events("funnel.refused")
               if e["detail"]["contact_id"] == cid}
    assert handoffs
    for event_id, handoff in handoffs.items():
        refusal = tokens.digest_id("fr", handoff["to"], event_id)
        assert (event_id in started) != (refusal in refused), handoff  # one or the other, never neither
    by_funnel = {}
    for r in refused.values():
        by_funnel[r["funnel"]] = by_funnel.get(r["funnel"], 0) + 1
    for funnel in FUNNELS:
        assert funnel_counts(rt, funnel).get("refused", 0) == by_funnel.get(funnel, 0), funnel


def test_one_person_lives_the_whole_cycle_and_comes_back_to_a_new_topic(rt, tap):
    cid = signup(rt, "cyc@example.com")  # Monday 2 March, 10:00: welcome-1
    assert rt.advance(6 * DAY + HOUR)  # welcome hands off on day 5; segmentation-1 goes on day 6
    click_latest(rt, cid, "segmentation-1", "/topics/seo")  # the topic: seo, and on to engagement
    assert rt.advance(12 * DAY)  # engagement's five emails, read by nobody
    assert profile(rt, cid)["properties"]["M"]["interest"]["S"] == "seo"
    # silence: 30 days after the last click the daily job (10:00 UTC) finds them inactive; reengage-1 goes
    # within its 3-hour spread
    assert rt.advance(19 * DAY + 3 * HOUR)
    assert "reengage-1" in sent(rt, cid)
    click_latest(rt, cid, "reengage-1", "/stay")  # back: segmentation again
    assert rt.advance(DAY + HOUR)
    click_latest(rt, cid, "segmentation-1", "/topics/ads")  # a new need
    assert rt.advance(DAY + HOUR)
    rows = journeys(rt, cid)
    assert [(f, s, last) for f, s, last, _ in rows] == [
        ("welcome", "SUCCEEDED", "Opened welcome-2?"),  # no: it hands off
        ("segmentation", "SUCCEEDED", "Customer is True?"),  # no: to engagement
        ("engagement", "SUCCEEDED", "Tag nurtured"),
        ("reengagement", "SUCCEEDED", "Go to segmentation"),
        ("segmentation", "SUCCEEDED", "Customer is True?"),  # no: to engagement
        ("engagement", "RUNNING", "Wait 2 days"),  # engagement-1 sent
    ]
    assert [given["trigger"] for *_, given in rows] == ["contact.subscribed", "funnel.handoff", "funnel.handoff",
                                                        "contact.inactive", "funnel.handoff", "funnel.handoff"]
    contact = profile(rt, cid)
    assert contact["status"]["S"] == "active" and contact["properties"]["M"]["interest"]["S"] == "ads"
    assert {"interest-seo", "interest-ads", "nurtured"} <= set(contact["tags"]["SS"])
    assert sent(rt, cid).count("engagement-1") == 2
    assert_no_handoff_lost(rt, tap, cid)


def test_a_quiet_newcomer_who_clicks_reengagement_lands_in_segmentation_within_30_days(rt, tap):
    """The common case the issue found dropped: never engaged after signing up, so segmentation was
    entered less than 30 days before the re-engagement click (its reenter_after); the hand-off enters."""
    cid = signup(rt, "new@example.com")
    assert rt.advance(31 * DAY + 4 * HOUR)  # welcome, segmentation (day 5, no click), the daily job: day 31 + spread
    assert "reengage-1" in sent(rt, cid)
    click_latest(rt, cid, "reengage-1", "/stay")
    assert rt.advance(DAY + HOUR)
    click_latest(rt, cid, "segmentation-1", "/topics/email")
    assert rt.advance(DAY + HOUR)
    rows = journeys(rt, cid)
    assert [(f, s, last) for f, s, last, _ in rows] == [
        ("welcome", "SUCCEEDED", "Opened welcome-2?"),  # no: it hands off
        ("segmentation", "SUCCEEDED", "Exit (no topic chosen)"),
        ("reengagement", "SUCCEEDED", "Go to segmentation"),
        ("segmentation", "SUCCEEDED", "Customer is True?"),  # no: to engagement
        ("engagement", "RUNNING", "Wait 2 days"),  # engagement-1 sent
    ]
    assert profile(rt, cid)["properties"]["M"]["interest"]["S"] == "email"
    assert_no_handoff_lost(rt, tap, cid)
