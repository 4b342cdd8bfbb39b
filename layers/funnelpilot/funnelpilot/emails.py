"""Rendering (jinja2 sandbox, HTML autoescaped) and sending (SES raw MIME) of emails.

Templates live in ``<content>/emails/``: ``<name>.html.j2`` and ``<name>.txt.j2``, both
extending the shared layouts; the subject is the ``subject`` block of the text template.
Contact data is only ever passed as *values*, never compiled as template source, so a
first name of ``{{ 7*7 }}`` stays literal.
"""
import html as html_lib
import re
from dataclasses import dataclass, replace
from email import policy
from email.message import EmailMessage
from email.utils import formataddr, make_msgid, parseaddr
from functools import cache

from jinja2 import FileSystemLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from funnelpilot import aws, tokens
from funnelpilot.config import config
from funnelpilot.errors import RecipientRejected

_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
# An anchor with data-fp="off" never carries the visitor's fp token (funnelpilot.visitors).
_NO_FP = re.compile(r"""\s+data-fp\s*=\s*(["'])off\1""", re.IGNORECASE)
_TEXT_URL = re.compile(r"""https?://[^\s<>"'()\[\]]+""")
_BODY_OPEN = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
_CRLF = re.compile("[\r\n\t\v\f\x1c\x1d\x1e\x85\u2028\u2029]+")  # all str.splitlines() breaks
# SMTP line endings, and long headers (List-Unsubscribe URLs) kept whole instead of RFC 2047-encoded.
_POLICY = policy.SMTP.clone(max_line_length=998)


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


@cache
def _env(html: bool) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=FileSystemLoader(str(config().content_dir / "emails")),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False) if html else False,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def one_line(value: str) -> str:
    """Header-safe: no CR/LF (header injection), collapsed whitespace."""
    return _CRLF.sub(" ", value).strip()


def render(template: str, context: dict) -> Rendered:
    text_tpl = _env(False).get_template(f"{template}.txt.j2")
    html_tpl = _env(True).get_template(f"{template}.html.j2")
    ctx = text_tpl.new_context(dict(context))
    subject = one_line("".join(text_tpl.blocks["subject"](ctx)))
    return Rendered(subject=subject, html=html_tpl.render(context), text=text_tpl.render(context))


def _tracked(url: str) -> bool:
    """http(s) links to other sites. Our own routes (unsubscribe, confirm) are never
    wrapped: a scanner following /c links must not unsubscribe anyone."""
    return url.lower().startswith(("http://", "https://")) and not url.startswith(config().public_url + "/")


def track(rendered: Rendered, *, contact_id: str, message_id: str) -> tuple[Rendered, list[str | dict]]:
    """Rewrite links to ``/c/{token}``, add the open pixel ``/o/{token}`` and the honeypot link.

    Returns the tracked email and its links: the message item stores them, and a click
    token carries only the index into that list, never a URL. A link opted out of the
    identity hand-off (``data-fp="off"``) is stored as ``{"url": ..., "fp": false}``.
    """
    links: list[str | dict] = []

    def click_url(url: str, hand_off: bool = True) -> str:
        entry = url if hand_off else {"url": url, "fp": False}
        if entry not in links:
            links.append(entry)
        return tokens.url("c", "c", contact_id, message_id, str(links.index(entry)))

    def html_link(m: re.Match) -> str:
        url = html_lib.unescape(m.group(3)).strip()
        tag = m.string[m.start():m.string.find(">", m.end()) + 1]
        hand_off = not _NO_FP.search(tag)
        return f"{m.group(1)}{m.group(2)}{click_url(url, hand_off)}{m.group(2)}" if _tracked(url) else m.group(0)

    def text_link(m: re.Match) -> str:
        url = m.group(0).rstrip(".,;:!?")
        return click_url(url) + m.group(0)[len(url):] if _tracked(url) else m.group(0)

    body = _NO_FP.sub("", _HREF.sub(html_link, rendered.html))
    text = _TEXT_URL.sub(text_link, rendered.text)
    honeypot = tokens.url("c", "c", contact_id, message_id, tokens.HONEYPOT)
    trap = (f'<a href="{honeypot}" aria-hidden="true" tabindex="-1" style="display:none;font-size:0;'
            'line-height:0;max-height:0;overflow:hidden;mso-hide:all"></a>')
    pixel = (f'<img src="{tokens.url("o", "o", contact_id, message_id)}" width="1" height="1" alt="" '
             'style="display:block;width:1px;height:1px;border:0">')
    opening = _BODY_OPEN.search(body)
    body = body[:opening.end()] + trap + body[opening.end():] if opening else trap + body
    body = body.replace("</body>", pixel + "</body>", 1) if "</body>" in body else body + pixel
    return replace(rendered, html=body, text=text), links


def build_mime(*, to: str, rendered: Rendered, message_id: str, headers: dict[str, str]) -> bytes:
    cfg = config()
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = formataddr(("", cfg.sender)) if "<" not in cfg.sender else cfg.sender
    msg["To"] = to
    msg["Subject"] = rendered.subject
    msg["Message-ID"] = make_msgid(idstring=message_id, domain=cfg.sender.rsplit("@", 1)[-1].strip(">"))
    msg["X-Funnelpilot-Message-Id"] = message_id
    for name, value in headers.items():
        msg[name] = one_line(value)
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    return msg.as_bytes()


def _ses():
    return aws.client("ses")


def send_raw(to: str, raw: bytes) -> str:
    """Send through SES; returns SES's MessageId. ``RecipientRejected`` when SES refuses this
    message for good (``MessageRejected``, e.g. an unverified recipient in the sandbox); a
    rejection naming our own sender is the stack's configuration, not the message's: raised as is."""
    from botocore.exceptions import ClientError

    kwargs = {"Source": config().sender, "Destinations": [to], "RawMessage": {"Data": raw}}
    if config().ses_configuration_set:
        kwargs["ConfigurationSetName"] = config().ses_configuration_set
    try:
        return _ses().send_raw_email(**kwargs)["MessageId"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        message = error.get("Message") or ""
        if error.get("Code") == "MessageRejected" and parseaddr(config().sender)[1] not in message:
            raise RecipientRejected(message.replace(to, "<recipient>")) from exc
        raise
