"""Every funnel email template renders with the context funnelpilot.sequence gives it, and
keeps the rules of the base layout (README "Email design") without a browser: no fixed width
above 320 px, every text colour on its own background with WCAG AA contrast, a preheader, the
footer's reason, links and postal address, copy that names no date or deadline.

Funnel conditions match a click by a substring of the link's URL, so the links a
funnel waits for are asserted here: a copy edit that drops one breaks the funnel.
"""
import re
from pathlib import Path

import pytest

from funnelpilot.channels import emails
from funnelpilot.config import config
from funnelpilot_local.runtime import ROOT
from funnelpilot.models import PROFILE, Contact
from funnelpilot.sequence import template_context

EMAILS = Path(ROOT) / "infra" / "emails"
# Rendered elsewhere with their own context (consent.send_confirmation, alerts), or layouts.
NOT_FUNNEL_EMAILS = {"layout", "transactional", "confirm", "sales-alert"}
INTERNAL = {"sales-alert"}  # to the sales team, not to people on a list: its own plain page
FUNNEL_TEMPLATES = sorted({p.name.split(".")[0] for p in EMAILS.glob("*.j2")} - NOT_FUNNEL_EMAILS)

# The links each template must carry (substrings of the rendered URL after {{ site_url }}).
REQUIRED_LINKS = {
    "welcome-1": ["/guide"],
    "welcome-2": ["/blog/start-here"],
    "welcome-3": ["/guide"],
    "delivery-1": ["/download/"],
    "delivery-2": ["/download/"],
    "segmentation-1": ["/topics/seo", "/topics/ads", "/topics/email"],
    "engagement-1": ["/pricing"],
    "engagement-2a": ["/case-study"],
    "engagement-2b": ["/case-study"],
    "engagement-3": ["/pricing?offer=readers"],
    "ascension-1": ["/courses/core"],
    "ascension-2": ["/addons"],
    "reengage-1": ["/stay"],
    "reengage-2": ["/stay"],
}


def context(first_name: str | None = None, lead_magnet: str | None = None, list_name: str | None = None,
            **properties) -> dict:
    contact = Contact("c_test", PROFILE, email="pat@example.com", first_name=first_name, properties=properties)
    return template_context(contact, "m_test", lead_magnet, list_name)


def test_every_funnel_template_pair_exists_and_is_listed():
    for name in FUNNEL_TEMPLATES:
        assert (EMAILS / f"{name}.html.j2").exists() and (EMAILS / f"{name}.txt.j2").exists(), name
    assert set(REQUIRED_LINKS) <= set(FUNNEL_TEMPLATES)


def test_funnel_templates_render_with_the_sequence_context(rt):
    site = config().site_url
    for name in FUNNEL_TEMPLATES:
        ctx = context()
        out = emails.render(name, ctx)
        assert out.subject and "\n" not in out.subject and "\r" not in out.subject, name
        for body in (out.html, out.text):
            assert ctx["unsubscribe_url"] in body, name
            for link in REQUIRED_LINKS.get(name, []):
                assert f"{site}{link}" in body, (name, link)
        named = emails.render(name, context("Ana"))
        assert "Ana" in named.html and "Ana" in named.text, name


def test_a_missing_first_name_never_reads_as_a_name(rt):
    """``first_name`` greets ("Hi there,"); ``contact.first_name`` is None without one, so a
    template words it otherwise ("Welcome!", never "Welcome, there!")."""
    assert context()["contact"] == {"first_name": None} and context("Ana")["contact"] == {"first_name": "Ana"}
    for name in FUNNEL_TEMPLATES:
        out = emails.render(name, context())
        for text in (out.subject, out.text, out.html):
            assert not re.search(r"\b(?!Hi\b)\w+,? there[!?.,]", text), (name, text[:200])  # "Welcome, there!"
    assert emails.render("welcome-1", context()).subject == "Welcome!"
    assert emails.render("welcome-1", context("Ana")).subject == "Welcome, Ana!"
    assert emails.render("ascension-1", context()).subject == "Thank you! Here is where to start"


def test_segmentation_has_exactly_the_three_topic_links(rt):
    out = emails.render("segmentation-1", context())
    assert out.html.count("/topics/") == 3 and out.text.count("/topics/") == 3
    # the only tracked links, in this order (the demo audience picks one by index)
    _, links = emails.track(out, contact_id="c_test", message_id="m_test")
    site = config().site_url
    assert links == [f"{site}/topics/seo", f"{site}/topics/ads", f"{site}/topics/email"]


def test_delivery_links_the_requested_lead_magnet_or_the_default(rt):
    site = config().site_url
    for name in ("delivery-1", "delivery-2"):
        assert f"{site}/download/starter-guide" in emails.render(name, context()).html
        out = emails.render(name, context(lead_magnet="seo-ebook"))
        assert f"{site}/download/seo-ebook" in out.html and f"{site}/download/seo-ebook" in out.text


@pytest.mark.parametrize("interest, phrase", [("seo", "found on Google"), ("ads", "ads that pay"),
                                              ("email", "emails people actually read"),
                                              ("knitting", "reading our emails for a while"),
                                              (None, "reading our emails for a while")])
def test_engagement_copy_follows_the_interest(rt, interest, phrase):
    props = {"interest": interest} if interest else {}
    out = emails.render("engagement-1", context(**props))
    assert phrase in out.html and phrase in out.text
    assert "/pricing" in out.html


def test_ab_pair_differs_in_subject(rt):
    a, b = emails.render("engagement-2a", context()), emails.render("engagement-2b", context())
    assert a.subject != b.subject


def test_contact_data_is_a_value_never_template_source(rt):
    evil = "{{ 7*7 }}<b>x</b>"
    for name in FUNNEL_TEMPLATES:
        plain, out = emails.render(name, context("NAME")), emails.render(name, context(evil))
        assert out.subject == plain.subject.replace("NAME", evil), name
        assert out.text == plain.text.replace("NAME", evil), name
        assert out.html == plain.html.replace("NAME", "{{ 7*7 }}&lt;b&gt;x&lt;/b&gt;"), name


def test_properties_are_values_too(rt):
    evil = "{{ 7*7 }}"
    for name in FUNNEL_TEMPLATES:
        out = emails.render(name, context(lead_magnet=evil, interest=evil))
        if not name.startswith("delivery-"):
            assert out == emails.render(name, context()), name
    out = emails.render("delivery-1", context(lead_magnet='x"><script>'))
    assert "<script>" not in out.html and "/download/x%22%3E%3Cscript%3E" in out.html
    assert "/download/%7B%7B%207%2A7%20%7D%7D" in emails.render("delivery-2", context(lead_magnet=evil)).text


# ---------------------------------------------------------------- the base layout's rules
def rendered_all(first_name: str | None = "Ana") -> dict[str, emails.Rendered]:
    """Every email people get, as its template renders it (funnel emails and the confirmation)."""
    out = {name: emails.render(name, context(first_name, list_name="newsletter")) for name in FUNNEL_TEMPLATES}
    out["confirm"] = emails.render("confirm", {"first_name": "Ana", "contact": {"first_name": "Ana"},
                                               "list": "newsletter", "list_title": "Newsletter",
                                               "confirm_url": "http://127.0.0.1:3000/confirm/x", "confirm_hours": 48})
    return out


WIDTH = re.compile(r"(?<![-\w])(?:min-)?width\s*:\s*(\d+(?:\.\d+)?)px|\bwidth\s*=\s*[\"']?(\d+)(?![\d%])", re.I)
STYLE = re.compile(r"""style\s*=\s*(["'])(.*?)\1""", re.I | re.S)


def fixed_widths(html: str) -> list[int]:
    """Every fixed width in px (inline CSS ``width``/``min-width``, a ``width`` attribute); ``max-width`` is a cap."""
    return [int(float(a or b)) for a, b in WIDTH.findall(html)]


def declarations(style: str) -> dict[str, str]:
    pairs = (d.split(":", 1) for d in style.split(";") if ":" in d)
    return {k.strip().lower(): v.strip().lower().replace("!important", "").strip() for k, v in pairs}


def luminance(hex_colour: str) -> float:
    """WCAG 2 relative luminance of #rgb / #rrggbb."""
    h = hex_colour.lstrip("#")
    h = "".join(c * 2 for c in h) if len(h) == 3 else h
    channels = [int(h[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(fg: str, bg: str) -> float:
    hi, lo = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_the_rule_checks_catch_what_they_are_for():
    """The checks below, on the layout this replaced (a fixed 560 px box, grey 12 px footer text)."""
    old = ('<table role="presentation" width="560" style="background:#ffffff;padding:32px">'
           '<td style="padding-top:32px;font-size:12px;color:#78716c">')
    assert fixed_widths(old) == [560]
    assert fixed_widths('<table width="100%" style="width:100%;max-width:600px"><img width="1">') == [1]
    [_, footer] = [declarations(m[1]) for m in STYLE.findall(old)]
    assert "background-color" not in footer and "background" not in footer  # a colour without its background
    assert round(contrast("#78716c", "#ffffff"), 2) == 4.8 and round(contrast("#777", "#fff"), 2) == 4.48


def test_no_fixed_width_above_320_px_in_any_email(rt):
    for name, out in rendered_all().items():
        too_wide = [w for w in fixed_widths(out.html) if w > 320]
        assert not too_wide, (name, too_wide)
        assert re.search(r"max-width\s*:\s*600px", out.html), name  # the one column: fluid, at most 600 px
    for path in EMAILS.glob("*.html.j2"):
        if path.name.split(".")[0] not in INTERNAL:
            assert not [w for w in fixed_widths(path.read_text()) if w > 320], path.name


def test_every_text_colour_has_its_background_and_aa_contrast(rt):
    """WCAG 2.1 AA: 4.5:1 for body-size text; a text colour always set with its background, so a
    client that inverts one (Gmail's dark mode) cannot leave light text on a light background."""
    for name, out in rendered_all().items():
        for _, style in STYLE.findall(out.html):
            d = declarations(style)
            if "color" not in d:
                continue
            bg = d.get("background-color") or d.get("background")
            assert bg, (name, style)
            assert contrast(d["color"], bg) >= 4.5, (name, style, round(contrast(d["color"], bg), 2))


def test_system_fonts_at_a_readable_size(rt):
    for name, out in rendered_all().items():
        sizes = [int(s) for s in re.findall(r"font-size\s*:\s*(\d+)px", out.html)]
        assert sizes and min(sizes) >= 14, (name, sizes)
        assert "-apple-system" in out.html and "Segoe UI" in out.html and "sans-serif" in out.html, name
        assert 'name="color-scheme" content="light dark"' in out.html and "prefers-color-scheme: dark" in out.html


def test_each_email_has_its_preheader_and_footer(rt):
    address = config().postal_address
    for name, out in rendered_all().items():
        hidden = re.search(r'<div style="display:none;[^"]*"[^>]*>([^<&]+)', out.html)
        assert hidden and len(hidden[1].strip()) >= 20, name  # the line the inbox shows after the subject
        assert hidden[1].strip() not in out.text, name  # a line of its own, not the body's first words
        for part in (out.html, out.text):
            assert address in part and config().from_name in part, name
        if name == "confirm":
            assert "unsubscribe" not in out.html.lower() and "signed up with this address" in out.text
        else:
            assert re.search(r"You get this email because you (signed up for Newsletter|ordered from us)\.", out.text), name
            assert out.html.count(context()["unsubscribe_url"]) == 1, name  # the preference centre, with "Unsubscribe from everything"
    assert address == "Example Ltd, 1 Main Street, Springfield, OR 97477, USA"  # the runtime's demo PostalAddress


def test_a_template_without_preheader_fails_to_render(rt, tmp_path):
    (tmp_path / "emails").mkdir()
    for layout in ("layout.html.j2", "layout.txt.j2"):
        (tmp_path / "emails" / layout).write_text((EMAILS / layout).read_text())
    (tmp_path / "emails" / "bare.html.j2").write_text('{% extends "layout.html.j2" %}{% block body %}<p>Hi</p>{% endblock %}')
    (tmp_path / "emails" / "bare.txt.j2").write_text('{% extends "layout.txt.j2" %}{% block subject %}S{% endblock %}')
    with pytest.raises(Exception, match="Required block 'preheader' not found"):
        emails.render("bare", context(), directory=str(tmp_path / "emails"))


def test_shipped_copy_is_true_at_any_date(rt):
    """No weekday, month, season or deadline: a funnel sends the same email any day of the year."""
    dated = re.compile(r"\b(monday|tuesday|wednesday|thursday|friday|saturday|sunday|january|february|march|april|"
                       r"june|july|august|september|october|november|december|spring|summer|autumn|winter|"
                       r"tonight|tomorrow|yesterday|(?:offer|sale) ends|ends (?:on|at|today|soon|this|next)|expires?|"
                       r"until (?:midnight|the end)|last chance|only this week|one week only|"
                       r"for one week|today only|hurry|\d{4}-\d\d-\d\d)\b", re.I)
    for name, out in rendered_all().items():
        for part in (out.subject, out.text, re.sub(r"<[^>]+>", " ", out.html)):
            hit = dated.search(part.replace("works for 48 hours", ""))
            assert not hit, (name, hit and part[max(0, hit.start() - 60):hit.end() + 20])
