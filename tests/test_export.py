"""Export a list or a segment as CSV (issue 15, item 3): `funnelpilot contacts export --list X |
--segment Y`, paged through the admin routes (one Query of the sparse index per page, never a Scan:
the admin role may not Scan, and strict IAM would fail the test)."""
import csv
import io

from conftest import ip_for
from test_lookup import ADMIN, cli_run

from funnelpilot.audience import export

PEOPLE = ["ada@example.com", "bo@example.com", "cy@example.com", "di@example.com", "ed@example.com"]


def signup(rt, email, list_name, **fields):
    resp = rt.http("POST", "/signup", json_body={"email": email, "consent": True, "list": list_name, **fields},
                   source_ip=ip_for(email))
    assert resp.status == 202, resp.body
    return resp.json()["contact_id"]


def test_export_a_list_and_a_segment_page_by_page(rt, test_lists, monkeypatch):
    test_lists["newsletter"] = {"double_opt_in": False}  # the confirmation is not what this test is about
    test_lists["insiders"] = {"double_opt_in": False}
    monkeypatch.setattr(export, "PAGE", 2)  # five members: three pages
    cids = {e: signup(rt, e, "newsletter", lead_magnet="seo-ebook" if e < "c" else None, first_name=e[:2].title())
            for e in PEOPLE}
    signup(rt, "fay@example.com", "insiders")
    assert rt.settle()
    # ed opts out of the newsletter from the preference centre: no longer on the list
    from funnelpilot import preferences
    assert preferences.choose(cids["ed@example.com"], drop={"newsletter"}, source="test") == "unsubscribed"
    assert rt.settle()

    code, text = cli_run(rt, "export", "--list", "newsletter")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(r["email"] for r in rows) == PEOPLE[:4]
    assert {r["contact_id"] for r in rows} == {cids[e] for e in PEOPLE[:4]}
    ada = next(r for r in rows if r["email"] == "ada@example.com")
    assert ada["first_name"] == "Ad" and ada["status"] == "active" and ada["lists"] == "newsletter"
    assert "seo-ebook-readers" in ada["segments"].split() and ada["fields"] == "{}"
    assert list(rows[0]) == export.COLUMNS

    code, text = cli_run(rt, "export", "--segment", "seo-ebook-readers")
    assert code == 0
    assert sorted(r["email"] for r in csv.DictReader(io.StringIO(text))) == ["ada@example.com", "bo@example.com"]

    first = rt.http("GET", "/lists/newsletter/members", headers=ADMIN).json()
    assert len(first["rows"]) == 2 and first["next"]
    assert rt.http("GET", "/lists/nope/members", headers=ADMIN).status == 404
    assert rt.http("GET", "/segments/nope/members", headers=ADMIN).status == 404
    bad = rt.http("GET", "/lists/newsletter/members?cursor=garbage", headers=ADMIN)
    assert bad.status == 400 and bad.json()["field"] == "cursor"
    assert rt.http("GET", "/lists/newsletter/members").status == 403
    assert cli_run(rt, "export", "--list", "nope")[0] == 1
