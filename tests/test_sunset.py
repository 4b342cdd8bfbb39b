"""Sunset is a state, not a suppression (issue 18, item 2). Re-engagement's silence sunsets a person:
marketing stops, a transactional email still goes; fresh consent (the landing page's form, confirmed on a
double opt-in list; the preference centre's re-subscribe) or a purchase brings them back; a bounce, a
complaint or an unsubscribe is never revived by either. People who engage while being re-engaged are kept.
Every step goes through the real routes and funnels on the strict runtime."""
import re
from email import message_from_bytes, policy

import pytest
from conftest import SINGLE, ip_for
from test_consent import bounce, send_step, ses_event
from test_funnels import BROWSER, DAY, HOUR, journey, message, open_email, order, profile, publish, signup

from funnelpilot import clock, inactivity, tokens
from funnelpilot.errors import FunnelLeft

ADMIN = {"x-api-key": "local-admin-key"}


def mails(rt, to: str) -> list:
    rt.flush_outbox()
    found = [message_from_bytes(p.read_bytes(), policy=policy.default) for p in sorted(rt.outbox.glob("*.eml"))]
    return [m for m in found if m["To"] == to]


def subjects(rt, to: str) -> list[str]:
    return [m["Subject"] for m in mails(rt, to)]


def sunset_people(rt, *emails: str) -> list[str]:
    """Sign them up, let them go quiet: the re-engagement funnel's two emails go unanswered, and its
    last step sunsets them (12 days of the stepped clock)."""
    cids = [signup(rt, email) for email in emails]
    assert rt.advance(3 * DAY + HOUR)
    for cid in cids:
        publish(rt, "contact.inactive", cid, days=30)
    assert rt.advance(11 * DAY)
    for cid in cids:
        assert journey(rt, "reengagement", cid)[1][-1] == "Sunset"
        assert profile(rt, cid)["status"]["S"] == "sunset"
    return cids


def landing_page(rt, email: str, list_name: str = "newsletter"):
    """The example landing page's form, asking for the SEO ebook (no JavaScript: form-encoded)."""
    resp = rt.http("POST", "/signup", form={"email": email, "first_name": "Sam", "list": list_name,
                                            "lead_magnet": "seo-ebook", "website": "", "consent": "true"},
                   headers={"referer": "http://localhost:3000/", "user-agent": BROWSER}, source_ip=ip_for(email))
    assert resp.status == 202, resp.body
    assert rt.settle()


def consent_lines(rt, email: str) -> list[tuple]:
    card = rt.http("POST", "/contacts/lookup", json_body={"email": email}, headers=ADMIN).json()
    return [(c["list"], c["confirmation"]) for c in card["consent"]]


def test_a_sunset_person_who_resubscribes_gets_the_lead_magnet_and_a_bounced_one_does_not(rt, tap):
    sun, quick = sunset_people(rt, "sun@example.com", "quick@example.com")
    bounced = signup(rt, "bob@example.com")
    ses_event(rt, "Email Bounced", "Bounce", mails(rt, "bob@example.com")[0], bounce("Permanent", "bob@example.com"),
              recipient="bob@example.com")
    assert profile(rt, bounced)["status"]["S"] == "suppressed"
    # the newsletter is double opt-in: the form sends the confirmation link, its click brings them back
    landing_page(rt, "sun@example.com")
    assert profile(rt, sun)["status"]["S"] == "sunset"  # anyone can post an address: not yet
    [confirm] = [m for m in mails(rt, "sun@example.com") if m["Subject"] == "Please confirm your subscription"]
    path = re.search(r"http://127\.0\.0\.1:3000(/confirm/\S+)", confirm.get_body(("plain",)).get_content()).group(1)
    assert rt.http("GET", path, headers={"user-agent": BROWSER}).status == 200
    assert rt.settle()
    assert profile(rt, sun)["status"]["S"] == "active" and "status_reason" not in profile(rt, sun)
    assert "Your download is ready" in subjects(rt, "sun@example.com")
    assert "/download/seo-ebook" in message(rt, sun, "delivery-1")["links"]  # behind its tracked link
    assert consent_lines(rt, "sun@example.com") == [(SINGLE, "single_opt_in"), ("*", "sunset"),
                                                    ("newsletter", "unconfirmed"), ("newsletter", "confirmed")]
    # a single opt-in list: the signup itself is the fresh consent
    landing_page(rt, "quick@example.com", SINGLE)
    assert profile(rt, quick)["status"]["S"] == "active"
    assert "Your download is ready" in subjects(rt, "quick@example.com")
    [back] = [e["detail"] for e in tap.events("contact.subscribed") if e["detail"]["contact_id"] == quick
              and e["detail"]["resubscribed"]]
    assert back["lead_magnet"] == "seo-ebook"
    assert consent_lines(rt, "quick@example.com")[-1] == (SINGLE, "resubscribed")
    # the bounced address: no confirmation, no lead magnet, still suppressed
    before = subjects(rt, "bob@example.com")
    landing_page(rt, "bob@example.com")
    landing_page(rt, "bob@example.com", SINGLE)
    assert subjects(rt, "bob@example.com") == before and "Your download is ready" not in before
    assert profile(rt, bounced)["status"]["S"] == "suppressed"
    assert consent_lines(rt, "bob@example.com")[-1] == (SINGLE, "suppressed")


def test_a_sunset_buyer_is_marketable_again_and_an_unsubscribed_buyer_is_not(rt, tap):
    [sun] = sunset_people(rt, "buy@example.com")
    with pytest.raises(FunnelLeft, match="sunset"):  # marketing stops: the blocked send ends a journey
        send_step(rt, sun, "Send welcome-9")
    assert send_step(rt, sun, "Send receipt", transactional=True)["status"] == "sent"  # a transactional one goes
    order(rt, "buy@example.com")
    assert profile(rt, sun)["status"]["S"] == "active"
    [back] = [e["detail"] for e in tap.events("contact.reactivated") if e["detail"]["contact_id"] == sun]
    assert back["source"] == "order.placed"
    assert consent_lines(rt, "buy@example.com")[-1] == ("*", "reactivated")
    assert send_step(rt, sun, "Send welcome-8")["status"] == "sent"
    order(rt, "buy@example.com", 2)  # a second purchase changes nothing more
    assert len({e["detail"]["event_id"] for e in tap.events("contact.reactivated")}) == 1
    # an unsubscribe is consent withdrawn: a purchase does not undo it
    gone = signup(rt, "gone@example.com")
    mid = message(rt, gone, "welcome-1")["message_id"]
    assert rt.http("POST", f"/u/{tokens.sign('u', gone, mid)}", form={"List-Unsubscribe": "One-Click"}).status == 200
    assert rt.settle()
    order(rt, "gone@example.com")
    assert profile(rt, gone)["status"]["S"] == "unsubscribed"


def test_whoever_engages_or_buys_during_reengagement_is_not_sunset(rt, tap):
    reader, buyer = signup(rt, "reader@example.com"), signup(rt, "buyer@example.com")
    assert rt.advance(3 * DAY + HOUR)
    publish(rt, "contact.inactive", reader, days=30)
    publish(rt, "contact.inactive", buyer, days=30)
    assert rt.advance(6 * DAY)  # reengage-2 has gone
    open_email(rt, reader, "reengage-2")  # a human open: not the click the funnel waits for, but activity
    order(rt, "buyer@example.com")  # the funnel's goal: it stops at once
    assert rt.advance(5 * DAY)
    status, states = journey(rt, "reengagement", reader)
    assert status == "SUCCEEDED" and states[-1] == "Sunset"  # the step ran, and kept them
    assert journey(rt, "reengagement", buyer)[0] == "ABORTED"
    assert profile(rt, reader)["status"]["S"] == profile(rt, buyer)["status"]["S"] == "active"
    assert tap.events("contact.sunset") == []


def test_the_preference_centre_resubscribes_a_sunset_person_and_an_unsubscribe_stays(rt, tap):
    sun, other = sunset_people(rt, "pref@example.com", "unsub@example.com")
    page = f"/u/{tokens.sign('u', sun, message(rt, sun, 'reengage-2')['message_id'])}"
    resp = rt.http("GET", page, headers={"user-agent": BROWSER})
    assert resp.status == 200 and b'value="resubscribe">Send me your emails again</button>' in resp.body
    assert profile(rt, sun)["status"]["S"] == "sunset"  # a GET changes nothing
    assert rt.http("POST", page, form={"action": "resubscribe"}, headers={"user-agent": BROWSER}).status == 200
    assert rt.settle()
    assert profile(rt, sun)["status"]["S"] == "active"
    [back] = [e["detail"] for e in tap.events("contact.reactivated") if e["detail"]["contact_id"] == sun]
    assert back["source"] == "preference_centre"
    assert inactivity.last_activity(sun) == pytest.approx(clock.now(), abs=60)  # the inactivity clock restarts
    # a sunset person may unsubscribe (the one-click of their list's email); then neither a signup nor a
    # purchase brings them back
    mid = message(rt, other, "welcome-1")["message_id"]
    assert rt.http("POST", f"/u/{tokens.sign('u', other, mid)}", form={"List-Unsubscribe": "One-Click"}).status == 200
    assert rt.settle()
    assert profile(rt, other)["status"]["S"] == "unsubscribed"
    landing_page(rt, "unsub@example.com", SINGLE)
    order(rt, "unsub@example.com")
    assert profile(rt, other)["status"]["S"] == "unsubscribed"
