"""The preference centre and list-level opt-outs (issue 15, item 5), end to end with the two shipped
lists: a person on the newsletter (the welcome journey its signup starts) and on the insiders list
(the insiders funnel, `list: insiders`) opts out of one list, by the one-click header of one of its
emails or with the page's form, keeps getting the other list's emails and none of the first's."""
import re
from email import message_from_string, policy
from urllib.parse import urlencode

from conftest import ip_for

from funnelpilot_local.moto_adapter import sent_emails
from funnelpilot_local.template import ACCOUNT, REGION

DAY = 86_400
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


def emails_to(rt, address: str) -> list:
    """The marketing emails SES accepted for the address, in order (the confirmation email aside)."""
    found = [message_from_string(raw, policy=policy.default) for _, raw in sent_emails(ACCOUNT, REGION)]
    return [m for m in found if m["To"] == address and "confirm" not in m["Subject"].lower()]


def join_both_lists(rt, email: str) -> str:
    """Sign up to the newsletter and confirm through the emailed link (double opt-in), then, once
    active, sign up to the insiders list too: the real routes only."""
    def signup(list_name):
        resp = rt.http("POST", "/signup", form={"email": email, "first_name": "Noor", "list": list_name,
                                                "consent": "true"}, source_ip=ip_for(email))
        assert resp.status == 202, resp.body
        assert rt.settle()
        return resp.json()["contact_id"]

    cid = signup("newsletter")
    [confirm] = [message_from_string(raw, policy=policy.default) for _, raw in sent_emails(ACCOUNT, REGION)
                 if message_from_string(raw, policy=policy.default)["To"] == email]
    path = re.search(r"http://127\.0\.0\.1:3000(/confirm/\S+)", confirm.get_body(("plain",)).get_content()).group(1)
    assert rt.http("GET", path, headers={"user-agent": BROWSER}).status == 200
    assert rt.settle()
    signup("insiders")
    return cid


def unsubscribe_path(mail) -> str:
    return re.match(r"<http://127\.0\.0\.1:3000(/u/\S+)>", mail["List-Unsubscribe"]).group(1)


def subjects(mails) -> list[str]:
    return [m["Subject"] for m in mails]


def test_one_click_opts_out_of_that_list_only(rt, tap):
    cid = join_both_lists(rt, "noor@example.com")
    rt.advance(DAY + 60)  # the insiders funnel's first email, a day after joining
    assert rt.settle()
    welcome_1, insiders_1 = emails_to(rt, "noor@example.com")
    assert welcome_1["Subject"] == "Welcome, Noor!" and insiders_1["Subject"] == "Welcome to the insiders"
    assert welcome_1["List-Id"] == "Newsletter <newsletter.example.com>"
    assert insiders_1["List-Id"] == "Insiders <insiders.example.com>"
    for mail in (welcome_1, insiders_1):
        assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # the mail client's one-click on the welcome email (RFC 8058): the newsletter only
    resp = rt.http("POST", unsubscribe_path(welcome_1), body="List-Unsubscribe=One-Click",
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert resp.status == 200 and b"Your choices are saved" in resp.body
    assert rt.settle()
    [opted] = tap.events("contact.list_unsubscribed")
    assert opted["detail"]["list"] == "newsletter" and opted["detail"]["source"] == "one_click"
    assert opted["detail"]["template"] == "welcome-1"  # which email it came from
    assert tap.events("contact.unsubscribed") == []  # still subscribed: to the insiders list
    report = rt.http("GET", "/funnels/welcome/report", headers={"x-api-key": "local-admin-key"}).json()
    [step] = [s for s in report["steps"] if s["step"] == "Send welcome-1"]
    assert step["unsubscribes"] == 1  # the opt-out counts on the email it came from

    rt.advance(8 * DAY)
    assert rt.settle()
    later = emails_to(rt, "noor@example.com")[2:]
    assert subjects(later) == ["Insiders: a first look at what ships next"]  # and no newsletter email
    blocked = [e["detail"] for e in tap.events("email.blocked")]
    assert [(b["template"], b["reason"]) for b in blocked] == [("welcome-2", "list_unsubscribed")]
    profile = rt.client("dynamodb").get_item(TableName="ContactsTable",
                                             Key={"pk": {"S": cid}, "sk": {"S": "PROFILE"}})["Item"]
    assert profile["status"]["S"] == "active" and profile["unsubscribed_lists"]["SS"] == ["newsletter"]

    # the page of the link: the newsletter unticked, the insiders ticked; no script
    page = rt.http("GET", unsubscribe_path(insiders_1)).body.decode()
    assert "<script" not in page
    assert re.search(r'name="list" value="newsletter">', page) and re.search(r'value="insiders" checked>', page)

    # one-click on the insiders' email: nothing left, so unsubscribed from everything
    assert rt.http("POST", unsubscribe_path(insiders_1), body="List-Unsubscribe=One-Click",
                   headers={"content-type": "application/x-www-form-urlencoded"}).status == 200
    assert rt.settle()
    [unsubscribed] = tap.events("contact.unsubscribed")
    assert unsubscribed["detail"]["source"] == "one_click"


def test_the_preference_page_form_keeps_the_newsletter_and_drops_the_insiders(rt, tap):
    join_both_lists(rt, "ivo@example.com")
    rt.advance(DAY + 60)
    assert rt.settle()
    welcome_1, insiders_1 = emails_to(rt, "ivo@example.com")
    path = unsubscribe_path(insiders_1)
    page = rt.http("GET", path)
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    html = page.body.decode()
    assert '<form method="post">' in html and "Behind the scenes, before anyone else." in html
    assert 'value="newsletter" checked>' in html and 'value="insiders" checked>' in html
    assert tap.events("contact.list_unsubscribed") == []  # a GET changes nothing

    # what a browser posts without JavaScript: the ticked boxes and the button pressed
    resp = rt.http("POST", path, body=urlencode([("list", "newsletter"), ("action", "save")]),
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/html")
    assert b"Your choices are saved" in resp.body and b'value="insiders">' in resp.body
    assert rt.settle()
    [opted] = tap.events("contact.list_unsubscribed")
    assert opted["detail"]["list"] == "insiders" and opted["detail"]["source"] == "preference_centre"

    rt.advance(8 * DAY)
    assert rt.settle()
    later = subjects(emails_to(rt, "ivo@example.com")[2:])
    assert "Insiders: a first look at what ships next" not in later
    assert later[0] == "Why we started (and where to begin)"  # welcome-2: the newsletter goes on

    # ticking the insiders again brings its emails back (the link proves the address)
    assert rt.http("POST", path, body=urlencode([("list", "newsletter"), ("list", "insiders"), ("action", "save")]),
                   headers={"content-type": "application/x-www-form-urlencoded"}).status == 200
    assert rt.settle()
    [back] = tap.events("contact.list_subscribed")
    assert back["detail"]["list"] == "insiders"

    # "Unsubscribe from everything"
    resp = rt.http("POST", path, body="action=all", headers={"content-type": "application/x-www-form-urlencoded"})
    assert resp.status == 200 and b"You will not receive any more emails from us." in resp.body
    assert rt.settle()
    assert [e["detail"]["source"] for e in tap.events("contact.unsubscribed")] == ["unsubscribe_page"]
