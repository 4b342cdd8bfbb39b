"""Strict mode, Step Functions: the history limit, the payload limit and StartExecution
throttling answer as AWS does (limits lowered so the tests run fast)."""
import json
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from funnelpilot import funnels
from funnelpilot.models import PROFILE, Contact
from funnelpilot_local.aws_rules import Rules
from funnelpilot_local.runtime import ROOT, Runtime

from conftest import START
from test_funnel_router import create_machine

SPIN = {"StartAt": "Spin", "States": {
    "Spin": {"Type": "Pass", "Next": "Again?"},
    "Again?": {"Type": "Choice", "Choices": [{"Variable": "$.stop", "BooleanEquals": True, "Next": "Done"}],
               "Default": "Spin"},
    "Done": {"Type": "Succeed"}}}
BULK_ARN = "arn:aws:lambda:us-east-1:123456789012:function:BulkFunction"


def runtime(tmp_path, **rules) -> Runtime:
    return Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local", rules=Rules(**rules))


def machine(rt, definition: dict, name: str = "strict-test", role: str = "BulkStateMachine") -> str:
    """A hand-written machine running as ``role`` (the bulk machine's may invoke BulkFunction)."""
    return rt.client("stepfunctions").create_state_machine(name=name, definition=json.dumps(definition),
                                                           roleArn=rt.role_of(role))["stateMachineArn"]


def run(rt, arn: str, payload: dict | None = None) -> dict:
    sfn = rt.client("stepfunctions")
    execution = sfn.start_execution(stateMachineArn=arn, name=uuid.uuid4().hex, input=json.dumps(payload or {}))
    deadline = time.monotonic() + 15
    while (d := sfn.describe_execution(executionArn=execution["executionArn"]))["status"] == "RUNNING":
        assert time.monotonic() < deadline, "execution still running"
        time.sleep(0.05)
    return d


def history(rt, arn: str) -> list[dict]:
    sfn, events, kwargs = rt.client("stepfunctions"), [], {"executionArn": arn}
    while True:
        page = sfn.get_execution_history(**kwargs)
        events += page["events"]
        if not page.get("nextToken"):
            return events
        kwargs["nextToken"] = page["nextToken"]


def code(exc_info) -> tuple[str, int]:
    response = exc_info.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_an_execution_fails_when_its_history_reaches_the_limit(tmp_path):
    with runtime(tmp_path, history_limit=120) as rt:
        arn = machine(rt, SPIN)
        d = run(rt, arn, {"stop": False})
        assert (d["status"], d["error"]) == ("FAILED", "States.Runtime")
        assert d["cause"] == "The execution reached the maximum number of history events (120)."
        events = history(rt, d["executionArn"])
        assert len(events) == 120 and [e["id"] for e in events] == list(range(1, 121))
        last = events[-1]
        assert last["type"] == "ExecutionFailed" and last["executionFailedEventDetails"] == {
            "error": "States.Runtime", "cause": "The execution reached the maximum number of history events (120)."}
        assert events[-2]["type"] not in ("ExecutionFailed", "ExecutionSucceeded")
        # the same machine, ending before the limit, succeeds
        assert run(rt, arn, {"stop": True})["status"] == "SUCCEEDED"


def test_payload_limit_on_start_execution_and_send_task_success(tmp_path):
    with runtime(tmp_path, payload_limit=1000) as rt:
        arn, sfn = machine(rt, SPIN), rt.client("stepfunctions")
        fits = json.dumps({"stop": True, "pad": "x" * (1000 - len('{"stop": true, "pad": ""}'))})
        assert len(fits) == 1000
        assert run(rt, arn, json.loads(fits))["status"] == "SUCCEEDED"
        with pytest.raises(ClientError) as refused:
            sfn.start_execution(stateMachineArn=arn, name="too-big", input=fits.replace('"pad": "', '"pad": "é'))
        assert code(refused) == ("ValidationException", 400)
        assert "Value at 'input' failed to satisfy constraint" in str(refused.value)
        assert not sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING")["executions"]
        with pytest.raises(ClientError) as refused:
            sfn.send_task_success(taskToken="any", output=json.dumps({"pad": "x" * 1000}))
        assert code(refused) == ("ValidationException", 400)
        assert "Value at 'output'" in str(refused.value)


def seed_members(rt, segment: str, n: int) -> None:
    ddb = rt.client("dynamodb")
    for i in range(n):
        cid = f"member{i:04d}"
        ddb.put_item(TableName="ContactsTable", Item={"pk": {"S": cid}, "sk": {"S": f"SEG#{segment}"},
                                                      "gsi1pk": {"S": f"SEG#{segment}"}, "gsi1sk": {"S": cid}})


def page_task(catch: list[str]) -> dict:
    """A Lambda task, the bulk page op (~13 bytes a member), catching ``catch``."""
    return {"StartAt": "Read members", "States": {
        "Read members": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
                         "Parameters": {"FunctionName": BULK_ARN, "Payload": {
                             "op": "page", "run_id": "r1", "chain": "c1", "status": "start", "cursor": None,
                             "pages": 0, "page_size.$": "$.n", "batch_size": 1000, "segment": "customers"}},
                         "Catch": [{"ErrorEquals": catch, "ResultPath": "$.error", "Next": "Caught"}], "End": True},
        "Caught": {"Type": "Pass", "End": True}}}


def test_a_lambda_result_over_the_limit_fails_the_state_with_data_limit_exceeded(tmp_path):
    with runtime(tmp_path, payload_limit=2000) as rt:
        seed_members(rt, "customers", 200)
        rt.client("dynamodb").put_item(TableName="ContactsTable", Item={  # a bulk run the page op belongs to
            "pk": {"S": "BULK#r1"}, "sk": {"S": "RUN"}, "chain": {"S": "c1"}})
        assert run(rt, machine(rt, page_task(["States.ALL"]), "small"), {"n": 20})["status"] == "SUCCEEDED"
        # States.ALL does not catch States.DataLimitExceeded: the execution fails
        d = run(rt, machine(rt, page_task(["States.ALL"]), "all"), {"n": 200})
        assert (d["status"], d["error"]) == ("FAILED", "States.DataLimitExceeded")
        assert "returned a result with a size exceeding the maximum number of bytes service limit" in d["cause"]
        failed = [e["taskFailedEventDetails"] for e in history(rt, d["executionArn"]) if e["type"] == "TaskFailed"]
        assert [(f["resourceType"], f["error"]) for f in failed] == [("lambda", "States.DataLimitExceeded")]
        # naming it catches it
        caught = run(rt, machine(rt, page_task(["States.DataLimitExceeded"]), "named"), {"n": 200})
        assert caught["status"] == "SUCCEEDED"
        assert json.loads(caught["output"])["error"]["Error"] == "States.DataLimitExceeded"


def test_start_execution_is_throttled_by_a_token_bucket_on_the_runtime_clock(tmp_path):
    with runtime(tmp_path, sfn_api_buckets={"StartExecution": (3, 2)}) as rt:
        arn, sfn = machine(rt, SPIN), rt.client("stepfunctions")
        for i in range(3):
            sfn.start_execution(stateMachineArn=arn, name=f"burst{i}", input='{"stop": true}')
        with pytest.raises(ClientError) as throttled:
            sfn.start_execution(stateMachineArn=arn, name="burst3", input='{"stop": true}')
        assert code(throttled) == ("ThrottlingException", 400)
        assert throttled.value.response["Error"]["Message"] == "Rate exceeded"
        assert rt.advance(1)  # 2 tokens a second
        for i in range(2):
            sfn.start_execution(stateMachineArn=arn, name=f"refill{i}", input='{"stop": true}')
        with pytest.raises(ClientError):
            sfn.start_execution(stateMachineArn=arn, name="refill2", input='{"stop": true}')
        assert rt.settle()
        assert {e["name"] for e in sfn.list_executions(stateMachineArn=arn)["executions"]} == {
            "burst0", "burst1", "burst2", "refill0", "refill1"}


def test_each_read_api_has_its_own_token_bucket(tmp_path):
    buckets = {"StartExecution": (5, 1), "DescribeExecution": (2, 1), "GetExecutionHistory": (1, 0.5)}
    with runtime(tmp_path, sfn_api_buckets=buckets) as rt:
        arn, sfn = machine(rt, SPIN), rt.client("stepfunctions")
        run_arn = sfn.start_execution(stateMachineArn=arn, name="one", input='{"stop": true}')["executionArn"]
        for _ in range(2):
            sfn.describe_execution(executionArn=run_arn)
        with pytest.raises(ClientError) as throttled:
            sfn.describe_execution(executionArn=run_arn)
        assert code(throttled) == ("ThrottlingException", 400)
        sfn.get_execution_history(executionArn=run_arn)  # its own bucket, not DescribeExecution's
        with pytest.raises(ClientError):
            sfn.get_execution_history(executionArn=run_arn, reverseOrder=True)
        assert rt.advance(1)  # DescribeExecution refills 1 a second, GetExecutionHistory half
        sfn.describe_execution(executionArn=run_arn)
        with pytest.raises(ClientError):
            sfn.get_execution_history(executionArn=run_arn)
        assert rt.advance(1)
        sfn.get_execution_history(executionArn=run_arn)


def test_a_throttled_start_leaves_no_entry_starting_and_the_retry_enters(tmp_path):
    with runtime(tmp_path, sfn_api_buckets={"StartExecution": (1, 0.001)}) as rt:
        arn = create_machine(rt, "funnelpilot-demo", {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}})
        sfn = rt.client("stepfunctions")
        sfn.start_execution(stateMachineArn=arn, name="takes-the-token", input='{"stop": true}')
        cid = f"c{uuid.uuid4().hex[:8]}"
        Contact(cid, PROFILE, email="ann@example.com", status="active").save()
        route = {"route": "enter", "funnel": "demo", "entry_rule": "once_per_contact", "state_machine": arn,
                 "event": {"detail-type": "contact.subscribed", "detail": {
                     "event_id": uuid.uuid4().hex, "contact_id": cid, "occurred_at": "2026-03-02T10:00:00Z"}}}
        with pytest.raises(ClientError) as throttled:
            rt.invoke("FunnelRouterFunction", route)  # an async target: Lambda retries the event
        assert code(throttled)[0] == "ThrottlingException"
        key = {"pk": {"S": cid}, "sk": {"S": "FUNNEL#demo"}}
        assert "Item" not in rt.client("dynamodb").get_item(TableName="ContactsTable", Key=key)
        assert rt.advance(1000)  # one token refilled
        assert rt.invoke("FunnelRouterFunction", route)["execution"] == funnels.execution_name(cid, "demo", "1", "")
        item = rt.client("dynamodb").get_item(TableName="ContactsTable", Key=key)["Item"]
        assert item["status"]["S"] in ("running", "completed") and item["entries"]["N"] == "1"
        assert rt.settle()
        assert sfn.describe_execution(executionArn=item["execution_arn"]["S"])["status"] == "SUCCEEDED"
