"""The example site in a real headless Chromium (Debian's package, driven by Playwright with
the system browser: no browser download), served like ``make serve`` on a free port.

A person lands on the page, signs up with the form, reads the pricing page, then clicks the
guide link in the welcome email: the snippet must send each page view, anonymous first and
then as that contact, also on the site origin the email link hands the fp token to.
"""
import json
import re
import socket
import time
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from conftest import EventTap

from funnelpilot import tokens
from funnelpilot_local.server import LocalServer

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"no browser: {CHROMIUM} is absent (apt-get install chromium; make test does it as root)",
                allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402 - only when a browser can run

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
# A desktop user agent: /collect drops HeadlessChrome like any other automated client.
DESKTOP = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/150.0.0.0 Safari/537.36"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(check, timeout: float = 20.0):
    """Poll ``check`` until it returns something truthy (the browser and the pump run in threads)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {check.__doc__ or check}")


def site_counter(rt, step: str) -> dict:
    totals = {}
    for item in rt.client("dynamodb").scan(TableName="MetricsTable")["Items"]:
        if item["pk"]["S"] == "FUNNEL#site" and item["sk"]["S"].endswith(f"#STEP#{step}"):
            for k in ("known", "anonymous"):
                totals[k] = totals.get(k, 0) + int(item.get(k, {"N": "0"})["N"])
    return totals


def test_landing_page_form_and_snippet_send_page_views(tmp_path):
    port = free_port()
    with LocalServer(port, state_dir=tmp_path / "local") as server, sync_playwright() as pw:
        server.start()
        rt, tap = server.rt, EventTap(server.rt)

        def views_of(path):
            return [e["detail"] for e in tap.events("page.viewed") if e["detail"]["path"] == path]

        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            user_agent=DESKTOP)
        try:
            page = browser.new_page()
            # 1. an anonymous visit is counted, not stored per person
            page.goto(f"{server.base}/?utm_source=newsletter")
            until(lambda: site_counter(rt, "/").get("anonymous") == 1)
            assert tap.events("page.viewed") == []

            # 2. the form submits with fetch, shows the thank-you, and hands the token to the snippet
            page.fill("#email", "browser.test@example.com")
            page.fill("#first_name", "Bea")
            page.check("input[name=consent]")
            page.click("button[type=submit]")
            page.wait_for_selector("#thanks", state="visible")
            cid = tokens.contact_id("browser.test@example.com")
            assert page.evaluate("localStorage.getItem('funnelpilot.fp')")

            # 3. the confirmation email's link (double opt-in: the owner of the address proves it),
            #    then the pricing page is this contact's page view
            def confirmation():
                mails = (message_from_bytes(p.read_bytes(), policy=policy.default) for p in rt.outbox.glob("*.eml"))
                return [m.get_body(("plain",)).get_content() for m in mails if m["To"] == "browser.test@example.com"]
            [confirm_link] = re.findall(rf"{re.escape(server.base)}/confirm/[A-Za-z0-9_\-.]+", until(confirmation)[0])
            page.goto(confirm_link)
            assert "subscribed" in page.content()
            page.goto(f"{server.base}/")
            page.click("nav a[href='/pricing']")
            [pricing] = until(lambda: views_of("/pricing"))
            assert pricing["contact_id"] == cid and pricing["title"].startswith("Pricing")
            assert pricing["referrer"] == f"{server.base}/"
            until(lambda: [e for e in tap.events("sales.alerted") if e["detail"]["contact_id"] == cid])

            # 4. the welcome email's guide link lands on the site origin with fp, which the snippet
            #    keeps in that origin's storage and removes from the address bar
            def welcome():
                mails = (message_from_bytes(p.read_bytes(), policy=policy.default) for p in rt.outbox.glob("*.eml"))
                return [m for m in mails if m["To"] == "browser.test@example.com"
                        and m["Subject"].startswith("Welcome")]  # not the lead magnet's delivery
            html = until(welcome)[0].get_body(("html",)).get_content()
            [click] = [u for u in re.findall(rf"{re.escape(server.base)}/c/[A-Za-z0-9_\-.]+", html)
                       if tokens.verify("c", u.rsplit("/", 1)[1], 3)[2] == "0"]
            page.goto(click)
            [guide] = until(lambda: views_of("/guide"))
            assert guide["contact_id"] == cid
            # the snippet took fp out of the address bar; the link's UTM tags stay (README "Revenue, A/B tests and UTM tags")
            assert page.url == f"{server.site}/guide?utm_source=funnelpilot&utm_medium=email&utm_campaign=welcome" \
                               "&utm_content=welcome-1"
            assert page.evaluate("localStorage.getItem('funnelpilot.fp')")
            assert json.dumps(guide).count("fp=") == 0

            # 5. with data-respect-dnt, a browser sending Global Privacy Control gets nothing sent
            #    and nothing stored, even when it arrives with a token
            private = browser.new_page()
            private.add_init_script("Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true})")
            sent = []
            private.on("request", lambda r: sent.append(r.url) if r.url.endswith("/collect") else None)
            private.goto(f"{server.base}/pricing")
            private.evaluate("localStorage.clear()")
            private.goto(f"{server.base}/pricing?fp={tokens.sign('fp', cid, '99999')}")
            private.wait_for_load_state("networkidle")
            private.evaluate("funnelpilot.track('plan.chosen', {plan: 'growth'})")
            private.wait_for_load_state("networkidle")
            assert sent == [] and private.url == f"{server.base}/pricing"
            assert private.evaluate("localStorage.getItem('funnelpilot.fp')") is None
        finally:
            browser.close()
