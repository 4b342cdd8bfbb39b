"""The raw MIME message and the one function every header value goes through.

Standard library only: tests/test_mime_versions.py builds messages with this module under
each Python the project supports, since the header parser and folder differ between them
(on 3.11 and 3.12 an RFC 2047 encoded word in a value is decoded when the header is
folded, so ``=?utf-8?q?Ann=0D=0ABcc:_x@evil.test?=`` became a raw ``Bcc:`` line).
"""
import email
import functools
import re
from email import policy
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import formataddr, formatdate, make_msgid

# every str.splitlines() break and every other C0/C1 control character
_BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_SPACES = re.compile(r"\s{2,}")
# SMTP line endings, and long headers (List-Unsubscribe URLs) kept whole instead of RFC 2047-encoded.
POLICY = policy.SMTP.clone(max_line_length=998)


class _Building(EmailPolicy):
    """``POLICY`` for the messages ``build`` makes, remembering the last header objects it parsed and the
    lines it folded them into: a broadcast's or a funnel's emails repeat most headers (From, Reply-To, the
    SES tags, List-Id, each part's Content-Type), and parsing and folding them again was 40% of building a
    message. Both are functions of the header's name and text (and of the object's class) alone."""

    def header_store_parse(self, name, value):
        if type(value) is str:
            return _stored(name, value)
        return super().header_store_parse(name, value)

    def fold_binary(self, name, value):
        if isinstance(value, str) and type(value) is not str:  # a header object
            return _folded(name, type(value), value)
        return super().fold_binary(name, value)


_BUILDING = _Building(header_factory=POLICY.header_factory, **vars(POLICY))  # POLICY's settings and header classes


@functools.lru_cache(maxsize=256)
def _stored(name: str, value: str) -> tuple:
    return EmailPolicy.header_store_parse(_BUILDING, name, value)


@functools.lru_cache(maxsize=256)
def _folded(name: str, kind: type, value) -> bytes:
    return EmailPolicy.fold_binary(_BUILDING, name, value)


def header_text(value: str) -> str:
    """A header value that can only ever be one header's text: line breaks and control
    characters become spaces, and ``=?`` (the start of an RFC 2047 encoded word, which a
    parser would decode) becomes ``= ?``. Non-ASCII text is left for the library to encode."""
    return _SPACES.sub(" ", _BREAKS.sub(" ", value)).replace("=?", "= ?").strip()


def build(*, sender: str, to: str, subject: str, message_id: str, headers: dict[str, str], text: str,
          html: str, from_name: str = "", date: float | None = None) -> bytes:
    """The message as bytes: From (``"from_name" <sender>``), To, Subject, Date, Message-ID,
    X-Funnelpilot-Message-Id and ``headers``, every value through ``header_text``; a text and an
    HTML part. SES replaces Date and Message-ID with its own; they make the local .eml complete."""
    msg = EmailMessage(policy=_BUILDING)
    msg["From"] = formataddr((header_text(from_name), sender)) if "<" not in sender else header_text(sender)
    msg["To"] = header_text(to)
    msg["Subject"] = header_text(subject)
    msg["Date"] = formatdate(date, usegmt=True)
    msg["Message-ID"] = make_msgid(idstring=header_text(message_id), domain=sender.rsplit("@", 1)[-1].strip(">"))
    msg["X-Funnelpilot-Message-Id"] = header_text(message_id)
    for name, value in headers.items():
        msg[name] = header_text(value)
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def as_test(raw: bytes, to: str, prefix: str = "[TEST]") -> bytes:
    """A test send of a message: addressed to ``to``, ``prefix`` before its subject, and marked
    ``X-Funnelpilot-Test`` (SES feedback ignores its events: nothing is counted, nobody suppressed)."""
    msg = email.message_from_bytes(raw, policy=POLICY)
    msg.replace_header("To", header_text(to))
    msg.replace_header("Subject", header_text(f"{prefix} {msg['Subject']}"))
    msg["X-Funnelpilot-Test"] = "true"
    return msg.as_bytes()
