"""A runtime builds its stack once per process and every later start of the same stack restores a
copy of that build (Runtime._build): each test must still get a stack exactly as built, holding
nothing another test wrote. These tests compare everything a runtime and moto hold."""
import dataclasses
import json
import shutil
import types
from collections import OrderedDict, deque
from pathlib import Path

from conftest import START
from test_funnels import sent, signup

from funnelpilot_local import aws_rules, runtime
from funnelpilot_local.moto_adapter import sent_emails
from funnelpilot_local.runtime import ROOT, Runtime
from funnelpilot_local.template import ACCOUNT, REGION

PER_INSTANCE = {"_mock", "scheduler"}  # made by each start, not by the build


def canonical(value, done=None, path=()):
    """Plain data for comparing two runtimes: objects by their attributes, the runtime itself
    (rule families refer to it) by a marker, locks and queues by their type."""
    done = {} if done is None else done  # id -> (object, its canonical form): each object once, kept alive
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Runtime) and path:
        return "<runtime>"
    if id(value) in path:
        return "<cycle>"
    if id(value) in done:
        return done[id(value)][1]
    path = (*path, id(value))
    if isinstance(value, dict):
        out = sorted(([canonical(k, done, path), canonical(v, done, path)] for k, v in value.items()), key=repr)
    elif isinstance(value, (list, tuple, deque)):
        out = [canonical(v, done, path) for v in value]
    elif isinstance(value, (set, frozenset)):
        out = sorted((canonical(v, done, path) for v in value), key=repr)
    elif isinstance(value, types.ModuleType):  # a handler's module, once imported
        out = f"<module {value.__name__}>"
    elif type(value).__module__ in ("threading", "_thread", "queue"):
        out = f"<{type(value).__name__}>"
    elif callable(value) and not dataclasses.is_dataclass(value):  # a function, a filter closure, a bound method
        out = f"<{getattr(value, '__qualname__', type(value).__name__)}>"
    elif hasattr(value, "__dict__"):
        out = [type(value).__name__, canonical(vars(value), done, path)]
    elif dataclasses.is_dataclass(value):
        out = [type(value).__name__, canonical({f.name: getattr(value, f.name) for f in dataclasses.fields(value)},
                                               done, path)]
    else:
        out = repr(value)
    done[id(value)] = value, out
    return out


def stack_state(rt: Runtime) -> dict:
    """Everything the stack holds, read through the AWS APIs, and the runtime's own state."""
    c = rt.client
    ddb, sqs, events, sfn = c("dynamodb"), c("sqs"), c("events"), c("stepfunctions")
    tables = {name: {"description": ddb.describe_table(TableName=name)["Table"],
                     "items": ddb.scan(TableName=name)["Items"]} for name in ddb.list_tables()["TableNames"]}
    streams = {}
    for name, table in tables.items():
        if arn := table["description"].get("LatestStreamArn"):
            shard = c("dynamodbstreams").describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
            it = c("dynamodbstreams").get_shard_iterator(StreamArn=arn, ShardId=shard,
                                                         ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            streams[name] = c("dynamodbstreams").get_records(ShardIterator=it)["Records"]
    queues = {url: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
              for url in sqs.list_queues().get("QueueUrls", [])}
    buses = {bus["Name"]: {rule["Name"]: [rule, events.list_targets_by_rule(Rule=rule["Name"], EventBusName=bus["Name"])
                                          ["Targets"]] for rule in events.list_rules(EventBusName=bus["Name"])["Rules"]}
             for bus in events.list_event_buses()["EventBuses"]}
    machines = {m["name"]: [sfn.describe_state_machine(stateMachineArn=m["stateMachineArn"])["definition"],
                            sfn.list_executions(stateMachineArn=m["stateMachineArn"])["executions"]]
                for m in sfn.list_state_machines()["stateMachines"]}
    s3 = c("s3")
    buckets = {b["Name"]: s3.list_objects_v2(Bucket=b["Name"]).get("Contents", []) for b in s3.list_buckets()["Buckets"]}
    ses = c("ses")
    return {
        "tables": tables, "streams": streams, "queues": queues, "buses": buses, "machines": machines, "buckets": buckets,
        "functions": c("lambda").list_functions()["Functions"],
        "parameters": c("ssm").get_parameters_by_path(Path="/", Recursive=True, WithDecryption=True)["Parameters"],
        "identities": sorted(ses.list_identities()["Identities"]), "sent": sent_emails(ACCOUNT, REGION),
        "configuration_sets": ses.list_configuration_sets()["ConfigurationSets"],
        "log_groups": c("logs").describe_log_groups()["logGroups"], "topics": c("sns").list_topics()["Topics"],
        "subscriptions": c("sns").list_subscriptions()["Subscriptions"], "roles": c("iam").list_roles()["Roles"],
        "schedules": c("scheduler").list_schedules()["Schedules"],
        "schedule_groups": c("scheduler").list_schedule_groups()["ScheduleGroups"],
        "runtime": canonical({k: v for k, v in vars(rt).items() if k not in PER_INSTANCE}),
        "rule_families": canonical(aws_rules.active()),
    }


def dirty(rt: Runtime) -> None:
    """Write into everything a test could: a journey through the real routes, then every table,
    queue, bus, machine, bucket and service by hand, and every container the build filled."""
    cid = signup(rt)
    assert sent(rt, cid) == ["welcome-1"]
    c = rt.client
    ddb = c("dynamodb")
    for name in ddb.list_tables()["TableNames"]:
        keys = ddb.describe_table(TableName=name)["Table"]["KeySchema"]
        ddb.put_item(TableName=name, Item={k["AttributeName"]: {"S": "dirt"} for k in keys})
    for url in c("sqs").list_queues()["QueueUrls"]:
        c("sqs").send_message(QueueUrl=url, MessageBody="dirt")
    c("sqs").create_queue(QueueName="dirt")
    for bus in c("events").list_event_buses()["EventBuses"]:
        c("events").put_rule(Name="dirt", EventBusName=bus["Name"], EventPattern=json.dumps({"source": ["dirt"]}))
    for m in c("stepfunctions").list_state_machines()["stateMachines"]:
        c("stepfunctions").start_execution(stateMachineArn=m["stateMachineArn"], name="dirt", input="{}")
    for b in c("s3").list_buckets()["Buckets"]:
        c("s3").put_object(Bucket=b["Name"], Key="dirt", Body=b"dirt")
    c("ssm").put_parameter(Name="/dirt", Value="dirt", Type="String")
    c("ses").verify_email_identity(EmailAddress="dirt@example.org")
    c("logs").create_log_group(logGroupName="dirt")
    c("sns").create_topic(Name="dirt")
    c("iam").create_role(RoleName="dirt", AssumeRolePolicyDocument="{}")
    c("scheduler").create_schedule(Name="dirt", ScheduleExpression="rate(1 hour)", FlexibleTimeWindow={"Mode": "OFF"},
                                   Target={"Arn": rt.template.attributes[("SequenceStepFunction", "Arn")],
                                           "RoleArn": rt.role_arn})
    rt.settle()
    rt.policies.grant(rt.role_arn, ["dirt:*"], ["*"])
    for name in ("physical", "attributes"):
        getattr(rt.template, name)["dirt"] = "dirt"
    rt.api_destinations.destinations.clear()
    for name in runtime._BUILT:
        value = getattr(rt, name)
        if isinstance(value, dict):
            value["dirt"] = "dirt"
        elif isinstance(value, (list, set)):
            (value.append if isinstance(value, list) else value.add)("dirt")
    next(iter(rt.functions.values())).env["DIRT"] = "dirt"
    rt.stream_mappings[0].batches.append(([], 0))
    rt.schedules[0]["last"] = 0.0


def test_a_restored_stack_is_the_built_one_and_holds_nothing_of_the_runtimes_before(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "_STACKS", OrderedDict())  # this test's first start builds
    builds = []
    create = Runtime._create_resources
    monkeypatch.setattr(Runtime, "_create_resources", lambda self: builds.append(self) or create(self))
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local") as first:
        built = stack_state(first)
        dirty(first)
        assert stack_state(first) != built  # the comparison sees every kind of write
    for n in (2, 3):  # a restore leaves the snapshot as it was, for the next one
        with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local") as rt:
            assert builds == [first]  # restored, not built again
            restored = stack_state(rt)
            for part in built:
                assert restored[part] == built[part], (n, part)
            dirty(rt)  # it works as the built one did
            assert not rt.errors and not rt.denied


def test_another_template_definition_or_rule_set_is_built_and_a_copy_is_never_shared(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "_STACKS", OrderedDict())
    for part in ("infra", "functions"):
        shutil.copytree(ROOT / part, tmp_path / part)
    shutil.copy(ROOT / "template.yaml", tmp_path / "template.yaml")
    builds = []
    create = Runtime._create_resources
    monkeypatch.setattr(Runtime, "_create_resources", lambda self: builds.append(self) or create(self))

    def welcome_definition(**kwargs) -> str:
        with Runtime(tmp_path, stepped=True, start=START, state_dir=tmp_path / "local", **kwargs) as rt:
            sfn = rt.client("stepfunctions")
            arn = next(a for a in rt.state_machine_arns() if a.endswith("-welcome"))
            return sfn.describe_state_machine(stateMachineArn=arn)["definition"]

    before = welcome_definition()
    assert welcome_definition() == before and len(builds) == 1
    asl = tmp_path / "infra/statemachines/welcome.asl.json"
    doc = json.loads(asl.read_text())
    doc["Comment"] = "edited"
    asl.write_text(json.dumps(doc))
    assert json.loads(welcome_definition())["Comment"] == "edited" and len(builds) == 2
    welcome_definition(rules=aws_rules.Rules(seed=1))
    welcome_definition(parameters={"LogRetentionDays": "7"})
    assert len(builds) == 4
