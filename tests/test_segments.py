"""Segments evaluated per contact on the events they depend on; membership on gsi1 and the profile."""
from test_scoring import new_contact, profile, publish

from funnelpilot import clock, segments
from funnelpilot_local.template import Template
from funnelpilot_local.runtime import ROOT


def test_lead_magnet_download_enters_the_segment_within_the_same_event(rt, tap):
    cid = rt.http("POST", "/signup", json_body={"email": "lea@example.com", "consent": True, "list": "test-single",
                                                "lead_magnet": "seo-ebook"}).json()["contact_id"]
    assert rt.settle()
    [entered] = [e for e in tap.events("segment.entered") if e["detail"]["segment"] == "seo-ebook-readers"]
    assert entered["detail"]["contact_id"] == cid and entered["detail"]["trigger"] == "contact.subscribed"
    assert "seo-ebook-readers" in profile(cid).segments
    assert segments.members("seo-ebook-readers") == ([cid], None)
    other = rt.http("POST", "/signup", json_body={"email": "max@example.com", "consent": True, "list": "test-single"}).json()["contact_id"]
    assert rt.settle()
    assert "seo-ebook-readers" not in (profile(other).segments or set())
    assert segments.members("seo-ebook-readers")[0] == [cid]
    assert not rt.errors


def test_leaving_a_condition_emits_segment_left(rt, tap):
    cid = new_contact("hot")
    t0 = clock.now()
    publish("page.viewed", cid, t0, path="/pricing")
    publish("page.viewed", cid, t0 + 1, path="/pricing")
    publish("page.viewed", cid, t0 + 2, path="/pricing")  # capture 63 >= 40 (a margin for the fast clock)
    assert rt.settle()
    assert {"hot-leads", "pricing-visitors", "engaged"} <= profile(cid).segments
    publish("contact.unsubscribed", cid, t0 + 3)           # -100
    assert rt.settle()
    [left] = tap.events("segment.left")
    assert left["detail"]["segment"] == "hot-leads" and left["detail"]["contact_id"] == cid
    assert "hot-leads" not in profile(cid).segments
    assert segments.members("hot-leads") == ([], None)
    assert [e["detail"]["segment"] for e in tap.events("segment.entered")].count("hot-leads") == 1
    assert not rt.errors


def test_did_condition_and_duplicates(rt, tap):
    cid = new_contact("did")
    t0 = clock.now()
    publish("page.viewed", cid, t0, path="/blog/a")
    assert rt.settle()
    assert "pricing-visitors" not in (profile(cid).segments or set())
    publish("page.viewed", cid, t0 + 1, path="/pricing", event_id="same")
    publish("page.viewed", cid, t0 + 1, path="/pricing", event_id="same")
    assert rt.settle()
    assert "pricing-visitors" in profile(cid).segments
    assert [e["detail"]["segment"] for e in tap.events("segment.entered")].count("pricing-visitors") == 1


def test_members_are_paged_from_the_index(rt):
    for i in range(5):
        cid = new_contact(f"m{i}")
        segments._enter(cid, "customers")
    page1, cursor = segments.members("customers", limit=3)
    page2, end = segments.members("customers", limit=3, cursor=cursor)
    assert len(page1) == 3 and len(page2) == 2 and end is None
    assert sorted(page1 + page2) == [f"m{i}" for i in range(5)]


def test_segment_function_rule_covers_every_dependency():
    t = Template.load(ROOT)
    pattern = t.resources["SegmentFunction"]["Properties"]["Events"]["ContactChanged"]["Properties"]["Pattern"]
    kinds = {k for branch in pattern["$or"] for k in branch["detail-type"] if isinstance(k, str)}
    prefixes = [k["prefix"] for branch in pattern["$or"] for k in branch["detail-type"] if isinstance(k, dict)]
    assert {k for k in segments.event_kinds() if not k.startswith(tuple(prefixes))} <= kinds
    assert prefixes == ["custom."]


def test_custom_site_event_through_post_events_enters_a_did_segment(rt, tap):
    cid = new_contact("a" * 26)
    resp = rt.http("POST", "/events", json_body={"type": "custom.webinar.attended", "event_id": "webinar-0001",
                                                  "contact_id": cid, "properties": {"minutes": 42}},
                   headers={"x-api-key": "local-EventsApiKey"})
    assert resp.status == 202
    assert rt.settle()
    assert "webinar-attendees" in profile(cid).segments
    assert not rt.errors
