"""Bulk actions over a 1,000-member segment, executed by moto's Step Functions interpreter."""
import json
import time

import pytest

from funnelpilot import bulk
from funnelpilot.errors import InvalidField

MEMBERS = 1000


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


def tagged(rt, cids, tag) -> int:
    ddb, n = rt.client("dynamodb"), 0
    for i in range(0, len(cids), 100):
        keys = [{"pk": {"S": c}, "sk": {"S": "PROFILE"}} for c in cids[i:i + 100]]
        items = ddb.batch_get_item(RequestItems={"ContactsTable": {"Keys": keys}})["Responses"]["ContactsTable"]
        n += sum(tag in i.get("tags", {}).get("SS", []) for i in items)
    return n


def test_bulk_tag_over_1000_members_changes_each_once_also_when_restarted(rt):
    cids = seed_segment(rt, "customers", MEMBERS)
    sfn = rt.client("stepfunctions")
    first = bulk.start(machine(rt), "customers", {"tag": "spring-promo"}, run_id="promo1",
                       page_size=200, batch_size=25)
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
    again = bulk.start(machine(rt), "customers", {"tag": "spring-promo"}, run_id="promo1",
                       page_size=200, batch_size=25)
    done = wait(rt, again["execution_arn"])
    assert done["status"] == "SUCCEEDED", done.get("cause")
    report = json.loads(done["output"])
    assert report["changed"] == MEMBERS and report["attempts"] == 2
    assert sorted(markers(rt, "promo1")) == cids
    assert tagged(rt, cids, "spring-promo") == MEMBERS
    assert not rt.errors


def test_bulk_properties_and_rerun_of_a_finished_run_changes_nothing(rt):
    cids = seed_segment(rt, "customers", 30)
    arn = machine(rt)
    done = wait(rt, bulk.start(arn, "customers", {"properties": {"plan": "pro", "seats": 5}}, run_id="plan1",
                               page_size=20, batch_size=7)["execution_arn"])
    assert json.loads(done["output"])["changed"] == 30
    item = rt.client("dynamodb").get_item(TableName="ContactsTable", Key={"pk": {"S": cids[0]}, "sk": {"S": "PROFILE"}})
    assert item["Item"]["properties"]["M"] == {"plan": {"S": "pro"}, "seats": {"N": "5"}}
    rerun = wait(rt, bulk.start(arn, "customers", {"properties": {"plan": "pro", "seats": 5}}, run_id="plan1")["execution_arn"])
    assert json.loads(rerun["output"])["changed"] == 30  # still 30: nobody changed twice
    history = rt.client("stepfunctions").get_execution_history(executionArn=rerun["executionArn"])["events"]
    assert "MapStateEntered" in [e["type"] for e in history]


def test_bad_bulk_actions_are_refused(rt):
    with pytest.raises(InvalidField):
        bulk.validate("no-such-segment", {"tag": "x"})
    with pytest.raises(InvalidField):
        bulk.validate("customers", {"tag": "x", "untag": "y"})
    with pytest.raises(InvalidField):
        bulk.validate("customers", {"properties": {"Bad Name": 1}})


def test_cli_starts_a_run_and_prints_its_report(rt, capsys):
    from funnelpilot_local import cli

    seed_segment(rt, "customers", 12)
    assert cli.main(["bulk", "--state-machine-arn", machine(rt), "--segment", "customers",
                     "--set", "plan=pro", "--run-id", "cli1", "--wait"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[0])["run_id"] == "cli1"
    assert json.loads(lines[-1])["changed"] == 12
    assert cli.main(["bulk", "--state-machine-arn", machine(rt), "--segment", "nope", "--tag", "x"]) == 2
