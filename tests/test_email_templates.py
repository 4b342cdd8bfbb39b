"""Every funnel email template renders with the context funnelpilot.sequence gives it.

Funnel conditions match a click by a substring of the link's URL, so the links a
funnel waits for are asserted here: a copy edit that drops one breaks the funnel.
"""
from pathlib import Path

import pytest

from funnelpilot import emails
from funnelpilot_local.runtime import ROOT
from funnelpilot.models import PROFILE, Contact
from funnelpilot.sequence import template_context

EMAILS = Path(ROOT) / "infra" / "emails"
# Rendered elsewhere with their own context (consent.send_confirmation, alerts), or layouts.
NOT_FUNNEL_EMAILS = {"layout", "transactional", "confirm", "sales-alert"}
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
    "engagement-3": ["/pricing?offer=spring"],
    "ascension-1": ["/courses/core"],
    "ascension-2": ["/addons"],
    "reengage-1": ["/stay"],
    "reengage-2": ["/stay"],
}


def context(first_name: str | None = None, lead_magnet: str | None = None, **properties) -> dict:
    contact = Contact("c_test", PROFILE, email="pat@example.com", first_name=first_name, properties=properties)
    return template_context(contact, "m_test", lead_magnet)


def test_every_funnel_template_pair_exists_and_is_listed():
    for name in FUNNEL_TEMPLATES:
        assert (EMAILS / f"{name}.html.j2").exists() and (EMAILS / f"{name}.txt.j2").exists(), name
    assert set(REQUIRED_LINKS) <= set(FUNNEL_TEMPLATES)


def test_funnel_templates_render_with_the_sequence_context(rt):
    site = context()["site_url"]
    for name in FUNNEL_TEMPLATES:
        ctx = context()
        out = emails.render(name, ctx)
        assert out.subject and "\n" not in out.subject and "\r" not in out.subject, name
        for body in (out.html, out.text):
            assert ctx["unsubscribe_url"] in body, name
            assert "there" in body, name  # first-name fallback
            for link in REQUIRED_LINKS.get(name, []):
                assert f"{site}{link}" in body, (name, link)
        named = emails.render(name, context("Ana"))
        assert "Ana" in named.html and "Ana" in named.text, name


def test_segmentation_has_exactly_the_three_topic_links(rt):
    out = emails.render("segmentation-1", context())
    assert out.html.count("/topics/") == 3 and out.text.count("/topics/") == 3
    # the only tracked links, in this order (the demo audience picks one by index)
    _, links = emails.track(out, contact_id="c_test", message_id="m_test")
    site = context()["site_url"]
    assert links == [f"{site}/topics/seo", f"{site}/topics/ads", f"{site}/topics/email"]


def test_delivery_links_the_requested_lead_magnet_or_the_default(rt):
    site = context()["site_url"]
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
