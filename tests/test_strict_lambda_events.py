"""Strict mode for Lambda concurrency, EventBridge delivery and HTTP API route throttling, and
the code surviving them: an event delivered twice changes nothing, failed PutEvents entries
are put again, throttled invocations are retried, a route past its burst answers 429."""
import json
from collections import Counter
from email import message_from_bytes

from conftest import START, EventTap, executions, history, ip_for
from test_funnels import DAY, MINUTE, click, open_email, order, profile, signup

from funnelpilot import bus
from funnelpilot_local.aws_rules import Rules, principal
from funnelpilot_local.runtime import ROOT, Runtime

TOO_MANY = b'{"message":"Too Many Requests"}'


def strict(tmp_path, name: str, **rules) -> Runtime:
    return Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / name, log_level="WARNING",
                   rules=Rules(**rules))


def outbox(rt) -> list[tuple[str, str]]:
    """(To, Subject) of every email sent."""
    rt.flush_outbox()
    mails = [message_from_bytes(p.read_bytes()) for p in rt.outbox.glob("*.eml")]
    return sorted((m["To"], m["Subject"]) for m in mails)


def counters(rt) -> dict:
    """Every metric counter (the SEEN# idempotency markers left out): (pk, sk) -> {name: value}."""
    items = rt.client("dynamodb").scan(TableName="MetricsTable")["Items"]
    return {(i["pk"]["S"], i["sk"]["S"]): {k: v["N"] for k, v in i.items() if "N" in v}
            for i in items if not i["pk"]["S"].startswith("SEEN#")}


# ---------------------------------------------------------------- EventBridge: at-least-once delivery
def welcome_journey(tmp_path, name: str, **rules) -> dict:
    """A signup opens and clicks welcome-1, goes through the welcome funnel (welcome-2 unopened:
    hand-off to segmentation on day 5), then buys."""
    with strict(tmp_path, name, **rules) as rt:
        tap = EventTap(rt)
        cid = signup(rt, "dup@example.com")
        assert rt.advance(10 * MINUTE)
        open_email(rt, cid, "welcome-1")
        assert click(rt, cid, "welcome-1", "/guide") == 302
        assert rt.advance(5 * DAY)
        order(rt, "dup@example.com")
        copies = Counter(e["detail"]["event_id"] for e in tap.events())
        kinds = {e["detail"]["event_id"]: e["detail-type"] for e in tap.seen}
        item = profile(rt, cid)
        return {"emails": outbox(rt), "score": {k: item[k] for k in ("score", "loyalty") if k in item},
                "metrics": counters(rt), "events": Counter(kinds.values()), "copies": Counter(copies.values()),
                "deliveries": len(rt.delivered), "executions": sorted(e["status"] for m in ("welcome", "segmentation")
                                                                     for e in executions(rt, m)),
                "dead letters": rt.dead_letters}


def test_every_delivery_made_twice_sends_scores_and_counts_once(tmp_path):
    once = welcome_journey(tmp_path, "once")
    twice = welcome_journey(tmp_path, "twice", duplicate_rate=1.0)
    assert once["copies"] == {1: sum(once["events"].values())}  # moto alone: exactly once
    assert twice["copies"] == {2: sum(twice["events"].values())}  # every event reached the tap twice
    assert twice["deliveries"] > 1.8 * once["deliveries"]  # and every consumer (schedules fire once)
    assert len(once["emails"]) >= 2 and twice["emails"] == once["emails"]  # no second email
    assert once["score"]["score"] and twice["score"] == once["score"]  # the click, the order: scored once
    assert once["metrics"] and twice["metrics"] == once["metrics"]  # each metric counted once
    assert twice["events"] == once["events"]  # the duplicates published nothing more
    assert twice["executions"] == once["executions"]  # one welcome execution, one hand-off
    assert once["dead letters"] == twice["dead letters"] == []


# ---------------------------------------------------------------- EventBridge: PutEvents partial failures
def signup_and_first_step(rt) -> Counter:
    tap = EventTap(rt)
    signup(rt, "pe@example.com")
    assert rt.advance(MINUTE)
    copies = Counter(e["detail"]["event_id"] for e in tap.events())
    assert set(copies.values()) == {1}, copies  # none twice
    return Counter(e["detail-type"] for e in tap.seen)


def test_failed_put_events_entries_are_put_again_and_every_event_arrives_once(tmp_path):
    with strict(tmp_path, "reliable") as rt:
        expected = signup_and_first_step(rt)
    assert {"contact.subscribed", "email.sent"} <= set(expected)
    with strict(tmp_path, "flaky", put_events_failure_rate=0.3) as rt:
        assert signup_and_first_step(rt) == expected
        assert rt.bus_faults.failed_entries > 0  # entries did fail, and bus.publish put them again
        assert rt.dead_letters == [] and rt.errors == []

        # what a function sees: HTTP 200, FailedEntryCount, per-entry ErrorCode/ErrorMessage and no EventId
        tap = EventTap(rt)
        entries = [bus.event("page.viewed", f"c{i}", event_id=f"pv-{i}", path="/") for i in range(10)]
        with principal.acting_as(rt.role_of("EventsIngestFunction")):
            resp = rt.client("events").put_events(Entries=entries)
        failed = [i for i, e in enumerate(resp["Entries"]) if "ErrorCode" in e]
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200 and len(resp["Entries"]) == 10
        assert resp["FailedEntryCount"] == len(failed) > 0
        assert all(resp["Entries"][i]["ErrorCode"] in ("InternalFailure", "ThrottlingException")
                   and resp["Entries"][i]["ErrorMessage"] and "EventId" not in resp["Entries"][i] for i in failed)
        assert all(resp["Entries"][i]["EventId"] for i in range(10) if i not in failed)
        assert sorted(e["detail"]["event_id"] for e in tap.events("page.viewed")) == sorted(
            f"pv-{i}" for i in range(10) if i not in failed)  # a failed entry is not on the bus

        rt.bus_faults.failure_rate = 1.0  # every entry fails (moto is not even called): publish gives up, loudly
        with principal.acting_as(rt.role_of("EventsIngestFunction")):
            resp = rt.client("events").put_events(Entries=entries[:2])
            assert resp["FailedEntryCount"] == 2 and [e["ErrorCode"] for e in resp["Entries"]]
            try:
                bus.publish(bus.event("page.viewed", "c0", path="/"))
                raise AssertionError("publish returned although every attempt failed")
            except RuntimeError as exc:
                assert "PutEvents failed for 1 entries" in str(exc)


# ---------------------------------------------------------------- Lambda: account concurrency
def test_with_two_concurrent_executions_every_welcome_email_still_goes_out(tmp_path):
    with strict(tmp_path, "small", lambda_concurrency=2) as rt:
        people = [f"p{i}@example.com" for i in range(20)]
        for email in people:  # twenty signups within two seconds
            assert rt.http("POST", "/signup", json_body={"email": email, "consent": True, "list": "test-single"},
                           source_ip=ip_for(email)).status == 202
            assert rt.advance(0.1)
        assert rt.advance(10 * MINUTE)
        assert rt.concurrency.throttled > 0
        # a throttled funnel step failed with Lambda's error, and the funnel's Retry ran it again
        throttled_steps = [e for ex in executions(rt) for e in history(rt, ex["executionArn"])
                           if e.get("lambdaFunctionFailedEventDetails", {}).get("error")
                           == "Lambda.TooManyRequestsException"]
        assert throttled_steps
        assert [to for to, _ in outbox(rt)] == sorted(people)  # one welcome-1 each
        assert sorted(e["status"] for e in executions(rt)) == ["RUNNING"] * 20  # all waiting for welcome-2
        # throttled asynchronous deliveries went back to the queue: none dead-lettered, every consumer ran
        assert rt.dead_letters == [] and rt.errors == []
        scored = Counter(p["detail"]["contact_id"] for arn, p in rt.delivered
                         if arn.endswith(":function:ScoreFunction") and p["detail-type"] == "contact.subscribed")
        assert len(scored) == 20 and set(scored.values()) == {1}

        # three signups at one instant: the third finds no concurrency; API Gateway answers 500
        statuses = [rt.http("POST", "/signup", json_body={"email": f"q{i}@example.com", "consent": True,
                                                          "list": "test-single"}, source_ip=ip_for(f"q{i}"))
                    for i in range(3)]
        assert [r.status for r in statuses] == [202, 202, 500]
        assert statuses[2].json() == {"message": "Internal Server Error"}


# ---------------------------------------------------------------- API Gateway: route throttling
def test_a_route_past_its_burst_answers_429_and_recovers_as_the_bucket_refills(tmp_path):
    with strict(tmp_path, "api") as rt:
        invoked = Counter()
        rt.invoke_hook = lambda function, run: (invoked.update([function]), run())[1]
        page = [rt.http("GET", "/u/not-a-token") for _ in range(201)]  # DefaultRouteSettings: burst 200, 100/s
        assert [r.status for r in page] == [404] * 200 + [429]
        assert page[-1].body == TOO_MANY and invoked["UnsubscribeFunction"] == 200  # the function never ran
        assert rt.http("GET", "/c/not-a-token").status == 404  # each route has its own bucket
        assert rt.advance(0.5)  # 50 tokens back
        assert [rt.http("GET", "/u/not-a-token").status for _ in range(51)] == [404] * 50 + [429]
        assert rt.advance(10)  # full again, never more than the burst
        assert [rt.http("GET", "/u/not-a-token").status for _ in range(201)] == [404] * 200 + [429]
        body = json.dumps({"event": "page.viewed", "path": "/"})
        collect = [rt.http("POST", "/collect", body=body, headers={"content-type": "text/plain"},
                           source_ip=f"198.51.100.{i}").status for i in range(101)]  # RouteSettings: burst 100
        assert collect[-1] == 429 and 429 not in collect[:100]
