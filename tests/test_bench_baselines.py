"""bench/raw_handlers.py is the floor the hot handlers' warm and cold times are divided by: it must do
what the real handler does on the same request. Each benchmarked route's real invocation is recorded
(bench/meter.py), the raw handler is run on the same event with AWS answered from that recording, and
the two call sequences must match call by call (``meter.shape``: operation, items, attributes written,
events and their fields), with the same answer to the client."""
import itertools
import json
import sys

import boto3
import pytest
from conftest import SINGLE, ip_for
from test_funnels import BROWSER, SCANNER, message

from funnelpilot import aws, clock, tokens
from funnelpilot_local.runtime import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import meter  # noqa: E402
import raw_handlers  # noqa: E402


@pytest.fixture
def recorded(rt, monkeypatch) -> list:
    """(payload, calls, response) of every HTTP invocation from now on, its AWS calls seen by the bench's meter."""
    meter.install()
    boto3.DEFAULT_SESSION = None  # sessions made from now on report to the meter
    aws.client.cache_clear()
    seen, original, ids = [], rt.invoke, itertools.count()

    def invoke(function, payload):
        if "routeKey" not in payload:
            return original(function, payload)
        with meter.label(f"test-{id(seen)}-{next(ids)}") as calls:
            response = original(function, payload)
        seen.append((payload, list(calls), response))
        return response

    monkeypatch.setattr(rt, "invoke", invoke)
    monkeypatch.setattr(raw_handlers, "clock", clock.now)
    raw_handlers.init()
    yield seen
    meter.uninstall()
    boto3.DEFAULT_SESSION = None
    aws.client.cache_clear()


def checked(rt, recorded: list, method: str, path: str, **request) -> list[str]:
    """Make the request, then the raw handler's on the same event at the same instant, AWS answered from
    the handler's recording: the handler's calls, after checking the raw handler made them too and
    answered the same."""
    rt.http(method, path, **request)
    payload, calls, response = recorded[-1]
    where = f"{payload['routeKey']} ({[c.name for c in calls]})"
    made = []
    try:
        with meter.replay(calls, made=made):
            raw = raw_handlers.RAW[payload["routeKey"]](payload)
    except AssertionError as exc:  # a call of another operation than the handler's
        pytest.fail(f"{where}: {exc}")
    assert not (drift := meter.drift(calls, made)), f"{where}: {drift}"
    assert raw["statusCode"] == response["statusCode"], where
    assert raw["headers"].get("location") == response["headers"].get("location"), where
    if payload["routeKey"] == "POST /signup":
        assert json.loads(raw["body"]) == json.loads(response["body"])
    return [c.name for c in calls]


def test_raw_handlers_make_the_calls_the_handlers_make(rt, recorded):
    reader = "reader@example.com"
    resp = rt.http("POST", "/signup", json_body={"email": reader, "consent": True, "list": SINGLE}, source_ip=ip_for(reader))
    cid = resp.json()["contact_id"]
    assert rt.settle()
    welcome = message(rt, cid, "welcome-1")
    pixel = f"/o/{tokens.sign('o', cid, welcome['message_id'])}"
    link = f"/c/{tokens.sign('c', cid, welcome['message_id'], '0')}"
    person, scanner = {"user-agent": BROWSER}, {"user-agent": SCANNER}
    transaction, published, counted = ["dynamodb:TransactWriteItems"], ["dynamodb:UpdateItem", "events:PutEvents"], \
        ["dynamodb:UpdateItem", "dynamodb:UpdateItem"]
    # the bench's sample signups (JSON) and its audience's (a form with a name and a source)
    assert checked(rt, recorded, "POST", "/signup", json_body={"email": "sample0@example.com", "consent": True},
                   headers=person, source_ip="10.9.0.1") == transaction
    assert checked(rt, recorded, "POST", "/signup", form={"email": "bench1@example.com", "consent": "true",
                                                          "first_name": "Reader1", "utm_source": "ads"},
                   source_ip="10.9.0.2") == transaction
    rt.advance(60)  # past the delivery window: a person's open
    assert checked(rt, recorded, "GET", pixel, headers=person) == published  # the first open: unique
    assert checked(rt, recorded, "GET", pixel, headers=person) == published
    rt.client("dynamodb").update_item(  # from now on the message of an A/B step: its variant is counted and published
        TableName="ContactsTable", Key={"pk": {"S": cid}, "sk": {"S": f"MSG#{welcome['message_id']}"}},
        UpdateExpression="SET variant = :v", ExpressionAttributeValues={":v": {"S": "b"}})
    assert checked(rt, recorded, "HEAD", pixel, headers=person) == counted  # a machine's
    assert checked(rt, recorded, "GET", link, headers=person) == counted  # right after a machine's hit: a burst
    rt.advance(60)
    assert checked(rt, recorded, "GET", link, headers=person) == published  # a person's first click
    location = recorded[-1][2]["headers"]["location"]
    assert location.startswith(json.loads(welcome["links"])[0].partition("?")[0])
    assert checked(rt, recorded, "GET", link, headers=person) == published
    assert checked(rt, recorded, "HEAD", link, headers=person) == counted
    rt.advance(60)
    assert checked(rt, recorded, "GET", link, headers=scanner) == counted
    assert checked(rt, recorded, "GET", pixel, headers=scanner) == counted


def test_drift_tells_what_differs(rt, recorded):
    """The comparison can fail: a person's open and a machine's differ, a missing call and an event
    without one of its fields too."""
    cid = rt.http("POST", "/signup", json_body={"email": "ann@example.com", "consent": True, "list": SINGLE},
                  source_ip=ip_for("ann@example.com")).json()["contact_id"]
    assert rt.settle()
    rt.advance(60)
    pixel = f"/o/{tokens.sign('o', cid, message(rt, cid, 'welcome-1')['message_id'])}"
    rt.http("GET", pixel, headers={"user-agent": BROWSER})
    rt.http("HEAD", pixel, headers={"user-agent": BROWSER})
    (_, person, _), (_, machine, _) = recorded[-2:]
    assert meter.drift(person, person) is None
    assert meter.drift(person, machine).startswith("call 2: the handler made ('events:PutEvents'")
    assert meter.drift(person, person[:1]) == f"call 2: the handler made {meter.shape(person[1])}, the baseline no call"
    entries = [{**e, "Detail": json.dumps({k: v for k, v in json.loads(e["Detail"]).items() if k != "unique"})}
               for e in person[1].params["Entries"]]
    assert "call 2" in meter.drift(person, [person[0], meter.Call("events", "PutEvents", {"Entries": entries})])
