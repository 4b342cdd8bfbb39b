"""What keeps the local runtime cheap, counted (never timed): boto3 clients are made once per
process, not per runtime nor per Step Functions Task, and the pollers ask moto nothing while
there is nothing to read."""
from collections import Counter
from datetime import datetime, timezone

import botocore.client
import botocore.session
from conftest import START, executions, history
from test_funnels import sent, signup

from funnelpilot_local.runtime import ROOT, Runtime
from funnelpilot_local.template import ACCOUNT

DAY = 86_400


def test_a_journey_of_many_tasks_and_a_second_stack_make_no_new_client(rt, tmp_path, monkeypatch):
    made, original = Counter(), botocore.session.Session.create_client

    def create_client(self, service_name, *args, **kwargs):
        made[service_name] += 1
        return original(self, service_name, *args, **kwargs)

    monkeypatch.setattr(botocore.session.Session, "create_client", create_client)
    cid = signup(rt)
    assert rt.advance(5 * DAY)
    tasks = sum(e["type"] == "LambdaFunctionScheduled" for ex in executions(rt)
                for e in history(rt, ex["executionArn"]))
    assert tasks >= 3 and len(sent(rt, cid)) >= 2  # welcome-1, welcome-2, ...
    assert made["lambda"] <= 1  # Step Functions' Lambda client: one for every Task (at most made now)
    made.clear()
    rt.stop()  # the fixture's stop after this is a no-op
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "second") as second:
        signup(second, "bo@example.com")
        assert len(executions(second)) == 1
    assert made["lambda"] == made["stepfunctions"] == made["dynamodb"] == made["events"] == 0, made


def test_idle_pollers_make_no_aws_call(rt, monkeypatch):
    signup(rt)
    calls, original = Counter(), botocore.client.BaseClient._make_api_call

    def record(client, operation, params):
        calls[operation] += 1
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    for _ in range(50):  # nothing queued, no stream record, no schedule: nothing to ask
        assert rt.pump() == 0 and rt.settle()
    assert calls == Counter()


def test_the_meter_reads_the_histories_get_execution_history_gives(rt):
    from funnelpilot_local import moto_adapter
    from funnelpilot_local.template import REGION

    signup(rt)
    assert rt.advance(5 * DAY)
    sfn, seen = rt.client("stepfunctions"), 0
    for arn in rt.state_machine_arns():
        direct = moto_adapter.execution_event_types(ACCOUNT, REGION, arn)
        listed = sfn.list_executions(stateMachineArn=arn)["executions"]
        assert direct == [[e["type"] for e in history(rt, ex["executionArn"])] for ex in listed]
        seen += sum(len(types) for types in direct)
    assert seen > 20  # a welcome journey of several emails


def test_an_update_expression_used_again_starts_from_a_fresh_tree(rt):
    """moto parses each update expression once (moto_adapter 21): every request still validates and
    applies its own copy, with its own names, values and item, and a bad expression fails every time."""
    import pytest
    from botocore.exceptions import ClientError

    ddb = rt.client("dynamodb")
    ddb.create_table(TableName="exprs", BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
    expression = "SET #n = if_not_exists(#n, :zero) + :one, tags = list_append(if_not_exists(tags, :empty), :tag) ADD seen :s"
    for pk, name, tag, times in (("a", "count", "x", 3), ("b", "other", "y", 2)):
        for i in range(times):
            ddb.update_item(TableName="exprs", Key={"pk": {"S": pk}}, UpdateExpression=expression,
                            ExpressionAttributeNames={"#n": name},
                            ExpressionAttributeValues={":zero": {"N": "0"}, ":one": {"N": "1"}, ":empty": {"L": []},
                                                       ":tag": {"L": [{"S": f"{tag}{i}"}]}, ":s": {"SS": [f"s{i}"]}})
    a = ddb.get_item(TableName="exprs", Key={"pk": {"S": "a"}})["Item"]
    b = ddb.get_item(TableName="exprs", Key={"pk": {"S": "b"}})["Item"]
    assert a["count"] == {"N": "3"} and "other" not in a and a["tags"] == {"L": [{"S": "x0"}, {"S": "x1"}, {"S": "x2"}]}
    assert b["other"] == {"N": "2"} and "count" not in b and sorted(b["seen"]["SS"]) == ["s0", "s1"]
    for _ in range(2):
        with pytest.raises(ClientError) as bad:
            ddb.update_item(TableName="exprs", Key={"pk": {"S": "a"}}, UpdateExpression="SET = :v",
                            ExpressionAttributeValues={":v": {"N": "1"}})
        assert bad.value.response["Error"]["Code"] == "ValidationException"


def test_dynamodb_answers_are_written_as_moto_s_own_walk_writes_them(rt, monkeypatch):
    """moto_adapter 23: attribute values are serialised directly; every type, nested, must read back
    exactly as moto's shape walk gives it (a query page and an update's ALL_NEW too)."""
    from moto.core.serialize import BaseJSONSerializer

    from funnelpilot_local import moto_adapter

    ddb = rt.client("dynamodb")
    ddb.create_table(TableName="shapes", BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
    item = {"pk": {"S": "k"}, "s": {"S": "é ü"}, "empty": {"S": ""}, "n": {"N": "-12.50"}, "b": {"B": b"\x00\xffbin"},
            "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2.5"]}, "bs": {"BS": [b"x", b"\x01"]}, "null": {"NULL": True},
            "t": {"BOOL": True}, "f": {"BOOL": False}, "l": {"L": [{"S": "x"}, {"N": "1"}, {"L": []}, {"M": {}},
                                                                 {"B": b"y"}, {"NULL": True}]},
            "m": {"M": {"deep": {"M": {"list": {"L": [{"M": {"z": {"SS": ["q"]}}}]}, "b": {"BS": [b"z"]}}}, "e": {"S": ""}}}}
    ddb.put_item(TableName="shapes", Item=item)

    def answers():
        return (ddb.get_item(TableName="shapes", Key={"pk": {"S": "k"}})["Item"],
                ddb.query(TableName="shapes", KeyConditionExpression="pk = :k",
                          ExpressionAttributeValues={":k": {"S": "k"}})["Items"],
                ddb.update_item(TableName="shapes", Key={"pk": {"S": "k"}}, UpdateExpression="SET n = :n",
                                ExpressionAttributeValues={":n": item["n"]}, ReturnValues="ALL_NEW")["Attributes"])

    direct = answers()
    monkeypatch.setattr(BaseJSONSerializer, "_serialize_type_structure", moto_adapter._json_structure_walk)
    walked = answers()
    assert direct == walked == (item, [item], item)


def test_schedules_are_asked_for_again_only_when_they_change(rt, monkeypatch):
    """moto_adapter 16: each simulated hour the runtime looks at moto's schedules; GetSchedule only for a
    schedule it has not seen in this version (new, updated), and an update's new time is the one that fires."""
    from funnelpilot import clock

    sched, queue_arn = rt.client("scheduler"), rt.template.attributes[("DeadLetterQueue", "Arn")]

    def at(seconds: float) -> str:
        return f"at({datetime.fromtimestamp(clock.now() + seconds, timezone.utc):%Y-%m-%dT%H:%M:%S})"

    request = {"Name": "probe", "State": "ENABLED", "FlexibleTimeWindow": {"Mode": "OFF"}, "ActionAfterCompletion": "DELETE",
               "Target": {"Arn": queue_arn, "RoleArn": f"arn:aws:iam::{ACCOUNT}:role/probe", "Input": '{"probe": 1}'}}
    sched.create_schedule(ScheduleExpression=at(30 * 3600), **request)
    calls, original = Counter(), botocore.client.BaseClient._make_api_call

    def record(client, operation, params):
        calls[operation] += 1
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    assert rt.advance(5 * 3600)
    assert calls["GetSchedule"] == 1 and calls["ListSchedules"] == 0
    sched.update_schedule(ScheduleExpression=at(2 * 3600), **request)
    assert rt.advance(5 * 3600)
    assert calls["GetSchedule"] == 2 and calls["DeleteSchedule"] == 1
    assert [m["body"] for m in rt.queue_messages("DeadLetterQueue")] == ['{"probe": 1}']


def test_a_table_s_items_come_in_moto_s_own_order(rt):
    """moto_adapter 24: Table.all_items sorts by keys converted once per item; the order is moto's."""
    from moto.dynamodb.models import dynamodb_backends

    from funnelpilot_local import moto_adapter
    from funnelpilot_local.template import REGION

    ddb = rt.client("dynamodb")
    for name, range_type in (("sorted_hr", "N"), ("sorted_h", None)):
        ranged = [{"AttributeName": "sk", "KeyType": "RANGE"}] if range_type else []
        ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, *ranged],
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                               *([{"AttributeName": "sk", "AttributeType": "N"}] if range_type else [])])
        for i in range(60):
            sk = {"sk": {"N": str((i * 37) % 23 - 11) + (".5" if i % 4 else "")}} if range_type else {}
            ddb.put_item(TableName=name, Item={"pk": {"S": f"p{i % 7}-{'é' if i % 3 else 'z'}"}, **sk})
        table = dynamodb_backends[ACCOUNT][REGION].get_table(name)
        assert [id(i) for i in moto_adapter._all_items(table)] == [id(i) for i in moto_adapter._moto_all_items(table)]
        assert len(table.all_items()) == (60 if range_type else 14)
