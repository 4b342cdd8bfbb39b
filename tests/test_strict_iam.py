"""Strict IAM (funnelpilot_local.aws_rules.iam): every AWS call a function or state machine
makes is allowed or denied by that principal's own role, as SAM will generate it, and by the
IAM reference's resource types. The fixture ``rt`` fails any test during which a call was
denied, so the whole suite is this check; these tests pin the rule itself."""
import json

import pytest
from botocore.exceptions import ClientError
from conftest import entered_states, executions
from test_funnels import DAY, HOUR, MINUTE, click, message, messages, publish, signup

from funnelpilot import clock
from funnelpilot_local.aws_rules import iam, principal
from funnelpilot_local.runtime import ROOT, Runtime

WAITS = {  # funnel -> (the email its wait_for awaits, a link of it that satisfies the wait)
    "delivery": ("delivery-1", "/download/"),
    "segmentation": ("segmentation-1", "/topics/"),
    "reengagement": ("reengage-1", "http"),
    "ascension": ("ascension-1", "/courses/core"),
}


def test_a_call_outside_the_role_is_denied_as_aws_denies_it(rt):
    ddb = rt.client("dynamodb")
    with principal.acting_as(rt.role_of("ReportFunction")):  # dynamodb:Query on the metrics table only
        ddb.query(TableName="MetricsTable", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "x"}})
        with pytest.raises(ClientError) as denied:
            ddb.put_item(TableName="MetricsTable", Item={"pk": {"S": "x"}, "sk": {"S": "y"}})
    error = denied.value.response["Error"]
    assert error["Code"] == "AccessDeniedException"
    assert "ReportFunctionRole" in error["Message"] and "dynamodb:PutItem" in error["Message"]
    assert "table/MetricsTable" in error["Message"]
    assert [(d.action, d.resource) for d in rt.denied] == [
        ("dynamodb:PutItem", "arn:aws:dynamodb:us-east-1:123456789012:table/MetricsTable")]
    rt.denied.clear()


def test_the_runtime_and_tests_act_unchecked_but_every_handler_is_checked(rt):
    ddb = rt.client("dynamodb")
    ddb.put_item(TableName="MetricsTable", Item={"pk": {"S": "x"}, "sk": {"S": "y"}})  # no principal: allowed
    assert rt.role_of("SignupFunction").endswith(":role/SignupFunctionRole")
    assert rt.role_of("WelcomeFunnel").endswith(":role/WelcomeFunnelRole")  # executions run as their machine
    assert rt.denied == []


def test_actions_without_a_resource_type_need_star_and_resources_come_from_the_reference():
    assert iam.requests("stepfunctions", "SendTaskSuccess", {"taskToken": "t", "output": "{}"}, {}) == [
        ("states:SendTaskSuccess", "*")]
    arn = "arn:aws:states:us-east-1:123456789012:execution:funnelpilot-welcome:abc-1"
    assert iam.requests("stepfunctions", "DescribeExecution", {"executionArn": arn}, {}) == [
        ("states:DescribeExecution", arn)]
    assert iam.requests("dynamodb", "Query", {"TableName": "T", "IndexName": "gsi1"}, {}) == [
        ("dynamodb:Query", "arn:aws:dynamodb:us-east-1:123456789012:table/T/index/gsi1")]
    assert iam.requests("dynamodb", "TransactWriteItems", {"TransactItems": [
        {"Put": {"TableName": "A", "Item": {}}}, {"ConditionCheck": {"TableName": "B", "Key": {}}}]}, {}) == [
        ("dynamodb:PutItem", "arn:aws:dynamodb:us-east-1:123456789012:table/A"),
        ("dynamodb:ConditionCheckItem", "arn:aws:dynamodb:us-east-1:123456789012:table/B")]
    ses = iam.requests("ses", "SendRawEmail", {"Source": "Shop <hello@example.com>", "ConfigurationSetName": "C",
                                               "RawMessage": {}}, {"identities": {"example.com"}})
    assert ses == [("ses:SendRawEmail", "arn:aws:ses:us-east-1:123456789012:identity/example.com"),
                   ("ses:SendRawEmail", "arn:aws:ses:us-east-1:123456789012:configuration-set/C")]
    scoped = iam.Statement("Allow", ("states:SendTaskSuccess",), (), (
        "arn:aws:states:us-east-1:123456789012:stateMachine:funnelpilot-*",), ())
    assert not scoped.matches("states:SendTaskSuccess", "*")  # a scoped grant never allows it
    with pytest.raises(iam.StrictModeGap):
        iam.requests("kinesis", "PutRecord", {"StreamName": "s"}, {})  # no ARN rule: refused, not waved through


@pytest.mark.parametrize("funnel", sorted(WAITS))
def test_every_wait_for_resumes_on_a_click_within_the_same_simulated_second(rt, funnel):
    """A wait_for is a task token resumed by the click's handler chain (click -> router ->
    SendTaskSuccess) under strict IAM: the execution moves on before the clock does."""
    template, link = WAITS[funnel]
    cid = signup(rt, f"{funnel}@example.com", lead_magnet="seo-ebook" if funnel == "delivery" else None)
    if funnel != "delivery":
        [welcome] = executions(rt, "welcome")  # its later emails would take this funnel's daily slot
        rt.client("stepfunctions").stop_execution(executionArn=welcome["executionArn"])
        assert rt.advance(DAY + MINUTE)  # past the frequency cap welcome-1 took
        if funnel == "ascension":
            publish(rt, "order.placed", cid, order_id="o-1", amount=49, currency="EUR")
        else:
            publish(rt, "funnel.handoff", cid, to=funnel, **{"from": "test"})
    for _hour in range(72):  # ascension waits a day before its email
        [ex] = [e for e in executions(rt, funnel) if json.loads(rt.client("stepfunctions").describe_execution(
            executionArn=e["executionArn"])["input"])["contact_id"] == cid]  # names carry no contact id
        # the send and its wait for a click are one Task: sent, it waits there
        waiting = [s for s in entered_states(rt, ex["executionArn"]) if s == f"Send {template}"]
        if waiting and any(m["template"] == template and m["status"] == "sent" for m in messages(rt, cid)):
            break
        assert rt.advance(HOUR)
    assert waiting, f"{funnel} never reached its wait_for"
    assert rt.advance(10 * MINUTE)  # past the delivery window: a click this soon would count as a machine
    assert message(rt, cid, template)["status"] == "sent", message(rt, cid, template)
    before = clock.now()
    assert click(rt, cid, template, link) == 302
    assert rt.settle()
    assert clock.now() == before
    states = entered_states(rt, ex["executionArn"])
    after_wait = states[states.index(waiting[-1]) + 1:]
    assert after_wait, f"{funnel} still waits after the click"
    assert rt.denied == []


def test_the_execution_role_is_checked_for_its_lambda_invokes(tmp_path):
    """A state machine whose role may not invoke its Task's function fails at that Task
    (AccessDeniedException) as on AWS: strict IAM covers executions, not only handlers."""
    welcome = ("DefinitionUri: infra/statemachines/welcome.asl.json\n      DefinitionSubstitutions:\n"
               "        SequenceStepArn: !GetAtt SequenceStepFunction.Arn\n      Policies:\n"
               "        - LambdaInvokePolicy: { FunctionName: !Ref SequenceStepFunction }\n")
    text = (ROOT / "template.yaml").read_text().replace(welcome, welcome.replace(
        "FunctionName: !Ref SequenceStepFunction", "FunctionName: !Ref BulkFunction"))
    assert "FunctionName: !Ref BulkFunction }" in text  # the welcome funnel's role
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("functions", "infra", "layers"):
        (root / name).symlink_to(ROOT / name)
    (root / "template.yaml").write_text(text)
    from conftest import START

    with Runtime(root, stepped=True, start=START, state_dir=tmp_path / "local") as rt:
        resp = rt.http("POST", "/signup", json_body={"email": "eve@example.com", "consent": True, "list": "test-single"})
        assert resp.status == 202
        assert rt.settle()
        [ex] = executions(rt, "welcome")
        history = rt.client("stepfunctions").get_execution_history(executionArn=ex["executionArn"])["events"]
        failed = [e for e in history if e["type"] == "LambdaFunctionFailed" or e["type"] == "TaskFailed"]
        assert failed and "is not authorized to perform: lambda:InvokeFunction" in json.dumps(failed[0], default=str)
        assert {(d.principal.rsplit("/", 1)[-1], d.action) for d in rt.denied} == {
            ("WelcomeFunnelRole", "lambda:InvokeFunction")}


@pytest.mark.parametrize("allowed", [True, False])
def test_a_schedule_puts_its_event_as_its_target_role(rt, tap, allowed):
    """EventBridge Scheduler acts as the schedule's target role (repurchase reminders use
    SchedulerRole): without events:PutEvents on the bus the event never arrives."""
    role = rt.template.attributes[("SchedulerRole", "Arn")]
    if not allowed:
        rt.policies.roles[role] = []
    at = clock.iso(clock.now() + 60).removesuffix("Z")
    rt.client("scheduler").create_schedule(
        Name="test-reminder", GroupName=rt.template.physical["RepurchaseScheduleGroup"],
        ScheduleExpression=f"at({at})", FlexibleTimeWindow={"Mode": "OFF"},
        Target={"Arn": rt.template.attributes[("EventBus", "Arn")], "RoleArn": role,
                "Input": json.dumps({"event_id": "r-1", "contact_id": "c1", "occurred_at": at + "Z"}),
                "EventBridgeParameters": {"DetailType": "customer.repurchase_due", "Source": "funnelpilot"}})
    assert rt.advance(2 * MINUTE)
    delivered = tap.events("customer.repurchase_due")
    if allowed:
        assert len(delivered) == 1 and rt.denied == []
    else:
        assert delivered == []
        assert [(d.principal, d.action) for d in rt.denied] == [(role, "events:PutEvents")]
        rt.denied.clear()
