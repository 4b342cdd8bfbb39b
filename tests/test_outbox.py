"""Transactional outbox: lifecycle events commit with the change they announce (an OUTBOX#
item in the same transaction, or on a new item it writes anyway: ``entries``) and reach the bus through the table's stream and
OutboxRelayFunction, run by the local runtime's event source mapping emulation (template
FilterCriteria, batches, retries, bisection, on-failure destination)."""
import copy
import json

import pytest
from conftest import SINGLE, funnel_counts
from botocore.exceptions import ClientError, EndpointConnectionError
from test_funnels import sent, signup
from test_gdpr import ADMIN, engaged_contact, everything

from funnelpilot import aws, bus, outbox

RELAY = "OutboxRelayFunction"


def items(rt, cid, prefix=None) -> list[dict]:
    """The contact's items (those whose sort key starts with ``prefix``)."""
    condition, values = "pk = :c", {":c": {"S": cid}}
    if prefix:
        condition, values[":p"] = condition + " AND begins_with(sk, :p)", {"S": prefix}
    return rt.client("dynamodb").query(TableName="ContactsTable", KeyConditionExpression=condition,
                                       ExpressionAttributeValues=values, ConsistentRead=True)["Items"]


def carriers(rt, cid) -> list[dict]:
    """The contact's items that hold events for the relay: outbox items and items carrying ``entries``."""
    return [i for i in items(rt, cid) if "entry" in i or "S" in i.get("entries", {})]  # (FUNNEL#'s is a number)


def welcomes(rt, cid) -> int:
    return sent(rt, cid).count("welcome-1")


@pytest.fixture
def relayed(rt):
    """The event of every invocation of the relay, in order."""
    batches, invoke = [], rt.invoke

    def recording(function, payload):
        if function == RELAY:
            batches.append(copy.deepcopy(payload))
        return invoke(function, payload)

    rt.invoke = recording
    yield batches


@pytest.fixture
def failing_put_events():
    """Make the layer's PutEvents fail (as a network failure after botocore's retries would)
    while ``fail(entries)`` is true for the entries of the call."""
    events = aws.client("events").meta.events
    registered = []

    def install(fail):
        def before_call(params, **_):
            if fail(json.loads(params["body"])["Entries"]):
                raise EndpointConnectionError(endpoint_url="https://events.us-east-1.amazonaws.com/")

        events.register("before-call.events.PutEvents", before_call)
        registered.append(before_call)

    yield install
    for handler in registered:
        events.unregister("before-call.events.PutEvents", handler)


def template_retries(rt) -> int:
    return rt.template.resources[RELAY]["Properties"]["Events"]["Outbox"]["Properties"]["MaximumRetryAttempts"]


def test_signup_writes_its_event_in_its_transaction_and_makes_no_put_events(rt, tap, aws_calls):
    aws_calls.clear()
    resp = rt.http("POST", "/signup", json_body={"email": "ann@example.com", "consent": True, "list": SINGLE,
                                                 "utm_source": "ads"})
    assert resp.status == 202
    # one call: the transaction counts the per-IP and per-address rate windows too
    assert aws_calls == ["dynamodb:TransactWriteItems"]
    cid = resp.json()["contact_id"]
    assert items(rt, cid, "OUTBOX#") == []  # the consent record carries the event: no outbox item
    [item] = carriers(rt, cid)
    [entry] = outbox.entries(item)
    assert item["sk"]["S"].startswith("CONSENT#") and item["confirmation"] == {"S": "single_opt_in"}
    assert entry["DetailType"] == "contact.subscribed" and entry["EventBusName"] == "funnelpilot"
    assert rt.settle()
    [event] = tap.events("contact.subscribed")
    assert event["detail"] == json.loads(entry["Detail"]) and event["detail"]["utm_source"] == "ads"
    assert carriers(rt, cid) == [item]  # the record stays, the event published once
    assert welcomes(rt, cid) == 1


def test_a_form_posted_twice_in_one_second_overwrites_its_consent_record_and_the_second_event_has_an_outbox_item(rt, tap):
    body = {"email": "twice@example.com", "consent": True, "list": SINGLE}
    first, second = (rt.http("POST", "/signup", json_body=body) for _ in range(2))  # one second, one list
    assert first.status == second.status == 202
    cid = first.json()["contact_id"]
    [record] = items(rt, cid, "CONSENT#")  # one record of that second and list, the second signup's
    [outboxed] = items(rt, cid, "OUTBOX#")
    # the first's record, which carried its event (relayed from its INSERT), was overwritten
    assert record["confirmation"] == {"S": "already_active"} and "entries" not in record
    assert rt.settle()
    events = tap.events("contact.subscribed")
    assert len(events) == 2 and events[1]["detail"]["event_id"] == json.loads(json.loads(outboxed["entry"]["S"])["Detail"])["event_id"]
    assert welcomes(rt, cid) == 1 and rt.errors == []


def test_event_delivery_failing_after_the_commit_is_retried_and_welcomes_once(rt, tap, relayed, failing_put_events):
    attempts = []

    def first_call(entries):
        attempts.append(entries)
        return len(attempts) == 1

    failing_put_events(first_call)
    resp = rt.http("POST", "/signup", json_body={"email": "bo@example.com", "consent": True, "list": SINGLE})
    assert resp.status == 202  # the signup committed; its event had not reached the bus yet
    cid = resp.json()["contact_id"]
    assert rt.settle()
    assert json.loads(attempts[0][0]["Detail"])["contact_id"] == cid
    assert [len(b["Records"]) for b in relayed] == [1, 1]  # failed, then retried by the mapping
    assert welcomes(rt, cid) == 1 and len(tap.events("contact.subscribed")) == 1
    assert len(carriers(rt, cid)) == 1 and rt.dead_letters == [] and rt.errors == []
    # the re-signup a visitor makes after an error page changes nothing either
    assert rt.http("POST", "/signup", json_body={"email": "bo@example.com", "consent": True, "list": SINGLE}).status == 202
    assert rt.settle() and welcomes(rt, cid) == 1


def test_a_duplicate_stream_delivery_is_absorbed_downstream(rt, tap, relayed):
    cid = signup(rt, "cy@example.com")
    [batch] = relayed
    score = rt.client("dynamodb").get_item(TableName="ContactsTable",
                                           Key={"pk": {"S": cid}, "sk": {"S": "PROFILE"}})["Item"].get("score")
    rt.invoke(RELAY, batch)  # Lambda delivers stream records at least once
    assert rt.settle()
    events = tap.events("contact.subscribed")
    assert len(events) == 2 and events[0]["detail"] == events[1]["detail"]  # the same event_id, twice
    assert welcomes(rt, cid) == 1 and funnel_counts(rt, "welcome")["entered"] == 1
    assert rt.client("dynamodb").get_item(TableName="ContactsTable",
                                          Key={"pk": {"S": cid}, "sk": {"S": "PROFILE"}})["Item"].get("score") == score
    assert rt.errors == []


def test_only_outbox_inserts_invoke_the_relay(rt, relayed):
    cid = signup(rt, "dee@example.com")
    assert rt.advance(3 * 86400)  # the welcome sequence writes messages, funnel entries, the profile
    records = [r for b in relayed for r in b["Records"]]
    assert records and all(r["eventName"] == "INSERT" and outbox.entries(r["dynamodb"]["NewImage"]) for r in records)
    assert {r["eventSource"] for r in records} == {"aws:dynamodb"}
    assert {r["eventSourceARN"] for r in records} == {rt.template.attributes[("ContactsTable", "StreamArn")]}
    assert isinstance(records[0]["dynamodb"]["ApproximateCreationDateTime"], int)
    assert len(sent(rt, cid)) >= 2 and len(carriers(rt, cid)) == len(records)


def test_a_poison_record_is_bisected_out_of_its_batch_and_dead_lettered(rt, relayed, failing_put_events):
    ok = rt.http("POST", "/signup", json_body={"email": "eve@example.com", "consent": True, "list": SINGLE}).json()["contact_id"]
    bad = rt.http("POST", "/signup", json_body={"email": "fay@example.com", "consent": True, "list": SINGLE}).json()["contact_id"]
    failing_put_events(lambda entries: any(json.loads(e["Detail"])["contact_id"] == bad for e in entries))
    assert rt.settle()
    retries = template_retries(rt)
    assert [len(b["Records"]) for b in relayed] == [2, 1] + [1] * (1 + retries)  # split, then retried
    assert welcomes(rt, ok) == 1 and welcomes(rt, bad) == 0
    [dead] = rt.dead_letters
    info = dead["input"]["DDBStreamBatchInfo"]
    assert info["batchSize"] == 1 and info["streamArn"] == rt.template.attributes[("ContactsTable", "StreamArn")]
    assert dead["input"]["requestContext"]["approximateInvokeCount"] == 1 + retries
    assert dead["input"]["requestContext"]["condition"] == "RetryAttemptsExhausted"
    sqs = rt.client("sqs")
    [message] = sqs.receive_message(QueueUrl=sqs.get_queue_url(QueueName="DeadLetterQueue")["QueueUrl"])["Messages"]
    assert json.loads(message["Body"])["DDBStreamBatchInfo"] == info
    # the event is not lost: its item stays (until its TTL) for a replay once the cause is fixed
    [kept] = carriers(rt, bad)
    assert info["startSequenceNumber"] == info["endSequenceNumber"]
    assert [e["DetailType"] for e in outbox.entries(kept)] == ["contact.subscribed"]


def test_after_an_erase_no_item_holds_the_contact_id(rt, tap):
    cid = engaged_contact(rt)
    assert rt.http("DELETE", f"/contacts/{cid}", headers=ADMIN).status == 204
    [pending] = items(rt, cid)  # everything is gone but the event's outbox item
    assert json.loads(pending["entry"]["S"])["DetailType"] == "contact.erased"
    assert rt.settle()
    [erased] = tap.events("contact.erased")
    assert erased["detail"]["contact_id"] == cid and erased["detail"]["items"] >= 3
    assert items(rt, cid) == [] and cid not in everything(rt)


def test_a_status_change_and_its_event_commit_together_or_not_at_all(rt, tap):
    cid = signup(rt, "gus@example.com")
    from funnelpilot import consent

    signed_up = items(rt, cid, "OUTBOX#")  # none: the signup's event rides on its consent record
    assert consent.unsubscribe(cid, None, "test") is True
    assert consent.unsubscribe(cid, None, "test") is False  # a repeat writes nothing, no second event
    assert consent.unsubscribe("nobody", None, "test") is False
    [withdrawn] = [i for i in items(rt, cid, "CONSENT#") if i["sk"]["S"].endswith("#withdrawn")]  # carries the event
    assert [e["DetailType"] for e in outbox.entries(withdrawn)] == ["contact.unsubscribed"]
    assert items(rt, cid, "OUTBOX#") == signed_up and items(rt, "nobody") == []
    assert rt.settle()
    assert [e["detail"]["contact_id"] for e in tap.events("contact.unsubscribed")] == [cid]


def test_a_cancelled_transaction_leaves_no_event(rt, tap, relayed):
    cid = signup(rt, "hal@example.com")
    relayed.clear()
    before = items(rt, cid, "OUTBOX#")  # none (the signup's event rides on its consent record)
    event = bus.event("contact.suppressed", cid, reason="test")
    with pytest.raises(ClientError, match="TransactionCanceled"):  # the second write fails after the first applied
        aws.transact_write([outbox.put(event), {"Update": {
            "TableName": "ContactsTable", "Key": {"pk": {"S": cid}, "sk": {"S": "PROFILE"}},
            "UpdateExpression": "ADD email :one", "ExpressionAttributeValues": {":one": {"N": "1"}}}}])
    assert items(rt, cid, "OUTBOX#") == before
    assert rt.settle()
    assert relayed == [] and tap.events("contact.suppressed") == []


def profile_item(rt, cid) -> dict:
    return rt.client("dynamodb").get_item(TableName="ContactsTable", Key={"pk": {"S": cid}, "sk": {"S": "PROFILE"}},
                                          ConsistentRead=True)["Item"]


@pytest.mark.parametrize("first_list, first_status, then_list, status, event", [
    (SINGLE, "unsubscribed", SINGLE, "unsubscribed", "contact.pending"),  # only the owner's click reactivates
    (SINGLE, "unsubscribed", "insiders", "unsubscribed", "contact.pending"),
    ("insiders", "pending", SINGLE, "pending", "contact.pending"),  # a single opt-in list skips no link
    ("insiders", "pending", "insiders", "pending", "contact.pending"),
    (SINGLE, "suppressed", SINGLE, "suppressed", None),  # suppression stays, nothing is sent
    (SINGLE, "active", "insiders", "active", "contact.subscribed"),  # already confirmed or opted in
])
def test_re_signup_status_rules(rt, tap, first_list, first_status, then_list, status, event):
    from funnelpilot import consent

    cid = rt.http("POST", "/signup", json_body={"email": "ivy@example.com", "consent": True,
                                                "list": first_list}).json()["contact_id"]
    assert rt.settle()
    if first_status == "unsubscribed":
        assert consent.unsubscribe(cid, None, "test")
    elif first_status == "suppressed":
        assert consent.suppress(cid, "hard_bounce")
    assert profile_item(rt, cid)["status"]["S"] == first_status
    assert rt.settle()
    before = {kind: len(tap.events(kind)) for kind in ("contact.pending", "contact.subscribed")}
    resp = rt.http("POST", "/signup", json_body={"email": "ivy@example.com", "consent": True, "list": then_list})
    assert resp.status == 202 and resp.json()["contact_id"] == cid
    item = profile_item(rt, cid)
    assert item["status"]["S"] == status and set(item["lists"]["SS"]) == {first_list, then_list}
    assert ("status_reason" in item) == (status in ("unsubscribed", "suppressed"))
    assert rt.settle()
    after = {kind: tap.events(kind) for kind in before}
    assert {kind: len(e) - before[kind] for kind, e in after.items()} == {k: int(k == event) for k in before}
    if event:
        detail = after[event][-1]["detail"]
        assert detail["list"] == then_list
        assert detail.get("resubscribe", detail.get("resubscribed")) is (first_status == "unsubscribed")
    published = {e["detail"]["event_id"] for e in tap.events()}  # every outbox item's event was relayed
    assert {i["sk"]["S"].removeprefix("OUTBOX#") for i in items(rt, cid, "OUTBOX#")} <= published


def test_a_confirmation_s_two_events_ride_on_its_consent_record_and_are_published_in_order(rt, tap, relayed, aws_calls):
    """No outbox item: the consent record the confirmation writes anyway carries its events (a new item,
    so an INSERT the relay's second filter takes), one transaction item (2 WRU) less."""
    from test_double_opt_in import confirm_path, mails, signup as pending_signup

    cid = pending_signup(rt)
    [mail] = mails(rt)
    before = {i["sk"]["S"] for i in items(rt, cid, outbox.PREFIX)}
    relayed.clear()
    aws_calls.clear()
    assert rt.http("GET", confirm_path(mail)).status == 200
    assert aws_calls.count("dynamodb:TransactWriteItems") == 1
    assert rt.settle()
    [record] = relayed[0]["Records"]  # the consent record's insert, relayed first
    assert record["dynamodb"]["Keys"]["sk"]["S"].startswith("CONSENT#") and record["dynamodb"]["Keys"]["sk"]["S"].endswith(
        "#confirmed")
    assert [e["DetailType"] for e in outbox.entries(record["dynamodb"]["NewImage"])] == [
        "contact.confirmed", "contact.subscribed"]
    [confirmed], [subscribed] = tap.events("contact.confirmed"), tap.events("contact.subscribed")
    assert confirmed["detail"]["contact_id"] == subscribed["detail"]["contact_id"] == cid
    assert {i["sk"]["S"] for i in items(rt, cid, outbox.PREFIX)} == before  # no outbox item of its own
    assert rt.http("GET", confirm_path(mail)).status == 200 and rt.settle()  # a repeat click: nothing more
    assert len(tap.events("contact.subscribed")) == 1
