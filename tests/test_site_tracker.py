"""Site tracker: the fp identity hand-off on email clicks, GET /t.js and the public POST /collect,
driven through the real handlers with HTTP API v2 events."""
import json
import re
from email import message_from_bytes, policy

import pytest
from conftest import START, EventTap

from funnelpilot import clock, tokens, visitors
from funnelpilot.channels import emails
from funnelpilot_local.runtime import ROOT, Runtime, http_api_event
from funnelpilot_local.server import site_parameters
from funnelpilot.models import Message

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
SITE = "http://localhost:3000"  # the local site origin (SiteUrl, and an allowed origin)
UTM = "utm_source=funnelpilot&utm_medium=email&utm_campaign=welcome&utm_content=welcome-1"  # steering.utm
CLICK = re.compile(r"http://127\.0\.0\.1:3000/c/([A-Za-z0-9_\-.]+)")
NOW_MS = 1_900_000_020_000  # a fixed request time: rate-limit windows are real-time minutes


@pytest.fixture
def rt(tmp_path):
    """The runtime configured like ``make serve``: the site on localhost:3000 runs the snippet."""
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local", log_level="INFO",
                 parameters=site_parameters(3000)) as runtime:
        yield runtime


@pytest.fixture
def tap(rt):
    return EventTap(rt)


def signup(rt, email="ann@example.com") -> tuple[str, str]:
    body = rt.http("POST", "/signup", json_body={"email": email, "consent": True, "list": "test-single"}).json()
    return body["contact_id"], body["fp"]


def welcome_click_token(rt) -> str:
    assert rt.settle() and rt.advance(600)  # clicked ten minutes after delivery (not "too soon")
    [path] = rt.outbox.glob("*.eml")
    html = message_from_bytes(path.read_bytes(), policy=policy.default).get_body(("html",)).get_content()
    [token] = [t for t in CLICK.findall(html) if tokens.verify("c", t, 3)[2] == "0"]
    return token


def collect(rt, body, *, origin=SITE, agent=BROWSER, ip="198.51.100.7", at_ms=NOW_MS):
    """POST /collect as API Gateway delivers it (what sendBeacon sends: text/plain JSON)."""
    raw = body if isinstance(body, str) else json.dumps(body)
    headers = {"content-type": "text/plain;charset=UTF-8", "user-agent": agent}
    if origin:
        headers["origin"] = origin
    route = next(r for r in rt.routes if r.method == "POST" and r.path == "/collect")
    event = http_api_event("POST", "/collect", "", headers, raw, {}, route, ip)
    event["requestContext"]["timeEpoch"] = at_ms
    result = rt.invoke(route.function, event)
    return result["statusCode"], json.loads(result.get("body") or "null"), result.get("headers", {})


def view(path="/pricing", token=None, **extra) -> dict:
    return {"event": "page.viewed", "path": path, "title": "Pricing", **({"token": token} if token else {}), **extra}


def metrics_items(rt) -> list[dict]:
    return rt.client("dynamodb").scan(TableName="MetricsTable")["Items"]


def page_counter(rt, step: str) -> dict:
    """The site's counters for a page (or ``event:<name>``), summed over the simulated days."""
    totals = {}
    for item in metrics_items(rt):
        if item["pk"]["S"] == "FUNNEL#site" and item["sk"]["S"].endswith(f"#STEP#{step}"):
            for k in ("known", "anonymous"):
                if k in item:
                    totals[k] = totals.get(k, 0) + int(item[k]["N"])
    return totals


# ------------------------------------------------------------------ identity hand-off
def test_click_from_email_lands_with_fp_for_that_contact(rt, tap):
    cid, _ = signup(rt)
    token = welcome_click_token(rt)
    resp = rt.http("GET", f"/c/{token}", headers={"user-agent": BROWSER})
    assert resp.status == 302
    location = resp.headers["location"]
    assert location.startswith(f"{SITE}/guide?{UTM}&fp=")
    fp = location.split("fp=", 1)[1]
    assert visitors.contact_of(fp) == cid
    [clicked] = tap.events("email.clicked")
    assert clicked["detail"]["url"] == f"{SITE}/guide?{UTM}"  # the token never goes on the bus


def test_machine_click_gets_no_fp(rt):
    signup(rt)
    token = welcome_click_token(rt)
    resp = rt.http("GET", f"/c/{token}", headers={"user-agent": "Mozilla/5.0 (compatible; BarracudaCentral)"})
    assert resp.status == 302 and resp.headers["location"] == f"{SITE}/guide?{UTM}"


def test_hand_off_keeps_query_and_fragment_and_only_targets_site_origins(rt):
    cid, _ = signup(rt)
    landed = visitors.hand_off(f"{SITE}/p?a=1&fp=old&b=x%20y#plans", cid)
    assert re.fullmatch(rf"{SITE}/p\?a=1&b=x%20y&fp=[A-Za-z0-9_\-.]+#plans", landed)
    assert visitors.contact_of(landed.split("fp=")[1].split("#")[0]) == cid
    assert visitors.hand_off("https://www.youtube.com/watch?v=x", cid) == "https://www.youtube.com/watch?v=x"


def test_a_link_can_opt_out_of_the_hand_off(rt):
    cid, _ = signup(rt)
    html = (f'<html><body><a data-fp="off" href="{SITE}/share">share</a>'
            f'<a href="{SITE}/pricing" class="b">pricing</a></body></html>')
    tracked, links = emails.track(emails.Rendered("s", html, ""), contact_id=cid, message_id="mtest")
    assert links == [{"url": f"{SITE}/share", "fp": False}, f"{SITE}/pricing"]
    assert "data-fp" not in tracked.html
    sent_at = clock.iso(clock.now() - 3600)
    Message(cid, "MSG#mtest", message_id="mtest", template="t", status="sent", created_at=sent_at,
            sent_at=sent_at, links=json.dumps(links)).save()
    opted_out = rt.http("GET", f"/c/{tokens.sign('c', cid, 'mtest', '0')}", headers={"user-agent": BROWSER})
    assert opted_out.status == 302 and opted_out.headers["location"] == f"{SITE}/share"
    normal = rt.http("GET", f"/c/{tokens.sign('c', cid, 'mtest', '1')}", headers={"user-agent": BROWSER})
    assert normal.headers["location"].startswith(f"{SITE}/pricing?fp=")


def test_signup_returns_the_same_kind_of_token(rt):
    cid, fp = signup(rt)
    assert visitors.contact_of(fp) == cid


def test_an_expired_token_counts_as_anonymous(rt, tap):
    cid, fp = signup(rt)
    clock.advance_to(clock.now() + (visitors.TOKEN_DAYS + 1) * 86_400)
    status, _, _ = collect(rt, view(token=fp))
    assert status == 204
    assert tap.events("page.viewed") == [] and page_counter(rt, "/pricing") == {"anonymous": 1}


# ------------------------------------------------------------------ POST /collect
def test_collect_with_token_emits_page_viewed_for_that_contact(rt, tap):
    cid, _ = signup(rt)
    token = welcome_click_token(rt)
    fp = rt.http("GET", f"/c/{token}", headers={"user-agent": BROWSER}).headers["location"].split("fp=")[1]
    status, body, headers = collect(rt, view(token=fp, referrer="https://mail.example/inbox?q=ann@example.com",
                                             utm={"utm_source": "email", "utm_campaign": "welcome"}))
    assert (status, body) == (204, None)
    assert headers["access-control-allow-origin"] == SITE
    [viewed] = tap.events("page.viewed")
    detail = viewed["detail"]
    assert detail["contact_id"] == cid and detail["path"] == "/pricing" and detail["title"] == "Pricing"
    assert detail["referrer"] == "https://mail.example/inbox"  # never a query string
    assert detail["utm_source"] == "email" and detail["utm_campaign"] == "welcome"
    assert detail["event_id"] and detail["occurred_at"].endswith("Z")
    assert fp not in json.dumps(viewed) and "198.51.100.7" not in json.dumps(viewed)
    assert page_counter(rt, "/pricing") == {"known": 1}
    assert rt.settle()  # scoring (infra/scoring.yaml): pricing page 20 + page view 1
    activity = rt.client("dynamodb").query(TableName=rt.template.physical["ContactsTable"],
                                           KeyConditionExpression="pk = :p AND begins_with(sk, :e)",
                                           ExpressionAttributeValues={":p": {"S": cid}, ":e": {"S": "SCORED#"}})["Items"]
    assert [i["capture_points"]["N"] for i in activity if i["kind"]["S"] == "page.viewed"] == ["21"]
    # the sales alert (functions/notify, infra/alerts.yaml): one internal email naming the page
    [alerted] = tap.events("sales.alerted")
    assert alerted["detail"]["contact_id"] == cid and alerted["detail"]["path"] == "/pricing"
    [alert] = [m for m in (message_from_bytes(p.read_bytes(), policy=policy.default) for p in rt.outbox.glob("*.eml"))
               if m["To"] == "sales@example.com"]
    assert "/pricing" in alert["Subject"] and "ann@example.com" in alert.get_body(("plain",)).get_content()


def test_anonymous_view_is_counted_not_stored_per_person(rt, tap):
    contacts_before = rt.client("dynamodb").scan(TableName="ContactsTable")["Items"]
    assert collect(rt, view("/"))[0] == 204
    assert collect(rt, view("/"))[0] == 204
    assert page_counter(rt, "/") == {"anonymous": 2}
    assert tap.events() == []
    assert rt.client("dynamodb").scan(TableName="ContactsTable")["Items"] == contacts_before
    rate_keys = [i["pk"]["S"] for i in metrics_items(rt) if i["pk"]["S"].startswith("RATE#")]
    assert rate_keys and not any("198.51.100.7" in k for k in rate_keys)  # the IP only as a keyed hash


def test_custom_event_is_namespaced_like_post_events(rt, tap):
    cid, fp = signup(rt)
    status, _, _ = collect(rt, {"event": "plan.chosen", "path": "/pricing", "token": fp,
                                "props": {"plan": "growth", "seats": 3, "annual": True}})
    assert status == 204
    [chosen] = tap.events("custom.plan.chosen")
    assert chosen["detail"]["contact_id"] == cid and chosen["detail"]["properties"] == {
        "plan": "growth", "seats": 3, "annual": True}
    assert page_counter(rt, "event:plan.chosen") == {"known": 1}
    # a browser can never emit a catalogue event such as order.placed
    collect(rt, {"event": "order.placed", "path": "/", "token": fp})
    assert tap.events("order.placed") == [] and tap.events("custom.order.placed")


def test_a_valid_token_for_no_contact_counts_as_anonymous(rt, tap):
    erased_or_never = visitors.token("a" * 26)  # e.g. a person erased since (GDPR)
    assert collect(rt, view(token=erased_or_never))[0] == 204
    assert tap.events() == [] and page_counter(rt, "/pricing") == {"anonymous": 1}


def assert_refused(rt, tap, case, result, status, field):
    code, body, _ = result
    assert (code, (body or {}).get("field")) == (status, field), case
    assert body["error"], case
    assert metrics_items(rt) == [] and tap.events() == [], f"{case}: something was stored"


def test_forged_tokens_are_403_and_store_nothing(rt, tap):
    good = tokens.sign("fp", "a" * 26, "99999")
    for case, token in {"bad signature": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
                        "another kind": tokens.sign("u", "a" * 26, "99999"),
                        "no expiry": tokens.sign("fp", "a" * 26), "garbage": "not-a-token"}.items():
        assert_refused(rt, tap, case, collect(rt, view(token=token)), 403, "token")


def test_foreign_origins_and_bots_are_refused(rt, tap):
    for case, status, field in [
        ({"origin": "https://evil.test"}, 403, "origin"),
        ({"origin": None}, 403, "origin"),
        ({"origin": "null"}, 403, "origin"),
        ({"agent": "Googlebot/2.1 (+http://www.google.com/bot.html)"}, 403, "user-agent"),
        ({"agent": "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/126.0 Safari/537.36"}, 403, "user-agent"),
        ({"agent": ""}, 403, "user-agent"),
    ]:
        result = collect(rt, view(), **case)
        assert_refused(rt, tap, case, result, status, field)
        if field == "origin":
            assert "access-control-allow-origin" not in result[2]


def test_oversized_and_malformed_bodies_are_refused(rt, tap):
    for body, status, field in [
        (json.dumps(view(title="x" * 300, referrer="https://a.example/" + "y" * 4000)), 413, "body"),
        ("x" * 9000, 413, "body"),
        ("{not json", 400, "body"),
        ("[1, 2]", 400, "body"),
        (json.dumps(view(extra="x")), 400, "extra"),
        (json.dumps({"path": "/"}), 400, "event"),
        (json.dumps(view(path="https://evil.test/")), 400, "path"),
        (json.dumps({"event": "Page Viewed!", "path": "/"}), 400, "event"),
        (json.dumps(view(title={"a": 1})), 400, "title"),
        (json.dumps(view(title="a\nb")), 400, "title"),
        (json.dumps(view(utm={"utm_source": "x", "email": "ann@example.com"})), 400, "utm"),
        (json.dumps(view(utm={"utm_source": 5})), 400, "utm"),
        (json.dumps(view(props={"nested": {"a": 1}})), 400, "props"),
        (json.dumps(view(props={f"k{i}": i for i in range(11)})), 400, "props"),
        (json.dumps(view(props={"n": 1e300})), 400, "props"),
    ]:
        assert_refused(rt, tap, body[:60], collect(rt, body), status, field)


def test_burst_over_the_per_contact_limit_is_429_and_stores_nothing(rt, tap):
    cid, fp = signup(rt)
    limit = 60
    statuses = [collect(rt, view(token=fp), ip=f"198.51.100.{i % 50}")[0] for i in range(limit)]
    assert statuses == [204] * limit
    status, body, headers = collect(rt, view(token=fp), ip="203.0.113.200")
    assert status == 429 and body["field"] == "contact" and headers["retry-after"] == "60"
    assert len(tap.events("page.viewed")) == limit and page_counter(rt, "/pricing") == {"known": limit}
    # the next minute is a new window
    assert collect(rt, view(token=fp), at_ms=NOW_MS + 60_000)[0] == 204


def test_burst_over_the_per_ip_limit_is_429_and_stores_nothing(rt, tap):
    limit = 120
    assert [collect(rt, view("/"))[0] for _ in range(limit)] == [204] * limit
    status, body, _ = collect(rt, view("/"))
    assert status == 429 and body["field"] == "ip"
    assert page_counter(rt, "/") == {"anonymous": limit}
    assert collect(rt, view("/"), ip="198.51.100.99")[0] == 204  # another address is not affected


def test_preflight_for_allowed_origins_only(rt):
    ok = rt.http("OPTIONS", "/collect", headers={"origin": SITE, "access-control-request-method": "POST"})
    assert ok.status == 204 and ok.headers["access-control-allow-origin"] == SITE
    foreign = rt.http("OPTIONS", "/collect", headers={"origin": "https://evil.test"})
    assert foreign.status == 403 and "access-control-allow-origin" not in foreign.headers


# ------------------------------------------------------------------ GET /t.js
def test_snippet_is_small_cacheable_and_cookieless(rt):
    resp = rt.http("GET", "/t.js")
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/javascript")
    assert "max-age=" in resp.headers["cache-control"] and resp.headers["etag"]
    assert len(resp.body) < 1100
    assert b"cookie" not in resp.body.lower() and b"sendBeacon" in resp.body
    again = rt.http("GET", "/t.js", headers={"if-none-match": resp.headers["etag"]})
    assert again.status == 304 and not again.body
