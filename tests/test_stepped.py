"""The stepped (virtual-time) mode of the local runtime: waits move only with rt.advance()."""
import json

import pytest

from funnelpilot import clock
from funnelpilot_local.runtime import ROOT, Runtime

START = 1_772_409_600.0  # 2026-03-02T00:00:00Z

MACHINE = {
    "StartAt": "Wait 1 day",
    "States": {
        "Wait 1 day": {"Type": "Wait", "Seconds": 86400, "Next": "Wait for a click"},
        "Wait for a click": {
            "Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
            "Parameters": {"QueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/tokens",
                           "MessageBody": {"token.$": "$$.Task.Token"}},
            "TimeoutSeconds": 7200, "Catch": [{"ErrorEquals": ["States.Timeout"], "Next": "Timed out"}],
            "Next": "Clicked"},
        "Clicked": {"Type": "Succeed"},
        "Timed out": {"Type": "Succeed"},
    },
}


@pytest.fixture
def srt(tmp_path):
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local") as runtime:
        yield runtime


def start(rt, name):
    sfn = rt.client("stepfunctions")
    rt.client("sqs").create_queue(QueueName="tokens")
    role = "arn:aws:iam::123456789012:role/stepped-test"  # strict IAM: the machine's role may send its tokens
    rt.policies.grant(role, ["sqs:SendMessage"], ["arn:aws:sqs:us-east-1:123456789012:tokens"])
    arn = sfn.create_state_machine(name="stepped-test", definition=json.dumps(MACHINE),
                                   roleArn=role)["stateMachineArn"] if name == "a" else \
        sfn.list_state_machines()["stateMachines"][-1]["stateMachineArn"]
    return sfn.start_execution(stateMachineArn=arn, name=name, input="{}")["executionArn"]


def states(rt, arn):
    events = rt.client("stepfunctions").get_execution_history(executionArn=arn)["events"]
    return [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]


def status(rt, arn):
    return rt.client("stepfunctions").describe_execution(executionArn=arn)["status"]


def test_waits_follow_the_virtual_clock(srt):
    a, b = start(srt, "a"), start(srt, "b")
    assert srt.settle()
    assert clock.now() == START and states(srt, a) == ["Wait 1 day"]
    assert srt.advance(86399) and states(srt, a) == ["Wait 1 day"]
    assert srt.advance(1) and states(srt, a) == ["Wait 1 day", "Wait for a click"]
    # a contact "clicks": the task token resumes execution b at once, without time passing
    sqs = srt.client("sqs")
    url = sqs.get_queue_url(QueueName="tokens")["QueueUrl"]
    tokens = [json.loads(m["Body"])["token"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
              ["Messages"]]
    assert len(tokens) == 2
    srt.client("stepfunctions").send_task_success(taskToken=tokens[1], output="{}")
    assert srt.settle()
    assert [status(srt, a), status(srt, b)].count("SUCCEEDED") == 1
    assert srt.advance(7199) and "RUNNING" in (status(srt, a), status(srt, b))
    assert srt.advance(1) and status(srt, a) == status(srt, b) == "SUCCEEDED"
    assert sorted([states(srt, a)[-1], states(srt, b)[-1]]) == ["Clicked", "Timed out"]
    assert clock.now() == START + 86400 + 7200


def test_welcome_funnel_runs_in_stepped_time(srt):
    srt.http("POST", "/signup", json_body={"email": "ann@example.com", "consent": True, "list": "test-single"})
    assert srt.settle()
    assert len(list(srt.outbox.glob("*.eml"))) == 1
    assert clock.now() == START
