"""Signup redirects followed by a real browser (Debian's Chromium, as in tests/test_browser.py):
a form POST to the local server with a sample of tests/test_redirects.py's payloads either
stays on the 400 or lands on an allow-listed host. No host name resolves (no network): the
browser's navigation requests show where it went."""
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from test_browser import CHROMIUM, FLAGS, free_port
from test_redirects import ALLOWED, CLASSICS, EVIL, GOOD, payloads, python_host

from funnelpilot.config import config
from funnelpilot_local.server import LocalServer

if not CHROMIUM.exists():
    pytest.skip(f"no browser: {CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Error as PlaywrightError  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

NO_NETWORK = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"  # no name resolves: 127.0.0.1 is the only reachable host

SUBMIT = """([action, redirect]) => {
  const form = Object.assign(document.createElement('form'), {method: 'POST', action});
  for (const [name, value] of [['email', 'chromium@example.com'], ['consent', 'true'], ['redirect', redirect]])
    form.append(Object.assign(document.createElement('input'), {type: 'hidden', name, value}));
  document.body.append(form);
  form.submit();
}"""


def sample() -> list[str]:
    fooled = [raw for raw in payloads() if python_host(raw.strip()) in ALLOWED and EVIL in raw]
    return list(dict.fromkeys(list(GOOD) + CLASSICS[:12] + fooled[::4] + payloads()[::40]))


def test_chromium_never_lands_outside_the_allowed_hosts(tmp_path: Path, monkeypatch):
    port = free_port()
    local = f"127.0.0.1:{port}"
    with LocalServer(port, state_dir=tmp_path / "local") as server, sync_playwright() as pw:
        server.start()
        # one browser, one address, ~100 accepted signups: this test is about redirects, not signup limits
        monkeypatch.setenv("SIGNUP_LIMIT_PER_IP", "100000")
        monkeypatch.setenv("SIGNUP_LIMIT_PER_ADDRESS", "100000")
        config.cache_clear()
        browser = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM),
                                                        headless=True, args=FLAGS + [NO_NETWORK])
        try:
            def follow(action, start: str | None = None) -> tuple[str, object]:
                """Where a fresh page went (its last navigation request) and the page: off the local
                server the request fails to resolve, which is where it would have landed."""
                page, navigations = browser.new_page(), []
                if start:
                    page.goto(start)
                page.on("request", lambda r: navigations.append(r.url) if r.is_navigation_request() else None)
                try:
                    with page.expect_navigation():
                        action(page)
                except PlaywrightError:
                    pass
                return navigations[-1], page

            cases = sample()
            assert len(cases) >= 40
            landed, refused = {}, []
            for raw in cases:
                went, page = follow(lambda p: p.evaluate(SUBMIT, [f"{server.base}/signup", raw]), f"{server.base}/nope")
                if urlsplit(went).netloc == local:
                    # a form posted by the browser itself gets the HTML problem page (JSON is for fetch)
                    assert went == f"{server.base}/signup" and 'data-field="redirect"' in page.content(), raw
                    refused.append(raw)
                else:
                    landed[raw] = went
                    assert urlsplit(went).netloc in ALLOWED, (raw, went)
                page.close()
            # a request carries no fragment
            assert {raw: landed.get(raw) for raw in GOOD} == {raw: url.split("#")[0] for raw, url in GOOD.items()}
            assert len(refused) >= 30
            # the oracle: had the 303 carried the raw text (the old behaviour), Chromium would go to evil.com
            for raw in ("https://evil.com\\@example.com", "https:\\\\evil.com\\@example.com/x", "https://evil.com\t\\@example.com"):
                went, page = follow(lambda p: p.goto(raw))
                assert urlsplit(went).netloc == EVIL, (raw, went)
                page.close()
        finally:
            browser.close()
