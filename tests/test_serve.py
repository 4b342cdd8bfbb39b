"""``make serve`` for people, through the real HTTP server on 127.0.0.1: a page for every link the
shipped emails contain, a form that works without JavaScript, the clock's speed, and the state
kept across restarts (the request journal replayed on the stepped clock)."""
import http.client
import inspect
import json
import re
import time
from email import message_from_bytes, policy
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from conftest import SINGLE
from funnelpilot import clock, funnel_spec, tokens
from funnelpilot.channels import emails
from funnelpilot.models import PROFILE, Contact
from funnelpilot.sequence import template_context
from funnelpilot_local.moto_adapter import sent_emails
from funnelpilot_local.runtime import ROOT
from funnelpilot_local.template import ACCOUNT, REGION
from funnelpilot_local.server import SITE, LocalServer, serve
from test_browser import free_port

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"  # a form's own POST


def request(server: LocalServer, method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) from the server, as a browser would get them."""
    parts = urlsplit(url if "://" in url else server.base + url)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)  # localhost: the site's name
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body,
                     headers={"host": parts.netloc, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        self.hrefs += [v for k, v in attrs if k == "href" and tag == "a"]


def hrefs(html: str) -> list[str]:
    parser = Links()
    parser.feed(html)
    return parser.hrefs


def shipped_emails() -> list[str]:
    """Every template a shipped funnel sends."""
    funnels = funnel_spec.load_all(ROOT / "infra" / "funnels")
    return sorted({template for f in funnels.values() for template in f.sends()})


@pytest.fixture
def server(tmp_path):
    with LocalServer(free_port(), state_dir=tmp_path / "local") as srv:
        yield srv.start()


def test_every_link_of_every_shipped_email_has_a_site_page(server):
    """The example site answers every link a shipped email contains with a page (200 HTML), never
    the API's JSON 404; the other links are the stack's own routes (unsubscribe, confirm)."""
    templates = shipped_emails()
    assert len(templates) >= 15
    site_links, checked = set(), set()
    for name in templates:
        for first_name, magnet in ((None, None), ("Ann", "seo-ebook"), ("Bo", "guide")):
            contact = Contact("c_serve", PROFILE, email="ann@example.com", first_name=first_name)
            rendered = emails.render(name, template_context(contact, "m_serve", magnet))
            links = hrefs(rendered.html) + re.findall(r"https?://[^\s<>\"')]+", rendered.text)
            assert links, name
            for link in links:
                if link.startswith(server.site):
                    site_links.add((name, link))
                else:  # the API's own pages: unsubscribe (the preference centre)
                    assert link.startswith(f"{server.base}/u/"), (name, link)
    for name, link in sorted(site_links):
        path = link.removeprefix(server.site)
        if path in checked:
            continue
        status, headers, body = request(server, "GET", link)
        assert (status, headers["content-type"]) == (200, "text/html; charset=utf-8"), (name, link, body[:200])
        assert b"<h1>" in body, link
        checked.add(path)
    assert {"/case-study", "/stay", "/download/seo-ebook", "/topics/seo", "/blog/start-here"} <= checked
    assert request(server, "GET", f"{server.site}/no-such-page")[0] == 404  # a typo is still a 404


def test_every_link_of_the_example_site_answers(server):
    pages = sorted(SITE.rglob("*.html"))
    for path in pages:
        for href in hrefs(path.read_text()):
            if href.startswith("/"):
                status, headers, _ = request(server, "GET", f"{server.site}{href}")
                assert status == 200 and headers["content-type"].startswith("text/html"), (path.name, href)


def test_a_form_posted_without_javascript_gets_html_pages(server):
    form = urlencode({"email": "nojs@example.com", "consent": "true", "first_name": "Nia"}).encode()
    ctype = {"content-type": "application/x-www-form-urlencoded"}
    status, headers, body = request(server, "POST", "/signup", form, {**ctype, "accept": BROWSER_ACCEPT})
    assert status == 202 and headers["content-type"] == "text/html; charset=utf-8", body
    page = body.decode()
    assert "<h1>Thank you!</h1>" in page and "click its link to confirm" in page  # newsletter: double opt-in
    assert f'href="{server.site}/"' in page and "contact_id" not in page
    cid = tokens.contact_id("nojs@example.com")
    assert Contact.get(cid, PROFILE).status == "pending"

    status, headers, body = request(server, "POST", "/signup", urlencode({"email": "s@example.com", "consent": "true",
                                                                          "list": SINGLE}).encode(),
                                    {**ctype, "accept": BROWSER_ACCEPT})
    assert status == 202 and "Your first email is on its way" in body.decode()

    status, headers, body = request(server, "POST", "/signup", b"email=not-an-address&consent=true",
                                    {**ctype, "accept": BROWSER_ACCEPT})
    assert status == 400 and headers["content-type"] == "text/html; charset=utf-8"
    assert "We could not sign you up" in body.decode() and "correct the form" in body.decode()
    assert '<p data-field="email">' in body.decode()  # which field, for people and for scripts

    # the landing page's fetch (form-encoded, Accept: application/json) and API clients keep JSON
    for accept in ("application/json", "*/*"):
        status, headers, body = request(server, "POST", "/signup", form, {**ctype, "accept": accept})
        assert status == 202 and json.loads(body)["contact_id"] == cid
        status, _, body = request(server, "POST", "/signup", b"email=x&consent=true", {**ctype, "accept": accept})
        assert status == 400 and json.loads(body)["field"] == "email"


def outbox_subjects(rt, to: str) -> list[str]:
    mails = [message_from_bytes(p.read_bytes(), policy=policy.default) for p in sorted(rt.outbox.glob("*.eml"))]
    return sorted(m["Subject"] for m in mails if m["To"] == to)


def until(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {check}")


def test_real_time_by_default_and_the_speed_is_the_simulated_seconds_per_real_second(tmp_path):
    assert inspect.signature(serve).parameters["speed"].default == 1.0  # make serve (SPEED ?= 1), funnelpilot serve
    assert re.search(r"^SPEED\s+\?= 1$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    for speed in (1.0, 3600.0):
        with LocalServer(free_port(), speed, state_dir=tmp_path / str(speed)) as srv:
            t0, real0 = clock.now(), time.monotonic()
            time.sleep(1.0)
            moved, real = clock.now() - t0, time.monotonic() - real0
            assert speed * (real - 0.5) <= moved <= speed * (real + 0.5), (speed, moved, real)
    with pytest.raises(ValueError, match="speed must be a positive"):
        LocalServer(free_port(), 0, state_dir=tmp_path / "zero")


def test_state_survives_a_restart_journeys_included(tmp_path):
    """A contact, its welcome journey waiting 2 days in the Step Functions execution, and the clock
    survive a restart; --fresh forgets them."""
    state, port, to = tmp_path / "local", free_port(), "keep@example.com"
    signup = urlencode({"email": to, "consent": "true", "list": SINGLE, "first_name": "Kim"}).encode()
    with LocalServer(port, 3600.0, state_dir=state) as srv:  # an hour a second: the 2-day wait outlasts the run
        srv.start()
        assert request(srv, "POST", "/signup", signup, {"content-type": "application/x-www-form-urlencoded"})[0] == 202
        [welcome] = until(lambda: outbox_subjects(srv.rt, to))
        stopped = clock.now()
    assert (state / "serve-journal.jsonl").exists()
    for path in (state / "outbox").glob("*.eml"):
        path.unlink()  # what the replay writes again is then visible

    with LocalServer(port, 86_400.0, state_dir=state) as srv:  # a day a second: the wait ends soon
        srv.start()
        assert srv.replayed == 1 and clock.now() >= stopped  # the clock resumed, it did not restart
        cid = tokens.contact_id(to)
        status, _, body = request(srv, "GET", f"/contacts/{cid}", headers={"x-api-key": srv.rt.admin_key})
        assert status == 200 and json.loads(body)["first_name"] == "Kim"
        # the same journey goes on: welcome-2 after its 2-day wait; welcome-1 went out once (in the replay)
        subjects = until(lambda: (s := outbox_subjects(srv.rt, to)) and len(s) >= 2 and s)
        sent = [message_from_bytes(raw.encode() if isinstance(raw, str) else raw)["Subject"]
                for _, raw in sent_emails(ACCOUNT, REGION)]
        assert welcome in subjects and sent.count(welcome) == 1
        assert srv.rt.errors == []

    with LocalServer(port, 1.0, fresh=True, state_dir=state) as srv:
        srv.start()
        assert srv.replayed == 0
        cid = tokens.contact_id(to)
        assert request(srv, "GET", f"/contacts/{cid}", headers={"x-api-key": srv.rt.admin_key})[0] == 404


@pytest.mark.parametrize("speed", ["fast", "0", "-5", "inf"])
def test_a_bad_speed_is_one_line_and_exit_2(speed, capsys):
    from funnelpilot_local import cli

    assert cli.main(["serve", "--port", str(free_port()), "--speed", speed]) == 2
    assert capsys.readouterr().err == (f"error: --speed {speed}: a positive number of simulated seconds per real second "
                                       "(1 = real time, 86400 = a day a second)\n")


def test_a_form_over_the_signup_limit_gets_an_html_page_with_retry_after(server, monkeypatch):
    from funnelpilot.config import config

    monkeypatch.setenv("SIGNUP_LIMIT_PER_ADDRESS", "1")
    config.cache_clear()
    form = urlencode({"email": "twice@example.com", "consent": "true"}).encode()
    headers = {"content-type": "application/x-www-form-urlencoded", "accept": BROWSER_ACCEPT}
    assert request(server, "POST", "/signup", form, headers)[0] == 202
    status, got, body = request(server, "POST", "/signup", form, headers)
    assert status == 429 and got["content-type"] == "text/html; charset=utf-8" and int(got["retry-after"]) > 0
    assert '<p data-field="email">' in body.decode() and "try again in a little while" in body.decode()
