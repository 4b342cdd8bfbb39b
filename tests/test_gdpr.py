"""GDPR admin routes: lookup, export and erasure (IAM on AWS, the local admin key here)."""
import json
import re

import pytest
from conftest import SINGLE

from funnelpilot.errors import FunnelLeft
from funnelpilot_local.runtime import LOCAL_ADMIN_KEY

ADMIN = {"x-api-key": LOCAL_ADMIN_KEY}
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def everything(rt) -> str:
    """Every item of every table, as text (a test may Scan; the product never does)."""
    ddb = rt.client("dynamodb")
    dump = []
    for table in ddb.list_tables()["TableNames"]:
        for page in ddb.get_paginator("scan").paginate(TableName=table):
            dump.extend(page["Items"])
    return json.dumps(dump)


def engaged_contact(rt):
    cid = rt.http("POST", "/signup", json_body={"email": "Erin.Example@example.com", "consent": True,
                                                "list": SINGLE, "first_name": "Erin", "utm_source": "ads"},
                  headers={"user-agent": BROWSER, "referer": "https://www.example.com/guide?email=x%40y.z"},
                  source_ip="198.51.100.77").json()["contact_id"]
    assert rt.settle() and rt.advance(600)  # read ten minutes after delivery (not "too soon")
    [eml] = rt.outbox.glob("*.eml")
    html = eml.read_text()
    for path in re.findall(r"http://127\.0\.0\.1:3000(/[oc]/[A-Za-z0-9_\-.]+)", html):
        rt.http("GET", path, headers={"user-agent": BROWSER}, source_ip="198.51.100.77")
    assert rt.settle()
    return cid


def test_admin_routes_need_authorisation(rt):
    cid = engaged_contact(rt)
    for method, path in (("GET", f"/contacts/{cid}"), ("GET", f"/contacts/{cid}/export"),
                         ("DELETE", f"/contacts/{cid}")):
        assert rt.http(method, path).status == 403
        assert rt.http(method, path, headers={"x-api-key": "guess"}).status == 403
    assert rt.http("GET", f"/contacts/{cid}", headers=ADMIN).json()["email"] == "erin.example@example.com"


def test_export_then_erase_leaves_no_trace(rt, tap):
    cid = engaged_contact(rt)
    export = rt.http("GET", f"/contacts/{cid}/export", headers=ADMIN)
    assert export.status == 200 and export.headers["cache-control"] == "no-store"
    data = export.json()
    assert data["contact_id"] == cid
    [profile] = data["items"]["profile"]
    assert profile["email"] == "erin.example@example.com" and profile["first_name"] == "Erin"
    [consent] = data["items"]["consent"]
    assert consent["ip"] == "198.51.100.77" and consent["user_agent"] == BROWSER and consent["given_at"]
    assert consent["source"] == "https://www.example.com/guide"  # the form's page, without its query
    [message] = data["items"]["msg"]
    assert message["last_hit_at"] and {h["kind"] for h in message["hits"]} == {"click", "open"}

    assert "erin.example@example.com" in everything(rt)
    resp = rt.http("DELETE", f"/contacts/{cid}", headers=ADMIN)
    assert resp.status == 204
    assert rt.settle()
    dump = everything(rt)
    for pii in ("erin.example@example.com", "Erin", "198.51.100.77", BROWSER, cid):
        assert pii not in dump, pii
    [erased] = tap.events("contact.erased")
    assert erased["detail"]["contact_id"] == cid and "example.com" not in json.dumps(erased)
    assert rt.http("GET", f"/contacts/{cid}", headers=ADMIN).status == 404
    assert rt.http("GET", f"/contacts/{cid}/export", headers=ADMIN).status == 404
    assert rt.http("DELETE", f"/contacts/{cid}", headers=ADMIN).status == 404
    # a funnel step still running for the erased person sends nothing
    with pytest.raises(FunnelLeft, match="unknown_contact"):
        rt.invoke("SequenceStepFunction", {"action": "send", "funnel": "welcome", "template": "welcome-1",
                                           "contact_id": cid, "execution": "exec-after-erase",
                                           "state": "Send welcome-2"})


def test_unknown_contact_is_404(rt):
    assert rt.http("GET", "/contacts/nobody", headers=ADMIN).status == 404
    assert rt.http("DELETE", "/contacts/nobody", headers=ADMIN).status == 404
