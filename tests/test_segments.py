"""Segments evaluated per contact on the events they depend on; membership on gsi1 and the profile."""
import botocore.client
import pytest
from test_scoring import eb, new_contact, profile, publish

from funnelpilot import clock, segments
from funnelpilot.models import PROFILE, Contact
from funnelpilot_local.template import Template
from funnelpilot_local.runtime import ROOT


def test_lead_magnet_download_enters_the_segment_within_the_same_event(rt, tap):
    cid = rt.http("POST", "/signup", json_body={"email": "lea@example.com", "consent": True, "list": "test-single",
                                                "lead_magnet": "seo-ebook"}).json()["contact_id"]
    assert rt.settle()
    assert "seo-ebook-readers" in profile(cid).segments
    # no `events: true` in segments.yaml: the change is stored, not put on the bus
    assert not [e for e in tap.events("segment.entered") if e["detail"]["segment"] == "seo-ebook-readers"]
    assert segments.members("seo-ebook-readers") == ([cid], None)
    other = rt.http("POST", "/signup", json_body={"email": "max@example.com", "consent": True, "list": "test-single"}).json()["contact_id"]
    assert rt.settle()
    assert "seo-ebook-readers" not in (profile(other).segments or set())
    assert segments.members("seo-ebook-readers")[0] == [cid]
    assert not rt.errors


def test_leaving_a_condition_emits_segment_left(rt, tap):
    """hot-leads has `events: true` in segments.yaml: its changes are on the bus, the others' not."""
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
    event = eb("page.viewed", cid, t0 + 1, path="/pricing", event_id="same")
    assert "pricing-visitors" in rt.invoke("ScoreFunction", event)["entered"]
    assert rt.invoke("ScoreFunction", event)["entered"] == []  # delivered twice: changed once
    assert "pricing-visitors" in profile(cid).segments


def test_members_are_paged_from_the_index(rt):
    for i in range(5):
        cid = new_contact(f"m{i}")
        segments._change(cid, ["customers"], [], set())
    page1, cursor = segments.members("customers", limit=3)
    page2, end = segments.members("customers", limit=3, cursor=cursor)
    assert len(page1) == 3 and len(page2) == 2 and end is None
    assert sorted(page1 + page2) == [f"m{i}" for i in range(5)]


def _kinds(pattern: dict) -> tuple[set[str], list[str]]:
    branches = pattern.get("$or", [pattern])
    kinds = {k for branch in branches for k in branch["detail-type"] if isinstance(k, str)}
    return kinds, [k["prefix"] for branch in branches for k in branch["detail-type"] if isinstance(k, dict)]


def test_segment_and_score_rules_cover_every_dependency_once():
    """The score function evaluates the segments of the events it takes; the segment function
    takes the rest: between them every dependency, and no event reaches both."""
    t = Template.load(ROOT)
    seg, seg_prefixes = _kinds(t.resources["SegmentFunction"]["Properties"]["Events"]["ContactChanged"]["Properties"]["Pattern"])
    score, prefixes = _kinds(t.resources["ScoreFunction"]["Properties"]["Events"]["Engagement"]["Properties"]["Pattern"])
    assert {k for k in segments.event_kinds() if not k.startswith(tuple(prefixes))} <= seg | score
    assert prefixes == ["custom."] and not seg_prefixes and not seg & score
    assert segments.SCORED not in seg | score  # a change of score is no bus event


def test_custom_site_event_through_post_events_enters_a_did_segment(rt, tap):
    cid = new_contact("a" * 26)
    resp = rt.http("POST", "/events", json_body={"type": "custom.webinar.attended", "event_id": "webinar-0001",
                                                  "contact_id": cid, "properties": {"minutes": 42}},
                   headers={"x-api-key": "local-EventsApiKey"})
    assert resp.status == 202
    assert rt.settle()
    assert "webinar-attendees" in profile(cid).segments
    assert not rt.errors


def test_one_event_scores_and_enters_score_segments_in_one_invocation_with_single_writes(rt, tap, monkeypatch):
    """A second pricing view pushes the capture score over hot-leads' 40 (21 each): the score function enters the
    segment itself (no score.changed on the bus, no segment function call), with two single writes
    (the membership item, then the profile's set), never a transaction."""
    cid = new_contact("hot-one")
    t0 = clock.now()
    rt.invoke("ScoreFunction", eb("page.viewed", cid, t0, path="/pricing"))
    written, original = [], botocore.client.BaseClient._make_api_call

    def record(client, operation, params):
        if operation in ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems"):
            written.append((operation, (params.get("Item") or params.get("Key") or {}).get("sk", {}).get("S")))
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    out = rt.invoke("ScoreFunction", eb("page.viewed", cid, t0 + 1, path="/pricing"))
    assert out["entered"] == ["hot-leads"] and out["status"] == "scored"
    assert ("PutItem", "SEG#hot-leads") in written and ("UpdateItem", "PROFILE") in written
    assert ("TransactWriteItems", None) not in written[written.index(("PutItem", "SEG#hot-leads")) - 1:]
    assert "hot-leads" in profile(cid).segments and segments.members("hot-leads") == ([cid], None)
    again = rt.invoke("ScoreFunction", eb("page.viewed", cid, t0 + 2, path="/pricing"))
    assert again["entered"] == [] and again["left"] == []
    assert rt.settle()
    assert [e["detail"]["trigger"] for e in tap.events("segment.entered") if e["detail"]["segment"] == "hot-leads"] == \
        ["page.viewed"]
    assert not tap.events("score.changed") and not rt.errors


def test_a_contact_erased_between_the_read_and_the_write_keeps_no_membership(rt):
    cid = new_contact("gone-soon")
    Contact.get(cid, PROFILE).update(actions=[Contact.status.set("erased")])
    assert segments._change(cid, ["customers", "engaged"], [], set()) == ([], [])
    assert segments.members("customers") == segments.members("engaged") == ([], None)
    assert not (profile(cid).segments or set())


def test_a_profile_left_behind_by_a_half_done_change_is_repaired_without_a_second_event(rt):
    """A process that died between the membership item and the profile's set: the next evaluation
    finds the item, completes the profile and reports no change (the item was the guard)."""
    cid = new_contact("half-done")
    rt.client("dynamodb").put_item(TableName=rt.template.physical["ContactsTable"],
                                   Item=segments.membership_item(cid, "customers"))
    assert segments._change(cid, ["customers", "engaged"], [], set()) == (["engaged"], [])  # one ADD for both
    assert profile(cid).segments == {"customers", "engaged"}
    assert segments._change(cid, [], ["customers", "engaged"], set()) == ([], ["customers", "engaged"])
    assert segments._change(cid, [], ["customers"], set()) == ([], [])
    assert not (profile(cid).segments or set()) and segments.members("customers") == ([], None)
    assert segments.members("engaged") == ([], None)


def test_segment_events_are_only_used_for_segments_that_publish_them(tmp_path):
    """A funnel triggered by segment.entered names segments with `events: true`; a webhook
    subscribed to segment events needs one: otherwise the file is refused with the reason."""
    from funnelpilot.channels import webhooks
    from funnelpilot.funnel_spec import parse

    (tmp_path / "emails").mkdir()
    (tmp_path / "segments.yaml").write_text("segments:\n  vip: {events: true, all: [{customer: true}]}\n"
                                            "  quiet: {all: [{customer: false}]}\n")
    (tmp_path / "funnels").mkdir()
    for name, where in (("ok", "[vip]"), ("quiet", "[quiet]"), ("any", None)):
        trigger = "{event: segment.entered" + (f", where: {{segment: {where}}}}}" if where else "}")
        (tmp_path / "funnels" / f"{name}.yaml").write_text(
            f"id: {name}\ntrigger: {trigger}\nsteps:\n  - tag: t\n")
    assert parse(tmp_path / "funnels" / "ok.yaml") == (parse(tmp_path / "funnels" / "ok.yaml")[0], [])
    for name in ("quiet", "any"):
        funnel, errors = parse(tmp_path / "funnels" / f"{name}.yaml")
        assert funnel is None and "segment.entered: published only for the segments with `events: true`" in errors[0]
        assert "(vip)" in errors[0] and "where: {segment: [...]}" in errors[0]
    hooks = tmp_path / "webhooks.yaml"
    hooks.write_text("subscriptions:\n  crm:\n    url: https://crm.example.com/h\n    events: [segment.left]\n")
    assert list(webhooks.load(hooks)) == ["crm"]
    (tmp_path / "segments.yaml").write_text("segments:\n  quiet: {all: [{customer: false}]}\n")
    with pytest.raises(webhooks.WebhookError, match="segment.left: published only for the segments with `events: true`"):
        webhooks.load(hooks)


def test_the_segments_one_event_enters_are_added_to_the_profile_in_one_write(rt, monkeypatch):
    cid = rt.http("POST", "/signup", json_body={"email": "two@example.com", "consent": True, "list": "test-single",
                                                "lead_magnet": "seo-ebook"}).json()["contact_id"]
    profile_writes, original = [], botocore.client.BaseClient._make_api_call

    def record(client, operation, params):
        if operation == "UpdateItem" and params["Key"]["sk"]["S"] == PROFILE and "#segs" in params["UpdateExpression"]:
            profile_writes.append(set(params["ExpressionAttributeValues"][":s"]["SS"]))
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    assert rt.settle()
    entered = {"seo-ebook-readers", "engaged", "list:test-single"}
    assert entered <= profile(cid).segments and profile_writes == [profile(cid).segments]
    assert {m for s in entered for m in segments.members(s)[0]} == {cid}


def test_entering_and_leaving_in_one_evaluation_is_one_profile_write_that_keeps_a_concurrent_change(rt):
    """An ADD and a DELETE of one set cannot share an UpdateItem: the set is written whole, conditioned
    on the set as read; another evaluation's change meanwhile fails it, and it is made again on the set
    DynamoDB returns (nothing of the other change lost)."""
    cid = new_contact("both")
    assert segments._change(cid, ["dormant", "customers"], [], set()) == (["dormant", "customers"], [])
    stale = {"dormant"}  # read before another evaluation added "customers"
    assert segments._change(cid, ["engaged"], ["dormant"], stale) == (["engaged"], ["dormant"])
    assert profile(cid).segments == {"customers", "engaged"}
    assert segments.members("dormant") == ([], None) and segments.members("engaged") == ([cid], None)
    assert segments._change(cid, ["dormant"], ["engaged", "customers"], {"customers", "engaged"}) == (
        ["dormant"], ["engaged", "customers"])
    assert profile(cid).segments == {"dormant"}
