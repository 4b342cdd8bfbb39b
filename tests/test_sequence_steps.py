"""functions/sequence_step, action by action, with the payloads the funnel compiler emits
(README "Funnels"), against moto: DynamoDB items, bus events (tap), the SES outbox."""
import json
import re
import threading
import uuid
from email import message_from_bytes, policy
from types import SimpleNamespace

import botocore.client
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from conftest import funnel_counts
from funnelpilot import clock, funnel_spec, scoring, sequence, tokens
from funnelpilot.channels import emails
from funnelpilot.errors import FrequencyCapped, FunnelLeft, QuietHours, TransientError, Yes
from funnelpilot_local.moto_adapter import sent_emails
from funnelpilot_local.template import ACCOUNT, REGION
from funnelpilot.models import PROFILE, Contact

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
HOUR, DAY = 3600, 86400
MACHINE = "arn:aws:states:us-east-1:123456789012:stateMachine:funnelpilot-demo"


def execution(name: str | None = None) -> str:
    return f"{MACHINE.replace(':stateMachine:', ':execution:')}:{name or uuid.uuid4().hex}"


def person(rt, name="ann", status="active", **fields) -> str:
    cid = f"c{name}{uuid.uuid4().hex[:8]}"
    Contact(cid, PROFILE, email=f"{name}@example.com", first_name=name.title(), status=status, **fields).save()
    return cid


def step(rt, action, cid, *, ex, state="Step", funnel="demo", **params):
    return rt.invoke("SequenceStepFunction", {"action": action, "funnel": funnel, "contact_id": cid,
                                              "execution": ex, "state": state, **params})


def send(rt, cid, *, ex, state="Send welcome-1", funnel="demo", **params):
    return step(rt, "send", cid, ex=ex, state=state, funnel=funnel, template="welcome-1", **params)


def item(rt, cid, sk) -> dict | None:
    found = rt.client("dynamodb").get_item(TableName="ContactsTable", Key={"pk": {"S": cid}, "sk": {"S": sk}})
    return {k: next(iter(v.values())) for k, v in found["Item"].items()} if "Item" in found else None


def items(rt, cid, prefix="") -> list[dict]:
    found = rt.client("dynamodb").query(TableName="ContactsTable", KeyConditionExpression="pk = :c",
                                        ExpressionAttributeValues={":c": {"S": cid}})["Items"]
    return [{k: next(iter(v.values())) for k, v in i.items()} for i in found if i["sk"]["S"].startswith(prefix)]


def entry(rt, cid, ex, status="running", funnel="demo"):
    """The FUNNEL# item the router writes when it starts ``ex``."""
    rt.client("dynamodb").put_item(TableName="ContactsTable", Item={
        "pk": {"S": cid}, "sk": {"S": f"FUNNEL#{funnel}"}, "funnel": {"S": funnel}, "status": {"S": status},
        "execution_arn": {"S": ex}, "entries": {"N": "1"}})


def distinct(tap, detail_type, cid) -> list[dict]:
    """Events of a kind for the contact, one per event_id (consumers dedupe on it)."""
    seen = {}
    for e in tap.events(detail_type):
        if e["detail"]["contact_id"] == cid:
            seen.setdefault(e["detail"]["event_id"], e["detail"])
    return list(seen.values())


def settings(monkeypatch, **overrides):
    base = {"frequency_cap": (1, 24.0), "defer_up_to": 72.0, "quiet_hours": None, "quiet_spread": 0, "timezone": "UTC",
            "list_name": None, "utm": None}
    monkeypatch.setattr(funnel_spec, "load", lambda funnel_id: SimpleNamespace(**{"id": funnel_id, **base, **overrides}))


def funnel_step_counts(rt, funnel: str, state: str) -> dict[str, int]:
    """A step's counters in MetricsTable, summed over its days."""
    found = rt.client("dynamodb").query(TableName="MetricsTable", KeyConditionExpression="pk = :p",
                                        ExpressionAttributeValues={":p": {"S": f"FUNNEL#{funnel}"}})["Items"]
    totals: dict[str, int] = {}
    for row in (i for i in found if i["sk"]["S"].endswith(f"#STEP#{state}")):
        for name, value in row.items():
            if "N" in value:
                totals[name] = totals.get(name, 0) + int(value["N"])
    return totals


# ---------------------------------------------------------------- send
def test_send_is_idempotent_on_a_duplicate_payload(rt, tap):
    cid, ex = person(rt), execution()
    first = send(rt, cid, ex=ex)
    again = send(rt, cid, ex=ex)
    assert first["status"] == "sent" and again == {"message_id": first["message_id"], "status": "sent",
                                                   "duplicate": True}
    assert len(sent_emails(ACCOUNT, REGION)) == 1
    assert [m["status"] for m in items(rt, cid, "MSG#")] == ["sent"]
    [event] = distinct(tap, "email.sent", cid)
    assert event["message_id"] == first["message_id"] and event["step"] == "Send welcome-1"
    # the duplicate announced it again, under the same event id (a retry after a failed PutEvents needs it)
    assert len([e for e in tap.events("email.sent") if e["detail"]["contact_id"] == cid]) == 2
    [logged] = item(rt, cid, PROFILE)["marketing_log"]
    assert logged["S"].endswith(f"#{first['message_id']}")


def test_links_are_stored_before_ses_is_called_and_a_failed_attempt_releases_its_claim(rt, tap):
    cid, ex = person(rt), execution()
    ses, seen = emails._ses(), []

    def unreachable_once(**_):
        seen.append(items(rt, cid, "MSG#")[0])
        if len(seen) == 1:
            raise EndpointConnectionError(endpoint_url="https://email.us-east-1.amazonaws.com")

    ses.meta.events.register("before-call.ses.SendRawEmail", unreachable_once)
    try:
        with pytest.raises(TransientError):  # classified once, for the state machine's Retry
            send(rt, cid, ex=ex)
        [released] = items(rt, cid, "MSG#")
        assert released["status"] == "sending" and float(released["lease_until"]) == 0
        assert send(rt, cid, ex=ex)["status"] == "sent"  # the retry claims it and sends
    finally:
        ses.meta.events.unregister("before-call.ses.SendRawEmail", unreachable_once)
    assert [m["status"] for m in seen] == ["sending", "sending"] and json.loads(seen[0]["links"])
    assert float(seen[0]["lease_until"]) > clock.now()  # held by the attempt while SES is called
    [sent] = items(rt, cid, "MSG#")
    assert sent["links"] == seen[1]["links"] and "lease_until" not in sent
    assert len(sent_emails(ACCOUNT, REGION)) == 1 and len(distinct(tap, "email.sent", cid)) == 1


def test_a_recipient_ses_rejects_is_a_block_and_a_rejected_sender_a_failure(rt, tap):
    cid, ex = person(rt, "rae"), execution()
    ses = emails._ses()

    def reject(params, **_):
        to = params["body"]["Destinations.member.1"]  # the serialised (query protocol) request
        who = to if to.startswith("rae@") else "hello@example.com"
        raise ClientError({"Error": {"Code": "MessageRejected", "Message": "Email address is not verified. The "
                                     f"following identities failed the check in region US-EAST-1: {who}"}},
                          "SendRawEmail")

    ses.meta.events.register("before-call.ses.SendRawEmail", reject)
    try:
        result = send(rt, cid, ex=ex)
        assert (result["status"], result["reason"]) == ("blocked", "recipient_rejected")
        assert result["detail"].endswith("region US-EAST-1: <recipient>")
        again = send(rt, cid, ex=ex)  # a retry answers the same, publishes the same event
        assert again["duplicate"] and again["reason"] == "recipient_rejected"
        other = person(rt, "sam")
        with pytest.raises(ClientError, match="MessageRejected"):  # our own sender: the stack's configuration
            send(rt, other, ex=execution())
    finally:
        ses.meta.events.unregister("before-call.ses.SendRawEmail", reject)
    [m] = items(rt, cid, "MSG#")
    assert (m["status"], m["reason"], m["detail"]) == ("blocked", "recipient_rejected", result["detail"])
    assert "links" not in m and "lease_until" not in m
    [blocked] = distinct(tap, "email.blocked", cid)
    assert blocked["reason"] == "recipient_rejected" and blocked["detail"] == result["detail"]
    assert "rae@example.com" not in str(tap.events())
    assert sent_emails(ACCOUNT, REGION) == []


def test_frequency_cap_defers_a_second_marketing_send_within_24_hours_not_a_transactional_one(rt, tap):
    cid = person(rt)
    assert send(rt, cid, ex=execution(), funnel="welcome")["status"] == "sent"
    assert rt.advance(23 * HOUR)
    ex, state = execution(), "Send reengage-1"
    with pytest.raises(FrequencyCapped, match="next free slot in 3600 s"):
        send(rt, cid, ex=ex, funnel="reengagement", state=state)
    message = item(rt, cid, f"MSG#{tokens.digest_id('m', ex, state)}")
    assert message["status"] == "deferred" and float(message["deferred_at"]) == clock.now()
    assert "lease_until" not in message and json.loads(message["links"])  # its links kept, no claim held
    assert tap.events("email.blocked") == []
    # the state machine's wait until the slot frees (the compiler's "Frequency cap: time until ..." Task)
    assert step(rt, "until", cid, ex=ex, funnel="reengagement", wait={"capped": True}) == {"wait_seconds": HOUR}
    assert send(rt, cid, ex=execution(), state="Send receipt", transactional=True)["status"] == "sent"
    assert rt.advance(HOUR)
    deferred_at = message["deferred_at"]
    assert send(rt, cid, ex=ex, funnel="reengagement", state=state)["status"] == "sent"
    message = item(rt, cid, f"MSG#{tokens.digest_id('m', ex, state)}")
    assert message["status"] == "sent" and message["deferred_at"] == deferred_at  # the first deferral, kept
    assert len(sent_emails(ACCOUNT, REGION)) == 3
    assert len(item(rt, cid, PROFILE)["marketing_log"]) == 2  # the welcome one (kept, outside the window) and the last
    assert funnel_step_counts(rt, "reengagement", state)["deferred_frequency_cap"] == 1


def test_a_capped_send_past_the_funnels_limit_is_skipped_with_its_reason(rt, tap, monkeypatch):
    settings(monkeypatch, frequency_cap=(1, 24.0), defer_up_to=30.0)
    cid = person(rt)
    assert send(rt, cid, ex=execution())["status"] == "sent"
    ex = execution()
    with pytest.raises(FrequencyCapped):  # free in 24 h: within the 30 hours it may wait
        send(rt, cid, ex=ex, state="Send later")
    assert rt.advance(7 * HOUR)
    # someone else's email took the freed slot meanwhile (a second funnel): the next frees 31 h after the deferral
    rt.client("dynamodb").update_item(TableName="ContactsTable", Key={"pk": {"S": cid}, "sk": {"S": PROFILE}},
                                      UpdateExpression="SET marketing_log = :l",
                                      ExpressionAttributeValues={":l": {"L": [{"S": f"{int(clock.now())}#other"}]}})
    skipped = send(rt, cid, ex=ex, state="Send later")
    assert skipped["status"] == "blocked" and skipped["reason"] == "frequency_cap"
    [blocked] = distinct(tap, "email.blocked", cid)
    assert blocked["reason"] == "frequency_cap" and blocked["message_id"] == skipped["message_id"]
    assert item(rt, cid, f"MSG#{skipped['message_id']}")["status"] == "blocked"


def seen_markers(rt) -> list[str]:
    """The metrics function's counted-once markers (it writes one per event it counts)."""
    items = rt.client("dynamodb").scan(TableName="MetricsTable")["Items"]
    return [i["pk"]["S"] for i in items if i["pk"]["S"].startswith("SEEN#")]


def metrics_counter_writes(monkeypatch) -> list[str]:
    """The sk of every write to a funnel's counter rows in MetricsTable from now on."""
    writes, original = [], botocore.client.BaseClient._make_api_call

    def record(client, operation, params):
        key = params.get("Key") or params.get("Item") or {}
        if params.get("TableName") == "MetricsTable" and key.get("pk", {}).get("S", "").startswith("FUNNEL#"):
            writes.append(key["sk"]["S"].split("#", 2)[2])
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    return writes


def test_a_blocked_send_is_counted_once_by_the_step_and_an_unknown_contacts_by_the_metrics_function(rt, tap,
                                                                                                     monkeypatch):
    settings(monkeypatch, frequency_cap=(1, 24.0), defer_up_to=0.0)  # 0: a capped email is skipped at once
    cid = person(rt)
    assert send(rt, cid, ex=execution())["status"] == "sent"
    ex = execution()
    for _ in range(2):  # a retried Task finds its message blocked and counts nothing more
        assert send(rt, cid, ex=ex, state="Send later")["status"] == "blocked"
    assert rt.settle()
    [blocked] = distinct(tap, "email.blocked", cid)
    assert blocked["reason"] == "frequency_cap" and blocked["counted"] is True
    counts = funnel_step_counts(rt, "demo", "Send later")
    assert (counts["blocked"], counts["blocked_frequency_cap"], counts["entered"]) == (1, 1, 1)
    assert seen_markers(rt) == []  # the metrics function's rule left the event out: no marker, no second count
    with pytest.raises(FunnelLeft):  # no item may be written about them: the metrics function counts this one
        send(rt, "cnobody", ex=execution(), state="Send nobody")
    assert rt.settle()
    [unknown] = distinct(tap, "email.blocked", "cnobody")
    assert "counted" not in unknown and len(seen_markers(rt)) == 1
    assert funnel_step_counts(rt, "demo", "Send nobody")["blocked_unknown_contact"] == 1


def test_a_last_send_ends_the_journey_in_the_same_add_as_its_count(rt, tap, monkeypatch):
    from funnelpilot import report

    sender, blocked = person(rt), person(rt, "bob", status="pending")  # pending: unconfirmed, the send is blocked
    runs = {cid: execution() for cid in (sender, blocked)}
    for cid, ex in runs.items():
        entry(rt, cid, ex)
    writes = metrics_counter_writes(monkeypatch)
    for _ in range(2):  # the second is a retried Task: it finds the message sent (or blocked) and the entry completed
        assert send(rt, sender, ex=runs[sender], state="Send last", complete=True)["status"] == "sent"
        assert send(rt, blocked, ex=runs[blocked], state="Send last", complete=True)["status"] == "blocked"
    assert writes == ["STEP#Send last", "STEP#Send last"]  # one ADD each: the send (or block) and the journey's end
    for cid in runs:
        assert item(rt, cid, "FUNNEL#demo")["status"] == "completed"
    counts = funnel_step_counts(rt, "demo", "Send last")
    assert (counts["sent"], counts["blocked"], counts["completed"], counts["entered"]) == (1, 1, 2, 2)
    assert funnel_counts(rt, "demo") == {}  # nothing on the funnel row
    start, end = report.day_range(None, None)
    assert report.build("demo", report.query_rows("demo", start, end), start, end, order=[])["completed"] == 2


def test_a_funnels_own_cap_is_used(rt, monkeypatch):
    settings(monkeypatch, frequency_cap=(2, 1.0), defer_up_to=0.0)  # 0: skipped at once
    cid = person(rt)
    assert [send(rt, cid, ex=execution())["status"] for _ in range(3)] == ["sent", "sent", "blocked"]
    assert rt.advance(HOUR)
    assert send(rt, cid, ex=execution())["status"] == "sent"


def test_concurrent_sends_of_two_funnels_within_the_cap_send_exactly_one(rt, tap):
    for n in range(4):
        cid = person(rt, f"p{n}")
        results = {}
        barrier = threading.Barrier(2)

        def go(funnel):
            barrier.wait()
            try:
                results[funnel] = send(rt, cid, ex=execution(), funnel=funnel, state=f"Send {funnel}")
            except FrequencyCapped:
                results[funnel] = {"status": "deferred"}

        threads = [threading.Thread(target=go, args=(f,)) for f in ("engagement", "ascension")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r["status"] for r in results.values()) == ["deferred", "sent"], results
        assert len(item(rt, cid, PROFILE)["marketing_log"]) == 1
    assert len(sent_emails(ACCOUNT, REGION)) == 4


def test_unconfirmed_contact_gets_only_transactional_email(rt, tap):
    cid, ex = person(rt, status="pending"), execution()
    entry(rt, cid, ex)
    blocked = send(rt, cid, ex=ex)  # the journey goes on: no FunnelLeft
    assert blocked["status"] == "blocked" and blocked["reason"] == "unconfirmed"
    assert item(rt, cid, f"MSG#{blocked['message_id']}")["reason"] == "unconfirmed"
    assert [e["reason"] for e in distinct(tap, "email.blocked", cid)] == ["unconfirmed"]
    assert send(rt, cid, ex=ex, state="Send receipt", transactional=True)["status"] == "sent"
    assert item(rt, cid, "FUNNEL#demo")["status"] == "running"


@pytest.mark.parametrize("status", ["unsubscribed", "suppressed"])
def test_unsubscribed_or_suppressed_contact_leaves_the_funnel(rt, tap, status):
    cid, ex = person(rt, status=status), execution()
    entry(rt, cid, ex)
    with pytest.raises(FunnelLeft, match=status):
        send(rt, cid, ex=ex)
    [message] = items(rt, cid, "MSG#")
    assert message["status"] == "blocked" and message["reason"] == status
    [event] = distinct(tap, "email.blocked", cid)
    assert event["reason"] == status and event["message_id"] == message["message_id"]
    assert item(rt, cid, "FUNNEL#demo")["status"] == "left"
    with pytest.raises(FunnelLeft):  # a retried Task leaves again; nothing new is recorded
        send(rt, cid, ex=ex)
    assert len(items(rt, cid, "MSG#")) == 1 and len(distinct(tap, "email.blocked", cid)) == 1
    assert sent_emails(ACCOUNT, REGION) == []


def test_unknown_contact_leaves_without_anything_stored_about_them(rt, tap):
    with pytest.raises(FunnelLeft, match="unknown_contact"):
        send(rt, "cnobody", ex=execution())
    assert items(rt, "cnobody") == []
    assert [e["reason"] for e in distinct(tap, "email.blocked", "cnobody")] == ["unknown_contact"]


def test_goal_reached_while_a_step_was_in_flight_leaves_and_keeps_converted(rt, tap):
    cid, ex = person(rt), execution()
    entry(rt, cid, ex, status="converted")
    with pytest.raises(FunnelLeft, match="goal_reached"):
        send(rt, cid, ex=ex)
    assert items(rt, cid, "MSG#")[0]["reason"] == "goal_reached"
    assert item(rt, cid, "FUNNEL#demo")["status"] == "converted"
    assert sent_emails(ACCOUNT, REGION) == []


def test_quiet_hours_raise_before_anything_is_written_and_until_says_how_long(rt, tap, monkeypatch):
    settings(monkeypatch, quiet_hours=("21:00", "08:00"), timezone="Europe/Paris")
    night = person(rt, "nz", timezone="Pacific/Auckland")  # 10:00 UTC = 23:00 in Auckland
    ex = execution()
    with pytest.raises(QuietHours):
        send(rt, night, ex=ex)
    assert items(rt, night, "MSG#") == [] and "marketing_log" not in item(rt, night, PROFILE)
    assert tap.events("email.blocked") == []
    assert step(rt, "until", night, ex=ex, wait={"quiet": True}) == {"wait_seconds": 9 * HOUR}
    assert send(rt, night, ex=ex, transactional=True)["status"] == "sent"  # transactional: any time
    day = person(rt, "fr")  # no time zone of their own: the funnel's (Paris, 11:00)
    assert send(rt, day, ex=execution())["status"] == "sent"
    assert step(rt, "until", day, ex=ex, wait={"quiet": True}) == {"wait_seconds": 0}


def test_welcome_payload_without_a_funnel_file_uses_the_defaults(rt):
    cid = person(rt)
    result = rt.invoke("SequenceStepFunction", {"action": "send", "funnel": "no-such-funnel", "template": "welcome-1",
                                                "contact_id": cid, "execution": "exec-1", "state": "Send x"})
    assert result["status"] == "sent"


# ---------------------------------------------------------------- check
def click_link(rt, mid: str, part: str) -> None:
    """Follow a tracked link of the sent email through the real GET /c/{token} route."""
    rt.flush_outbox()
    [mail] = [m for m in (message_from_bytes(p.read_bytes(), policy=policy.default) for p in rt.outbox.glob("*.eml"))
              if m["X-Funnelpilot-Message-Id"] == mid]
    html = mail.get_body(("html",)).get_content()
    for token in re.findall(r"http://127\.0\.0\.1:3000/c/([A-Za-z0-9_\-.]+)", html):
        if tokens.verify("c", token, 3)[2] == tokens.HONEYPOT:  # the invisible trap only machines follow
            continue
        resp = rt.http("GET", f"/c/{token}", headers={"user-agent": BROWSER}, source_ip="198.51.100.7")
        if resp.status == 302 and part in resp.headers["location"]:
            return
    raise AssertionError(f"no link containing {part!r}")


def test_if_clicked_and_opened_read_the_human_hits_of_the_states_messages(rt):
    cid, ex = person(rt), execution()
    mid = send(rt, cid, ex=ex)["message_id"]

    def check(condition):
        return step(rt, "if", cid, ex=ex, state="Question?", condition=condition) == {"status": "yes"}

    clicked = {"clicked": {"email": "welcome-1", "link": None, "states": ["Send welcome-1"]}}
    guide = {"clicked": {"email": "welcome-1", "link": "/guide", "states": ["Send welcome-1"]}}
    pricing = {"clicked": {"email": "welcome-1", "link": "/pricing", "states": ["Send welcome-1"]}}
    opened = {"opened": {"email": "welcome-1", "states": ["Send welcome-1"]}}
    assert not any(map(check, (clicked, guide, opened)))
    assert rt.advance(600)  # read ten minutes after it was sent (earlier is a machine)
    click_link(rt, mid, "/guide")
    assert rt.settle()
    assert check(clicked) and check(guide) and check(opened)  # a human click is also an open
    assert not check(pricing)
    other_states = {"clicked": {"email": "welcome-1", "link": None, "states": ["Send welcome-2"]}}
    assert not check(other_states)
    # the Choice of an execution started before ``if`` became one Task reads the old action's result
    assert step(rt, "check", cid, ex=ex, state="Check", condition=guide) == {"result": True}


def test_an_if_runs_the_steps_folded_into_its_answer_and_a_retry_keeps_the_answer_that_closed_the_journey(rt, tap):
    cid, ex = person(rt), execution()
    entry(rt, cid, ex)
    mid = send(rt, cid, ex=ex)["message_id"]
    opened = {"opened": {"email": "welcome-1", "states": ["Send welcome-1"]}}
    # welcome's "Opened welcome-2?": no hands off and closes the journey in the Task, yes goes on by a Catch
    question = {"state": "Opened welcome-1?", "condition": opened, "raise": "yes",
                "no": {"label": "Go to segmentation", "steps": [{"action": "goto", "to": "segmentation"}],
                       "close": {"outcome": "completed"}}}
    assert step(rt, "if", cid, ex=ex, **question) == {"status": "no"}
    [handoff] = distinct(tap, "funnel.handoff", cid)
    assert handoff["to"] == "segmentation" and handoff["from"] == "demo"
    closed = item(rt, cid, "FUNNEL#demo")
    assert closed["status"] == "completed" and closed["answer"] == "no" and closed["completed_at"]
    assert rt.advance(600)
    click_link(rt, mid, "/guide")  # opened now: a retry of that Task (its first attempt died after closing) ...
    assert rt.settle()
    assert step(rt, "if", cid, ex=ex, **question) == {"status": "no"}  # ... answers as the first one did
    assert [h["event_id"] for h in distinct(tap, "funnel.handoff", cid)] == [handoff["event_id"]]
    entry(rt, cid, ex)  # not closed yet: the answer is read again, and yes is raised for the Catch
    with pytest.raises(Yes):
        step(rt, "if", cid, ex=ex, **question)
    assert item(rt, cid, "FUNNEL#demo")["status"] == "running" and len(distinct(tap, "funnel.handoff", cid)) == 1
    # a click stays made: its yes runs the instant steps its branch starts with, then goes on by the Next
    clicked = {"clicked": {"email": "welcome-1", "link": "/guide", "states": ["Send welcome-1"]}}
    tagged = {"label": "Tag guide", "steps": [{"action": "tag", "tag": "guide"}]}
    assert step(rt, "if", cid, ex=ex, state="Clicked /guide?", condition=clicked, yes=tagged) == {"status": "yes"}
    assert item(rt, cid, PROFILE)["tags"] == ["guide"]
    assert [e["tag"] for e in distinct(tap, "contact.tagged", cid)] == ["guide"]


def contacts_writes(monkeypatch) -> list[str]:
    """``Operation sk-prefix`` of every write to ContactsTable from now on."""
    writes, original = [], botocore.client.BaseClient._make_api_call

    def record(client, operation, params):
        key = params.get("Key") or params.get("Item") or {}
        if params.get("TableName") == "ContactsTable" and operation in ("PutItem", "UpdateItem", "DeleteItem"):
            writes.append(f"{operation} {key['sk']['S'].split('#')[0]}")
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    return writes


def test_a_send_with_its_wait_for_writes_nothing_for_the_wait_and_a_retry_only_its_refused_claim(rt, monkeypatch):
    """compiler._Machine._fuse: one waitForTaskToken Task sends, then waits for the click; its resumer reads
    the token from the execution's history (funnels.resume), so the wait itself writes nothing."""
    cid, ex = person(rt), execution()
    clicked = {"clicked": {"email": "welcome-1", "link": None, "states": ["Send welcome-1"]}}
    wait = {"condition": clicked, "timeout_seconds": 2 * DAY}
    writes = contacts_writes(monkeypatch)
    assert send(rt, cid, ex=ex, token="token-1", wait_for=wait)["status"] == "sent"
    assert writes == ["PutItem MSG", "UpdateItem PROFILE", "UpdateItem MSG"]  # claim, cap log, sent mark
    # a retry (its first attempt's answer was lost) sends nothing more and writes nothing for its wait either
    mid = tokens.digest_id("m", ex, "Send welcome-1")
    assert send(rt, cid, ex=ex, token="token-2", wait_for=wait) == {"message_id": mid, "status": "sent", "duplicate": True}
    assert writes[3:] == ["PutItem MSG"] and items(rt, cid, "WAIT#") == []  # its claim, refused: the email is sent
    assert len(sent_emails(ACCOUNT, REGION)) == 1


def test_if_tag_score_segment_property_and_not_tag(rt):
    cid, ex = person(rt, tags={"vip"}, properties={"plan": "pro"}, segments={"engaged"}), execution()
    scoring.award(cid, 12, once_key="test-points")

    def check(condition):
        return step(rt, "if", cid, ex=ex, state="Question?", condition=condition) == {"status": "yes"}

    assert check({"tag": "vip"}) and not check({"tag": "other"}) and check({"not_tag": "other"})
    assert check({"score": {"gte": 10}}) and not check({"score": {"gte": 20}})
    assert check({"segment": "engaged"}) and not check({"segment": "customers"})
    assert check({"property": {"plan": "pro"}}) and not check({"property": {"plan": "free"}})
    assert check({"customer": False}) and not check({"customer": True})


# ---------------------------------------------------------------- split
def test_split_is_deterministic_and_recorded_once_on_the_funnel_entry(rt):
    cid, ex = person(rt), execution()
    entry(rt, cid, ex)
    expected = sequence.pick_variant({"a": 50, "b": 50}, cid, "demo", "A/B split")
    assert step(rt, "split", cid, ex=ex, state="A/B split", variants={"a": 50, "b": 50}) == {"variant": expected}
    assert item(rt, cid, "FUNNEL#demo")["variants"] == {"A/B split": {"S": expected}}
    other = "b" if expected == "a" else "a"  # even if the weights change, the recorded variant stays
    assert step(rt, "split", cid, ex=ex, state="A/B split", variants={expected: 0, other: 100}) == {
        "variant": expected}
    picks = {sequence.pick_variant({"a": 90, "b": 10}, f"c{i}", "demo", "s") for i in range(200)}
    assert picks == {"a", "b"}
    share = sum(sequence.pick_variant({"a": 90, "b": 10}, f"c{i}", "demo", "s") == "a" for i in range(1000))
    assert 850 < share < 950


def test_a_variant_send_carries_the_variant(rt, tap):
    cid = person(rt)
    sent = send(rt, cid, ex=execution(), state="Send engagement-2a", variant="a")
    assert item(rt, cid, f"MSG#{sent['message_id']}")["variant"] == "a"
    assert distinct(tap, "email.sent", cid)[0]["variant"] == "a"


# ---------------------------------------------------------------- contact changes
def test_tag_untag_and_set_emit_their_events_once(rt, tap):
    cid, ex = person(rt), execution()
    for _ in range(2):
        assert step(rt, "tag", cid, ex=ex, state="Tag hot", tag="hot") == {"status": "done"}
    assert item(rt, cid, PROFILE)["tags"] == ["hot"]
    [tagged] = distinct(tap, "contact.tagged", cid)
    assert tagged["tag"] == "hot" and tagged["funnel"] == "demo"
    for _ in range(2):
        step(rt, "untag", cid, ex=ex, state="Untag hot", tag="hot")
    assert "tags" not in item(rt, cid, PROFILE) and len(distinct(tap, "contact.untagged", cid)) == 1
    for _ in range(2):
        step(rt, "set", cid, ex=ex, state="Set interest", properties={"interest": "seo", "level": 2})
    props = item(rt, cid, PROFILE)["properties"]
    assert props == {"interest": {"S": "seo"}, "level": {"N": "2"}}
    [updated] = distinct(tap, "contact.updated", cid)
    assert updated["fields"] == ["interest", "level"] and updated["funnel"] == "demo"
    step(rt, "set", cid, ex=ex, state="Set again", properties={"interest": "{{ 7*7 }}"})  # literal, never rendered
    assert item(rt, cid, PROFILE)["properties"]["interest"] == {"S": "{{ 7*7 }}"}
    assert len(distinct(tap, "contact.updated", cid)) == 2


def test_score_notify_and_suppress(rt, tap):
    cid, ex = person(rt), execution()
    for _ in range(2):
        step(rt, "score", cid, ex=ex, state="Score +10", points=10)
    assert round(scoring.current_score(Contact.get(cid, PROFILE))) == 10
    step(rt, "score", cid, ex=ex, state="Score +5 loyalty", points=5, track="loyalty")
    assert round(scoring.current_score(Contact.get(cid, PROFILE), "loyalty")) == 5
    step(rt, "notify", cid, ex=ex, state="Notify sales", reason="clicked pricing")
    [notify] = distinct(tap, "sales.notify", cid)
    assert notify["reason"] == "clicked pricing" and notify["step"] == "Notify sales"
    step(rt, "suppress", cid, ex=ex, state="Suppress", reason="sunset")
    assert item(rt, cid, PROFILE)["status"] == "suppressed"
    assert distinct(tap, "contact.suppressed", cid)[0]["reason"] == "sunset"


def test_goto_hands_off_and_completes_once(rt, tap):
    cid, ex = person(rt), execution()
    entry(rt, cid, ex)
    for _ in range(2):
        step(rt, "goto", cid, ex=ex, state="Go to segmentation", to="segmentation", complete=True)
    [handoff] = distinct(tap, "funnel.handoff", cid)
    assert handoff["to"] == "segmentation" and handoff["from"] == "demo"
    assert item(rt, cid, "FUNNEL#demo")["status"] == "completed" and funnel_counts(rt, "demo")["completed"] == 1


def test_merged_steps_run_in_order_each_once_and_the_last_ends_the_journey(rt, tap):
    cid, ex = person(rt), execution()
    entry(rt, cid, ex)
    parts = [{"action": "tag", "tag": "a"}, {"action": "tag", "tag": "b"}, {"action": "score", "points": 5},
             {"action": "complete", "outcome": "exited", "reason": "done"}]
    for _ in range(2):  # a retry of the Task runs every part again
        assert step(rt, "steps", cid, ex=ex, state="Tag a + Tag b + Score +5 + Exit (done)", steps=parts) == {
            "status": "done"}
    assert sorted(t["tag"] for t in distinct(tap, "contact.tagged", cid)) == ["a", "b"]  # two events, not one
    assert round(scoring.current_score(Contact.get(cid, PROFILE))) == 5
    assert item(rt, cid, "FUNNEL#demo")["status"] == "exited" and item(rt, cid, "FUNNEL#demo")["reason"] == "done"
    assert funnel_counts(rt, "demo")["completed"] == 1  # the journey's end counted once, retry or not


def test_complete_does_not_overwrite_a_converted_entry_and_exit_is_an_outcome(rt, tap):
    cid, ex = person(rt), execution()
    entry(rt, cid, ex, status="converted")
    step(rt, "tag", cid, ex=ex, state="Tag done", tag="done", complete=True)
    assert item(rt, cid, "FUNNEL#demo")["status"] == "converted" and funnel_counts(rt, "demo") == {}
    entry(rt, cid, ex)
    for _ in range(2):  # a retried Task
        step(rt, "complete", cid, ex=ex, state="Exit (no topic chosen)", outcome="exited", reason="no topic chosen")
    assert item(rt, cid, "FUNNEL#demo")["status"] == "exited" and funnel_counts(rt, "demo")["completed"] == 1
    assert item(rt, cid, "FUNNEL#demo")["reason"] == "no topic chosen"


def test_fail_records_the_failure(rt, tap):
    cid, ex = person(rt), execution()
    entry(rt, cid, ex)
    assert step(rt, "fail", cid, ex=ex, state="Record failure",
                error={"Error": "ClientError", "Cause": "boom"}) == {"status": "recorded"}
    assert item(rt, cid, "FUNNEL#demo")["status"] == "failed"
    [failed] = distinct(tap, "funnel.failed", cid)
    assert failed["error"] == "ClientError" and failed["funnel"] == "demo"


# ---------------------------------------------------------------- until
def test_until_a_local_time_uses_the_contacts_time_zone_then_the_funnels(rt, monkeypatch):
    ny = person(rt, "ny", timezone="America/New_York")  # Monday 10:00 UTC = 05:00 in New York
    assert step(rt, "until", ny, ex=execution(), wait={"until": "09:30"}) == {"wait_seconds": 4 * HOUR + 30 * 60}
    plain = person(rt, "utc")  # no zone: the funnel's (default UTC, 10:00): tomorrow 09:30
    assert step(rt, "until", plain, ex=execution(), wait={"until": "09:30"}) == {"wait_seconds": 23 * HOUR + 30 * 60}
    settings(monkeypatch, timezone="Asia/Tokyo")  # 19:00 there
    assert step(rt, "until", plain, ex=execution(), wait={"until": "20:00"}) == {"wait_seconds": HOUR}
    bad = person(rt, "bad", timezone="Mars/Olympus")  # an invalid zone falls back to the funnel's
    assert step(rt, "until", bad, ex=execution(), wait={"until": "20:00"}) == {"wait_seconds": HOUR}


def test_a_task_before_a_computed_wait_returns_its_seconds_out_of_quiet_hours(rt, monkeypatch):
    settings(monkeypatch, quiet_hours=("21:00", "08:00"), timezone="Europe/Paris")  # Monday 11:00 in Paris
    cid = person(rt)
    sent = send(rt, cid, ex=execution(), wait={"seconds": 11 * HOUR, "quiet": True})  # would end at 22:00
    assert sent["status"] == "sent" and sent["wait_seconds"] == 21 * HOUR  # Tuesday 08:00 in Paris
    assert step(rt, "tag", cid, ex=execution(), tag="x", wait={"seconds": 11 * HOUR}) == {
        "status": "done", "wait_seconds": 11 * HOUR}  # no send after it: not moved
    tokyo = person(rt, "jp", timezone="Asia/Tokyo")  # 19:00 there: 2 hours later is quiet until 08:00
    assert step(rt, "tag", tokyo, ex=execution(), tag="x", wait={"seconds": 2 * HOUR, "quiet": True}) == {
        "status": "done", "wait_seconds": 13 * HOUR}


def test_until_crosses_a_daylight_saving_change(rt):
    cid = person(rt, "ny", timezone="America/New_York")
    assert rt.advance(5 * DAY + 10 * HOUR)  # Saturday 2026-03-07 20:00 UTC = 15:00 EST; clocks go forward Sunday
    # Sunday 09:00 EDT = 13:00 UTC: 17 h later (18 h of wall-clock time minus the lost hour)
    assert step(rt, "until", cid, ex=execution(), wait={"until": "09:00"}) == {"wait_seconds": 17 * HOUR}
