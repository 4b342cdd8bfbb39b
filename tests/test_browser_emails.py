"""Every shipped email (as sent: funnelpilot_local.shipped_emails) in a real headless Chromium
(Debian's package, as tests/test_browser.py) at a phone's 375 px and a desktop's 1280 px: no
horizontal scroll, body text at 14 px or more, the one column at most 600 px wide; and in dark
mode (prefers-color-scheme: dark, as Apple Mail renders it) light text on a dark card."""
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from conftest import START

from funnelpilot_local import shipped_emails
from funnelpilot_local.runtime import ROOT, Runtime

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"no browser: {CHROMIUM} is absent (apt-get install chromium; make test does it as root)",
                allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402 - only when a browser can run

FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
# The smallest font size of any element holding visible text, the widest element, and the card's colours.
MEASURE = """() => {
  const visible = e => e.offsetParent !== null && getComputedStyle(e).visibility !== 'hidden';
  const texts = [...document.body.querySelectorAll('*')].filter(e => visible(e) &&
      [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim()));
  const card = document.querySelector('.fp-card td');
  return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth,
          minFont: Math.min(...texts.map(e => parseFloat(getComputedStyle(e).fontSize))),
          widest: Math.max(...[...document.body.querySelectorAll('.fp-card, .fp-foot')].map(e => e.getBoundingClientRect().width)),
          card: card.getBoundingClientRect().width, fg: getComputedStyle(card).color, bg: getComputedStyle(card).backgroundColor};
}"""


def rgb(css: str) -> tuple[int, ...]:
    return tuple(int(float(v)) for v in css[css.index("(") + 1:css.index(")")].split(",")[:3])


def luminance(colour: tuple[int, ...]) -> float:
    lin = [c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in colour]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, str]:
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path_factory.mktemp("local")) as rt:
        raw = shipped_emails.send_all(rt)
    return {name: message_from_bytes(data, policy=policy.default).get_body(("html",)).get_content()
            for name, data in raw.items()}


def test_every_email_fits_a_phone_and_a_desktop_and_survives_dark_mode(pages, tmp_path):
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            for scheme in ("light", "dark"):
                for width in (375, 1280):
                    page = browser.new_page(viewport={"width": width, "height": 800}, color_scheme=scheme)
                    page.route("**/*", lambda route: route.abort())  # the open pixel: nothing leaves the machine
                    for name, html in pages.items():
                        page.set_content(html, wait_until="domcontentloaded")
                        m = page.evaluate(MEASURE)
                        where = (name, width, scheme, m)
                        assert m["scroll"] <= m["inner"], where  # no horizontal scroll
                        assert m["minFont"] >= 14, where
                        assert m["widest"] <= min(width - 16, 600), where  # the one column, in the page's padding
                        assert m["card"] >= (width - 16 if width < 600 else 600), where  # fluid up to 600 px
                        fg, bg = luminance(rgb(m["fg"])), luminance(rgb(m["bg"]))
                        assert (max(fg, bg) + 0.05) / (min(fg, bg) + 0.05) >= 4.5, where
                        assert (bg < fg) == (scheme == "dark"), where  # light text on a dark card in dark mode
                    page.close()
        finally:
            browser.close()
