"""Open pixel, click redirect and honest engagement, driven through real HTTP API v2 events."""
import json
from concurrent.futures import ThreadPoolExecutor
import re
from email import message_from_bytes, policy

import pytest

from funnelpilot import engagement, tokens

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
URL = re.compile(r"http://127\.0\.0\.1:3000/([ocu])/([A-Za-z0-9_\-.]+)")


GUIDE = ("https://example.com/guide?utm_source=funnelpilot&utm_medium=email&utm_campaign=welcome"
         "&utm_content=welcome-1")  # the welcome email's link to the site, with its UTM tags (steering.utm)


def send_welcome(rt, email="ann@example.com"):
    cid = rt.http("POST", "/signup", json_body={"email": email, "consent": True, "list": "test-single"}).json()["contact_id"]
    assert rt.settle() and rt.advance(600)  # read ten minutes after delivery (not "too soon")
    [path] = rt.outbox.glob("*.eml")
    mail = message_from_bytes(path.read_bytes(), policy=policy.default)
    return cid, mail


def links_in(mail):
    html = mail.get_body(("html",)).get_content()
    text = mail.get_body(("plain",)).get_content()
    return URL.findall(html), URL.findall(text)


def message_item(rt, cid, message_id):
    item = rt.client("dynamodb").get_item(TableName="ContactsTable",
                                          Key={"pk": {"S": cid}, "sk": {"S": f"MSG#{message_id}"}})["Item"]
    return item


def stored_hits(rt, cid, message_id):
    """The hits as stored: labelled by their request's rules."""
    return [{k: next(iter(v.values())) for k, v in h["M"].items()}
            for h in message_item(rt, cid, message_id).get("hits", {"L": []})["L"]]


def hits(rt, cid, message_id):
    """The hits with their verdicts (the message's history too), as every reader sees them."""
    return engagement.message_verdicts(message_item(rt, cid, message_id))


def machine_counts(rt, funnel="welcome") -> dict:
    """machine_opens / machine_clicks of the funnel's steps (a machine's hit is counted by the tracking
    handler itself: no bus event)."""
    items = rt.client("dynamodb").query(TableName="MetricsTable", KeyConditionExpression="pk = :p",
                                        ExpressionAttributeValues={":p": {"S": f"FUNNEL#{funnel}"}})["Items"]
    return {k: sum(int(i.get(k, {"N": "0"})["N"]) for i in items if "#STEP#" in i["sk"]["S"])
            for k in ("machine_opens", "machine_clicks")}


def path_of(kind, token):
    return f"/{kind}/{token}"


def test_sent_email_carries_pixel_honeypot_and_tracked_links(rt):
    cid, mail = send_welcome(rt)
    mid = mail["X-Funnelpilot-Message-Id"]
    in_html, in_text = links_in(mail)
    kinds = [k for k, _ in in_html]
    assert kinds.count("o") == 1 and kinds.count("u") == 1
    clicks = [tokens.verify("c", t, 3) for k, t in in_html if k == "c"]
    assert [cid, mid, tokens.HONEYPOT] in clicks and [cid, mid, "0"] in clicks
    assert "https://example.com/guide" not in mail.get_body(("html",)).get_content()  # only behind /c
    assert [tokens.verify("c", t, 3) for k, t in in_text if k == "c"] == [[cid, mid, "0"]]
    assert json.loads(message_item(rt, cid, mid)["links"]["S"]) == [GUIDE]
    # the unsubscribe link is never wrapped in the click redirect
    assert mail["List-Unsubscribe"].startswith("<http://127.0.0.1:3000/u/")


def test_human_open_returns_gif_records_and_emits(rt, tap):
    cid, mail = send_welcome(rt)
    mid = mail["X-Funnelpilot-Message-Id"]
    [pixel] = [t for k, t in links_in(mail)[0] if k == "o"]
    resp = rt.http("GET", path_of("o", pixel), headers={"user-agent": BROWSER}, source_ip="203.0.113.9")
    assert resp.status == 200 and resp.headers["content-type"] == "image/gif"
    assert resp.headers["cache-control"].startswith("no-store") and resp.body.startswith(b"GIF89a")
    [event] = tap.events("email.opened")
    assert event["detail"] | {"event_id": None, "occurred_at": None} == {
        "event_id": None, "occurred_at": None, "contact_id": cid, "message_id": mid, "funnel": "welcome",
        "step": "Send welcome-1", "template": "welcome-1", "human": True, "unique": True}
    [stored] = hits(rt, cid, mid)
    assert stored["human"] is True and stored["kind"] == "open"
    assert "203.0.113.9" not in json.dumps(message_item(rt, cid, mid))


@pytest.mark.parametrize("mangle", [lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
                                    lambda t: "x" + t, lambda t: "garbage", lambda t: t.split(".")[0]])
def test_tampered_pixel_token_gets_gif_and_records_nothing(rt, tap, mangle):
    cid, mail = send_welcome(rt)
    [pixel] = [t for k, t in links_in(mail)[0] if k == "o"]
    resp = rt.http("GET", path_of("o", mangle(pixel)), headers={"user-agent": BROWSER})
    assert resp.status == 200 and resp.body.startswith(b"GIF89a")
    assert tap.events("email.opened") == []
    assert hits(rt, cid, mail["X-Funnelpilot-Message-Id"]) == []


def test_unknown_message_records_nothing(rt, tap):
    cid, _ = send_welcome(rt)
    resp = rt.http("GET", path_of("o", tokens.sign("o", cid, "mnosuchmessage")), headers={"user-agent": BROWSER})
    assert resp.status == 200 and resp.body.startswith(b"GIF89a")
    resp = rt.http("GET", path_of("c", tokens.sign("c", cid, "mnosuchmessage", "0")), headers={"user-agent": BROWSER})
    assert resp.status == 404 and "location" not in resp.headers
    assert tap.events("email.opened") == [] and tap.events("email.clicked") == []


def test_apple_mpp_open_is_machine(rt, tap):
    cid, mail = send_welcome(rt)
    mid = mail["X-Funnelpilot-Message-Id"]
    [pixel] = [t for k, t in links_in(mail)[0] if k == "o"]
    rt.http("GET", path_of("o", pixel), headers={"user-agent": "Mozilla/5.0"}, source_ip="17.58.101.22")
    assert tap.events("email.opened") == []  # counted by the pixel itself: no consumer acts on a machine
    assert machine_counts(rt) == {"machine_opens": 1, "machine_clicks": 0}
    assert [(h["human"], h["reason"]) for h in hits(rt, cid, mid)] == [(False, "apple_mpp")]
    assert "first_open_at" not in message_item(rt, cid, mid)


def test_human_click_redirects_to_stored_link_and_counts_as_open(rt, tap):
    cid, mail = send_welcome(rt)
    mid = mail["X-Funnelpilot-Message-Id"]
    [link] = [t for k, t in links_in(mail)[0] if k == "c" and tokens.verify("c", t, 3)[2] == "0"]
    resp = rt.http("GET", path_of("c", link), headers={"user-agent": BROWSER}, source_ip="198.51.100.4")
    assert resp.status == 302 and resp.headers["location"] == GUIDE
    [clicked] = tap.events("email.clicked")
    assert clicked["detail"]["human"] is True and clicked["detail"]["link"] == "0"
    assert clicked["detail"]["url"] == GUIDE
    [opened] = tap.events("email.opened")
    assert opened["detail"]["human"] is True and opened["detail"]["via"] == "click"
    assert opened["detail"]["unique"] and clicked["detail"]["unique"]
    assert [(h["kind"], h["human"]) for h in hits(rt, cid, mid)] == [("click", True)]


def test_scanner_click_is_machine_but_still_redirects(rt, tap):
    cid, mail = send_welcome(rt)
    mid = mail["X-Funnelpilot-Message-Id"]
    [link] = [t for k, t in links_in(mail)[0] if k == "c" and tokens.verify("c", t, 3)[2] == "0"]
    resp = rt.http("GET", path_of("c", link), headers={"user-agent": "Mozilla/5.0 (compatible; BarracudaCentral)"})
    assert resp.status == 302
    assert tap.events("email.clicked") == [] and tap.events("email.opened") == []  # a machine click implies no open
    assert machine_counts(rt) == {"machine_opens": 0, "machine_clicks": 1}
    assert [(h["kind"], h["human"], h["reason"]) for h in hits(rt, cid, mid)] == [("click", False, "scanner")]


def test_head_request_and_honeypot_are_machine(rt, tap):
    cid, mail = send_welcome(rt)
    mid = mail["X-Funnelpilot-Message-Id"]
    in_html = links_in(mail)[0]
    [link] = [t for k, t in in_html if k == "c" and tokens.verify("c", t, 3)[2] == "0"]
    [trap] = [t for k, t in in_html if k == "c" and tokens.verify("c", t, 3)[2] == tokens.HONEYPOT]
    assert rt.http("HEAD", path_of("c", link), headers={"user-agent": BROWSER}).status == 302
    resp = rt.http("GET", path_of("c", trap), headers={"user-agent": BROWSER})
    assert resp.status == 200 and "location" not in resp.headers
    assert [(h["human"], h["reason"]) for h in hits(rt, cid, mid)] == [(False, "head_request"), (False, "honeypot")]
    assert tap.events("email.clicked") == [] and machine_counts(rt)["machine_clicks"] == 2
    assert "honeypot_at" in message_item(rt, cid, mid)


def test_tampered_click_token_is_404_never_a_redirect(rt, tap):
    cid, mail = send_welcome(rt)
    mid = mail["X-Funnelpilot-Message-Id"]
    [link] = [t for k, t in links_in(mail)[0] if k == "c" and tokens.verify("c", t, 3)[2] == "0"]
    forged_index = tokens.sign("c", cid, mid, "7")  # valid signature, no such link
    for token in (link[:-3] + "abc", link.replace(".", ".x"), "aHR0cHM6Ly9ldmlsLmV4YW1wbGU", forged_index,
                  tokens.sign("o", cid, mid)):
        resp = rt.http("GET", path_of("c", token), headers={"user-agent": BROWSER})
        assert resp.status == 404 and "location" not in resp.headers
        assert b"Link not found" in resp.body
    assert tap.events("email.clicked") == [] and hits(rt, cid, mid) == []
    # the forged index was written (a browser click looks human), then taken back whole
    assert {"last_hit_at", "first_open_at", "first_click_at"}.isdisjoint(message_item(rt, cid, mid))


def test_classification_rules():
    sent = 1_000_000.0
    human = dict(method="GET", user_agent=BROWSER, ip="203.0.113.1", sent_at=sent)
    assert engagement.classify("open", now=sent + 60, **human) == engagement.Verdict(True)
    assert engagement.classify("open", now=sent + 3, **human).reason == "too_soon"
    assert engagement.classify("click", now=sent + 60, **human | {"ip": "17.1.2.3"}).human  # MPP only prefetches images
    assert engagement.classify("open", now=sent + 60, **human | {"ip": "17.1.2.3"}).reason == "apple_mpp"
    assert engagement.classify("click", now=sent + 60, **human | {"user_agent": ""}).reason == "no_user_agent"
    assert engagement.classify("click", now=sent + 60, **human | {"user_agent": "python-requests/2.32"}).reason == "scanner"
    assert engagement.classify("click", now=sent + 60, honeypot_at=sent + 55, **human).reason == "honeypot_burst"
    burst = [{"at": "1970-01-12T13:47:35Z", "human": False}]  # sent + 55 s, a scanner hit
    assert engagement.classify("click", now=sent + 60, hits=burst, **human).reason == "burst"
    assert engagement.classify("click", now=sent + 600, hits=burst, **human).human
    mail_clients = ("Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)",
                    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
                    "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html")
    for agent in mail_clients:  # a person opening the message, through their client or its image proxy
        assert engagement.classify("open", now=sent + 60, **human | {"user_agent": agent}).human, agent


def test_a_click_still_redirects_when_recording_fails(rt, tap, monkeypatch):
    cid, mail = send_welcome(rt)
    [link] = [t for k, t in links_in(mail)[0] if k == "c" and tokens.verify("c", t, 3)[2] == "0"]

    def broken(*args, **kwargs):
        raise RuntimeError("DynamoDB unavailable")

    monkeypatch.setattr(engagement, "_record", broken)
    resp = rt.http("GET", path_of("c", link), headers={"user-agent": BROWSER})
    assert resp.status == 302 and resp.headers["location"] == GUIDE


def test_concurrent_hits_on_one_message_are_all_kept(rt, tap):
    cid, mail = send_welcome(rt)
    mid = mail["X-Funnelpilot-Message-Id"]
    [pixel] = [t for k, t in links_in(mail)[0] if k == "o"]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: rt.http("GET", path_of("o", pixel), headers={"user-agent": BROWSER}).status,
                                 range(8)))
    assert statuses == [200] * 8
    opened = tap.events("email.opened")
    assert len(hits(rt, cid, mid)) == 8 and len(opened) == 8
    assert sum(e["detail"]["unique"] for e in opened) == 1  # the first open, told by the write itself


def test_a_hit_is_one_update_and_one_put_events(rt, tap, aws_calls):
    cid, mail = send_welcome(rt)
    mid = mail["X-Funnelpilot-Message-Id"]
    in_html = links_in(mail)[0]
    [pixel] = [t for k, t in in_html if k == "o"]
    [link] = [t for k, t in in_html if k == "c" and tokens.verify("c", t, 3)[2] == "0"]
    aws_calls.clear()
    assert rt.http("GET", path_of("o", pixel), headers={"user-agent": BROWSER}).status == 200
    assert aws_calls == ["dynamodb:UpdateItem", "events:PutEvents"]
    aws_calls.clear()
    resp = rt.http("GET", path_of("c", link), headers={"user-agent": BROWSER})
    assert resp.status == 302 and resp.headers["location"] == GUIDE
    assert aws_calls == ["dynamodb:UpdateItem", "events:PutEvents"]
    [opened] = tap.events("email.opened")  # the click's open was not the first: no second email.opened
    [clicked] = tap.events("email.clicked")
    assert opened["detail"]["unique"] and clicked["detail"]["unique"] and clicked["detail"]["human"]
    assert [(h["kind"], h["human"]) for h in hits(rt, cid, mid)] == [("open", True), ("click", True)]


def test_an_open_the_message_history_makes_a_machine_costs_no_second_write(rt, tap, aws_calls):
    """The hit is stored as its request labels it; the message's history (too soon, a burst) makes it a
    machine for its event and for every reader of the hits (engagement.message_verdicts): two calls."""
    cid = rt.http("POST", "/signup", json_body={"email": "cy@example.com", "consent": True, "list": "test-single"}).json()["contact_id"]
    assert rt.settle()
    [path] = rt.outbox.glob("*.eml")
    mail = message_from_bytes(path.read_bytes(), policy=policy.default)
    mid = mail["X-Funnelpilot-Message-Id"]
    [pixel] = [t for k, t in links_in(mail)[0] if k == "o"]
    aws_calls.clear()  # at the instant of delivery: a browser's user agent, but no person reads that fast
    rt.http("GET", path_of("o", pixel), headers={"user-agent": BROWSER})
    assert aws_calls == ["dynamodb:UpdateItem", "dynamodb:UpdateItem"]  # the hit, then its machine count
    assert tap.events("email.opened") == [] and machine_counts(rt)["machine_opens"] == 1
    assert [(h["human"], h["reason"]) for h in hits(rt, cid, mid)] == [(False, "too_soon")]
    assert [h["human"] for h in stored_hits(rt, cid, mid)] == [True]  # as its request looked
    assert "first_open_at" not in message_item(rt, cid, mid)
    assert rt.advance(600)
    rt.http("GET", path_of("o", pixel), headers={"user-agent": "Mozilla/5.0 (compatible; BarracudaCentral)"})
    assert rt.advance(5)
    aws_calls.clear()  # 5 s after a scanner's hit: the same burst
    rt.http("GET", path_of("o", pixel), headers={"user-agent": BROWSER})
    assert aws_calls == ["dynamodb:UpdateItem", "dynamodb:UpdateItem"]
    assert [(h["human"], h["reason"]) for h in hits(rt, cid, mid)][1:] == [(False, "scanner"), (False, "burst")]
    assert tap.events("email.opened") == [] and machine_counts(rt)["machine_opens"] == 3
    assert rt.advance(60)
    aws_calls.clear()
    rt.http("GET", path_of("o", pixel), headers={"user-agent": BROWSER})
    assert aws_calls == ["dynamodb:UpdateItem", "events:PutEvents"]
    last = tap.events("email.opened")[-1]["detail"]
    assert last["human"] and last["unique"] and hits(rt, cid, mid)[-1]["human"]
    assert rt.advance(60)
    rt.http("GET", path_of("o", pixel), headers={"user-agent": BROWSER})
    again = tap.events("email.opened")[-1]["detail"]
    assert again["human"] and not again["unique"]  # the first human open was the one before


def test_a_honeypot_hit_relabels_the_human_hits_just_before_it(rt, tap):
    cid, mail = send_welcome(rt)
    mid = mail["X-Funnelpilot-Message-Id"]
    in_html = links_in(mail)[0]
    [pixel] = [t for k, t in in_html if k == "o"]
    [link] = [t for k, t in in_html if k == "c" and tokens.verify("c", t, 3)[2] == "0"]
    [trap] = [t for k, t in in_html if k == "c" and tokens.verify("c", t, 3)[2] == tokens.HONEYPOT]
    rt.http("GET", path_of("o", pixel), headers={"user-agent": BROWSER})
    assert rt.advance(60)
    rt.http("GET", path_of("c", link), headers={"user-agent": BROWSER})  # a browser-like scanner...
    assert rt.advance(2)
    rt.http("GET", path_of("c", trap), headers={"user-agent": BROWSER})  # ...that follows every link
    opened, *clicks = hits(rt, cid, mid)
    assert opened["human"] is True  # a minute before: not in the burst
    assert [(h["human"], h["reason"]) for h in clicks] == [(False, "honeypot_burst"), (False, "honeypot")]
    assert rt.advance(3)
    rt.http("GET", path_of("c", link), headers={"user-agent": BROWSER})
    assert hits(rt, cid, mid)[-1]["reason"] == "honeypot_burst"
    # the browser-like click looked human when it came (its event went out); the rest are counted as machines
    assert [e["detail"]["human"] for e in tap.events("email.clicked")] == [True]
    assert machine_counts(rt)["machine_clicks"] == 2


def test_hits_past_the_stored_maximum_are_emitted_but_not_stored(rt, tap, monkeypatch, aws_calls):
    monkeypatch.setattr(engagement, "MAX_STORED_HITS", 2)
    cid, mail = send_welcome(rt)
    mid = mail["X-Funnelpilot-Message-Id"]
    [pixel] = [t for k, t in links_in(mail)[0] if k == "o"]
    for _ in range(4):
        assert rt.advance(60)
        aws_calls.clear()
        rt.http("GET", path_of("o", pixel), headers={"user-agent": BROWSER})
    assert aws_calls == ["dynamodb:UpdateItem"] * 2 + ["events:PutEvents"]  # the first one's condition failed
    assert len(hits(rt, cid, mid)) == 2 and len(tap.events("email.opened")) == 4
    assert [e["detail"]["unique"] for e in tap.events("email.opened")] == [True, False, False, False]
    item = message_item(rt, cid, mid)  # past the maximum, the first human hit is kept as first_open_at
    assert item["last_hit_at"]["S"] > item["first_open_at"]["S"] > hits(rt, cid, mid)[-1]["at"]
