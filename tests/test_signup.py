"""POST /signup through the real handler with API Gateway HTTP API v2 events (contract §3)."""
import base64

import pytest

from funnelpilot.models import PROFILE, ConsentRecord, Contact


def contacts_table_items(rt) -> list[dict]:
    return rt.client("dynamodb").scan(TableName="ContactsTable")["Items"]


def test_json_signup_creates_a_pending_contact_and_asks_for_confirmation(rt, tap):
    resp = rt.http("POST", "/signup", json_body={"email": "  Ann.Lee@Example.COM ", "consent": True,
                                                 "first_name": "Ann", "utm_source": "ads", "timezone": "Europe/Paris"})
    assert resp.status == 202
    cid = resp.json()["contact_id"]
    assert "@" not in cid and "ann" not in cid
    contact = Contact.get(cid, PROFILE)
    assert contact.email == "ann.lee@example.com"
    assert contact.timezone == "Europe/Paris"  # a reserved word in DynamoDB: the update names it
    assert contact.first_name == "Ann"
    assert contact.lists == {"newsletter"}
    assert contact.utm.as_dict() == {"utm_source": "ads"}
    assert contact.status == "pending"  # newsletter: double opt-in, the default (infra/lists.yaml)
    assert tap.events("contact.subscribed") == []
    [event] = tap.events("contact.pending")
    assert event["source"] == "funnelpilot"
    detail = event["detail"]
    assert detail["contact_id"] == cid and detail["event_id"] and detail["occurred_at"].endswith("Z")
    assert "email" not in detail  # no PII on the bus


def test_form_encoded_signup_is_accepted(rt):
    resp = rt.http("POST", "/signup", form={"email": "bo@example.com", "consent": "on", "list": "Insiders"})
    assert resp.status == 202
    assert Contact.get(resp.json()["contact_id"], PROFILE).lists == {"insiders"}


def test_form_body_arrives_base64_encoded_like_http_api(rt):
    # HTTP API base64-encodes form bodies; the handler decodes them.
    from funnelpilot_local.runtime import http_api_event

    route = next(r for r in rt.routes if r.method == "POST" and r.path == "/signup")
    event = http_api_event("POST", "/signup", "", {"content-type": "application/x-www-form-urlencoded"},
                           "email=cy%40example.com&consent=true", {}, route, "203.0.113.9")
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"email=cy%40example.com&consent=true"
    result = rt.invoke("SignupFunction", event)
    assert result["statusCode"] == 202


def test_same_person_twice_is_one_contact(rt, tap):
    first = rt.http("POST", "/signup", json_body={"email": "dee@example.com", "consent": True}).json()
    second = rt.http("POST", "/signup", form={"email": "DEE@example.com ", "consent": "true",
                                              "first_name": "Dee", "list": "insiders"}).json()
    assert first == second
    profiles = [i for i in contacts_table_items(rt) if i["sk"]["S"] == PROFILE]
    assert len(profiles) == 1
    contact = Contact.get(first["contact_id"], PROFILE)
    assert contact.lists == {"newsletter", "insiders"} and contact.first_name == "Dee"
    consents = [i for i in contacts_table_items(rt) if i["sk"]["S"].startswith("CONSENT#")]
    assert len(consents) == 2 and consents[0]["ip"]["S"] == "127.0.0.1"


def test_a_new_signup_is_one_call_a_repeat_two_and_its_consent_record_reads_as_the_model(rt, aws_calls):
    body = {"email": "eve@example.com", "consent": True, "list": "insiders"}
    aws_calls.clear()
    first = rt.http("POST", "/signup", json_body=body,
                    headers={"user-agent": "Form/1.0", "referer": "https://example.com/join?ref=ads"})
    assert first.status == 202 and aws_calls == ["dynamodb:TransactWriteItems"]  # limits, profile, consent, event
    assert rt.advance(1)  # (a consent record per second and list)
    aws_calls.clear()
    assert rt.http("POST", "/signup", json_body=body | {"list": "newsletter"}).status == 202
    assert aws_calls == ["dynamodb:TransactWriteItems"] * 2  # assumed new, then made again for "pending"
    cid = first.json()["contact_id"]
    records = sorted(ConsentRecord.query(cid, ConsentRecord.sk.startswith("CONSENT#")), key=lambda r: r.sk)
    assert [(r.list_name, r.source, r.ip, r.user_agent, r.confirmation, r.confirmed_at) for r in records] == [
        ("insiders", "https://example.com/join", "127.0.0.1", "Form/1.0", "unconfirmed", None),
        ("newsletter", "signup", "127.0.0.1", "", "unconfirmed", None)]  # (no user agent sent)
    assert records[0].given_at < records[1].given_at


@pytest.mark.parametrize("payload, field", [
    ({"consent": True}, "email"),
    ({"email": "not-an-email", "consent": True}, "email"),
    ({"email": "a@b", "consent": True}, "email"),
    ({"email": "x" * 250 + "@example.com", "consent": True}, "email"),
    ({"email": "ok@example.com"}, "consent"),
    ({"email": "ok@example.com", "consent": False}, "consent"),
    ({"email": "ok@example.com", "consent": True, "first_name": "Ann\r\nBcc: x@evil.test"}, "first_name"),
    ({"email": "ok@example.com", "consent": True, "list": "../etc"}, "list"),
    ({"email": "ok@example.com", "consent": True, "redirect": "https://evil.test/phish"}, "redirect"),
    ({"email": "ok@example.com", "consent": True, "redirect": "javascript:alert(1)"}, "redirect"),
    ({"email": "ok@example.com", "consent": True, "first_name": 42}, "first_name"),
])
def test_bad_input_is_400_naming_the_field_and_stores_nothing(rt, tap, payload, field):
    resp = rt.http("POST", "/signup", json_body=payload)
    assert resp.status == 400
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["field"] == field and resp.json()["error"]
    assert contacts_table_items(rt) == []
    assert tap.events() == []


@pytest.mark.parametrize("body, headers, field", [
    (b"{not json", {"content-type": "application/json"}, "body"),
    (b"[1, 2]", {"content-type": "application/json"}, "body"),
    (b"email=\xff\xfe&consent=true", {"content-type": "application/x-www-form-urlencoded"}, "body"),
    (b"x" * 20_000, {"content-type": "application/x-www-form-urlencoded"}, "body"),
    (b"<xml/>", {"content-type": "application/xml"}, "content-type"),
])
def test_malformed_bodies_are_400(rt, body, headers, field):
    resp = rt.http("POST", "/signup", body=body, headers=headers)
    assert resp.status == 400 and resp.json()["field"] == field


def test_honeypot_gets_202_and_nothing_is_stored(rt, tap):
    resp = rt.http("POST", "/signup", form={"email": "bot@example.com", "consent": "true",
                                            "website": "http://spam.test"})
    assert resp.status == 202 and resp.json()["contact_id"]
    assert contacts_table_items(rt) == []
    assert tap.events() == []


def test_allow_listed_redirect_is_303(rt):
    resp = rt.http("POST", "/signup", form={"email": "eve@example.com", "consent": "true",
                                            "redirect": "https://example.com/thanks"})
    assert resp.status == 303 and resp.headers["location"] == "https://example.com/thanks"


def test_cors_for_configured_origins_only(rt):
    pre = rt.http("OPTIONS", "/signup", headers={"origin": "http://localhost:3000",
                                                 "access-control-request-method": "POST"})
    assert pre.status == 204
    assert pre.headers["access-control-allow-origin"] == "http://localhost:3000"
    ok = rt.http("POST", "/signup", json_body={"email": "f@example.com", "consent": True},
                 headers={"origin": "http://localhost:3000"})
    assert ok.headers.get("access-control-allow-origin") == "http://localhost:3000"
    foreign = rt.http("POST", "/signup", json_body={"email": "g@example.com", "consent": True},
                      headers={"origin": "https://evil.test"})
    assert "access-control-allow-origin" not in foreign.headers


def test_unknown_route_is_404(rt):
    assert rt.http("GET", "/nope").status == 404
