"""Abuse through the public routes: signup tokens that cannot qualify a lead, SES feedback
re-published, double clicks, invented /collect paths, non-canonical tokens."""
import base64
import json
import re
from email import message_from_bytes, policy

import pytest
from conftest import START, EventTap
from test_consent import bounce, ses_event, signup_and_mail, status

from funnelpilot import tokens
from funnelpilot_local.runtime import ROOT, Runtime, http_api_event
from funnelpilot_local.server import site_parameters

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
SITE = "http://localhost:3000"
CLICK = re.compile(r"http://127\.0\.0\.1:3000/c/([A-Za-z0-9_\-.]+)")
NOW_MS = 1_900_000_020_000


@pytest.fixture
def rt(tmp_path):
    """Configured like ``make serve``: email links to the site carry the fp token."""
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local", log_level="INFO",
                 parameters=site_parameters(3000)) as runtime:
        yield runtime


@pytest.fixture
def tap(rt):
    return EventTap(rt)


def collect(rt, body: dict, ip="198.51.100.7", at_ms=NOW_MS) -> int:
    route = next(r for r in rt.routes if r.method == "POST" and r.path == "/collect")
    event = http_api_event("POST", "/collect", "", {"content-type": "text/plain", "user-agent": BROWSER,
                                                    "origin": SITE}, json.dumps(body), {}, route, ip)
    event["requestContext"]["timeEpoch"] = at_ms
    return rt.invoke(route.function, event)["statusCode"]


def activity(rt, cid, kind) -> list[dict]:
    items = rt.client("dynamodb").query(TableName="ContactsTable", KeyConditionExpression="pk = :c AND "
                                        "begins_with(sk, :e)", ExpressionAttributeValues={
                                            ":c": {"S": cid}, ":e": {"S": "SCORED#"}})["Items"]
    return [i for i in items if i["kind"]["S"] == kind]


def welcome_click(rt) -> str:
    [path] = rt.outbox.glob("*.eml")
    html = message_from_bytes(path.read_bytes(), policy=policy.default).get_body(("html",)).get_content()
    [token] = [t for t in CLICK.findall(html) if tokens.verify("c", t, 3)[2] == "0"]
    return token


def test_a_signup_token_cannot_qualify_a_lead_until_the_address_is_proven(rt, tap):
    body = rt.http("POST", "/signup", json_body={"email": "victim@example.com", "consent": True, "list": "test-single"}).json()
    cid, fp = body["contact_id"], body["fp"]
    assert rt.settle()
    for _ in range(3):  # the attacker browses /pricing as the victim
        assert collect(rt, {"event": "page.viewed", "path": "/pricing", "token": fp}) == 204
    assert rt.settle()
    views = [e["detail"] for e in tap.events("page.viewed")]
    assert len(views) == 3 and all(v["unverified"] is True for v in views)
    assert [a for a in activity(rt, cid, "page.viewed") if "capture_points" in a] == []
    assert tap.events("lead.qualified") == [] and tap.events("sales.alerted") == []
    # the person clicks their welcome email: the address is theirs, their signup token now counts
    assert rt.advance(600)
    assert rt.http("GET", f"/c/{welcome_click(rt)}", headers={"user-agent": BROWSER}).status == 302
    assert rt.settle()
    assert collect(rt, {"event": "page.viewed", "path": "/pricing", "token": fp}, at_ms=NOW_MS + 60_000) == 204
    assert rt.settle()
    assert "unverified" not in tap.events("page.viewed")[-1]["detail"]
    assert [a for a in activity(rt, cid, "page.viewed") if a.get("capture_points", {}).get("N") == "21"]
    [alerted] = tap.events("sales.alerted")
    assert alerted["detail"]["contact_id"] == cid


def test_an_email_click_token_is_proven_at_once(rt, tap):
    cid = rt.http("POST", "/signup", json_body={"email": "ann@example.com", "consent": True, "list": "test-single"}).json()["contact_id"]
    assert rt.settle() and rt.advance(600)
    location = rt.http("GET", f"/c/{welcome_click(rt)}", headers={"user-agent": BROWSER}).headers["location"]
    fp = location.split("fp=")[1]
    assert collect(rt, {"event": "page.viewed", "path": "/pricing", "token": fp}) == 204
    assert rt.settle()
    [view] = tap.events("page.viewed")
    assert view["detail"]["contact_id"] == cid and "unverified" not in view["detail"]


def test_a_double_click_scores_once(rt):
    cid = rt.http("POST", "/signup", json_body={"email": "ann@example.com", "consent": True, "list": "test-single"}).json()["contact_id"]
    assert rt.settle() and rt.advance(600)
    token = welcome_click(rt)
    for _ in range(2):
        assert rt.http("GET", f"/c/{token}", headers={"user-agent": BROWSER}).status == 302
        assert rt.settle() and rt.advance(30)
    clicks = activity(rt, cid, "email.clicked")
    assert len(clicks) == 2  # both recorded...
    assert sorted(c.get("capture_points", {}).get("N") for c in clicks if "capture_points" in c) == ["5"]  # ...one scored


def test_a_re_published_ses_bounce_counts_once(rt, tap):
    cid, mail = signup_and_mail(rt)
    soft = bounce("Transient")
    for _ in range(3):  # one real soft bounce, two copies (each a new EventBridge event id)
        ses_event(rt, "Email Bounced", "Bounce", mail, soft)
    item = rt.client("dynamodb").get_item(TableName="ContactsTable",
                                          Key={"pk": {"S": cid}, "sk": {"S": "PROFILE"}})["Item"]
    assert item["soft_bounces"]["N"] == "1" and status(rt, cid) == "active"
    assert len({e["detail"]["event_id"] for e in tap.events("email.bounced")}) == 1
    for _ in range(2):  # two more real ones reach the limit
        ses_event(rt, "Email Bounced", "Bounce", mail, bounce("Transient"))
    assert status(rt, cid) == "suppressed"


def test_invented_collect_paths_make_a_bounded_set_of_expiring_rows(rt):
    for i in range(300):  # 300 addresses, 300 invented paths
        assert collect(rt, {"event": "page.viewed", "path": f"/x{i}/{'a' * 150}"}, ip=f"203.0.113.{i % 250}",
                       at_ms=NOW_MS + i * 1000) == 204
    assert collect(rt, {"event": "page.viewed", "path": "/blog/first-post"}) == 204
    assert collect(rt, {"event": "page.viewed", "path": "//pricing/"}) == 204
    assert collect(rt, {"event": "made.up", "path": "/"}) == 204
    rows = [i for i in rt.client("dynamodb").scan(TableName="MetricsTable")["Items"] if i["pk"]["S"] == "FUNNEL#site"]
    steps = {r["sk"]["S"].split("#STEP#", 1)[1]: int(r["anonymous"]["N"]) for r in rows}
    assert steps == {"(other)": 300, "/blog/*": 1, "/pricing": 1, "event:(other)": 1}
    assert all(START + 399 * 86400 < int(r["expires_at"]["N"]) < START + 402 * 86400 for r in rows)  # keep_days


def test_only_the_canonical_encoding_of_a_token_is_accepted(rt):
    token = tokens.sign("c", "abc", "m1", "0")
    body, mac = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    variants = {f"{body[:-1]}{c}.{mac}" for c in alphabet} | {f"{body}.{mac[:-1]}{c}" for c in alphabet}
    variants |= {f"{body}=.{mac}", f"{body}.{mac}==", f"{body}.{mac}\n", f"{body}.{mac}+"}
    same_bytes = [v for v in variants if v != token and _decodes_like(v, token)]
    assert len(same_bytes) >= 20  # the lenient decoder's other spellings of this token...
    assert [v for v in variants if tokens.verify("c", v, 3) is not None] == [token]  # ...are refused


def _decodes_like(variant: str, token: str) -> bool:
    def raw(t):
        return [base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in t.rstrip("\n+=").split(".")]
    try:
        return raw(variant) == raw(token)
    except ValueError:
        return False


def test_the_report_routes_400_is_documented(rt):
    from funnelpilot_local.openapi import document
    from funnelpilot_local.runtime import LOCAL_ADMIN_KEY, ROOT as root

    resp = rt.http("GET", "/funnels/welcome/report?from=yesterday", headers={"x-api-key": LOCAL_ADMIN_KEY})
    assert resp.status == 400 and resp.json()["field"] == "from"
    responses = document(root)["paths"]["/funnels/{id}/report"]["get"]["responses"]
    assert "400" in responses and responses["400"]["content"]["application/json"]
    assert json.loads((root / "infra" / "openapi.json").read_text())["paths"]["/funnels/{id}/report"]["get"][
        "responses"] == responses  # the committed document is the generated one


def test_dynamodb_permissions_are_the_actions_each_function_performs(rt):
    """No function may Scan or gets a CRUD policy template; the public routes cannot delete
    (but the ingest marker) nor batch-write; strict IAM (the rt fixture) fails every test
    whose code performs an action its function lacks."""
    resources = rt.template.doc["Resources"]
    public = {"SignupFunction", "TrackOpenFunction", "TrackClickFunction", "UnsubscribeFunction", "ConfirmFunction",
              "SiteTrackerFunction"}
    for lid, res in resources.items():
        if res["Type"] != "AWS::Serverless::Function":
            continue
        policies = res["Properties"].get("Policies", [])
        assert not [p for p in policies if "DynamoDBCrudPolicy" in p or "DynamoDBReadPolicy" in p], lid
        actions = {a for p in policies for st in p.get("Statement", []) for a in
                   ([st["Action"]] if isinstance(st["Action"], str) else st["Action"]) if a.startswith("dynamodb:")}
        assert "dynamodb:Scan" not in actions, lid
        if lid in public:
            assert not actions & {"dynamodb:DeleteItem", "dynamodb:BatchWriteItem", "dynamodb:Query"}, lid
