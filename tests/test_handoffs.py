"""Hand-offs never vanish (issue 18, item 1): a ``funnel.handoff`` into a funnel enters, or is refused
with its reason, and the refusal shows three ways - a ``funnel.refused`` event, the funnel report's
counter and a line in the contact's timeline (``funnelpilot contacts show``). Everything goes through
the router's real rule (or its exact InputTransformer payload) on the strict runtime."""
import json
import re

import pytest
from conftest import executions, funnel_counts
from test_funnels import DAY, HOUR, MINUTE, journey, publish, signup
from test_lookup import cli_run

from funnelpilot import bus, report
from funnelpilot.funnel_spec import parse

ADMIN = {"x-api-key": "local-admin-key"}


def refusals(tap, cid) -> list[dict]:
    """The distinct ``funnel.refused`` events of a contact (a duplicate delivery has the same event id)."""
    return list({e["detail"]["event_id"]: e["detail"] for e in tap.events("funnel.refused")
                 if e["detail"]["contact_id"] == cid}.values())


def refused_items(rt, cid) -> list[dict]:
    items = rt.client("dynamodb").query(TableName="ContactsTable", KeyConditionExpression="pk = :c AND "
                                        "begins_with(sk, :r)", ExpressionAttributeValues={
                                            ":c": {"S": cid}, ":r": {"S": "REFUSED#"}})["Items"]
    return [{k: next(iter(v.values())) for k, v in i.items()} for i in items]


def machine_arn(rt, funnel: str) -> str:
    return next(a for a in rt.state_machine_arns() if a.endswith(f"-{funnel}"))


def handoff_payload(rt, funnel: str, detail: dict, **setting) -> dict:
    """What the funnel's Handoff rule's InputTransformer hands the router (template.yaml, as the runtime
    put the rule's target), with ``setting`` overriding its fields (e.g. another ``handoff`` mode)."""
    [target] = rt.client("events").list_targets_by_rule(Rule=f"FunnelRouterFunction{funnel.capitalize()}Handoff",
                                                        EventBusName="funnelpilot")["Targets"]
    template = target["InputTransformer"]["InputTemplate"]
    payload = json.loads(template.replace('"<detailType>"', '"funnel.handoff"').replace("<detail>", json.dumps(detail)))
    return {**payload, **setting}


def test_a_refused_handoff_is_an_event_a_report_counter_and_a_timeline_line_once(rt, tap):
    cid = signup(rt, "ref@example.com")
    assert rt.advance(HOUR)
    publish(rt, "funnel.handoff", cid, to="segmentation", **{"from": "test"})
    assert journey(rt, "segmentation", cid)[0] == "RUNNING"
    # a second hand-off while the first journey runs: segmentation is once_per_trigger, not twice at once
    again = bus.event("funnel.handoff", cid, to="segmentation", **{"from": "reengagement"})
    bus.publish(again)
    bus.publish(again)  # delivered twice (at least once): recorded and counted once
    assert rt.settle()
    [refused] = refusals(tap, cid)
    assert (refused["funnel"], refused["reason"], refused["from"]) == ("segmentation", "already_in_funnel",
                                                                       "reengagement")
    assert len(executions(rt, "segmentation")) == 1
    assert funnel_counts(rt, "segmentation") == {"entered": 1, "refused": 1, "refused_already_in_funnel": 1}
    [item] = refused_items(rt, cid)
    assert (item["funnel"], item["reason"], item["from"]) == ("segmentation", "already_in_funnel", "reengagement")
    # the report: JSON (GET /funnels/{id}/report) and the table `funnelpilot report` prints
    rep = rt.http("GET", "/funnels/segmentation/report", headers=ADMIN).json()
    assert rep["refused"] == 1 and rep["refused_by_reason"] == {"already_in_funnel": 1}
    assert "refused: already_in_funnel 1" in report.table(rep)
    # the contact's timeline: the card and `funnelpilot contacts show`
    card = rt.http("POST", "/contacts/lookup", json_body={"email": "ref@example.com"}, headers=ADMIN).json()
    [line] = [e for e in card["timeline"] if e["event"] == "refused"]
    assert (line["funnel"], line["reason"], line["from"]) == ("segmentation", "already_in_funnel", "reengagement")
    code, text = cli_run(rt, "show", "ref@example.com")
    assert code == 0 and re.search(r"refused\s+segmentation\s+already_in_funnel, handed off by reengagement", text)


def test_a_handoff_enters_within_reenter_after_unless_the_funnel_respects_it(rt, tap):
    cid = signup(rt, "back@example.com")
    assert rt.advance(10 * DAY + HOUR)  # welcome hands off on day 5; segmentation-1 not clicked: exit on day 10
    assert journey(rt, "segmentation", cid)[1][-1] == "Exit (no topic chosen)"
    # 6 days later, well within segmentation's reenter_after (30 days): the default `handoff: enter` enters
    publish(rt, "funnel.handoff", cid, to="segmentation", **{"from": "reengagement"})
    assert len(executions(rt, "segmentation")) == 2 and refusals(tap, cid) == []
    assert rt.advance(DAY + MINUTE)
    assert [e["detail"]["template"] for e in tap.events("email.sent")
            if e["detail"]["contact_id"] == cid].count("segmentation-1") == 2
    # a funnel declaring `entry: {..., handoff: respect_reentry}` refuses it (the router's payload for it)
    assert rt.advance(5 * DAY)
    detail = json.loads(bus.event("funnel.handoff", cid, to="segmentation", **{"from": "bulk"})["Detail"])
    result = rt.invoke("FunnelRouterFunction", handoff_payload(rt, "segmentation", detail, handoff="respect_reentry"))
    assert result == {"execution": None, "refused": "reenter_after"}
    assert rt.settle()
    [refused] = refusals(tap, cid)
    assert (refused["reason"], refused["from"]) == ("reenter_after", "bulk")
    assert funnel_counts(rt, "segmentation")["refused_reenter_after"] == 1
    assert len(executions(rt, "segmentation")) == 2


def test_once_per_contact_and_people_no_marketing_may_reach_are_refused_by_name(rt, tap):
    cid = signup(rt, "once@example.com")  # welcome: once ever
    publish(rt, "funnel.handoff", cid, to="welcome", **{"from": "bulk"})
    gone = signup(rt, "gone@example.com")
    assert rt.advance(HOUR)
    [path] = [p for p in rt.outbox.glob("*.eml") if "gone@example.com" in p.read_text()]
    unsubscribe = re.search(r"<http://127\.0\.0\.1:3000(/u/[^>]+)>", path.read_text()).group(1)
    assert rt.http("POST", unsubscribe, form={"List-Unsubscribe": "One-Click"}).status == 200
    assert rt.settle()
    publish(rt, "funnel.handoff", gone, to="segmentation", **{"from": "import"})
    assert [r["reason"] for r in refusals(tap, cid)] == ["once_per_contact"]
    assert [r["reason"] for r in refusals(tap, gone)] == ["unsubscribed"]
    assert len(executions(rt, "welcome")) == 2 and executions(rt, "segmentation") == []  # no execution started
    assert funnel_counts(rt, "welcome")["refused_once_per_contact"] == 1
    assert funnel_counts(rt, "segmentation") == {"refused": 1, "refused_unsubscribed": 1}


def test_a_handoff_into_a_draining_funnel_is_refused_and_recorded_like_any(rt, tap):
    """A funnel being removed takes nobody in (README "Changing a live funnel"): its Handoff rule's payload
    says ``draining``; the hand-off is refused by name, once, with its event, counters and timeline line."""
    cid = signup(rt, "drain@example.com")
    detail = json.loads(bus.event("funnel.handoff", cid, to="segmentation", **{"from": "welcome"})["Detail"])
    payload = handoff_payload(rt, "segmentation", detail, draining=True)
    assert rt.invoke("FunnelRouterFunction", payload) == {"execution": None, "refused": "draining"}
    assert rt.invoke("FunnelRouterFunction", payload)["refused"] == "draining"  # a duplicate: recorded once
    assert rt.settle()
    assert [(r["reason"], r["from"]) for r in refusals(tap, cid)] == [("draining", "welcome")]
    assert funnel_counts(rt, "segmentation") == {"refused": 1, "refused_draining": 1}
    assert [i["reason"] for i in refused_items(rt, cid)] == ["draining"] and executions(rt, "segmentation") == []


def test_an_entered_handoff_makes_the_calls_an_entry_always_made(rt, aws_calls):
    """The common path keeps its call count: a refusal's writes happen only on a refusal. (The claim is one
    conditional UpdateItem, read back through the profile: 1 WRU and a read instead of a 4-WRU transaction; it
    marks the entry running, so after StartExecution the entry is only read, to find an erasure meanwhile.)"""
    cid = signup(rt, "calls@example.com")
    detail = json.loads(bus.event("funnel.handoff", cid, to="segmentation", **{"from": "welcome"})["Detail"])
    payload = handoff_payload(rt, "segmentation", detail)
    aws_calls.clear()
    assert rt.invoke("FunnelRouterFunction", payload)["refused"] is None
    assert aws_calls == ["dynamodb:GetItem", "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:GetItem",
                         "stepfunctions:StartExecution", "dynamodb:GetItem", "dynamodb:UpdateItem"]
    aws_calls.clear()  # a duplicate delivery of it: no second journey, and no refusal either
    assert rt.invoke("FunnelRouterFunction", payload) == {"execution": None, "refused": None}
    assert "dynamodb:UpdateItem" in aws_calls and "stepfunctions:StartExecution" not in aws_calls
    assert "dynamodb:TransactWriteItems" not in aws_calls
    assert refused_items(rt, cid) == []


@pytest.mark.parametrize("entry,problem", [
    ("{rule: once_per_trigger, reenter_after: 30 days, handoff: always}", "entry.handoff 'always': `enter`"),
    ("{rule: once_per_trigger, handoff: respect_reentry}", "entry.handoff: respect_reentry needs a reenter_after"),
])
def test_the_handoff_setting_is_validated_with_a_clear_error(tmp_path, entry, problem):
    (tmp_path / "emails").mkdir()
    path = tmp_path / "funnels" / "x.yaml"
    path.parent.mkdir()
    path.write_text(f"id: x\ntrigger: order.placed\nentry: {entry}\nsteps:\n  - tag: buyer\n")
    funnel, errors = parse(path)
    assert funnel is None and any(f"x.yaml:3: {problem}" in e for e in errors), errors


def test_the_handoff_setting_reaches_the_router_rule(tmp_path):
    (tmp_path / "emails").mkdir()
    path = tmp_path / "funnels" / "x.yaml"
    path.parent.mkdir()
    path.write_text("id: x\nentry: {rule: once_per_trigger, reenter_after: 7 days, handoff: respect_reentry}\n"
                    "steps:\n  - tag: buyer\n")
    funnel, errors = parse(path)
    assert errors == [] and funnel.handoff == "respect_reentry"
    from funnelpilot_local.compiler import template_block

    [rule] = [line for line in template_block({"x": funnel}).splitlines() if "InputTemplate" in line]
    assert '"route": "handoff"' in rule and '"handoff": "respect_reentry"' in rule and '"reenter_after": 604800' in rule
