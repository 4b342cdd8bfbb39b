"""Strict mode, DynamoDB (funnelpilot_local.aws_rules.dynamodb): the limits and transaction
conflicts of an account, and the code surviving them - concurrent writers on one hot item
lose nothing and count nothing twice."""
import json
import threading
import uuid

import pytest
from botocore.exceptions import ClientError

from conftest import START
from funnelpilot import aws, bus, clock
from funnelpilot_local.aws_rules import Rules, dynamodb
from funnelpilot_local.runtime import ROOT, Runtime

TABLE = "ContactsTable"
LIMIT = 400 * 1024


def runtime(tmp_path, name: str, **rules) -> Runtime:
    return Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / name, rules=Rules(**rules))


def sized(pk: str, size: int, **more) -> dict:
    """An item of exactly ``size`` bytes as DynamoDB counts them (names + values)."""
    item = {"pk": {"S": pk}, "sk": {"S": "BIG"}, **more}
    return {**item, "blob": {"S": "x" * (size - dynamodb.item_size(item) - len("blob"))}}


def key(pk: str, sk: str = "BIG") -> dict:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def error_of(call) -> dict:
    with pytest.raises(ClientError) as info:
        call()
    return info.value.response


def stored(rt, pk: str, sk: str = "BIG") -> dict | None:
    return rt.client("dynamodb").get_item(TableName=TABLE, Key=key(pk, sk), ConsistentRead=True).get("Item")


# ---------------------------------------------------------------- limits
def test_item_size_is_counted_as_dynamodb_documents_it():
    # names + values; numbers: 1 byte per 2 significant digits + 1; list/map: 3 + 1 per element
    assert dynamodb.item_size({"n": {"N": "-0012300.4500"}}) == 1 + (len("1230045") + 1) // 2 + 1
    assert dynamodb.item_size({"ok": {"BOOL": True}, "b": {"B": b"\x00\x01\x02"}}) == 2 + 1 + 1 + 3
    assert dynamodb.item_size({"m": {"M": {"ab": {"S": "xyz"}, "l": {"L": [{"NULL": True}, {"S": ""}]}}}}) == (
        1 + 3 + (1 + 2 + 3) + (1 + 1 + 3 + (1 + 1) + (1 + 0)))
    assert dynamodb.item_size({"s": {"SS": ["é", "ab"]}}) == 1 + 2 + 2


def test_a_401_kb_item_is_refused_as_dynamodb_refuses_it_and_nothing_is_written(rt):
    ddb = rt.client("dynamodb")
    nested = {"tags": {"L": [{"S": "a"}, {"N": "12345"}]}, "props": {"M": {"k": {"BOOL": True}}}}
    ddb.put_item(TableName=TABLE, Item=sized("at-limit", LIMIT, **nested))  # exactly 400 KB is stored
    assert dynamodb.item_size(stored(rt, "at-limit")) == LIMIT
    for item in (sized("over", LIMIT + 1, **nested), sized("over", 401 * 1024)):
        err = error_of(lambda: ddb.put_item(TableName=TABLE, Item=item))
        assert err["Error"] == {"Code": "ValidationException", "Message": "Item size has exceeded the maximum allowed size"}
        err = error_of(lambda: ddb.batch_write_item(RequestItems={TABLE: [{"PutRequest": {"Item": item}}]}))
        assert err["Error"]["Message"] == "Item size has exceeded the maximum allowed size"
        err = error_of(lambda: ddb.transact_write_items(TransactItems=[{"Put": {"TableName": TABLE, "Item": item}}]))
        assert err["Error"]["Code"] == "ValidationException"  # a Put's size is known up front: not a cancellation
    assert stored(rt, "over") is None

    # an update whose result would be 401 KB: refused whole (moto alone applies the first SET, then fails)
    ddb.put_item(TableName=TABLE, Item={**key("grow"), "note": {"S": "small"}})
    grow = {"UpdateExpression": "SET note = :n, #b = :b", "ExpressionAttributeNames": {"#b": "blob"},
            "ExpressionAttributeValues": {
        ":n": {"S": "changed"}, ":b": {"S": "x" * (401 * 1024)}}}
    err = error_of(lambda: ddb.update_item(TableName=TABLE, Key=key("grow"), **grow))
    assert err["Error"] == {"Code": "ValidationException",
                            "Message": "Item size to update has exceeded the maximum allowed size"}
    assert stored(rt, "grow") == {**key("grow"), "note": {"S": "small"}}
    # in a transaction it is a cancellation with reason ValidationError, and the other action is not applied
    err = error_of(lambda: ddb.transact_write_items(TransactItems=[
        {"Put": {"TableName": TABLE, "Item": {**key("other"), "v": {"N": "1"}}}},
        {"Update": {"TableName": TABLE, "Key": key("grow"), **grow}}]))
    assert err["Error"]["Code"] == "TransactionCanceledException"
    assert err["CancellationReasons"] == [{"Code": "None"}, {
        "Code": "ValidationError", "Message": "Item size to update has exceeded the maximum allowed size"}]
    assert stored(rt, "other") is None and stored(rt, "grow")["note"] == {"S": "small"}


def test_an_update_that_copies_the_item_into_itself_is_sized_after_copying(rt):
    """Paths on the right of an update take the item's values (aws_rules.dynamodb._update_bound bounds them
    before deciding whether the exact size must be computed): a copy of a 150 KB attribute is 300 KB more."""
    ddb = rt.client("dynamodb")
    ddb.put_item(TableName=TABLE, Item=sized("copy", 150 * 1024))
    for expression in ("SET dup = #b, dup2 = #b", "SET dup = if_not_exists(#m, #b), again = #b",
                       "SET dup = list_append(#l, #l), #l = #l"):
        names = {"#l": "list"} if "#l" in expression else {"#b": "blob", **({"#m": "gone"} if "#m" in expression else {})}
        if "#l" in expression:
            ddb.update_item(TableName=TABLE, Key=key("copy"), UpdateExpression="SET #l = :l REMOVE #b",
                            ExpressionAttributeNames={"#l": "list", "#b": "blob"},
                            ExpressionAttributeValues={":l": {"L": [{"S": "y" * (140 * 1024)}]}})
        err = error_of(lambda: ddb.update_item(TableName=TABLE, Key=key("copy"), UpdateExpression=expression,
                                               ExpressionAttributeNames=names))
        assert err["Error"]["Message"] == "Item size to update has exceeded the maximum allowed size", expression
        assert "dup" not in stored(rt, "copy")
    ddb.update_item(TableName=TABLE, Key=key("copy"), UpdateExpression="SET dup = #l", ExpressionAttributeNames={"#l": "list"})
    assert stored(rt, "copy")["dup"] == stored(rt, "copy")["list"]  # 280 KB: allowed


def test_a_transaction_of_updates_is_held_to_4_mb_by_their_exact_sizes(rt):
    """14 updates of 100 KB items: bounded above 4 MB together (each bound is about 3x the item), 1.4 MB exactly."""
    ddb = rt.client("dynamodb")
    for i in range(14):
        ddb.put_item(TableName=TABLE, Item=sized(f"u{i}", 100 * 1024))
    ddb.transact_write_items(TransactItems=[{"Update": {
        "TableName": TABLE, "Key": key(f"u{i}"), "UpdateExpression": "SET note = :n",
        "ExpressionAttributeValues": {":n": {"S": "z" * (80 * 1024)}}}} for i in range(14)])
    assert all(stored(rt, f"u{i}")["note"]["S"] == "z" * (80 * 1024) for i in range(14))


def test_transactions_hold_at_most_100_actions_and_4_mb(rt):
    ddb = rt.client("dynamodb")
    puts = [{"Put": {"TableName": TABLE, "Item": key(f"p{i}", "ACTION")}} for i in range(101)]
    err = error_of(lambda: ddb.transact_write_items(TransactItems=puts))
    assert err["Error"]["Code"] == "ValidationException"
    assert err["Error"]["Message"].endswith("failed to satisfy constraint: Member must have length less than or "
                                            "equal to 100")
    assert stored(rt, "p0", "ACTION") is None
    ddb.transact_write_items(TransactItems=puts[:100])
    assert stored(rt, "p99", "ACTION") is not None

    # 11 items of 390 KB: each under 400 KB, together over 4 MB
    big = [{"Put": {"TableName": TABLE, "Item": sized(f"b{i}", 390 * 1024)}} for i in range(11)]
    err = error_of(lambda: ddb.transact_write_items(TransactItems=big))
    assert err["Error"] == {"Code": "ValidationException", "Message": "Transaction request cannot be larger than 4 MB"}
    assert stored(rt, "b0") is None
    ddb.transact_write_items(TransactItems=big[:10])
    assert stored(rt, "b9") is not None


# ---------------------------------------------------------------- conflicts: injection
def _injected_run(tmp_path, name: str, seed: int, threads: int) -> set[int]:
    """60 transactions (each a fresh Put and an ADD on one of three shared rows); which were cancelled."""
    cancelled, lock = set(), threading.Lock()
    with runtime(tmp_path, name, seed=seed, conflict_rate=0.3, transaction_conflicts=False) as rt:
        ddb = rt.client("dynamodb")

        def one(i: int) -> None:
            items = [{"Put": {"TableName": TABLE, "Item": key(f"t{i}", "TX")}},
                     {"Update": {"TableName": TABLE, "Key": key(f"row{i % 3}", "TX"),
                                 "UpdateExpression": "ADD n :one", "ExpressionAttributeValues": {":one": {"N": "1"}}}}]
            try:
                ddb.transact_write_items(TransactItems=items)
            except ClientError as exc:
                reasons = [r["Code"] for r in exc.response["CancellationReasons"]]
                assert sorted(reasons) == ["None", "TransactionConflict"], reasons
                assert exc.response["Error"]["Message"] == (
                    f"Transaction cancelled, please refer cancellation reasons for specific reasons "
                    f"[{', '.join(reasons)}]")
                with lock:
                    cancelled.add(i)

        work = list(range(60))
        runners = [threading.Thread(target=lambda part=work[k::threads]: [one(i) for i in part])
                   for k in range(threads)]
        for t in runners:
            t.start()
        for t in runners:
            t.join()
        for i in work:  # a cancelled transaction wrote nothing
            assert (stored(rt, f"t{i}", "TX") is None) == (i in cancelled)
        assert sum(int(stored(rt, f"row{r}", "TX")["n"]["N"]) for r in range(3)) == 60 - len(cancelled)
    return cancelled


def test_injected_conflicts_are_the_same_for_a_seed_whatever_the_thread_scheduling(tmp_path):
    first = _injected_run(tmp_path, "a", seed=7, threads=1)
    assert 0.15 * 60 <= len(first) <= 0.45 * 60  # about conflict_rate of the calls
    assert _injected_run(tmp_path, "b", seed=7, threads=8) == first
    assert _injected_run(tmp_path, "c", seed=8, threads=1) != first


# ---------------------------------------------------------------- conflicts: real overlap
def _add(n: int, pk: str = "hot") -> dict:
    return {"Update": {"TableName": TABLE, "Key": key(pk, "ROW"), "UpdateExpression": "ADD n :n",
                       "ExpressionAttributeValues": {":n": {"N": str(n)}}}}


def test_two_writers_on_one_item_conflict_while_one_is_in_flight(rt):
    ddb = rt.client("dynamodb")
    with dynamodb.hold(TABLE, key("hot", "ROW")) as held:
        first = threading.Thread(target=lambda: ddb.transact_write_items(TransactItems=[_add(1), _add(1, "cold")]))
        first.start()
        held.wait()  # the first transaction's items are in flight
        err = error_of(lambda: ddb.transact_write_items(TransactItems=[_add(100, "elsewhere"), _add(10)]))
        assert err["Error"]["Code"] == "TransactionCanceledException"
        assert err["CancellationReasons"] == [{"Code": "None"}, {"Code": "TransactionConflict",
                                                                 "Message": "Transaction is ongoing for the item"}]
        err = error_of(lambda: ddb.update_item(TableName=TABLE, Key=key("hot", "ROW"), UpdateExpression="ADD n :n",
                                               ExpressionAttributeValues={":n": {"N": "10"}}))
        assert err["Error"] == {"Code": "TransactionConflictException", "Message": "Transaction is ongoing for the item"}
        assert "Item" not in ddb.get_item(TableName=TABLE, Key=key("hot", "ROW"))  # reads do not conflict
        ddb.put_item(TableName=TABLE, Item=key("unrelated", "ROW"))  # nor writes on other items
    first.join()
    assert stored(rt, "hot", "ROW")["n"] == {"N": "1"} and stored(rt, "elsewhere", "ROW") is None

    # a single write in flight: other writes go through (DynamoDB serialises them), a TransactGetItems does not
    with dynamodb.hold(TABLE, key("hot", "ROW")) as held:
        first = threading.Thread(target=lambda: ddb.update_item(
            TableName=TABLE, Key=key("hot", "ROW"), UpdateExpression="ADD n :n",
            ExpressionAttributeValues={":n": {"N": "1"}}))
        first.start()
        held.wait()
        ddb.update_item(TableName=TABLE, Key=key("hot", "ROW"), UpdateExpression="ADD n :n",
                        ExpressionAttributeValues={":n": {"N": "1"}})
        ddb.transact_write_items(TransactItems=[_add(10)])
        err = error_of(lambda: ddb.transact_get_items(TransactItems=[
            {"Get": {"TableName": TABLE, "Key": key("cold", "ROW")}}, {"Get": {"TableName": TABLE, "Key": key("hot", "ROW")}}]))
        assert [r["Code"] for r in err["CancellationReasons"]] == ["None", "TransactionConflict"]
    first.join()
    assert stored(rt, "hot", "ROW")["n"] == {"N": "13"}


def test_transact_write_outlasts_an_overlap_and_gives_up_with_the_error(rt):
    ddb = rt.client("dynamodb")
    with dynamodb.hold(TABLE, key("hot", "ROW")) as held:
        first = threading.Thread(target=lambda: ddb.transact_write_items(TransactItems=[_add(1)]))
        first.start()
        held.wait()
        with pytest.raises(ClientError) as info:  # still in flight after every retry: the conflict surfaces
            aws.transact_write([_add(10), _add(100, "cold")], attempts=3, base_delay=0.001)
        assert aws.is_conflict(info.value)
        retried = threading.Thread(target=lambda: aws.transact_write([_add(10), _add(100, "cold")]))
        retried.start()
        threading.Event().wait(0.1)
    first.join()
    retried.join()
    assert stored(rt, "hot", "ROW")["n"] == {"N": "11"} and stored(rt, "cold", "ROW")["n"] == {"N": "100"}


# ---------------------------------------------------------------- acceptance: 50 writers on one item
def concurrently(rt: Runtime, threads: int = 50) -> None:
    """Deliver what is queued with ``threads`` deliveries at a time, each with the runtime's
    asynchronous-invocation semantics (two retries, then the dead-letter queue)."""
    runners = [threading.Thread(target=rt.pump) for _ in range(threads)]
    for t in runners:
        t.start()
    for t in runners:
        t.join()
    assert rt.settle()


def test_50_concurrent_first_opens_on_one_metrics_row_are_each_counted_once(tmp_path):
    """Sends are counted by the step that made them (funnelpilot.metrics); the metrics function counts
    a person's first open of each email: 50 at once on one step's row, 10 delivered twice and 5
    published again under a new event id, are 50."""
    with runtime(tmp_path, "metrics", conflict_rate=0.3) as rt:
        detail = {"funnel": "welcome", "step": "send-welcome-1", "template": "welcome-1", "human": True, "unique": True}
        opens = [bus.event("email.opened", f"c{i:02d}", message_id=f"m{i:02d}", **detail) for i in range(50)]
        again = opens[:10] + [bus.event("email.opened", f"c{i:02d}", message_id=f"m{i:02d}", **detail) for i in range(5)]
        bus.publish(*opens, *again)
        concurrently(rt)
        assert rt.dead_letters == [] and rt.errors == []
        day = clock.iso()[:10]
        rows = {i["sk"]["S"]: i for i in rt.client("dynamodb").query(
            TableName="MetricsTable", KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": "FUNNEL#welcome"}})["Items"]}
        step = rows[f"DAY#{day}#STEP#send-welcome-1"]
        assert (step["human_opens"], step["template"]) == ({"N": "50"}, {"S": "welcome-1"})
        assert set(rows) == {f"DAY#{day}#STEP#send-welcome-1"}  # one item: the template's figures are its steps'


def test_50_concurrent_orders_on_one_profile_are_each_scored_once(tmp_path):
    with runtime(tmp_path, "scoring", conflict_rate=0.3) as rt:
        resp = rt.http("POST", "/signup", json_body={"email": "ann@example.com", "consent": True, "list": "test-single"})
        assert resp.status == 202 and rt.settle()
        cid = resp.json()["contact_id"]
        before = stored(rt, cid, "PROFILE")
        score_arn = rt.template.attributes[("ScoreFunction", "Arn")]
        orders = [{"version": "0", "id": uuid.uuid4().hex, "detail-type": "order.placed", "source": bus.SOURCE,
                   "account": "123456789012", "time": clock.iso(), "region": "us-east-1", "resources": [],
                   "detail": json.loads(bus.event("order.placed", cid, order_id=f"o{i}", amount=40,
                                                  currency="EUR")["Detail"])} for i in range(50)]
        tap = rt.client("sqs").create_queue(QueueName="vip-tap")["QueueUrl"]
        rt.client("events").put_rule(Name="vip-tap", EventBusName="funnelpilot", EventPattern=json.dumps(
            {"detail-type": ["customer.vip", "lead.qualified"]}))
        rt.client("events").put_targets(Rule="vip-tap", EventBusName="funnelpilot", Targets=[
            {"Id": "tap", "Arn": "arn:aws:sqs:us-east-1:123456789012:vip-tap"}])
        for event in orders + orders[:10]:  # 10 delivered twice; straight to ScoreFunction, as its rule target
            rt._deliver(score_arn, event)  # would (without the funnels an order also starts)
        concurrently(rt)
        assert rt.dead_letters == [] and rt.errors == []
        after = stored(rt, cid, "PROFILE")
        assert after["score_at"] == before["score_at"]  # same time: no decay factor, sums are exact
        assert int(after["orders"]["N"]) == 50 and float(after["spend"]["N"]) == 50 * 40
        assert float(after["score"]["N"]) - float(before["score"]["N"]) == 50 * 50
        assert float(after["loyalty"]["N"]) == 50 * (30 + 40 / 10)
        activity = rt.client("dynamodb").query(
            TableName=TABLE, KeyConditionExpression="pk = :c AND begins_with(sk, :e)",
            ExpressionAttributeValues={":c": {"S": cid}, ":e": {"S": "SCORED#"}})["Items"]
        assert sum(i["kind"]["S"] == "order.placed" for i in activity) == 50
        crossed = [json.loads(m["Body"])["detail-type"] for m in rt.client("sqs").receive_message(
            QueueUrl=tap, MaxNumberOfMessages=10).get("Messages", [])]
        assert crossed == ["customer.vip"]  # the loyalty threshold crossed once, announced once


def test_a_soft_bounce_meeting_a_transaction_on_the_profile_is_still_counted(rt):
    from test_consent import bounce, ses_event, signup_and_mail

    cid, mail = signup_and_mail(rt)
    ddb = rt.client("dynamodb")
    with dynamodb.hold(TABLE, key(cid, "PROFILE")) as held:
        other = threading.Thread(target=lambda: ddb.transact_write_items(TransactItems=[{"Update": {
            "TableName": TABLE, "Key": key(cid, "PROFILE"), "UpdateExpression": "SET touched = :t",
            "ExpressionAttributeValues": {":t": {"BOOL": True}}}}]))
        other.start()
        held.wait()
        threading.Thread(target=lambda: held.refused.wait(20) and held.release()).start()
        ses_event(rt, "Email Bounced", "Bounce", mail, bounce("Transient"))  # its write conflicts, then retries
        assert held.refused.is_set()
    other.join()
    profile = stored(rt, cid, "PROFILE")
    assert profile["soft_bounces"] == {"N": "1"} and profile["touched"] == {"BOOL": True}
