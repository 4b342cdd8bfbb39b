"""GDPR erasure is complete and final: after DELETE /contacts/{id} no item of either table, no
schedule name and no execution name holds the contact id, the person's running executions
are stopped, replaying the events they triggered re-creates nothing, and the same address
signing up again is a new person who gets a new welcome."""
import json
import re
from email import message_from_bytes, policy

import pytest
from conftest import START, EventTap

from funnelpilot import bus, tokens
from funnelpilot_local.runtime import LOCAL_ADMIN_KEY, ROOT, Runtime, http_api_event
from funnelpilot_local.server import site_parameters

ADMIN = {"x-api-key": LOCAL_ADMIN_KEY}
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
SITE = "http://localhost:3000"
CLICK = re.compile(r"http://127\.0\.0\.1:3000/c/([A-Za-z0-9_\-.]+)")
DAY = 86_400


@pytest.fixture
def rt(tmp_path):
    """Configured like ``make serve``: email links to the site carry the fp token."""
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local", log_level="INFO",
                 parameters=site_parameters(3000)) as runtime:
        yield runtime


@pytest.fixture
def tap(rt):
    return EventTap(rt)


def emails_to(rt, address: str, subject_part: str) -> list:
    mails = [message_from_bytes(p.read_bytes(), policy=policy.default) for p in rt.outbox.glob("*.eml")]
    return [m for m in mails if m["To"] == address and subject_part in m["Subject"]]


def collect(rt, body: dict, at_ms: int) -> int:
    route = next(r for r in rt.routes if r.method == "POST" and r.path == "/collect")
    event = http_api_event("POST", "/collect", "", {"content-type": "text/plain", "user-agent": BROWSER,
                                                    "origin": SITE}, json.dumps(body), {}, route, "198.51.100.7")
    event["requestContext"]["timeEpoch"] = at_ms
    return rt.invoke(route.function, event)["statusCode"]


def order(rt, n: int) -> None:
    resp = rt.http("POST", "/events", headers={"x-api-key": rt.template.parameters["EventsApiKey"]}, json_body={
        "type": "order.placed", "event_id": f"erase-order-{n}", "email": "ann@example.com", "order_id": f"o-{n}",
        "amount": 49, "currency": "EUR", "items": [{"sku": "core", "quantity": 1, "price": 49}]})
    assert resp.status == 202 and resp.json()["status"] == "accepted"
    assert rt.settle()


def everything(rt) -> str:
    """Every item of both tables as text (a test may Scan; the product never does)."""
    ddb = rt.client("dynamodb")
    return json.dumps([item for table in ("ContactsTable", "MetricsTable")
                       for page in ddb.get_paginator("scan").paginate(TableName=table) for item in page["Items"]])


def executions_of(rt, cid: str) -> list[dict]:
    """Every execution of every funnel with the contact in its input: (name, status)."""
    sfn, found = rt.client("stepfunctions"), []
    for machine in rt.state_machine_arns():
        for ex in sfn.list_executions(stateMachineArn=machine)["executions"]:
            if json.loads(sfn.describe_execution(executionArn=ex["executionArn"])["input"]).get("contact_id") == cid:
                found.append(ex)
    return found


def assert_no_trace(rt, cid: str) -> None:
    assert cid not in everything(rt)
    names = [s["Name"] for s in rt.client("scheduler").list_schedules()["Schedules"]]
    assert not [n for n in names if n.startswith(("repurchase-", "lapsed-"))], names  # deleted, not only renamed
    for ex in executions_of(rt, cid):
        assert cid not in ex["name"] and ex["status"] != "RUNNING", ex


def test_erasure_is_complete_and_final_and_a_re_signup_is_a_new_person(rt, tap):
    body = rt.http("POST", "/signup", json_body={"email": "ann@example.com", "consent": True, "list": "test-single",
                                                 "first_name": "Ann"}).json()
    cid = body["contact_id"]
    assert rt.settle() and rt.advance(600)
    [welcome] = emails_to(rt, "ann@example.com", "Welcome")
    html = welcome.get_body(("html",)).get_content()
    [click] = [t for t in CLICK.findall(html) if tokens.verify("c", t, 3)[2] == "0"]
    location = rt.http("GET", f"/c/{click}", headers={"user-agent": BROWSER}).headers["location"]
    fp = location.split("fp=")[1]
    assert collect(rt, {"event": "page.viewed", "path": "/pricing", "token": fp}, 1_900_000_020_000) == 204
    assert rt.settle()
    order(rt, 1)
    assert rt.advance(20 * DAY)
    order(rt, 2)  # a second order: the repurchase reminder is scheduled
    bus.publish(bus.event("funnel.handoff", cid, to="segmentation", **{"from": "welcome"}))
    assert rt.settle()

    # before: the person is everywhere, under names that do not carry the id
    schedules = rt.client("scheduler").list_schedules()["Schedules"]
    assert sorted(s["Name"].split("-")[0] for s in schedules) == ["lapsed", "repurchase"]
    assert not [s for s in schedules if cid in s["Name"]]
    running = [ex for ex in executions_of(rt, cid) if ex["status"] == "RUNNING"]
    assert running and not [ex for ex in executions_of(rt, cid) if cid in ex["name"]]
    export = rt.http("GET", f"/contacts/{cid}/export", headers=ADMIN).json()
    assert {ex["executionArn"] for ex in running} <= {e["execution_arn"] for e in export["executions"]}
    for kind in ("profile", "funnel", "did", "seg", "activity", "alert", "scored", "msg"):
        assert export["items"].get(kind), kind
    triggered = [e for e in tap.events() if e["detail"]["contact_id"] == cid]
    assert {"email.clicked", "page.viewed", "order.placed", "funnel.handoff"} <= {e["detail-type"] for e in triggered}

    assert rt.http("DELETE", f"/contacts/{cid}", headers=ADMIN).status == 204
    assert rt.settle()
    assert_no_trace(rt, cid)
    assert rt.http("GET", f"/contacts/{cid}", headers=ADMIN).status == 404

    # events in flight at erase time (every event the person triggered, published again) write nothing
    before = len(list(rt.outbox.glob("*.eml")))
    for e in triggered:
        assert rt.client("events").put_events(Entries=[{
            "Source": e["source"], "DetailType": e["detail-type"], "Detail": json.dumps(e["detail"]),
            "EventBusName": "funnelpilot"}])["FailedEntryCount"] == 0
    assert rt.settle() and rt.advance(DAY)
    assert_no_trace(rt, cid)
    assert len(list(rt.outbox.glob("*.eml"))) == before  # no email, no sales alert
    assert rt.errors == []

    # the same address signing up again is a new person: a new welcome
    again = rt.http("POST", "/signup", json_body={"email": "ann@example.com", "consent": True, "list": "test-single"})
    assert again.status == 202 and again.json()["contact_id"] == cid
    assert rt.settle()
    assert len(emails_to(rt, "ann@example.com", "Welcome")) == 2
    [new] = [ex for ex in executions_of(rt, cid) if ex["status"] == "RUNNING"]
    assert new["name"] not in {ex["name"] for ex in running}


def test_every_function_logs_to_its_own_group_with_a_retention(rt):
    """LoggingConfig names a log group the stack creates (with RetentionInDays) for every function."""
    resources = rt.template.doc["Resources"]
    functions = [lid for lid, r in resources.items() if r["Type"] == "AWS::Serverless::Function"]
    groups = {g["logGroupName"]: g.get("retentionInDays") for g in rt.client("logs").describe_log_groups()["logGroups"]}
    named = set()
    for lid in functions:
        group = rt.template.resolve(resources[lid]["Properties"]["LoggingConfig"])["LogGroup"]
        assert group == f"/aws/lambda/funnelpilot/{lid}" and groups[group] == 30, (lid, group)
        named.add(group)
    assert len(named) == len(functions) >= 19
