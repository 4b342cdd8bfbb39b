"""POST /events: x-api-key from SSM, schema validation, idempotency on event_id."""
import json

import pytest

KEY = {"x-api-key": "local-EventsApiKey"}


@pytest.fixture
def cid(rt):
    cid = rt.http("POST", "/signup", json_body={"email": "sam@example.com", "consent": True, "list": "test-single"}).json()["contact_id"]
    assert rt.settle()
    return cid


def post(rt, body, headers=KEY):
    return rt.http("POST", "/events", json_body=body, headers=headers)


def test_key_is_the_ssm_parameter(rt, cid):
    param = rt.client("ssm").get_parameter(Name="/funnelpilot/events-api-key")["Parameter"]
    assert param["Value"] == KEY["x-api-key"]
    body = {"type": "page.viewed", "event_id": "evt-00000001", "contact_id": cid, "path": "/pricing"}
    assert post(rt, body, headers={}).status == 401
    assert post(rt, body, headers={"x-api-key": "local-EventsApiKeX"}).status == 401
    assert post(rt, body).status == 202


def test_page_view_and_order_are_published_once(rt, tap, cid):
    page = {"type": "page.viewed", "event_id": "evt-page-0001", "contact_id": cid, "path": "/pricing",
            "title": "Pricing"}
    for _ in range(3):
        resp = post(rt, page)
        assert resp.status == 202
    assert resp.json()["status"] == "duplicate"
    order = {"type": "order.placed", "event_id": "evt-order-0001", "email": "SAM@example.com", "order_id": "A-1001",
             "amount": 49.9, "currency": "EUR", "items": [{"sku": "guide-pro", "quantity": 1, "price": 49.9}]}
    assert post(rt, order).json()["status"] == "accepted"
    [viewed] = tap.events("page.viewed")
    assert viewed["detail"] | {"event_id": None, "occurred_at": None} == {
        "event_id": None, "occurred_at": None, "contact_id": cid, "path": "/pricing", "title": "Pricing"}
    [placed] = tap.events("order.placed")
    assert placed["detail"]["contact_id"] == cid and placed["detail"]["amount"] == 49.9
    assert placed["detail"]["items"] == [{"sku": "guide-pro", "quantity": 1, "price": 49.9}]
    assert "sam@example.com" not in json.dumps(tap.events()).lower()


def test_custom_events_only_in_their_namespace(rt, tap, cid):
    ok = {"type": "custom.webinar.attended", "event_id": "evt-cust-0001", "contact_id": cid,
          "properties": {"webinar": "spring", "minutes": 42}}
    assert post(rt, ok).status == 202
    assert tap.events("custom.webinar.attended")[0]["detail"]["properties"] == {"webinar": "spring", "minutes": 42}
    forged = {"type": "email.clicked", "event_id": "evt-forge-001", "contact_id": cid, "properties": {"human": True}}
    resp = post(rt, forged)
    assert resp.status == 400 and resp.json()["field"] == "type"
    assert tap.events("email.clicked") == []


@pytest.mark.parametrize("change, field", [
    ({"event_id": "short"}, "event_id"),
    ({"path": "https://evil.example/"}, "path"),
    ({"surprise": 1}, "surprise"),
    ({"contact_id": None}, "contact_id"),
    ({"type": None}, "type"),
])
def test_bad_page_views_are_400_with_the_field(rt, tap, cid, change, field):
    body = {"type": "page.viewed", "event_id": "evt-bad-00001", "contact_id": cid, "path": "/x"} | change
    body = {k: v for k, v in body.items() if v is not None}
    resp = post(rt, body)
    assert resp.status == 400 and resp.json()["field"] == field
    assert tap.events("page.viewed") == []


def test_bad_order_amount_and_currency(rt, cid):
    base = {"type": "order.placed", "event_id": "evt-order-0002", "contact_id": cid, "order_id": "A-2",
            "amount": 10, "currency": "EUR"}
    assert post(rt, base | {"amount": -1}).json()["field"] == "amount"
    assert post(rt, base | {"currency": "euro"}).json()["field"] == "currency"
    assert post(rt, base | {"items": [{"sku": "x", "quantity": 0, "price": 1}]}).json()["field"] == "items.0.quantity"


def test_unknown_contact_is_accepted_but_not_published(rt, tap):
    resp = post(rt, {"type": "page.viewed", "event_id": "evt-unknown-1", "email": "nobody@example.com", "path": "/"})
    assert resp.status == 202 and resp.json()["status"] == "unknown_contact"
    assert tap.events("page.viewed") == []


def test_key_is_read_again_after_five_minutes_of_the_clock(rt, cid, aws_calls):
    """The key's cache expires on funnelpilot.clock (the stepped one here), not on wall time: how
    many reads a run makes does not depend on how fast it ran."""
    reads = []
    for i, wait in enumerate((0, 299, 1, 0)):
        rt.advance(wait)
        aws_calls.clear()
        body = {"type": "page.viewed", "event_id": f"evt-key-{i:04}", "contact_id": cid, "path": "/pricing"}
        assert post(rt, body).status == 202
        reads.append(aws_calls.count("ssm:GetParameter"))
    assert reads == [1, 0, 1, 0]
