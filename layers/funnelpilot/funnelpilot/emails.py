"""Rendering (jinja2 sandbox, HTML autoescaped) and sending (SES raw MIME) of emails.

Templates live in ``<content>/emails/``: ``<name>.html.j2`` and ``<name>.txt.j2``, both
extending the shared layouts; the subject is the ``subject`` block of the text template.
Contact data is only ever passed as *values*, never compiled as template source, so a
first name of ``{{ 7*7 }}`` stays literal.
"""
import re
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from functools import cache

import boto3
from jinja2 import FileSystemLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from funnelpilot.config import config

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


@cache
def _ses():
    return boto3.client("ses", region_name=config().region)


def send_raw(to: str, raw: bytes) -> str:
    """Send through SES; returns SES's MessageId."""
    kwargs = {"Source": config().sender, "Destinations": [to], "RawMessage": {"Data": raw}}
    if config().ses_configuration_set:
        kwargs["ConfigurationSetName"] = config().ses_configuration_set
    return _ses().send_raw_email(**kwargs)["MessageId"]
