"""What keeps the local runtime cheap, counted (never timed): boto3 clients are made once per
process, not per runtime nor per Step Functions Task, and the pollers ask moto nothing while
there is nothing to read."""
import json
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


def test_the_validator_copies_a_parsed_tree_from_its_pickle_and_any_other_tree_by_pickling_it(monkeypatch):
    """moto_adapter 21: a tree the parse handed out (which moto only reads) is copied by loading its
    pickle again, without pickling it; any other tree by pickling it; each copy is its own."""
    import pickle

    from funnelpilot_local import moto_adapter

    dumped, dumps = Counter(), pickle.dumps
    monkeypatch.setattr(pickle, "dumps", lambda value, *a, **k: (dumped.update([type(value).__name__]), dumps(value, *a, **k))[1])
    expression = "SET a = :a, b = list_append(if_not_exists(b, :empty), :b) ADD c :one"
    moto_adapter._update_expression(None, expression)  # the parse is pickled once
    tree = moto_adapter._update_expression(None, expression)
    dumped.clear()
    first, second = moto_adapter._validator_copy(tree), moto_adapter._validator_copy(tree)
    assert not dumped and first is not tree and second is not first
    assert dumps(first) == dumps(second) == dumps(tree)
    other = moto_adapter._parse_update_expression("SET a = :a")  # moto's own parse: not one handed out
    copied = moto_adapter._validator_copy(other)
    assert copied is not other and dumps(copied) == dumps(pickle.loads(dumps(other))) and dumped == {"UpdateExpression": 1}


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


def test_a_condition_expression_used_again_is_parsed_with_this_request_s_names_and_values(rt, monkeypatch):
    """moto_adapter 25: each condition or filter text is lexed once; every request still parses its own
    names and values (the same text passes one write and fails the next), a bad text fails every time,
    and the trees are moto's own."""
    from botocore.exceptions import ClientError
    from moto.dynamodb.comparisons import ConditionExpressionParser, get_filter_expression

    from funnelpilot_local import moto_adapter

    texts = ["attribute_not_exists(pk) OR (#s = :s AND (attribute_not_exists(lease) OR lease < :now))",
             "NOT contains(tags, :t) AND size(#l) BETWEEN :lo AND :hi", "#m.deep[1] IN (:a, :b, :c)",
             "begins_with(#s, :p) AND attribute_type(n, :ty) OR n <> :a AND n >= :lo"]
    names = {"#s": "status", "#l": "list", "#m": "map"}
    values = {":s": {"S": "sending"}, ":now": {"N": "5"}, ":t": {"S": "x"}, ":lo": {"N": "1"}, ":hi": {"N": "3"},
              ":a": {"N": "1"}, ":b": {"S": "b"}, ":c": {"NULL": True}, ":p": {"S": "se"}, ":ty": {"S": "N"}}

    def tree(node):
        if isinstance(node, (list, tuple)):
            return [tree(n) for n in node]
        return (type(node).__name__, {k: tree(v) for k, v in vars(node).items()}) if hasattr(node, "__dict__") else node

    def trees():
        return [tree(get_filter_expression(text, names, values)) for text in texts]

    def writes(table: str) -> list[str]:
        ddb = rt.client("dynamodb")
        ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
        outcomes = []
        for status, lease, now in (("sending", 9, 5), ("sent", 9, 5), ("sent", 9, 10), ("sending", 0, 10)):
            try:
                ddb.put_item(TableName=table, Item={"pk": {"S": "k"}, "status": {"S": status}, "lease": {"N": str(lease)}},
                             ConditionExpression=texts[0], ExpressionAttributeNames={"#s": "status"},
                             ExpressionAttributeValues={":s": {"S": "sending"}, ":now": {"N": str(now)}})
                outcomes.append("written")
            except ClientError as exc:
                outcomes.append(exc.response["Error"]["Code"])
        for text in ("((lease < :now))", "status < :now", "((lease < :now))"):
            try:
                ddb.put_item(TableName=table, Item={"pk": {"S": "k"}}, ConditionExpression=text,
                             ExpressionAttributeValues={":now": {"N": "1"}})
                outcomes.append("written")
            except ClientError as exc:
                outcomes.append(f'{exc.response["Error"]["Code"]}: {exc.response["Error"]["Message"]}')
        return outcomes

    cached = (trees(), writes("cond_cached"))
    assert cached[1][:4] == ["written", "ConditionalCheckFailedException", "written", "ConditionalCheckFailedException"]
    assert cached[1][4] == cached[1][6] and cached[1][4].startswith("ValidationException")
    assert cached[1][5].startswith("ValidationException") and cached[1][5] != cached[1][4]
    monkeypatch.setattr(ConditionExpressionParser, "_lex_condition_expression", moto_adapter._lex_condition_text)
    assert (trees(), writes("cond_moto")) == cached


def test_put_events_delivers_what_moto_s_own_put_events_delivers(rt, monkeypatch):
    """moto_adapter 2: PutEvents builds and flattens each event once for all the bus's rules; every entry's
    answer and every (target, input) handed to the runtime is what moto's own put_events gives, matched
    rule by rule (exists, prefix, $or, nested detail, input transformers, the default bus, bad entries)."""
    import pytest
    from botocore.exceptions import ClientError
    from moto.events.models import EventsBackend

    from funnelpilot_local import moto_adapter

    when = datetime(2026, 3, 2, 10, tzinfo=timezone.utc)

    def entry(detail_type, detail, source="funnelpilot", bus="funnelpilot"):
        return {"Source": source, "DetailType": detail_type, "Detail": detail if isinstance(detail, str) else
                json.dumps({"event_id": detail_type, "contact_id": "c1", **detail}), "EventBusName": bus, "Time": when}

    batches = [
        [entry("contact.subscribed", {"list": "insiders", "lead_magnet": "guide"}), entry("contact.subscribed", {}),
         entry("email.opened", {"human": True, "unique": True}), entry("email.opened", {"human": False}),
         entry("order.placed", {"total": 12.5}), entry("custom.webinar", {}), entry("page.viewed", {"url": "/"}),
         entry("funnel.handoff", {"to": "welcome"}), entry("email.sent", {}), entry("inactivity.scan_continued", {})],
        [entry("Step Functions Execution Status Change", {"status": "FAILED", "stateMachineArn":
               f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:funnelpilot-welcome"}, "aws.states", "default"),
         entry("email.clicked", {"human": True, "unique": False}), {**entry("x", {}), "DetailType": ""},
         entry("email.opened", "{not json"), entry("contact.tagged", "[1, 2]")],
    ]

    def deliveries():
        got, ids = [], {}
        monkeypatch.setattr(moto_adapter, "_deliverer", lambda arn, payload, event_id=None: got.append(
            (arn, payload, event_id)))
        events = rt.client("events")
        with pytest.warns(UserWarning, match="EventDetail should be of type dict"):
            answers = [events.put_events(Entries=batch)["Entries"] for batch in batches]
        with pytest.raises(ClientError, match="less than or equal to 10"):
            events.put_events(Entries=batches[0] + batches[0][:1])
        for e in (e for batch in answers for e in batch if "EventId" in e):
            ids[e["EventId"]] = f"event-{len(ids)}"

        def plain(x):
            if isinstance(x, dict):
                return {k: plain(v) for k, v in x.items() if k != "ingestion-time"}
            if isinstance(x, (list, tuple)):
                return [plain(i) for i in x]
            return ids.get(x, x) if isinstance(x, str) else x
        return plain(answers), plain(got)

    ours = deliveries()
    monkeypatch.setattr(EventsBackend, "put_events", moto_adapter._moto_put_events)
    assert deliveries() == ours
    targets = [arn.rsplit(":", 1)[-1] for arn, _payload, _id in ours[1]]
    assert len(targets) >= 20 and {"ScoreFunction", "MetricsFunction", "FunnelRouterFunction", "SegmentFunction",
                                   "NotifyFunction", "ReengageScanFunction"} <= set(targets), targets
    assert [e.get("ErrorCode") for batch in ours[0] for e in batch].count("InvalidArgument") == 1


def test_an_item_is_kept_or_refused_as_the_check_at_each_attribute_decides(rt):
    """moto_adapter 12: Item.__init__ checks DynamoDB's 400 KB on a running total; it keeps and refuses
    exactly what the sum at each attribute (moto's LimitedSizeDict, at 400 KB) does, at the limit too."""
    from moto.dynamodb import exceptions
    from moto.dynamodb.models import dynamo_type

    from funnelpilot_local import moto_adapter

    key = dynamo_type.DynamoType({"S": "k"})
    rest = {"pk": {"S": "k"}, "n": {"N": "-12.5"}, "m": {"M": {"a": {"L": [{"S": "é"}, {"BOOL": True}]}, "b": {"NS": ["1"]}}},
            "ss": {"SS": ["x", "yy"]}, "b": {"B": b"\x00\xff"}, "null": {"NULL": True}}
    room = 400 * 1024 - sum(len(k) + dynamo_type.DynamoType(v).size() for k, v in rest.items()) - len("pad")

    def built(init, attrs):
        item = dynamo_type.Item.__new__(dynamo_type.Item)
        try:
            init(item, key, None, attrs)
        except exceptions.ItemSizeTooLarge:
            return "too large"
        return dict(item.attrs)

    outcomes = []
    for pad in (room - 1, room, room + 1):
        for attrs in ({**rest, "pad": {"S": "x" * pad}}, {"pad": {"S": "x" * pad}, **rest}):
            ours = built(moto_adapter._item_init, attrs)
            assert ours == built(moto_adapter._moto_item_init, attrs)
            outcomes.append(ours if ours == "too large" else sorted(ours) == sorted(attrs))
    assert outcomes == [True, True, True, True, "too large", "too large"]


def test_ses_takes_and_refuses_raw_emails_as_moto_s_own_send_raw_email_does(rt):
    """moto_adapter 3: SendRawEmail reads the message's headers only; what it records (source, the
    destinations from To/Cc/Bcc, folded or not) and what it refuses is moto's own answer."""
    from funnelpilot.channels import mime
    from funnelpilot_local import moto_adapter
    from funnelpilot_local.template import REGION
    from moto.ses.models import ses_backends

    ses = ses_backends[ACCOUNT][REGION]
    ses.verify_email_identity("news@sender.test")
    built = mime.build(sender="news@sender.test", to="Ann Ö <ann@example.com>", subject="Hi", message_id="m1",
                       headers={"Cc": "cc@example.com"}, text="text", html="<p>html</p>").decode()
    many = ", ".join(f"r{i}@example.com" for i in range(51))
    cases = [("news@sender.test", [], built), (None, [], built), ("news@sender.test", ["d@example.com"], built),
             (None, [], "To: a@example.com\r\n\r\nno sender"), ("other@sender.test", [], built),
             ("news@sender.test", [], f"To: {many}\r\n\r\nbody"), ("news@sender.test", [], "To: nobody\r\n\r\nbody"),
             ("news@sender.test", [], "To: a@example.com,\r\n b@example.com\r\nBcc: \"B, C\" <bc@example.com>\r\n"
                                      "Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nTo: inner@example.com\r\n\r\n--x--\r\n")]

    def answers(send):
        out = []
        for source, destinations, raw in cases:
            try:
                m = send(ses, source, list(destinations), raw)
                out.append((m.source, m.destinations, m.raw_data))
            except Exception as exc:  # noqa: BLE001 - the refusal is the answer compared
                out.append((type(exc).__name__, str(exc)))
        return out

    ours = answers(moto_adapter._send_raw_email)
    assert ours == answers(moto_adapter._moto_send_raw_email)
    ann = "Ann =?utf-8?q?=C3=96?= <ann@example.com>"
    assert ours[1][0] == "news@sender.test"  # no Source: the From header's
    assert [o[1] if len(o) == 3 else o[0] for o in ours] == [
        [ann, "cc@example.com"], [ann, "cc@example.com"], ["d@example.com", ann, "cc@example.com"],
        "MessageRejectedError", "MessageRejectedError", "MessageRejectedError", "InvalidParameterValue",
        ["a@example.com", "b@example.com", '"B, C" <bc@example.com>']]


def test_the_outbox_and_the_demo_read_only_the_emails_sent_since_they_last_looked(rt):
    """moto_adapter.sent_emails_since: each look starts where the last ended; together the looks are
    every email once, in order, and the outbox names each file by its X-Funnelpilot-Message-Id."""
    from email import message_from_string

    from funnelpilot_local import moto_adapter
    from funnelpilot_local.template import REGION

    looks, position = [], 0
    for i, email in enumerate(("ann@example.com", "bo@example.com", "cy@example.com")):
        signup(rt, email)
        assert rt.advance((i + 1) * DAY)
        new, position = moto_adapter.sent_emails_since(ACCOUNT, REGION, position)
        looks.append(new)
    assert moto_adapter.sent_emails_since(ACCOUNT, REGION, position) == ([], position)
    every = moto_adapter.sent_emails(ACCOUNT, REGION)
    assert [m for look in looks for m in look] == every and all(looks) and len(every) >= 4
    names = {message_from_string(raw)["X-Funnelpilot-Message-Id"] for _, raw in every}
    assert None not in names and {p.stem for p in rt.outbox.glob("*.eml")} == names


def test_stream_records_are_json_values_and_match_their_filters_as_moto_matches_them(rt, monkeypatch):
    """moto_adapter.event_filter(plain=True): the runtime's stream records hold JSON values only (a JSON
    round trip gives each back equal), so skipping moto's round trip decides every filter the same."""
    import json

    from funnelpilot_local import moto_adapter, runtime

    records, converted = [], runtime.lambda_stream_record

    def keep(record, stream_arn):
        records.append(converted(record, stream_arn))
        return records[-1]

    monkeypatch.setattr(runtime, "lambda_stream_record", keep)
    cid = signup(rt)
    assert rt.advance(3 * DAY) and len(sent(rt, cid)) >= 2
    patterns = [f["Pattern"] for lid in rt.template.of_type("AWS::Serverless::Function")
                for e in rt.template.properties(lid).get("Events", {}).values() if e["Type"] == "DynamoDB"
                for f in rt.template.resolve(e["Properties"]).get("FilterCriteria", {}).get("Filters", [])]
    assert patterns and len(records) > 10
    decided = set()
    for pattern in patterns:
        plain, moto = moto_adapter.event_filter(pattern, plain=True), moto_adapter.event_filter(pattern)
        assert [plain(r) for r in records] == [moto(r) for r in records]
        decided.update(plain(r) for r in records)
    assert decided == {True, False}
    for record in records:
        assert json.loads(json.dumps(record)) == record


def _answers(calls) -> list:
    """Each call's answer or error, without what differs between two identical requests (request ids, dates)."""
    from datetime import datetime

    from botocore.exceptions import ClientError, ParamValidationError

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if k not in ("RequestId", "x-amzn-requestid", "date")}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return "<time>" if isinstance(value, datetime) else value

    answers = []
    for call in calls:
        try:
            answers.append(plain(call()))
        except ClientError as e:
            answers.append((type(e).__name__, plain(e.response)))
        except (ParamValidationError, AttributeError) as e:  # pynamodb's client does not validate: botocore fails
            answers.append((type(e).__name__, str(e)))
    return answers


def _dynamodb_conversation(ddb) -> list:
    """Every kind of DynamoDB answer the handlers get: items, pages, write results, each error shape."""
    ddb.create_table(TableName="direct", BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                     AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("pk", "sk", "g")],
                     GlobalSecondaryIndexes=[{"IndexName": "by-g", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                                              "Projection": {"ProjectionType": "ALL"}}])
    key = {"pk": {"S": "p"}, "sk": {"S": "1"}}
    item = {**key, "g": {"S": "x"}, "n": {"N": "1.50"}, "b": {"B": b"\x00\xff"}, "l": {"L": [{"S": "é"}, {"NULL": True}]},
            "m": {"M": {"ss": {"SS": ["a", "b"]}, "bs": {"BS": [b"z"]}}}, "t": {"BOOL": True}}
    calls = [
        lambda: ddb.put_item(TableName="direct", Item=item, ReturnConsumedCapacity="TOTAL"),
        lambda: ddb.put_item(TableName="direct", Item={**item, "n": {"N": "2"}}, ReturnValues="ALL_OLD"),
        lambda: ddb.get_item(TableName="direct", Key=key, ConsistentRead=True),
        lambda: ddb.get_item(TableName="direct", Key={**key, "sk": {"S": "none"}}),
        lambda: ddb.update_item(TableName="direct", Key=key, UpdateExpression="ADD n :one SET #l = list_append(#l, :l)",
                                ExpressionAttributeNames={"#l": "l"}, ReturnValues="UPDATED_NEW",
                                ExpressionAttributeValues={":one": {"N": "1"}, ":l": {"L": [{"N": "3"}]}}),
        lambda: ddb.update_item(TableName="direct", Key=key, UpdateExpression="SET n = :n", ConditionExpression="n = :old",
                                ExpressionAttributeValues={":n": {"N": "9"}, ":old": {"N": "0"}},
                                ReturnValuesOnConditionCheckFailure="ALL_OLD"),
        lambda: ddb.update_item(TableName="direct", Key=key, UpdateExpression="SET = :v",
                                ExpressionAttributeValues={":v": {"N": "1"}}),
        lambda: ddb.batch_write_item(RequestItems={"direct": [{"PutRequest": {"Item": {**key, "sk": {"S": str(i)}, "g": {"S": "y"}}}}
                                                              for i in range(2, 6)]}),
        lambda: ddb.batch_get_item(RequestItems={"direct": {"Keys": [key, {**key, "sk": {"S": "3"}}]}}),
        lambda: ddb.query(TableName="direct", KeyConditionExpression="pk = :p AND sk >= :s", Limit=2,
                          ExpressionAttributeValues={":p": {"S": "p"}, ":s": {"S": "2"}}, ScanIndexForward=False),
        lambda: ddb.query(TableName="direct", IndexName="by-g", KeyConditionExpression="g = :g",
                          ExpressionAttributeValues={":g": {"S": "y"}}, Select="COUNT"),
        lambda: ddb.scan(TableName="direct", FilterExpression="attribute_exists(b)"),
        lambda: ddb.transact_write_items(TransactItems=[
            {"Update": {"TableName": "direct", "Key": key, "UpdateExpression": "ADD n :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}}}},
            {"Put": {"TableName": "direct", "Item": {**key, "sk": {"S": "t"}}, "ConditionExpression": "attribute_not_exists(pk)"}}]),
        lambda: ddb.transact_write_items(TransactItems=[
            {"ConditionCheck": {"TableName": "direct", "Key": key, "ConditionExpression": "attribute_not_exists(pk)",
                                "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
            {"Delete": {"TableName": "direct", "Key": {**key, "sk": {"S": "2"}}}}]),
        lambda: ddb.delete_item(TableName="direct", Key={**key, "sk": {"S": "2"}}, ReturnValues="ALL_OLD"),
        lambda: ddb.get_item(TableName="missing", Key=key),
        lambda: ddb.get_item(TableName="direct", Key={"pk": {"N": "1"}}),
        lambda: ddb.get_item(TableName="direct", Key="not a key"),
        lambda: ddb.describe_table(TableName="direct")["Table"]["ItemCount"],
    ]
    answers = _answers(calls)
    ddb.delete_table(TableName="direct")
    return answers


def _events_and_executions(rt, run: str) -> list:
    """EventBridge and Step Functions answers and errors (a bus and a machine named for the run)."""
    import json

    events, sfn = rt.client("events"), rt.client("stepfunctions")
    bus = f"direct-{run}"
    machine = sfn.create_state_machine(name=bus, roleArn=f"arn:aws:iam::{ACCOUNT}:role/direct", definition=json.dumps(
        {"StartAt": "P", "States": {"P": {"Type": "Pass", "Result": {"ok": True}, "ResultPath": "$.r", "End": True}}}))
    arn, execution = machine["stateMachineArn"], f"{machine['stateMachineArn'].replace(':stateMachine:', ':execution:')}:one"
    entry = {"Source": "probe", "DetailType": "probe", "Detail": '{"n": 1}', "EventBusName": bus}
    answers = _answers([
        lambda: events.create_event_bus(Name=bus),
        lambda: events.put_rule(Name="r", EventBusName=bus, EventPattern='{"source": ["probe"]}'),
        lambda: events.list_rules(EventBusName=bus),
        lambda: len(events.put_events(Entries=[entry, {**entry, "Detail": "not json"}, {**entry, "DetailType": ""}])["Entries"]),
        lambda: events.put_events(Entries=[entry, {**entry, "Detail": "not json"}])["FailedEntryCount"],
        lambda: events.put_events(Entries=[entry] * 11),
        lambda: events.describe_event_bus(Name=f"{bus}-missing"),
        lambda: events.delete_rule(Name="r", EventBusName=bus),
        lambda: sfn.start_execution(stateMachineArn=arn, name="one", input='{"a": 1}'),
        lambda: rt.settle() and sfn.describe_execution(executionArn=execution),
        lambda: sfn.start_execution(stateMachineArn=arn, name="one", input='{"a": 2}'),
        lambda: sfn.list_executions(stateMachineArn=arn),
        lambda: sfn.describe_execution(executionArn=execution + "-missing"),
        lambda: sfn.start_execution(stateMachineArn=arn + "-missing", name="two"),
        lambda: sfn.start_execution(stateMachineArn=arn, name="three", input="not json"),
    ])
    events.delete_event_bus(Name=bus)
    return json.loads(json.dumps(answers, default=str).replace(run, "<run>"))


def test_requests_without_http_get_the_answers_and_errors_of_the_http_path(rt, monkeypatch):
    """moto_adapter 26: the same calls answered through moto's werkzeug request (botocore's AWSRequest)
    and without it give the same items, pages, metadata, headers and errors: DynamoDB (boto3's client and
    pynamodb's), EventBridge and Step Functions."""
    from botocore.endpoint import Endpoint
    from pynamodb.connection import Connection

    from funnelpilot_local import moto_adapter

    direct, original = Counter(), moto_adapter._MotoRequest.__init__

    def count(self, request):
        direct["requests"] += 1
        original(self, request)

    monkeypatch.setattr(moto_adapter._MotoRequest, "__init__", count)
    boto3_client, pynamodb_client = rt.client("dynamodb"), Connection(region="us-east-1").client
    without = [_dynamodb_conversation(c) for c in (boto3_client, pynamodb_client)] + [_events_and_executions(rt, "qx1")]
    assert direct["requests"] >= 2 * 20 + 15
    monkeypatch.setattr(Endpoint, "create_request", moto_adapter._botocore_create_request)
    direct.clear()
    through_http = [_dynamodb_conversation(c) for c in (boto3_client, pynamodb_client)] + [_events_and_executions(rt, "qx2")]
    assert direct["requests"] == 0
    assert without == through_http
    errors = [a[1]["Error"]["Code"] for a in without[2] if isinstance(a, list)]
    assert errors == ["ValidationException", "ResourceNotFoundException", "ExecutionAlreadyExists",
                      "ExecutionDoesNotExist", "StateMachineDoesNotExist", ""], errors
    assert without[2][3:5] == [3, 1] and without[2][9]["status"] == "SUCCEEDED"
    for answers in without[:2]:
        codes = [a[1]["Error"]["Code"] if isinstance(a[1], dict) else a[0] for a in answers if isinstance(a, tuple)]
        assert codes[:-1] == ["ConditionalCheckFailedException", "ValidationException", "TransactionCanceledException",
                              "ResourceNotFoundException", "ValidationException"], codes
    assert (without[0][-2][0], without[1][-2][0]) == ("ParamValidationError", "AttributeError")


def test_a_parsed_state_machine_is_kept_on_disk_for_the_next_process(rt, tmp_path, monkeypatch):
    """moto_adapter 6: a definition parsed once is unpickled from disk by a later process (no ANTLR)
    and runs the same; an unreadable file is parsed again and replaced; an invalid definition is
    refused as before and leaves nothing."""
    import json

    import pytest
    from botocore.exceptions import ClientError
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    from funnelpilot_local import moto_adapter

    parses, parse = Counter(), AmazonStateLanguageParser.parse

    def counted(definition):
        parses[definition] += 1
        return parse(definition)

    monkeypatch.setattr(AmazonStateLanguageParser, "parse", staticmethod(counted))
    monkeypatch.setattr(moto_adapter, "_program_dir", tmp_path / "programs")
    definition = json.dumps({"StartAt": "Add", "States": {
        "Add": {"Type": "Pass", "Parameters": {"sum.$": "States.MathAdd($.a, $.b)"}, "Next": "Done"},
        "Done": {"Type": "Succeed"}}})
    moto_adapter._pickled_program.cache_clear()
    first = moto_adapter._pickled_program(definition)
    [kept] = (tmp_path / "programs").glob("*.pickle")
    moto_adapter._pickled_program.cache_clear()  # a new process: memory empty, the file there
    assert moto_adapter._pickled_program(definition) == first == kept.read_bytes() and parses[definition] == 1
    kept.write_bytes(first[:40])
    moto_adapter._pickled_program.cache_clear()
    assert moto_adapter._pickled_program(definition) == first and parses[definition] == 2 and kept.read_bytes() == first
    moto_adapter._pickled_program.cache_clear()
    sfn = rt.client("stepfunctions")
    arn = sfn.create_state_machine(name="adds", definition=definition,
                                   roleArn=f"arn:aws:iam::{ACCOUNT}:role/adds")["stateMachineArn"]
    run = sfn.start_execution(stateMachineArn=arn, name="one", input='{"a": 2, "b": 3}')["executionArn"]
    assert rt.settle()
    done = sfn.describe_execution(executionArn=run)
    assert (done["status"], json.loads(done["output"])) == ("SUCCEEDED", {"sum": 5}) and parses[definition] == 2
    with pytest.raises(ClientError) as bad:
        sfn.create_state_machine(name="bad", definition='{"StartAt": "X", "States": {"X": {"Type": "Nope"}}}',
                                 roleArn=f"arn:aws:iam::{ACCOUNT}:role/adds")
    assert bad.value.response["Error"]["Message"].startswith("ASLParserException")  # moto's InvalidDefinition
    assert list((tmp_path / "programs").iterdir()) == [kept]


def test_a_json_path_parsed_once_finds_and_updates_as_a_new_parse_does(rt):
    """moto_adapter 27: the interpreter's JSONPath parses are cached by text; a cached path finds, and
    writes a result into, each input as a fresh parse of it does, and leaves the next input alone."""
    import copy

    from jsonpath_ng import parse as fresh_result_path
    from jsonpath_ng.ext import parse as fresh_path
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.utils import json_path

    assert json_path.parse is not fresh_path and result_path.parse is not fresh_result_path
    inputs = [{"a": {"b": [1, {"c": i}]}, "list": [{"k": i}, {"k": i + 1}]} for i in range(3)]
    for path in ("$.a.b[1].c", "$.list[*].k", "$.a", "$..k", "$.list[?(@.k > 1)].k"):
        for data in inputs:
            assert [m.value for m in json_path.parse(path).find(data)] == [m.value for m in fresh_path(path).find(data)]
    for data in inputs:
        cached, new = copy.deepcopy(data), copy.deepcopy(data)
        result_path.parse("$.result.x").update_or_create(cached, {"r": 1})
        fresh_result_path("$.result.x").update_or_create(new, {"r": 1})
        assert cached == new == {**data, "result": {"x": {"r": 1}}}
    assert json_path.parse("$.a") is json_path.parse("$.a")
