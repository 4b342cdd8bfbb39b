"""Every shipped email as SES gets it (funnelpilot_local.shipped_emails: the real send path on the
strict runtime): the headers a mailbox provider looks for, and the structure spam filters score
(bench/spam_scores.py runs SpamAssassin itself; these facts need no SpamAssassin)."""
import re
from email import message_from_bytes, policy
from email.utils import parseaddr

import pytest
from conftest import START

from funnelpilot_local import shipped_emails
from funnelpilot_local.runtime import ROOT, Runtime
from funnelpilot_local.template import Template

REPLY_TO = "team@example.com"
# SpamAssassin's HTML_IMAGE_ONLY_* rules score an HTML part holding an image (the open pixel) when the
# part is at most 3,200 bytes (20_html_tests.cf; HTML.pm counts the raw HTML's length)
IMAGE_ONLY_BYTES = 3200


@pytest.fixture(scope="module")
def mails(tmp_path_factory) -> dict:
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path_factory.mktemp("local"),
                 parameters={"ReplyTo": REPLY_TO}) as rt:
        raw = shipped_emails.send_all(rt)
        assert not rt.denied, "template.yaml does not allow:\n" + "\n".join(map(str, rt.denied))
    return {name: message_from_bytes(data, policy=policy.default) for name, data in raw.items()}


def tags(mail) -> dict[str, str]:
    return dict(pair.strip().split("=", 1) for pair in mail["X-SES-MESSAGE-TAGS"].split(","))


def visible_words(html: str) -> list[str]:
    """The words a reader sees: no head, no hidden preheader or honeypot, no tags."""
    body = re.sub(r"(?s)<head>.*?</head>|<div style=\"display:none;[^>]*>.*?</div>|<a [^>]*display:none[^>]*></a>", "", html)
    return re.sub(r"<[^>]+>|&[#\w]+;", " ", body).split()


def test_every_shipped_email_is_sent_and_each_funnel_template_has_one(mails):
    funnel_templates = {p.name.split(".")[0] for p in (ROOT / "infra" / "emails").glob("*.html.j2")} - {
        "layout", "confirm", "sales-alert"}
    assert set(mails) == funnel_templates | {"confirm"}


def test_marketing_headers(mails):
    for name, mail in mails.items():
        assert parseaddr(mail["From"]) == ("Ada at Example", "hello@example.com"), name  # FromName, SenderEmail
        assert mail["Reply-To"] == REPLY_TO and mail["Date"] and mail["Message-ID"] and mail["To"], name
        if name == "confirm":  # transactional: no list to leave
            assert mail["List-Unsubscribe"] is None and mail["List-Id"] is None
            assert tags(mail) == {"ses:feedback-id-a": "transactional", "ses:feedback-id-b": "confirm", "email": "confirm"}
            continue
        assert re.fullmatch(r"<http://127\.0\.0\.1:3000/u/[\w.\-]+>", mail["List-Unsubscribe"]), name
        assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click", name
        funnel = tags(mail)["funnel"]
        assert tags(mail) == {"ses:feedback-id-a": funnel, "ses:feedback-id-b": name, "email": name, "funnel": funnel}
        assert mail["List-Id"] in ("Insiders <insiders.example.com>", f"{funnel} <{funnel}.funnels.example.com>"), name
    assert mails["insiders-1"]["List-Id"] == "Insiders <insiders.example.com>"  # the funnel's list
    assert mails["engagement-1"]["List-Id"] == "engagement <engagement.funnels.example.com>"  # no list: the funnel


def test_structure_spam_filters_score(mails):
    for name, mail in mails.items():
        assert mail.get_content_type() == "multipart/alternative", name
        text, html = mail.get_body(("plain",)).get_content(), mail.get_body(("html",)).get_content()
        assert len(html.encode()) > IMAGE_ONLY_BYTES, (name, len(html.encode()))
        images = re.findall(r"<img\b[^>]*>", html)
        assert all('width="1" height="1"' in i for i in images) and len(images) <= 1, (name, images)  # the pixel only
        words, text_words = visible_words(html), text.split()
        assert len(words) >= 70, (name, len(words))  # real text (the footer is ~35 words), not a line and a button
        assert 0.75 <= len(text_words) / len(words) <= 1.35, (name, len(text_words), len(words))  # the same email
        assert re.search(r"<div style=\"display:none;[^\"]*\"[^>]*>\w", html), name  # the preheader
        for part in (text, html):
            assert "Example Ltd, 1 Main Street, Springfield, OR 97477, USA" in part, name  # PostalAddress


def test_postal_address_and_from_name_are_required_parameters():
    """No default: ``sam deploy --guided`` asks, and CloudFormation refuses an empty or blank value."""
    doc = Template.load(ROOT).doc["Parameters"]
    assert "Default" not in doc["PostalAddress"] and "Default" not in doc["FromName"]
    for name, value in [("PostalAddress", ""), ("PostalAddress", "          "), ("PostalAddress", "1 Main St"),
                        ("PostalAddress", "Example Ltd\r\nBcc: x@evil.test"), ("FromName", ""),
                        ("FromName", 'Ada" <evil@x.test>'), ("ReplyTo", "not an address")]:
        with pytest.raises(ValueError, match=f"parameter {name}="):
            Template.load(ROOT, {name: value})
