"""Double opt-in per list (infra/lists.yaml): pending contact, confirmation email, expiring link."""
import re
from email import message_from_bytes, policy

from conftest import SINGLE, executions

from funnelpilot import clock, tokens
from funnelpilot_local.runtime import ROOT, Runtime


def mails(rt):
    rt.flush_outbox()
    return [message_from_bytes(p.read_bytes(), policy=policy.default) for p in sorted(rt.outbox.glob("*.eml"))]


def status(rt, cid):
    return rt.client("dynamodb").get_item(TableName="ContactsTable", Key={
        "pk": {"S": cid}, "sk": {"S": "PROFILE"}})["Item"]["status"]["S"]


def signup(rt, email="dana@example.com", list_name="insiders"):
    cid = rt.http("POST", "/signup", json_body={"email": email, "consent": True, "list": list_name,
                                                "first_name": "Dana", "lead_magnet": "guide"}).json()["contact_id"]
    assert rt.settle()
    return cid


def confirm_path(mail) -> str:
    return re.search(r"http://127\.0\.0\.1:3000(/confirm/[A-Za-z0-9_\-.]+)", mail.get_body(("plain",)).get_content()).group(1)


def test_funnels_start_only_after_confirmation(rt, tap):
    cid = signup(rt)
    assert status(rt, cid) == "pending"
    assert executions(rt) == [] and tap.events("contact.subscribed") == []
    [mail] = mails(rt)
    assert mail["Subject"] == "Please confirm your subscription" and mail["To"] == "dana@example.com"
    assert "/o/" not in mail.get_body(("html",)).get_content()  # transactional: no tracking
    # a marketing send step while pending is blocked
    step = rt.invoke("SequenceStepFunction", {"action": "send", "funnel": "welcome", "template": "welcome-1",
                                              "contact_id": cid, "execution": "e-pending", "state": "Send x"})
    assert step["reason"] == "unconfirmed"

    resp = rt.http("GET", confirm_path(mail))
    assert resp.status == 200 and b"You are subscribed" in resp.body
    assert rt.settle()
    assert status(rt, cid) == "active"
    [confirmed] = tap.events("contact.confirmed")
    [subscribed] = tap.events("contact.subscribed")
    assert confirmed["detail"]["list"] == "insiders"
    assert subscribed["detail"]["lead_magnet"] == "guide" and subscribed["detail"]["confirmed"] is True
    [ex] = executions(rt)
    assert ex["status"] == "RUNNING"  # welcome-1 went; welcome-2 waits two days
    subjects = sorted(m["Subject"] for m in mails(rt))  # the lead magnet's delivery starts only now too
    assert subjects == sorted(["Please confirm your subscription", "Welcome, Dana!", "Your download is ready"])

    # clicking the link again changes nothing and starts nothing
    assert rt.http("GET", confirm_path(mail)).status == 200
    assert rt.settle()
    assert len(tap.events("contact.subscribed")) == 1 and len(executions(rt)) == 1


def test_resubmitted_form_does_not_flood_the_inbox(tmp_path):
    # real time here: the resend throttle is 10 minutes, hours pass per second on the fast clock
    with Runtime(ROOT, speed=1.0, state_dir=tmp_path / "local") as rt:
        for _ in range(3):
            signup(rt)
        assert len(mails(rt)) == 1


def test_invalid_and_expired_links_are_404(rt, tap):
    cid = signup(rt)
    [mail] = mails(rt)
    path = confirm_path(mail)
    expired = tokens.sign("confirm", cid, "insiders", "guide", str(int(clock.now()) - 1))
    for bad in (path[:-2] + "xx", "/confirm/nothing", f"/confirm/{expired}",
                f"/confirm/{tokens.sign('u', cid, 'm1')}"):
        assert rt.http("GET", bad).status == 404
    assert rt.settle()
    assert status(rt, cid) == "pending" and tap.events("contact.confirmed") == []


def test_single_opt_in_lists_are_unchanged(rt, tap):
    cid = signup(rt, "eve@example.com", SINGLE)
    assert status(rt, cid) == "active"
    assert len(tap.events("contact.subscribed")) == 1 and tap.events("contact.pending") == []


def test_a_confirmation_is_never_dormant_for_a_moment_and_enters_its_segments_in_one_write(rt, monkeypatch):
    """The confirmation's engagement is recorded by the touch of the contact.subscribed it comes with
    (the score function, which then evaluates the activity segments): the segment function's evaluation
    of contact.confirmed, which may run first, does not judge them on an activity not recorded yet."""
    import botocore.client

    written, original = [], botocore.client.BaseClient._make_api_call

    def record(client, operation, params):
        if operation in ("PutItem", "DeleteItem"):
            written.append((operation, (params.get("Item") or params.get("Key") or {}).get("sk", {}).get("S")))
        elif operation == "UpdateItem" and "segments" in params.get("ExpressionAttributeNames", {}).values():
            written.append((operation, params["UpdateExpression"]))
        return original(client, operation, params)

    invoked, invoke = [], rt.invoke
    rt.invoke = lambda function, payload: invoked.append((function, payload.get("detail-type"))) or invoke(function, payload)
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    cid = signup(rt)
    written.clear()
    assert rt.http("GET", confirm_path(mails(rt)[-1])).status in (200, 303)
    assert rt.settle()
    assert status(rt, cid) == "active"
    assert [w for w in written if w[1] == "SEG#dormant"] == []  # (it was entered, then left again at once)
    # the list's segment and engaged are entered by the score function's evaluation of contact.subscribed,
    # in one profile write; contact.confirmed needs no segment function invocation
    assert sorted(w for w in written if w[1].startswith("SEG#")) == [("PutItem", "SEG#engaged"), ("PutItem", "SEG#list:insiders")]
    assert [w for w in written if w[0] == "UpdateItem"] == [("UpdateItem", "ADD #segs :s")]
    assert ("SegmentFunction", "contact.confirmed") not in invoked and ("ScoreFunction", "contact.subscribed") in invoked
    item = rt.client("dynamodb").get_item(TableName="ContactsTable", Key={"pk": {"S": cid}, "sk": {"S": "PROFILE"}})["Item"]
    assert {"engaged", "list:insiders"} <= set(item["segments"]["SS"]) and "dormant" not in item["segments"]["SS"]


def test_a_link_clicked_twice_at_once_confirms_once_and_answers_both(rt, tap, monkeypatch):
    """The second click read the profile while it was still pending: its transaction fails on the profile
    and on the record of the same second (the record carries the events: new only); it is answered for
    the status the profile has now, not with an error."""
    from funnelpilot import consent
    from funnelpilot.models import Contact

    cid = signup(rt)
    token = confirm_path(mails(rt)[-1]).rsplit("/", 1)[1]
    stale = Contact.get(cid, "PROFILE", consistent_read=True)  # pending
    assert consent.confirm(token) == cid  # the first click
    reads, get = [], Contact.get
    monkeypatch.setattr(Contact, "get", lambda *a, **k: stale if not reads and not reads.append(1) else get(*a, **k))
    assert consent.confirm(token) == cid  # the second, as read before the first committed
    assert rt.settle()
    assert len(tap.events("contact.confirmed")) == len(tap.events("contact.subscribed")) == 1
