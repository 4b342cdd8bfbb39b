"""functions/funnel_router: enter (entry rules), goal/exit (stop and convert), resume (task
tokens of wait_for steps), driven with the payloads the template's rules send, on a small
hand-written state machine whose first state waits for a task token."""
import json
import uuid

import pytest

from conftest import funnel_counts
from funnelpilot import funnels
from funnelpilot.models import PROFILE, Contact

HOUR, DAY = 3600, 86400
STEP_ARN = "arn:aws:lambda:us-east-1:123456789012:function:SequenceStepFunction"
COMMON = {"funnel.$": "$.funnel", "contact_id.$": "$.contact_id", "execution.$": "$$.Execution.Id",
          "state.$": "$$.State.Name"}
DEFINITION = {
    "StartAt": "Wait for the order",
    "States": {
        "Wait for the order": {
            "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
            "Parameters": {"FunctionName": STEP_ARN, "Payload": {
                **COMMON, "action": "wait_for", "token.$": "$$.Task.Token", "timeout_seconds": HOUR,
                "condition": {"event": "order.placed", "where": {"order_id": "o-1"}}}},
            "TimeoutSeconds": HOUR, "ResultPath": "$.last", "Next": "Tag buyer"},
        "Tag buyer": {"Type": "Task", "Resource": STEP_ARN, "ResultPath": "$.last", "End": True,
                      "Parameters": {**COMMON, "action": "tag", "tag": "buyer", "complete": True}},
    },
}


def create_machine(rt, name: str, definition: dict) -> str:
    """A hand-written funnel: it runs as a shipped funnel's role (which may invoke the step
    function), and the router is granted on it what the template grants it on every funnel."""
    arn = rt.client("stepfunctions").create_state_machine(name=name, definition=json.dumps(definition),
                                                          roleArn=rt.role_of("WelcomeFunnel"))["stateMachineArn"]
    rt.policies.grant(rt.role_of("FunnelRouterFunction"), ["states:StartExecution", "states:DescribeStateMachine"],
                      [arn])
    rt.policies.grant(rt.role_of("FunnelRouterFunction"), [
        "states:DescribeExecution", "states:StopExecution", "states:GetExecutionHistory"],
        [arn.replace(":stateMachine:", ":execution:") + ":*"])
    return arn


@pytest.fixture
def machine(rt):
    sfn = rt.client("stepfunctions")
    arn = create_machine(rt, "funnelpilot-demo", DEFINITION)
    yield arn
    for ex in sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING")["executions"]:
        sfn.stop_execution(executionArn=ex["executionArn"])


def person(name="ann") -> str:
    cid = f"c{name}{uuid.uuid4().hex[:8]}"
    Contact(cid, PROFILE, email=f"{name}@example.com", status="active").save()
    return cid


def event(cid, detail_type="contact.subscribed", event_id=None, **fields) -> dict:
    return {"detail-type": detail_type, "detail": {"event_id": event_id or uuid.uuid4().hex, "contact_id": cid,
                                                   "occurred_at": "2026-03-02T10:00:00Z", **fields}}


def enter(rt, machine, ev, rule="once_per_trigger", reenter_after=0):
    result = rt.invoke("FunnelRouterFunction", {"route": "enter", "funnel": "demo", "entry_rule": rule,
                                                "reenter_after": reenter_after, "state_machine": machine,
                                                "event": ev})
    assert rt.settle()
    return result["execution"]


def route(rt, payload):
    result = rt.invoke("FunnelRouterFunction", payload)
    assert rt.settle()
    return result


def order(rt, cid, order_id="o-1"):
    return route(rt, {"route": "resume", "event": event(cid, "order.placed", order_id=order_id)})


def runs(rt, machine, cid) -> dict[str, str]:
    """name -> status of the contact's executions (names carry no contact id: the input does)."""
    sfn = rt.client("stepfunctions")
    return {e["name"]: e["status"] for e in sfn.list_executions(stateMachineArn=machine)["executions"]
            if json.loads(sfn.describe_execution(executionArn=e["executionArn"])["input"])["contact_id"] == cid}


def name_of(cid, entry_id) -> str:
    """The execution name of an entry (a profile saved by person() has no incarnation)."""
    return funnels.execution_name(cid, "demo", entry_id, "")


def entry(rt, cid) -> dict:
    found = rt.client("dynamodb").get_item(TableName="ContactsTable",
                                           Key={"pk": {"S": cid}, "sk": {"S": "FUNNEL#demo"}})["Item"]
    return {k: next(iter(v.values())) for k, v in found.items()}


def entered(rt) -> int:
    """Entries of the demo funnel counted by the router (one contact per test)."""
    return funnel_counts(rt, "demo").get("entered", 0)


def test_once_per_contact_enters_once_ever_and_a_duplicate_event_starts_one_execution(rt, tap, machine):
    cid = person()
    first = event(cid)
    assert enter(rt, machine, first, "once_per_contact") == name_of(cid, "1")
    assert enter(rt, machine, first, "once_per_contact") is None  # at-least-once delivery
    assert runs(rt, machine, cid) == {name_of(cid, "1"): "RUNNING"}
    order(rt, cid)
    assert runs(rt, machine, cid) == {name_of(cid, "1"): "SUCCEEDED"}
    assert enter(rt, machine, event(cid), "once_per_contact") is None  # a re-signup: never again
    assert entered(rt) == 1 and funnel_counts(rt, "demo")["completed"] == 1
    assert entry(rt, cid)["status"] == "completed" and entry(rt, cid)["entries"] == "1"


def test_once_per_trigger_not_while_in_the_funnel_nor_within_reenter_after(rt, tap, machine):
    cid = person()
    first = event(cid)
    name = enter(rt, machine, first, reenter_after=DAY)
    assert name == name_of(cid, first["detail"]["event_id"][:32]) and cid not in name
    assert enter(rt, machine, first, reenter_after=DAY) is None
    assert enter(rt, machine, event(cid), reenter_after=DAY) is None  # still in the funnel
    order(rt, cid)
    assert runs(rt, machine, cid) == {name: "SUCCEEDED"}
    assert enter(rt, machine, event(cid), reenter_after=DAY) is None  # within a day of the last entry
    assert rt.advance(DAY)
    again = enter(rt, machine, event(cid), reenter_after=DAY)
    assert again and runs(rt, machine, cid) == {name: "SUCCEEDED", again: "RUNNING"}
    assert entered(rt) == 2 and entry(rt, cid)["entries"] == "2"


def test_always_replaces_a_running_execution_but_not_for_a_duplicate(rt, tap, machine):
    cid = person()
    one, two = event(cid), event(cid)
    first = enter(rt, machine, one, "always")
    second = enter(rt, machine, two, "always")
    assert enter(rt, machine, two, "always") is None
    assert runs(rt, machine, cid) == {first: "ABORTED", second: "RUNNING"}
    assert entry(rt, cid)["trigger_event_id"] == two["detail"]["event_id"]
    assert entered(rt) == 2


def test_a_goal_stops_the_execution_and_converts_on_the_current_state(rt, tap, machine):
    cid = person()
    trigger = event(cid, "order.placed")
    name = enter(rt, machine, trigger)
    goal = {"route": "goal", "funnel": "demo", "kind": "goal"}
    assert route(rt, {**goal, "event": trigger}) == {"step": None}  # the event that started it is not its goal
    assert runs(rt, machine, cid) == {name: "RUNNING"}
    purchase = event(cid, "order.placed")
    assert route(rt, {**goal, "event": purchase}) == {"step": "Wait for the order"}
    assert runs(rt, machine, cid) == {name: "ABORTED"}
    assert route(rt, {**goal, "event": purchase}) == {"step": None}  # idempotent
    converted = [e["detail"] for e in tap.events("funnel.converted") if e["detail"]["contact_id"] == cid]
    assert len({c["event_id"] for c in converted}) == 1
    assert converted[0]["step"] == "Wait for the order" and converted[0]["goal"] == "order.placed"
    assert entry(rt, cid)["status"] == "converted" and entry(rt, cid)["step"] == "Wait for the order"
    # counted by the router, once (its status change is the guard): the funnel's row and the step's, no marker
    assert rt.settle() and funnel_counts(rt, "demo")["conversions"] == 1
    rows = rt.client("dynamodb").scan(TableName="MetricsTable")["Items"]
    assert [int(r["conversions"]["N"]) for r in rows if r["sk"]["S"].endswith("#STEP#Wait for the order")] == [1]
    assert [r for r in rows if r["pk"]["S"].startswith("SEEN#")] == []  # the metrics function never saw it


def test_an_exit_event_completes_with_outcome_exited(rt, tap, machine):
    cid = person()
    name = enter(rt, machine, event(cid))
    route(rt, {"route": "goal", "funnel": "demo", "kind": "exit", "event": event(cid, "contact.unsubscribed")})
    assert runs(rt, machine, cid) == {name: "ABORTED"}
    assert route(rt, {"route": "goal", "funnel": "demo", "kind": "exit", "event": event(cid, "contact.unsubscribed")}
                 ) == {"step": None}  # a second exit event: nothing running, nothing counted
    assert entry(rt, cid)["status"] == "exited" and funnel_counts(rt, "demo")["completed"] == 1


def test_resume_sends_the_stored_task_token_only_for_a_matching_event(rt, tap, machine):
    cid = person()
    name = enter(rt, machine, event(cid))
    [wait] = [i for i in rt.client("dynamodb").query(
        TableName="ContactsTable", KeyConditionExpression="pk = :c AND begins_with(sk, :w)",
        ExpressionAttributeValues={":c": {"S": cid}, ":w": {"S": "WAIT#demo#"}})["Items"]]
    assert wait["detail_type"]["S"] == "order.placed" and int(wait["expires_at"]["N"]) >= 1772445600 + HOUR + DAY
    assert order(rt, cid, order_id="o-2") == {"resumed": 0}  # `where` does not match
    assert route(rt, {"route": "resume", "event": event(cid, "page.viewed", order_id="o-1")}) == {"resumed": 0}
    assert runs(rt, machine, cid) == {name: "RUNNING"}
    assert order(rt, cid) == {"resumed": 1}
    assert runs(rt, machine, cid) == {name: "SUCCEEDED"}
    assert order(rt, cid) == {"resumed": 0}  # the wait item is gone
    profile = rt.client("dynamodb").get_item(TableName="ContactsTable",
                                             Key={"pk": {"S": cid}, "sk": {"S": "PROFILE"}})["Item"]
    assert profile["tags"]["SS"] == ["buyer"]
    assert entry(rt, cid)["status"] == "completed"
    assert funnel_counts(rt, "demo")["completed"] == 1


def test_a_token_of_an_ended_wait_is_ignored(rt, machine):
    cid = person()
    name = enter(rt, machine, event(cid))
    rt.client("stepfunctions").stop_execution(executionArn=f"{machine.replace(':stateMachine:', ':execution:')}:"
                                              f"{name}")
    assert rt.settle()
    assert order(rt, cid) == {"resumed": 0}


def test_a_click_made_before_the_wait_began_resumes_it_at_once(rt, tap):
    """wait_for checks the condition right after storing its token (the click may come first)."""
    sfn = rt.client("stepfunctions")
    clicked = {"clicked": {"email": "welcome-1", "link": "/guide", "states": ["Send welcome-1"]}}
    definition = {"StartAt": "Wait for a click", "States": {"Wait for a click": {
        "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken", "TimeoutSeconds": HOUR,
        "Parameters": {"FunctionName": STEP_ARN, "Payload": {**COMMON, "action": "wait_for", "condition": clicked,
                                                             "token.$": "$$.Task.Token", "timeout_seconds": HOUR}},
        "ResultPath": "$.last", "End": True}}}
    arn = create_machine(rt, "funnelpilot-clicks", definition)
    cid, trigger = person(), event(person())
    trigger["detail"]["contact_id"] = cid
    name = name_of(cid, trigger["detail"]["event_id"][:32])
    execution = f"{arn.replace(':stateMachine:', ':execution:')}:{name}"
    sent = rt.invoke("SequenceStepFunction", {"action": "send", "funnel": "demo", "template": "welcome-1",
                                              "contact_id": cid, "execution": execution, "state": "Send welcome-1"})
    assert rt.advance(600)
    from funnelpilot import tokens
    resp = rt.http("GET", f"/c/{tokens.sign('c', cid, sent['message_id'], '0')}", headers={
        "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"})
    assert resp.status == 302 and rt.settle()
    assert enter(rt, arn, trigger) == name
    assert sfn.describe_execution(executionArn=execution)["status"] == "SUCCEEDED"


def test_an_erasure_between_the_profile_read_and_the_claim_leaves_no_entry_and_no_execution(rt, tap, machine,
                                                                                           monkeypatch):
    """The claim is one conditional write (no transaction with the profile): a person erased after
    the router read their profile gets their claim deleted again when the router reads it back."""
    from funnelpilot import erasure, gdpr
    from funnelpilot_local.aws_rules import principal

    cid = person("eve")
    real, reads = erasure.live, []

    def live_then_erased(*args, **kwargs):
        found = real(*args, **kwargs)
        if not reads:
            with principal.acting_as(None):  # the erasure (its own function) runs while this entry goes on to the claim
                gdpr.erase(cid)
        reads.append(found)
        return found

    monkeypatch.setattr(erasure, "live", live_then_erased)
    assert enter(rt, machine, event(cid)) is None
    assert reads[0] is not None and reads[1] is None  # read as alive, then found gone after the claim
    assert "Item" not in rt.client("dynamodb").get_item(TableName="ContactsTable",
                                                        Key={"pk": {"S": cid}, "sk": {"S": "FUNNEL#demo"}})
    assert runs(rt, machine, cid) == {} and entered(rt) == 0


def test_a_process_dying_between_the_claim_and_the_start_is_entered_by_the_retry_once(rt, tap, machine, monkeypatch):
    """The claim marks the entry running at once (no second write once started): the trigger's retry finds
    its claim, learns from Step Functions that the execution was never started, and starts it."""
    cid = person()
    first = event(cid)
    monkeypatch.setattr(funnels, "_release", lambda *a: None)  # the process dies: nothing undoes the claim
    monkeypatch.setattr(funnels, "_start", lambda *a: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError):
        enter(rt, machine, first, "once_per_contact")
    assert entry(rt, cid)["status"] == "running" and runs(rt, machine, cid) == {}
    monkeypatch.undo()
    assert enter(rt, machine, first, "once_per_contact") == name_of(cid, "1")  # Lambda's retry of the event
    assert enter(rt, machine, first, "once_per_contact") is None  # a duplicate: the execution exists
    assert runs(rt, machine, cid) == {name_of(cid, "1"): "RUNNING"} and entered(rt) == 1
    assert entry(rt, cid)["entries"] == "1"
