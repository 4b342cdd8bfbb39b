"""The local runtime runs SQS-triggered functions as Lambda does (event source mappings on the
runtime clock: batches, partial failures, visibility timeouts, delays, redrive, MaximumConcurrency),
and strict mode refuses SQS requests and stacks as AWS refuses them. Each test builds a small stack
of its own (a queue, its dead-letter queue, a worker and a sender) in a tmp dir."""
import hashlib
import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from conftest import START

from funnelpilot_local.aws_rules import Rules
from funnelpilot_local.aws_rules.cloudformation import StackError
from funnelpilot_local.runtime import Runtime

WORKER = '''
import json
import os

import boto3

from funnelpilot import clock

CALLS = []  # every invocation: {"at": simulated time, "records": [...]}
_sqs = boto3.client("sqs")


def handler(event, context):
    CALLS.append({"at": clock.now(), "records": event["Records"]})
    failures = []
    for record in event["Records"]:
        body = json.loads(record["body"])
        if body.get("raise"):
            raise RuntimeError("the worker failed")
        if "respond" in body:
            return body["respond"]
        if "hide" in body:  # come back in that many seconds: a failure with its own visibility timeout
            _sqs.change_message_visibility(QueueUrl=os.environ["WORK_QUEUE_URL"], ReceiptHandle=record["receiptHandle"],
                                           VisibilityTimeout=body["hide"])
            failures.append({"itemIdentifier": record["messageId"]})
        if body.get("fail"):
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}
'''

SENDER = '''
import json
import os

import boto3

_sqs = boto3.client("sqs")


def handler(event, context):
    return _sqs.send_message(QueueUrl=os.environ["WORK_QUEUE_URL"], MessageBody=json.dumps(event))["MessageId"]
'''


WORKER_POLICIES = "Policies: [SQSPollerPolicy: {QueueName: !GetAtt WorkQueue.QueueName}]"  # ChangeMessageVisibility
SEND_POLICIES = "Policies: [SQSSendMessagePolicy: {QueueName: !GetAtt WorkQueue.QueueName}]"
EVENT = "{BatchSize: 5, FunctionResponseTypes: [ReportBatchItemFailures], ScalingConfig: {MaximumConcurrency: 2}}"


def template(timeout: int = 10, event: str = EVENT, worker: str = WORKER_POLICIES, sender: str = SEND_POLICIES,
             resources: str = "") -> str:
    """A stack of its own: WorkQueue (visibility 60 s, 3 receives then WorkDeadLetters), Worker
    draining it (``event``: the SQS event's properties but Queue, as a YAML flow mapping), Sender."""
    event = "{Queue: !GetAtt WorkQueue.Arn, " + event.strip().lstrip("{")
    return f"""Transform: AWS::Serverless-2016-10-31
Parameters:
  PublicUrl: {{Type: String, Default: "http://127.0.0.1:3000"}}
  SmsOriginationIdentity: {{Type: String, Default: ""}}
Globals:
  Function:
    Runtime: python3.12
    Environment: {{Variables: {{WORK_QUEUE_URL: !Ref WorkQueue}}}}
Resources:
  WorkQueue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 60
      RedrivePolicy: {{deadLetterTargetArn: !GetAtt WorkDeadLetters.Arn, maxReceiveCount: 3}}
  WorkDeadLetters:
    Type: AWS::SQS::Queue
    Properties: {{MessageRetentionPeriod: 1209600}}
  Worker:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/worker/
      Handler: app.handler
      Timeout: {timeout}
      {worker}
      Events:
        Work: {{Type: SQS, Properties: {event}}}
  Sender:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/sender/
      Handler: app.handler
      {sender}
{resources}"""


def stack(tmp_path: Path, name: str = "stack", rules: Rules | None = None, stepped: bool = True, **kwargs) -> Runtime:
    root = tmp_path / name
    for function, code in (("worker", WORKER), ("sender", SENDER)):
        (root / "functions" / function).mkdir(parents=True)
        (root / "functions" / function / "app.py").write_text(code)
    (root / "infra").mkdir()
    (root / "template.yaml").write_text(template(**kwargs))
    return Runtime(root, stepped=stepped, start=START if stepped else None, state_dir=root / ".local", rules=rules)


@pytest.fixture
def rt(tmp_path):
    with stack(tmp_path) as runtime:
        yield runtime
        assert not runtime.denied, "\n".join(map(str, runtime.denied))


def calls(rt) -> list[dict]:
    return rt.functions["Worker"].module.CALLS if rt.functions["Worker"].module else []


def bodies(call: dict) -> list[dict]:
    return [json.loads(r["body"]) for r in call["records"]]


def send(rt, *bodies: dict, **kwargs) -> list[str]:
    sqs = rt.client("sqs")
    return [sqs.send_message(QueueUrl=rt.template.physical["WorkQueue"], MessageBody=json.dumps(b), **kwargs)["MessageId"]
            for b in bodies]


# ---------------------------------------------------------------- delivery
def test_a_batch_arrives_in_lambdas_event_shape_and_is_deleted_once_processed(rt):
    ids = send(rt, *({"n": n} for n in range(6)))
    rt.client("sqs").send_message(QueueUrl=rt.template.physical["WorkQueue"], MessageBody='{"n": 6}', MessageAttributes={
        "kind": {"DataType": "String", "StringValue": "test"}, "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"}})
    assert rt.settle()
    assert [len(c["records"]) for c in calls(rt)] == [5, 2]  # BatchSize 5
    records = [r for c in calls(rt) for r in c["records"]]
    assert [json.loads(r["body"])["n"] for r in records] == list(range(7))
    first, last = records[0], records[-1]
    assert first["messageId"] == ids[0] and first["receiptHandle"]
    assert first["eventSource"] == "aws:sqs" and first["awsRegion"] == "us-east-1"
    assert first["eventSourceARN"] == "arn:aws:sqs:us-east-1:123456789012:WorkQueue"
    assert first["md5OfBody"] == hashlib.md5(first["body"].encode()).hexdigest()
    assert set(first["attributes"]) == {"ApproximateReceiveCount", "SentTimestamp", "SenderId",
                                        "ApproximateFirstReceiveTimestamp"}
    assert first["attributes"]["ApproximateReceiveCount"] == "1"
    assert first["attributes"]["SentTimestamp"] == str(int(START * 1000))  # the runtime clock, not the wall clock
    assert first["messageAttributes"] == {}
    assert last["messageAttributes"] == {
        "kind": {"stringValue": "test", "stringListValues": [], "binaryListValues": [], "dataType": "String"},
        "blob": {"binaryValue": "AAE=", "stringListValues": [], "binaryListValues": [], "dataType": "Binary"}}
    assert last["md5OfMessageAttributes"]
    assert rt.queue_messages("WorkQueue") == []  # every message processed was deleted
    assert rt.advance(3600) and len(calls(rt)) == 2  # and none comes back


def test_a_sender_function_puts_messages_the_worker_receives(rt):
    message_id = rt.invoke("Sender", {"from": "sender"})
    assert rt.settle()
    assert [(r["messageId"], json.loads(r["body"])) for c in calls(rt) for r in c["records"]] == [
        (message_id, {"from": "sender"})]


# ---------------------------------------------------------------- failures, visibility, redrive
def test_only_the_failed_items_of_a_batch_come_back_after_the_visibility_timeout(rt):
    send(rt, {"n": 0}, {"n": 1, "fail": True}, {"n": 2}, {"n": 3, "fail": True}, {"n": 4})
    assert rt.settle()
    assert [b["n"] for b in bodies(calls(rt)[0])] == [0, 1, 2, 3, 4]
    assert sorted(m["body"] for m in rt.queue_messages("WorkQueue")) == [
        '{"n": 1, "fail": true}', '{"n": 3, "fail": true}']  # in flight, invisible
    assert rt.advance(59.9) and len(calls(rt)) == 1
    assert rt.advance(0.1) and len(calls(rt)) == 2  # the queue's VisibilityTimeout: 60 s
    again = calls(rt)[1]
    assert [b["n"] for b in bodies(again)] == [1, 3]
    assert {r["attributes"]["ApproximateReceiveCount"] for r in again["records"]} == {"2"}
    assert again["at"] == START + 60


@pytest.mark.parametrize("respond", [
    "not an object", [1, 2], {"batchItemFailures": [{"itemIdentifier": "not-in-this-batch"}]},
    {"batchItemFailures": [{"itemIdentifier": ""}]}, {"batchItemFailures": [{"id": "wrong key"}]}])
def test_an_unreadable_batch_response_returns_the_whole_batch(rt, respond):
    send(rt, {"n": 0}, {"n": 1, "respond": respond})
    assert rt.settle() and len(calls(rt)) == 1
    assert len(rt.queue_messages("WorkQueue")) == 2
    assert rt.advance(60) and [b["n"] for b in bodies(calls(rt)[1])] == [0, 1]


@pytest.mark.parametrize("respond", [None, {}, {"batchItemFailures": []}, {"batchItemFailures": None}])
def test_an_empty_batch_response_is_a_complete_success(rt, respond):
    send(rt, {"n": 0}, {"n": 1, "respond": respond})
    assert rt.settle() and len(calls(rt)) == 1
    assert rt.queue_messages("WorkQueue") == []


def test_a_function_error_returns_the_whole_batch(rt):
    send(rt, {"n": 0}, {"n": 1, "raise": True})
    assert rt.settle()
    assert len(rt.queue_messages("WorkQueue")) == 2
    assert rt.advance(60) and len(calls(rt)) == 2 and [b["n"] for b in bodies(calls(rt)[1])] == [0, 1]


def test_a_handler_sets_its_own_visibility_timeout(rt):
    send(rt, {"n": 0, "hide": 300})
    assert rt.settle()
    assert rt.advance(299) and len(calls(rt)) == 1  # not the queue's 60 s: the 300 s the handler asked
    assert rt.advance(1) and len(calls(rt)) == 2


def test_after_max_receive_count_a_message_goes_to_the_dead_letter_queue(rt):
    send(rt, {"n": 0, "fail": True}, {"n": 1})
    assert rt.settle()
    assert rt.advance(10 * 60)
    received = [r["attributes"]["ApproximateReceiveCount"] for c in calls(rt) for r in c["records"]
                if json.loads(r["body"])["n"] == 0]
    assert received == ["1", "2", "3"]  # maxReceiveCount 3: received three times, then redriven
    assert rt.queue_messages("WorkQueue") == []
    dead = rt.queue_messages("WorkDeadLetters")
    assert [json.loads(m["body"]) for m in dead] == [{"n": 0, "fail": True}]


# ---------------------------------------------------------------- delays
def test_a_delayed_message_becomes_visible_on_the_stepped_clock(rt):
    send(rt, {"n": 0}, DelaySeconds=1)
    send(rt, {"n": 1}, DelaySeconds=900)
    assert rt.settle() and calls(rt) == []
    assert rt.advance(1)
    assert [(c["at"], bodies(c)) for c in calls(rt)] == [(START + 1, [{"n": 0}])]
    assert rt.advance(898) and len(calls(rt)) == 1
    assert rt.advance(1) and [bodies(c) for c in calls(rt)] == [[{"n": 0}], [{"n": 1}]]


def test_a_queues_default_delay_applies_to_every_message(rt):
    rt.client("sqs").set_queue_attributes(QueueUrl=rt.template.physical["WorkQueue"], Attributes={"DelaySeconds": "30"})
    send(rt, {"n": 0})
    assert rt.advance(29) and calls(rt) == []
    assert rt.advance(1) and len(calls(rt)) == 1


def test_the_template_sets_the_queue_attributes(tmp_path):
    with stack(tmp_path, resources="""  Delayed:
    Type: AWS::SQS::Queue
    Properties: {DelaySeconds: 30, VisibilityTimeout: 120, MaximumMessageSize: 2048}
""") as rt:
        attributes = rt.client("sqs").get_queue_attributes(QueueUrl=rt.template.physical["Delayed"],
                                                           AttributeNames=["All"])["Attributes"]
        assert (attributes["DelaySeconds"], attributes["VisibilityTimeout"], attributes["MaximumMessageSize"]) == (
            "30", "120", "2048")
        redrive = json.loads(rt.client("sqs").get_queue_attributes(
            QueueUrl=rt.template.physical["WorkQueue"], AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"])
        assert redrive == {"deadLetterTargetArn": "arn:aws:sqs:us-east-1:123456789012:WorkDeadLetters",
                           "maxReceiveCount": 3}
        with pytest.raises(ClientError):  # its own MaximumMessageSize
            rt.client("sqs").send_message(QueueUrl=rt.template.physical["Delayed"], MessageBody="x" * 2049)


# ---------------------------------------------------------------- concurrency
def test_maximum_concurrency_caps_the_batches_running_at_once(rt):
    send(rt, *({"n": n} for n in range(30)))  # 6 batches of 5, MaximumConcurrency 2
    assert rt.settle()
    assert len(calls(rt)) == 2  # the clock stands still: two invocations hold both slots
    assert rt.advance(1)
    starts = [c["at"] - START for c in calls(rt)]
    assert len(starts) == 6 and sorted(b["n"] for c in calls(rt) for b in bodies(c)) == list(range(30))
    assert max(starts.count(t) for t in set(starts)) == 2  # never more than two in one instant
    assert starts == pytest.approx([0, 0, 0.1, 0.1, 0.2, 0.2])  # a slot is held lambda_.HOLD at least
    assert rt.queue_mappings[0].peak == 2 and rt.queue_mappings[0].invocations == 6


def test_without_maximum_concurrency_lambda_starts_at_five_batches_and_scales_up(tmp_path):
    with stack(tmp_path, event="{BatchSize: 1}") as rt:
        send(rt, *({"n": n} for n in range(60)))
        assert rt.advance(2)
        starts = [round(c["at"] - START, 3) for c in calls(rt)]
        # 5 at once, then 300 more a minute (one more every 0.2 s); each batch holds its slot 0.1 s
        assert [starts.count(t) for t in sorted(set(starts))] == [5, 5, 6, 6, 7, 7, 8, 8, 8]
        assert rt.queue_mappings[0].peak == 8 and rt.queue_messages("WorkQueue") == []
        before = len(calls(rt))
        send(rt, *({"n": n} for n in range(60, 70)))  # the queue was idle: the ramp starts over (not 15 at once)
        assert rt.advance(1)
        again = [c["at"] for c in calls(rt)[before:]]
        assert len(again) == 10 and again.count(again[0]) == 5


def test_at_speed_settle_drains_the_queue_through_the_same_cap(tmp_path):
    with stack(tmp_path, stepped=False) as rt:  # one simulated day per real second
        send(rt, *({"n": n} for n in range(30)))
        assert rt.settle()
        assert sorted(b["n"] for c in calls(rt) for b in bodies(c)) == list(range(30))
        assert rt.queue_mappings[0].peak <= 2 and rt.queue_messages("WorkQueue") == []


def test_without_maximum_concurrency_the_account_concurrency_throttles_and_lambda_retries(tmp_path):
    with stack(tmp_path, rules=Rules(lambda_concurrency=2), event="{BatchSize: 1}") as rt:
        send(rt, *({"n": n} for n in range(5)))
        assert rt.advance(5)
        assert sorted(b["n"] for c in calls(rt) for b in bodies(c)) == list(range(5))  # each once, none lost
        assert rt.queue_mappings[0].peak == 2 and rt.concurrency.throttled >= 1
        assert rt.queue_messages("WorkQueue") == [] and rt.queue_messages("WorkDeadLetters") == []


def test_a_batching_window_gathers_up_to_the_batch_size(tmp_path):
    with stack(tmp_path, event="{BatchSize: 100, MaximumBatchingWindowInSeconds: 20}") as rt:
        send(rt, *({"n": n} for n in range(25)))
        assert rt.settle() and calls(rt) == []  # 25 < 100: Lambda waits for the window
        assert rt.advance(19) and calls(rt) == []
        assert rt.advance(1)
        assert [len(c["records"]) for c in calls(rt)] == [25] and calls(rt)[0]["at"] == START + 20


def test_a_filter_criteria_reject_is_deleted_without_invoking(tmp_path):
    event = """{FilterCriteria: {Filters: [{Pattern: '{"body": {"kind": ["send"]}}'}]}}"""
    with stack(tmp_path, event=event) as rt:
        send(rt, {"kind": "send", "n": 0}, {"kind": "other", "n": 1}, {"kind": "send", "n": 2})
        assert rt.settle()
        assert [b["n"] for c in calls(rt) for b in bodies(c)] == [0, 2]
        assert rt.queue_messages("WorkQueue") == []


def test_a_disabled_mapping_leaves_the_queue_alone(tmp_path):
    with stack(tmp_path, event="{Enabled: false}") as rt:
        send(rt, {"n": 0})
        assert rt.advance(3600) and calls(rt) == []
        assert [m["receive_count"] for m in rt.queue_messages("WorkQueue")] == [0]


# ---------------------------------------------------------------- strict mode: SQS requests
def error_of(excinfo) -> tuple[str, str, str]:
    err = excinfo.value.response["Error"]
    return type(excinfo.value).__name__, err["Code"], err["Message"]


def test_oversized_messages_and_batches_are_refused_as_sqs_refuses_them(rt):
    sqs, url = rt.client("sqs"), rt.template.physical["WorkQueue"]
    with pytest.raises(ClientError) as refused:
        sqs.send_message(QueueUrl=url, MessageBody="x" * 262_145)
    assert error_of(refused) == ("ClientError", "InvalidParameterValue", "One or more parameters are invalid. Reason: "
                                 "Message must be shorter than 262144 bytes.")
    with pytest.raises(ClientError):  # 131,073 characters, 262,146 bytes in UTF-8 (moto alone counts characters)
        sqs.send_message(QueueUrl=url, MessageBody="é" * 131_073)
    with pytest.raises(ClientError):  # attributes count too
        sqs.send_message(QueueUrl=url, MessageBody="x" * 262_000, MessageAttributes={
            "pad": {"DataType": "String", "StringValue": "y" * 200}})
    sqs.send_message(QueueUrl=url, MessageBody="x" * 262_144)  # the limit itself passes
    with pytest.raises(sqs.exceptions.TooManyEntriesInBatchRequest) as refused:
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": "{}"} for n in range(11)])
    assert error_of(refused) == ("TooManyEntriesInBatchRequest", "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
                                 "Maximum number of entries per request are 10. You have sent 11.")
    with pytest.raises(sqs.exceptions.BatchEntryIdsNotDistinct):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "a", "MessageBody": "{}"}, {"Id": "a", "MessageBody": "{}"}])
    with pytest.raises(sqs.exceptions.InvalidBatchEntryId):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "not valid!", "MessageBody": "{}"}])
    with pytest.raises(sqs.exceptions.BatchRequestTooLong) as refused:
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": "é" * 20_000} for n in range(7)])
    assert refused.value.response["Error"]["Message"] == ("Batch requests cannot be longer than 262144 bytes. "
                                                          "You have sent 280000 bytes.")
    sent = sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": "{}"} for n in range(10)])
    assert len(sent["Successful"]) == 10


def test_bad_delays_and_visibility_timeouts_are_refused(rt):
    sqs, url = rt.client("sqs"), rt.template.physical["WorkQueue"]
    with pytest.raises(ClientError) as refused:
        sqs.send_message(QueueUrl=url, MessageBody="{}", DelaySeconds=901)
    assert error_of(refused) == ("ClientError", "InvalidParameterValue", "Value 901 for parameter DelaySeconds is "
                                 "invalid. Reason: DelaySeconds must be >= 0 and <= 900.")
    with pytest.raises(ClientError):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "a", "MessageBody": "{}", "DelaySeconds": -1}])
    with pytest.raises(ClientError) as refused:
        sqs.receive_message(QueueUrl=url, VisibilityTimeout=43_201)
    assert error_of(refused)[2] == ("Value 43201 for parameter VisibilityTimeout is invalid. Reason: Must be between 0 "
                                    "and 43200, if provided.")
    with pytest.raises(ClientError):
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "43201"})
    with pytest.raises(ClientError):
        sqs.create_queue(QueueName="too-late", Attributes={"DelaySeconds": "901"})
    assert rt.queue_messages("WorkQueue") == []  # nothing refused was queued


def test_a_queue_may_raise_its_message_size_to_1_mib(rt):
    sqs = rt.client("sqs")
    url = sqs.create_queue(QueueName="large", Attributes={"MaximumMessageSize": "1048576"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="x" * 1_048_576)
    with pytest.raises(ClientError):
        sqs.send_message(QueueUrl=url, MessageBody="x" * 1_048_577)
    with pytest.raises(ClientError):
        sqs.create_queue(QueueName="larger", Attributes={"MaximumMessageSize": "1048577"})


def test_a_fifo_queue_is_named_fifo_and_takes_no_per_message_delay(tmp_path):
    with stack(tmp_path, resources="""  Ordered:
    Type: AWS::SQS::Queue
    Properties: {FifoQueue: true, ContentBasedDeduplication: true}
""") as rt:
        url = rt.template.physical["Ordered"]
        assert url.endswith("/Ordered.fifo") and rt.template.attributes[("Ordered", "QueueName")] == "Ordered.fifo"
        sqs = rt.client("sqs")
        sqs.send_message(QueueUrl=url, MessageBody="{}", MessageGroupId="g")
        with pytest.raises(ClientError, match="not valid for this queue type"):
            sqs.send_message(QueueUrl=url, MessageBody="{}", MessageGroupId="g", DelaySeconds=5)


# ---------------------------------------------------------------- strict mode: the stack and IAM
def test_a_function_timeout_above_the_queue_visibility_timeout_fails_the_build(tmp_path):
    with pytest.raises(StackError, match="Queue visibility timeout: 60 seconds is less than Function timeout: 61 seconds"):
        stack(tmp_path, "long", timeout=61).start()
    with stack(tmp_path, "equal", timeout=60) as rt:  # at least the timeout is what Lambda requires (6x is advice)
        assert rt.queue_mappings[0].visibility == 60


@pytest.mark.parametrize("event, why", [
    ("{BatchSize: 11}", "BatchSize 11 is above 10: set MaximumBatchingWindowInSeconds"),
    ("{BatchSize: 10001, MaximumBatchingWindowInSeconds: 1}", "BatchSize 10001 is out of range"),
    ("{MaximumBatchingWindowInSeconds: 301}", "MaximumBatchingWindowInSeconds 301"),
    ("{ScalingConfig: {MaximumConcurrency: 1}}", "MaximumConcurrency 1 is out of range: 2 to 1000"),
    ("{FunctionResponseTypes: [ReportAll]}", "only ReportBatchItemFailures exists"),
    ("""{FilterCriteria: {Filters: [{Pattern: '{"attributes": {"SenderId": ["x"]}}'}]}}""", "on the body key only"),
    ("{FilterCriteria: {Filters: [" + ", ".join(["{Pattern: '{\"body\": {\"n\": [1]}}'}"] * 6) + "]}}",
     "6 FilterCriteria filters: at most 5")])
def test_an_event_source_mapping_lambda_refuses_fails_the_build(tmp_path, event, why):
    with pytest.raises(StackError, match=why):
        stack(tmp_path, event=event).start()


def test_a_sender_without_sqs_send_message_is_denied(tmp_path):
    with stack(tmp_path, sender="") as rt:
        with pytest.raises(ClientError) as denied:
            rt.invoke("Sender", {"n": 0})
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
        assert [(d.action, d.resource) for d in rt.denied] == [
            ("sqs:SendMessage", "arn:aws:sqs:us-east-1:123456789012:WorkQueue")]
        assert rt.queue_messages("WorkQueue") == []


def test_a_role_without_the_pollers_rights_fails_the_build(tmp_path):
    role = """  WorkerRole:
    Type: AWS::IAM::Role
    Properties:
      AssumeRolePolicyDocument: {Statement: [{Effect: Allow, Principal: {Service: lambda.amazonaws.com}, Action: sts:AssumeRole}]}
      Policies:
        - PolicyName: receive-only
          PolicyDocument: {Statement: [{Effect: Allow, Action: [sqs:ReceiveMessage], Resource: !GetAtt WorkQueue.Arn}]}
"""
    with pytest.raises(StackError, match="does not have permissions to call DeleteMessage on SQS"):
        stack(tmp_path, worker="Role: !GetAtt WorkerRole.Arn", resources=role).start()
    # strict IAM off checks none (every other stack here builds with the role SAM generates, which has them
    # through AWSLambdaSQSQueueExecutionRole)
    with stack(tmp_path, "no-iam", rules=Rules(iam=False), worker="Role: !GetAtt WorkerRole.Arn", resources=role) as rt:
        assert rt.queue_mappings[0].function == "Worker"


def test_the_12_hour_visibility_limit_counts_from_the_receive(rt):
    sqs = rt.client("sqs")
    url = sqs.create_queue(QueueName="plain")["QueueUrl"]  # no function drains it
    sqs.send_message(QueueUrl=url, MessageBody="{}")
    assert rt.advance(13 * 3600)
    handle = sqs.receive_message(QueueUrl=url)["Messages"][0]["ReceiptHandle"]
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=43_200)  # sent 13 h ago: fine
    assert rt.advance(100)
    with pytest.raises(ClientError, match="Total VisibilityTimeout for the message is beyond the limit"):
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=43_200)
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=43_100)


def test_batch_deletes_and_queue_counts_answer_as_sqs(rt):
    sqs = rt.client("sqs")
    url = sqs.create_queue(QueueName="plain")["QueueUrl"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": str(n)} for n in range(4)])
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=60)
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=3)["Messages"]

    def counts() -> tuple[str, str, str]:
        a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        return (a["ApproximateNumberOfMessages"], a["ApproximateNumberOfMessagesNotVisible"],
                a["ApproximateNumberOfMessagesDelayed"])
    assert counts() == ("1", "3", "1")  # visible, in flight, delayed
    answer = sqs.delete_message_batch(QueueUrl=url, Entries=[
        {"Id": "a", "ReceiptHandle": received[0]["ReceiptHandle"]}, {"Id": "b", "ReceiptHandle": "not-a-handle"}])
    assert [e["Id"] for e in answer["Successful"]] == ["a"]
    assert [(e["Id"], e["Code"]) for e in answer["Failed"]] == [("b", "ReceiptHandleIsInvalid")]
    again = sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": "a", "ReceiptHandle": received[0]["ReceiptHandle"]},
                                                            {"Id": "c", "ReceiptHandle": received[2]["ReceiptHandle"]}])
    assert [e["Id"] for e in again["Successful"]] == ["a", "c"]  # deleting twice succeeds, as on SQS
    assert counts() == ("1", "1", "1")
    assert sorted(m["body"] for m in rt.queue_messages("plain")) == ["1", "3", "later"]
