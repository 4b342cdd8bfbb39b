"""A broadcast's email: its content (stored in its item, no deploy) rendered in the send path's sandboxed
environment over the shared layouts (``channels.emails``), for a contact or a sample person.

The spec's subject (a variant's, in an A/B test) becomes the text part's ``subject`` block and its
preheader the HTML part's ``preheader`` block, added after the content, so a template error's line
is the line of the content as written.
"""
import re

from funnelpilot import steering, tokens
from funnelpilot.channels import emails
from funnelpilot.errors import InvalidField, TemplateError
from funnelpilot.models import PROFILE, Contact

_BLOCK = r"{%-?\s*block\s+NAME\b"


def name(bid: str, variant: str | None = None) -> str:
    """The template name of its email (``email`` in its SES tags and events)."""
    return f"broadcast-{bid}" + (f"-{variant}" if variant else "")


def subject(spec: dict, variant: str | None = None) -> str:
    return spec["ab"]["subjects"][variant] if variant else spec["subject"]


def sources(bid: str, spec: dict, variant: str | None = None) -> tuple[tuple[str, str], ...]:
    """The two template files of the email (for ``emails.render``'s ``sources``)."""
    text, html = spec["content"]["text"], spec["content"]["html"]
    text += "\n{% block subject %}" + subject(spec, variant) + "{% endblock %}"
    if "preheader" in spec:
        html += "\n{% block preheader %}" + spec["preheader"] + "{% endblock %}"
    return ((f"{name(bid, variant)}.txt.j2", text), (f"{name(bid, variant)}.html.j2", html))


def utm_tags(bid: str, variant: str | None = None) -> dict | None:
    """The site links' UTM tags (infra/steering.yaml ``utm``): the broadcast is the campaign."""
    base = steering.settings()["utm"]
    return None if base is False else {**(base or {}), "utm_campaign": bid, "utm_content": variant or "email"}


def sample_contact(email: str = "preview@example.com") -> Contact:
    """The person a preview or a test send is rendered for, when it names none."""
    return Contact(tokens.contact_id(email.strip().lower()), PROFILE, email=email, first_name="Ada", status="active")


def compose(bid: str, spec: dict, contact: Contact, message_id: str, variant: str | None = None,
            tracked: bool = True) -> tuple[list, bytes]:
    """(links for the message item, raw MIME) of the broadcast's email to ``contact``: the send path's
    ``sequence.compose`` with the stored content. ``TemplateError`` when it cannot render."""
    from funnelpilot import sequence

    return sequence.compose(contact, name(bid, variant), message_id, list_name=spec["list"], tracked=tracked,
                            utm_tags=utm_tags(bid, variant), sources=sources(bid, spec, variant), broadcast=bid)


def render(bid: str, spec: dict, contact: Contact, variant: str | None = None) -> emails.Rendered:
    """Subject, HTML and text for ``contact`` (untracked: a preview)."""
    from funnelpilot import sequence

    context = sequence.template_context(contact, tokens.digest_id("bp", bid), None, spec["list"])
    return emails.render(name(bid, variant), context, sources=sources(bid, spec, variant))


def check(bid: str, spec: dict) -> None:
    """Render every variant for a sample person; ``InvalidField("content", "... line N ...")`` (or
    ``subject``, ``preheader``) when one cannot be rendered."""
    for part, block, owner in (("text", "subject", "subject"), ("html", "preheader", "preheader")):
        if re.search(_BLOCK.replace("NAME", block), spec["content"][part]) and (owner in spec or block == "subject"):
            raise InvalidField("content", f"content.{part}: remove its {block} block: the spec's {owner} is the "
                                          f"{block}" + (" (or ab.subjects)" if block == "subject" else ""))
    for variant in [v for v in sorted((spec.get("ab") or {}).get("subjects") or {})] or [None]:
        try:
            render(bid, spec, sample_contact(), variant)
        except TemplateError as exc:
            field = "content"
            if "preheader" in exc.problem and "preheader" not in spec:
                raise InvalidField("preheader", "preheader: the line the inbox shows after the subject is "
                                                "required (or a preheader block in content.html)") from None
            if exc.file.endswith(".txt.j2") and exc.line > spec["content"]["text"].count("\n") + 1:
                field = "ab.subjects" if variant else "subject"
            part = "text" if exc.file.endswith(".txt.j2") else "html"
            where = f"content.{part} line {exc.line}" if field == "content" else field
            raise InvalidField(field, f"{where}: {exc.problem}") from None
