"""POST /signup attacked from outside: list bombing (third parties' addresses), invented lists,
undoing an unsubscribe, skipping the confirmation. Everything through the real routes."""
import json
import re
import threading
from email import message_from_bytes, policy

from conftest import SINGLE, executions, ip_for
from test_reliability_concurrency import environment

from funnelpilot import contacts, ratelimit, tokens
from funnelpilot_local.aws_rules import dynamodb
from funnelpilot_local.moto_adapter import sent_emails
from funnelpilot_local.runtime import LambdaContext, http_api_event
from funnelpilot_local.template import ACCOUNT, REGION

CONFIRM_SUBJECT = "Please confirm your subscription"
DAY = 86_400


def mails(rt, to: str | None = None) -> list:
    rt.flush_outbox()
    found = [message_from_bytes(p.read_bytes(), policy=policy.default) for p in sorted(rt.outbox.glob("*.eml"))]
    return [m for m in found if to in (None, m["To"])]


def sent_to(to: str) -> list:
    """The emails to ``to`` that SES accepted, in the order it accepted them."""
    found = [message_from_bytes(raw.encode() if isinstance(raw, str) else raw, policy=policy.default)
             for _, raw in sent_emails(ACCOUNT, REGION)]
    return [m for m in found if m["To"] == to]


def confirm_path(mail) -> str:
    return re.search(r"http://127\.0\.0\.1:3000(/confirm/[A-Za-z0-9_\-.]+)", mail.get_body(("plain",)).get_content()).group(1)


def profile(rt, cid) -> dict:
    return rt.client("dynamodb").get_item(TableName="ContactsTable", Key={"pk": {"S": cid}, "sk": {"S": "PROFILE"}},
                                          ConsistentRead=True)["Item"]


def consents(rt, cid) -> list[dict]:
    return rt.client("dynamodb").query(
        TableName="ContactsTable", KeyConditionExpression="pk = :c AND begins_with(sk, :s)",
        ExpressionAttributeValues={":c": {"S": cid}, ":s": {"S": "CONSENT#"}})["Items"]


def post(rt, email, ip, **fields):
    return rt.http("POST", "/signup", json_body={"email": email, "consent": True, **fields}, source_ip=ip)


def test_list_bombing_from_one_ip_is_capped_and_sends_only_confirmations(rt, tap):
    answers = [post(rt, f"victim{i}@example.org", "203.0.113.66") for i in range(300)]
    accepted = [a for a in answers if a.status == 202]
    limited = [a.json() for a in answers if a.status == 429 and "field" in a.json()]
    throttled = [a for a in answers if a.status == 429 and a.json() == {"message": "Too Many Requests"}]
    # the route's burst (template.yaml: 50) lets 50 reach the function, which accepts its per-IP limit (20)
    assert (len(accepted), len(limited), len(throttled)) == (20, 30, 250)
    assert {(b["field"], b["retry_after"] > 0) for b in limited} == {("ip", True)}
    refused = next(a for a in answers if a.status == 429 and "field" in a.json())
    assert int(refused.headers["retry-after"]) == refused.json()["retry_after"] <= 3600
    assert rt.settle() and rt.advance(600)
    # nobody confirmed: no contact is active, no funnel started, only confirmation emails went out
    profiles = rt.client("dynamodb").scan(TableName="ContactsTable", FilterExpression="sk = :p",
                                          ExpressionAttributeValues={":p": {"S": "PROFILE"}})["Items"]
    assert len(profiles) == 20 and {p["status"]["S"] for p in profiles} == {"pending"}
    sent = mails(rt)
    # 20 confirmations at one instant exceed SES's sending rate (14 a second, strict mode): the
    # throttled ones fail confirm_mailer and Lambda's async queue retries them a minute later
    assert len(sent) == 20 and {m["Subject"] for m in sent} == {CONFIRM_SUBJECT}
    assert rt.dead_letters == []
    assert tap.events("contact.subscribed") == [] and executions(rt) == []
    # the windows are keyed pseudonyms: neither the IP nor an address is stored in them
    rates = rt.client("dynamodb").scan(TableName="MetricsTable")["Items"]
    keys = [r["pk"]["S"] for r in rates if r["pk"]["S"].startswith("RATE#signup-")]
    assert keys and not any("203.0.113.66" in k or "@" in k for k in keys)


def test_per_address_limit(rt):
    answers = [post(rt, "target@example.org", f"198.51.100.{i}", list=SINGLE) for i in range(1, 8)]
    assert [a.status for a in answers] == [202] * 5 + [429] * 2
    assert answers[5].json()["field"] == "email" and int(answers[5].headers["retry-after"]) <= DAY


def windows(rt, field: str) -> dict[str, int]:
    """The signup rate windows of ``field``: ``ip``, keyed pseudonym -> count (MetricsTable); ``email``,
    contact id -> count (the profile's ``signups_<window>``)."""
    if field == "email":
        profiles = rt.client("dynamodb").scan(TableName="ContactsTable")["Items"]
        return {p["pk"]["S"]: int(v["N"]) for p in profiles for k, v in p.items() if k.startswith("signups_")}
    items = rt.client("dynamodb").scan(TableName="MetricsTable")["Items"]
    return {i["pk"]["S"].split("#")[2]: int(i["hits"]["N"]) for i in items if i["pk"]["S"].startswith(f"RATE#signup-{field}#")}


def test_a_refused_signup_counts_in_no_window_and_a_full_ip_is_named_first(rt):
    for i in range(1, 6):
        assert post(rt, "full@example.org", f"198.51.100.{i}", list=SINGLE).status == 202
    refused = post(rt, "full@example.org", "192.0.2.99", list=SINGLE)
    assert refused.status == 429 and refused.json()["field"] == "email"
    assert windows(rt, "email") == {tokens.contact_id("full@example.org"): 5}
    assert tokens.keyed_id("ip", "192.0.2.99") not in windows(rt, "ip")  # one transaction: nothing counted
    for i in range(20):
        assert post(rt, f"p{i}@example.org", "192.0.2.99", list=SINGLE).status == 202  # its 20 are intact
    both = post(rt, "full@example.org", "192.0.2.99", list=SINGLE)
    assert both.status == 429 and both.json()["field"] == "ip"
    assert windows(rt, "ip")[tokens.keyed_id("ip", "192.0.2.99")] == 20


def test_a_signup_meeting_another_on_its_ip_window_is_retried_and_both_count(rt):
    """The per-IP window is an item of every signup transaction from that IP: one in flight cancels
    another (strict mode: TransactionConflict), which is made again once it is through."""
    route = next(r for r in rt.routes if (r.method, r.path) == ("POST", "/signup"))
    at, ip = 1_800_000_000, "203.0.113.77"

    def signup(email: str):
        event = http_api_event("POST", "/signup", "", {"content-type": "application/json"},
                               f'{{"email": "{email}", "consent": true, "list": "{SINGLE}"}}', {}, route, ip)
        event["requestContext"]["timeEpoch"] = at * 1000  # one window, whatever the hour
        return environment(rt, route.function)(event, LambdaContext(route.function))

    window = ratelimit.counter("signup-ip", tokens.keyed_id("ip", ip), 20, 3600, at)["Key"]
    results = {}
    with dynamodb.hold("MetricsTable", window) as held:
        first = threading.Thread(target=lambda: results.update(first=signup("nat@example.org")))
        first.start()
        held.wait()  # its transaction is in flight
        threading.Thread(target=lambda: held.refused.wait(20) and held.release()).start()
        results["second"] = signup("ned@example.org")  # conflicts, then retries once the first is through
        assert held.refused.is_set()
    first.join()
    assert {r["statusCode"] for r in results.values()} == {202}
    assert windows(rt, "ip") == {tokens.keyed_id("ip", ip): 2}
    assert {tokens.contact_id(e) for e in ("nat@example.org", "ned@example.org")} == {
        json.loads(r["body"])["contact_id"] for r in results.values()}


def test_unknown_list_is_400_and_stores_nothing(rt, tap):
    resp = post(rt, "zed@example.org", "198.51.100.200", list="whatever")
    assert resp.status == 400 and resp.json()["field"] == "list" and resp.json()["error"]
    assert rt.client("dynamodb").scan(TableName="ContactsTable")["Items"] == []
    assert rt.settle() and tap.events() == [] and mails(rt) == []


def test_an_unsubscribe_is_undone_only_by_its_owner(rt, tap):
    victim = "vic@example.org"
    cid = post(rt, victim, ip_for(victim)).json()["contact_id"]
    assert rt.settle()
    [confirmation] = mails(rt, victim)
    assert rt.http("GET", confirm_path(confirmation), source_ip=ip_for(victim)).status == 200
    assert rt.settle() and rt.advance(600)
    [welcome] = [m for m in mails(rt, victim) if m["Subject"] != CONFIRM_SUBJECT]
    unsubscribe = re.match(r"<http://127\.0\.0\.1:3000(/u/[^>]+)>", welcome["List-Unsubscribe"]).group(1)
    assert rt.http("POST", unsubscribe, form={"List-Unsubscribe": "One-Click"}).status == 200
    assert rt.settle() and rt.advance(DAY)
    received = len(sent_to(victim))

    # someone else posts the address again, to a single opt-in list, with a lead magnet
    again = post(rt, victim, "203.0.113.9", list=SINGLE, lead_magnet="guide")
    stranger = post(rt, "new@example.org", "203.0.113.9", list=SINGLE)
    assert again.status == stranger.status == 202 and set(again.json()) == set(stranger.json()) == {"contact_id", "fp"}
    assert post(rt, victim, "203.0.113.10", list=SINGLE).status == 202  # and again: the resend throttle holds
    assert rt.settle()
    assert profile(rt, cid)["status"]["S"] == "unsubscribed"
    [confirmation] = sent_to(victim)[received:]
    assert confirmation["Subject"] == CONFIRM_SUBJECT
    # (both re-posts came in the same second: the record of that second is the last one's)
    unconfirmed = [c for c in consents(rt, cid) if c.get("ip", {}).get("S") in ("203.0.113.9", "203.0.113.10")]
    assert [c["confirmation"]["S"] for c in unconfirmed] == ["unconfirmed"]
    subscribed = len(tap.events("contact.subscribed"))
    assert rt.advance(DAY)  # within the link's 48 hours
    assert profile(rt, cid)["status"]["S"] == "unsubscribed"
    assert len(sent_to(victim)) == received + 1  # no marketing email
    assert len(tap.events("contact.subscribed")) == subscribed

    # the owner clicks the link: active again, and the funnels start (delivery of the lead magnet)
    link = confirm_path(confirmation)
    assert rt.http("GET", link, source_ip="192.0.2.44", headers={"user-agent": "Owner/1.0"}).status == 200
    assert rt.settle()
    assert profile(rt, cid)["status"]["S"] == "active" and "resubscribe_requested_at" not in profile(rt, cid)
    event = tap.events("contact.subscribed")[-1]["detail"]
    assert event["contact_id"] == cid and event["resubscribed"] is True and event["lead_magnet"] == "guide"
    assert executions(rt, "delivery")
    first, record = sorted((c for c in consents(rt, cid) if c["sk"]["S"].endswith("#confirmed")),
                           key=lambda c: c["sk"]["S"])  # the first subscription's, then this one
    assert record["confirmation"]["S"] == "confirmed" and record["ip"]["S"] == "192.0.2.44"
    assert record["user_agent"]["S"] == "Owner/1.0" and record["confirmed_at"]["S"] > first["confirmed_at"]["S"]
    assert rt.http("GET", link).status == 200 and rt.settle()  # a repeat click emits nothing
    assert len(tap.events("contact.subscribed")) == subscribed + 1


def test_a_pending_contact_posted_for_another_list_stays_pending(rt, tap):
    email = "pat@example.org"
    cid = post(rt, email, ip_for(email), list="insiders").json()["contact_id"]
    assert rt.settle()
    assert post(rt, email, "203.0.113.20", list=SINGLE).status == 202
    assert post(rt, email, "203.0.113.21", list="newsletter").status == 202
    assert rt.settle()
    item = profile(rt, cid)
    assert item["status"]["S"] == "pending" and set(item["lists"]["SS"]) == {"insiders", SINGLE, "newsletter"}
    assert tap.events("contact.subscribed") == [] and executions(rt) == []
    assert {m["Subject"] for m in mails(rt, email)} == {CONFIRM_SUBJECT}
    assert {c["confirmation"]["S"] for c in consents(rt, cid)} == {"unconfirmed"}
    # the owner's click covers the lists asked for
    assert rt.http("GET", confirm_path(mails(rt, email)[0])).status == 200
    assert rt.settle()
    assert profile(rt, cid)["status"]["S"] == "active" and len(tap.events("contact.subscribed")) == 1
    assert executions(rt)


def test_a_suppressed_address_is_never_reactivated(rt, tap):
    from funnelpilot import consent

    email = "gone@example.org"
    cid = post(rt, email, ip_for(email), list=SINGLE).json()["contact_id"]
    assert rt.settle() and consent.suppress(cid, "hard_bounce") and rt.settle()
    before = len(mails(rt, email))
    assert post(rt, email, "203.0.113.30", list=SINGLE).status == 202
    assert post(rt, email, "203.0.113.31", list="newsletter").status == 202
    assert rt.settle()
    assert profile(rt, cid)["status"]["S"] == "suppressed" and len(mails(rt, email)) == before
    assert len(tap.events("contact.subscribed")) == 1 and tap.events("contact.pending") == []


def test_the_address_window_is_counted_on_the_profile_and_a_past_window_is_removed(rt, monkeypatch):
    """No item of its own: the per-address counter is an ADD in the profile's update (2 WRU less a signup)."""
    cid = tokens.contact_id("again@example.org")

    def stored_profile(rt, cid):
        return rt.client("dynamodb").get_item(TableName="ContactsTable", Key={"pk": {"S": cid}, "sk": {"S": "PROFILE"}})["Item"]

    for i in range(3):
        assert post(rt, "again@example.org", f"198.51.100.{i + 1}", list=SINGLE).status == 202
    [window] = [k for k in stored_profile(rt, cid) if k.startswith("signups_")]
    assert stored_profile(rt, cid)[window] == {"N": "3"}
    later = int(window.split("_")[1]) + 1  # the next day's window
    monkeypatch.setattr(contacts, "_window", lambda at, old, real=contacts._window: real(later * DAY, old))
    assert post(rt, "again@example.org", "198.51.100.9", list=SINGLE).status == 202
    counters = {k: v for k, v in stored_profile(rt, cid).items() if k.startswith("signups_")}
    assert counters == {f"signups_{later}": {"N": "1"}}  # the past window went with the re-signup
