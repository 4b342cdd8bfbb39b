"""Bulk actions over a segment, executed by moto's Step Functions interpreter
(strict mode: the history limit is enforced, lowered here so that a run needs several executions)."""
import json
import time

import pytest

from funnelpilot import bulk, segments
from funnelpilot.errors import InvalidField
from funnelpilot_local.aws_rules import Rules
from funnelpilot_local.runtime import ROOT, Runtime

from conftest import START

MEMBERS = 400


def seed_segment(rt, segment: str, n: int) -> list[str]:
    ddb, cids, batch = rt.client("dynamodb"), [], []
    for i in range(n):
        cid = f"bulk{i:05d}"
        cids.append(cid)
        batch.append({"PutRequest": {"Item": {"pk": {"S": cid}, "sk": {"S": "PROFILE"}, "status": {"S": "active"},
                                              "email": {"S": f"{cid}@example.com"}, "segments": {"SS": [segment]}}}})
        batch.append({"PutRequest": {"Item": {"pk": {"S": cid}, "sk": {"S": f"SEG#{segment}"},
                                              "gsi1pk": {"S": f"SEG#{segment}"}, "gsi1sk": {"S": cid}}}})
        if len(batch) == 24:
            ddb.batch_write_item(RequestItems={"ContactsTable": batch})
            batch = []
    if batch:
        ddb.batch_write_item(RequestItems={"ContactsTable": batch})
    return cids


def machine(rt) -> str:
    return next(a for a in rt.state_machine_arns() if a.endswith("-bulk"))


def wait(rt, arn: str, timeout: float = 120) -> dict:
    sfn, deadline = rt.client("stepfunctions"), time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = sfn.describe_execution(executionArn=arn)
        if d["status"] != "RUNNING":
            return d
        time.sleep(0.1)
    raise AssertionError("execution still running")


def markers(rt, run_id: str) -> list[str]:
    ddb, out, kwargs = rt.client("dynamodb"), [], {
        "TableName": "ContactsTable", "KeyConditionExpression": "pk = :p",
        "ExpressionAttributeValues": {":p": {"S": f"BULK#{run_id}"}}}
    while True:
        page = ddb.query(**kwargs)
        out += [i["sk"]["S"].removeprefix("DONE#") for i in page["Items"] if i["sk"]["S"] != "RUN"]
        if "LastEvaluatedKey" not in page:
            return out
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def executions(rt) -> list[dict]:
    sfn = rt.client("stepfunctions")
    return [sfn.describe_execution(executionArn=e["executionArn"])
            for e in sfn.list_executions(stateMachineArn=machine(rt))["executions"]]


def history(rt, arn: str) -> list[dict]:
    sfn, events, kwargs = rt.client("stepfunctions"), [], {"executionArn": arn}
    while True:
        page = sfn.get_execution_history(**kwargs)
        events += page["events"]
        if not page.get("nextToken"):
            return events
        kwargs["nextToken"] = page["nextToken"]


@pytest.fixture
def reads(monkeypatch) -> list:
    """The cursor of every page of members the bulk Lambda reads (None: the first page)."""
    seen, members = [], segments.members

    def members_read(segment, *, limit=100, cursor=None):
        seen.append(cursor)
        return members(segment, limit=limit, cursor=cursor)

    monkeypatch.setattr(segments, "members", members_read)
    return seen


def tagged(rt, cids, tag) -> int:
    ddb, n = rt.client("dynamodb"), 0
    for i in range(0, len(cids), 100):
        keys = [{"pk": {"S": c}, "sk": {"S": "PROFILE"}} for c in cids[i:i + 100]]
        items = ddb.batch_get_item(RequestItems={"ContactsTable": {"Keys": keys}})["Responses"]["ContactsTable"]
        n += sum(tag in i.get("tags", {}).get("SS", []) for i in items)
    return n


def test_bulk_tag_changes_each_member_once_also_when_stopped_and_resumed(rt, reads):
    cids = seed_segment(rt, "customers", MEMBERS)
    sfn = rt.client("stepfunctions")
    first = bulk.start(machine(rt), "customers", {"tag": "spring-promo"}, run_id="promo1",
                       page_size=50, batch_size=25)
    deadline = time.monotonic() + 60
    while bulk.changed("promo1") < MEMBERS // 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sfn.stop_execution(executionArn=first["execution_arn"], cause="operator stopped it half-way")
    # moto 5.2.5 reports an execution stopped inside a Map as FAILED (AWS: ABORTED)
    assert wait(rt, first["execution_arn"])["status"] in ("ABORTED", "FAILED")
    time.sleep(0.3)  # a batch already inside its Lambda finishes
    part = bulk.changed("promo1")
    assert MEMBERS // 3 <= part < MEMBERS
    saved = rt.client("dynamodb").get_item(TableName="ContactsTable", Key={
        "pk": {"S": "BULK#promo1"}, "sk": {"S": "RUN"}})["Item"]["cursor"]["S"]
    read_before = len(reads)
    again = bulk.start(machine(rt), "customers", {"tag": "spring-promo"}, run_id="promo1",
                       page_size=50, batch_size=25)
    done = wait(rt, again["execution_arn"])
    assert done["status"] == "SUCCEEDED", done.get("cause")
    report = json.loads(done["output"])
    assert report["changed"] == MEMBERS and report["attempts"] == 2 and report["executions"] == 2
    assert sorted(markers(rt, "promo1")) == cids
    assert tagged(rt, cids, "spring-promo") == MEMBERS
    # the resumed attempt started at the saved cursor: no page applied before the stop was read again
    assert reads[read_before] == saved and reads.count(None) == 1
    assert set(reads[read_before:]) & set(reads[:read_before]) == {saved}
    assert not rt.errors


def test_a_run_needing_several_executions_changes_each_member_once(tmp_path, reads):
    limit, members, page_size = 200, 150, 10  # 25 events a page: 7 pages (70 members) an execution
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local", rules=Rules(history_limit=limit)) as rt:
        cids = seed_segment(rt, "customers", members)
        started = bulk.start(machine(rt), "customers", {"tag": "big-run"}, run_id="big1",
                             page_size=page_size, batch_size=5, history_budget=limit)
        last = None
        deadline = time.monotonic() + 120
        while last is None:
            assert time.monotonic() < deadline, "run still going"
            time.sleep(0.2)
            last = next((d for d in executions(rt) if d["status"] == "SUCCEEDED" and
                         "changed" in json.loads(d.get("output") or "{}")), None)
        runs = executions(rt)
        assert {d["status"] for d in runs} == {"SUCCEEDED"}, [(d["name"], d.get("cause")) for d in runs]
        assert len(runs) == json.loads(last["output"])["executions"] >= 3
        assert started["execution_arn"] in {d["executionArn"] for d in runs}
        assert max(len(history(rt, d["executionArn"])) for d in runs) < limit
        assert json.loads(last["output"])["changed"] == members
        assert sorted(markers(rt, "big1")) == cids and tagged(rt, cids, "big-run") == members
        # every page read once across the executions (DynamoDB may give a next key after the last full page)
        pages = members // page_size
        assert reads.count(None) == 1 and len(reads) == len(set(reads)) in (pages, pages + 1)
        assert bulk.progress("big1") == {"status": "done", "members_done": members, "executions": len(runs),
                                         "execution": last["executionArn"]}
        assert not rt.errors


def test_bulk_properties_and_rerun_of_a_finished_run_changes_nothing(rt, reads):
    cids = seed_segment(rt, "customers", 30)
    arn = machine(rt)
    done = wait(rt, bulk.start(arn, "customers", {"properties": {"role": "sales", "employees": "5"}}, run_id="plan1",
                               page_size=20, batch_size=7)["execution_arn"])
    assert json.loads(done["output"])["changed"] == 30
    item = rt.client("dynamodb").get_item(TableName="ContactsTable", Key={"pk": {"S": cids[0]}, "sk": {"S": "PROFILE"}})
    assert item["Item"]["properties"]["M"] == {"role": {"S": "sales"}, "employees": {"N": "5"}}  # as infra/fields.yaml
    pages = len(reads)
    rerun = wait(rt, bulk.start(arn, "customers", {"properties": {"role": "sales", "employees": 5}},
                                run_id="plan1")["execution_arn"])
    assert json.loads(rerun["output"])["changed"] == 30  # still 30: nobody changed twice
    assert len(reads) == pages  # a finished run reads no page again
    with pytest.raises(InvalidField):
        bulk.start(arn, "customers", {"tag": "x"}, run_id="plan1", page_size=10, batch_size=20)
    other = wait(rt, bulk.start(arn, "customers", {"tag": "x"}, run_id="plan1")["execution_arn"])
    assert other["status"] == "FAILED" and other["error"] == "InvalidField"  # a run id keeps its action


def test_bad_bulk_actions_are_refused(rt):
    with pytest.raises(InvalidField):
        bulk.validate("no-such-segment", {"tag": "x"})
    with pytest.raises(InvalidField):
        bulk.validate("customers", {"tag": "x", "untag": "y"})
    with pytest.raises(InvalidField):
        bulk.validate("customers", {"properties": {"Bad Name": 1}})
    # `set` takes the fields of infra/fields.yaml, each checked as declared, the error naming the field
    for values, field, words in [({"plan": "pro"}, "plan", "unknown field 'plan'"),
                                 ({"employees": "many"}, "employees", "employees must be a number"),
                                 ({"role": "ceo"}, "role", "role must be one of founder"),
                                 ({"company": ""}, "company", "company: give a value")]:
        with pytest.raises(InvalidField) as bad:
            bulk.validate("customers", {"properties": values})
        assert bad.value.field == field and words in bad.value.message, bad.value.message
    assert bulk.validate("customers", {"properties": {"employees": "12", "role": "sales"}}) == {
        "properties": {"employees": 12, "role": "sales"}}
    with pytest.raises(InvalidField) as unknown:
        bulk.validate("customers", {"funnel": "re-engagement"})
    assert unknown.value.field == "funnel" and "'re-engagement'" in unknown.value.message
    assert "reengagement" in unknown.value.message  # the funnels that exist are named
    assert bulk.validate("customers", {"funnel": "reengagement"}) == {"funnel": "reengagement"}


def test_cli_starts_a_run_and_prints_its_report(rt, capsys):
    from funnelpilot_local import cli

    seed_segment(rt, "customers", 12)
    assert cli.main(["bulk", "--state-machine-arn", machine(rt), "--segment", "customers",
                     "--set", "role=founder", "--run-id", "cli1", "--wait"]) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert json.loads(lines[0])["run_id"] == "cli1"
    assert json.loads(lines[-1])["changed"] == 12
    assert "progress: 12 members done, 1 executions" in out.err.splitlines()
    assert cli.main(["bulk", "--state-machine-arn", machine(rt), "--segment", "nope", "--tag", "x"]) == 2
    assert cli.main(["bulk", "--state-machine-arn", machine(rt), "--segment", "customers", "--set", "employees=many"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "error: employees: employees must be a number"
