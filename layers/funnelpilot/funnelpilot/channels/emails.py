"""Rendering (jinja2 sandbox, HTML autoescaped) and sending (SES raw MIME) of emails.

Templates live in ``<content>/emails/``: ``<name>.html.j2`` and ``<name>.txt.j2``, both
extending the shared layouts; the subject is the ``subject`` block of the text template.
A funnel's send renders the content version its state machine names (``version``): the copy
of the template and of everything it extends or includes that the compiler keeps in
``<content>/emails/versions/<name>@<version>/`` (README "Changing a live funnel").
A template that cannot be rendered raises ``TemplateError`` naming the file and line (``make
funnels`` renders every template in use the same way before anything is deployed).
Contact data is only ever passed as *values*, never compiled as template source, so a
first name of ``{{ 7*7 }}`` stays literal; and it is never a tracked link: every ``{{ }}``
output is rendered between data marks, so ``track`` wraps only links whose scheme and host
the template wrote (literally, or with one of the URLs in ``OUR_URLS``).
"""
import html as html_lib
import re
import traceback
from dataclasses import dataclass, field, replace
from email.utils import parseaddr
from functools import cache, lru_cache
from pathlib import Path

from jinja2 import ChoiceLoader, FileSystemLoader, FunctionLoader, StrictUndefined, TemplateNotFound, TemplateSyntaxError, select_autoescape
from jinja2 import TemplateError as JinjaError
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from funnelpilot import aws, clock, tokens
from funnelpilot.channels import mime
from funnelpilot.config import config
from funnelpilot.errors import RecipientRejected, TemplateError
from funnelpilot.steering import utm

_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
# An anchor with data-fp="off" never carries the visitor's fp token (funnelpilot.visitors).
_NO_FP = re.compile(r"""\s+data-fp\s*=\s*(["'])off\1""", re.IGNORECASE)
_TEXT_URL = re.compile(r"""https?://[^\s<>"'()\[\]]+""")
_BODY_OPEN = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
# Context values funnelpilot builds from its configuration: a template may link with them.
OUR_URLS = frozenset({"site_url", "public_url", "unsubscribe_url", "confirm_url"})
_DATA, _END = "\x02", "\x03"  # around every other {{ }} output while rendering (removed from data first)
_MARKS = re.compile("[\x02\x03]")
# a link the template wrote: its scheme, host and the path's first character come before any data
_AUTHORED = re.compile(r"^https?://[^\x02\x03/?#]+[/?#]|^https?://[^\x02\x03]+$", re.IGNORECASE)


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str
    # html and text with contact data between data marks, for track(); never sent
    marked: tuple[str, str] | None = field(default=None, repr=False, compare=False)


class _Ours(str):
    """A context value from ``OUR_URLS``: rendered without data marks."""


def _mark(value):
    """jinja2's ``finalize``: every ``{{ }}`` output but our URLs goes between data marks."""
    if isinstance(value, _Ours):
        return value
    text = _MARKS.sub("", value if isinstance(value, str) else str(value))
    return Markup(f"{_DATA}{text}{_END}") if isinstance(value, Markup) else f"{_DATA}{text}{_END}"


VERSIONS = "versions"  # <content>/<emails|sms>/versions/<name>@<version>/: the compiler's copies


def template_dir(template: str, version: str | None = None, folder: str = "emails") -> str:
    """Where a template's files are (an email's, or a text's: ``folder`` sms): the copy of its
    ``version`` (a funnel's send), or the live ones."""
    live = config().content_dir / folder
    return str(live / VERSIONS / f"{template}@{version}" if version else live)


@cache
def environment(directory: str, html: bool) -> SandboxedEnvironment:
    """The one environment templates render in: the send path's, and that of the compile-time
    check and preview (funnelpilot_local) on a checkout's ``infra/emails``."""
    return SandboxedEnvironment(
        loader=FileSystemLoader(directory),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False) if html else False,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_mark,
    )


def _unmark(text: str) -> str:
    return _MARKS.sub("", text)


def sender_context() -> dict:
    """What every template may use about the sender, from the stack's parameters: ``from_name``,
    ``postal_address`` (required: every marketing footer shows it), ``site_url``, ``public_url``."""
    cfg = config()
    if not cfg.postal_address:
        raise ValueError("POSTAL_ADDRESS is empty: every marketing email shows the sender's postal address "
                         "(template.yaml parameter PostalAddress)")
    return {"from_name": cfg.from_name, "postal_address": cfg.postal_address, "site_url": cfg.site_url,
            "public_url": cfg.public_url}


@lru_cache(maxsize=32)
def _stored(directory: str, html: bool, sources: tuple[tuple[str, str], ...]) -> SandboxedEnvironment:
    """``environment`` with templates kept as text (``sources``: file name -> source, a broadcast's
    content stored in its item) over the files of ``directory``, which they extend."""
    stored = dict(sources)
    base = environment(directory, html)
    return base.overlay(loader=ChoiceLoader([FunctionLoader(lambda n: (stored[n], n, lambda: True) if n in stored
                                                            else None), base.loader]))


def templates(template: str, directory: str, sources: tuple[tuple[str, str], ...] | None = None) -> tuple:
    """The (text, HTML) jinja2 templates of an email (from ``sources`` when given: see ``_stored``);
    ``TemplateError`` when one is missing or does not parse."""
    try:
        return tuple((_stored(directory, part == "html", sources) if sources else environment(directory, part == "html")
                      ).get_template(f"{template}.{part}.j2") for part in ("txt", "html"))
    except JinjaError as exc:
        raise template_error(exc, template, directory) from exc


def render(template: str, context: dict, version: str | None = None, *, directory: str | None = None,
           sources: tuple[tuple[str, str], ...] | None = None) -> Rendered:
    """Subject, HTML and text of ``template``: of its content ``version``, else the live files (or
    those in ``directory``; ``sources``: its two files as text, see ``_stored``), with ``context``
    over ``sender_context()``."""
    directory = directory or template_dir(template, version)
    text_tpl, html_tpl = templates(template, directory, sources)
    if "subject" not in text_tpl.blocks:
        raise TemplateError(template, f"{template}.txt.j2", 1,
                            "no subject: the text part needs {% block subject %}...{% endblock %}")
    context = {k: _Ours(v) if k in OUR_URLS and isinstance(v, str) else v
               for k, v in {**sender_context(), **context}.items()}
    try:
        subject = mime.header_text(_unmark("".join(text_tpl.blocks["subject"](text_tpl.new_context(dict(context))))))
        html, text = html_tpl.render(context), text_tpl.render(context)
    except Exception as exc:  # noqa: BLE001 - anything a template raises (a filter's TypeError too) is its error
        raise template_error(exc, template, directory) from exc
    if not subject:
        raise TemplateError(template, f"{template}.txt.j2", _block_line(text_tpl, "subject"), "the subject is empty")
    return Rendered(subject=subject, html=_unmark(html), text=_unmark(text), marked=(html, text))


def template_error(exc: Exception, template: str, directory: str) -> TemplateError:
    """A render failure as a ``TemplateError`` naming the template file (under the content's emails:
    ``versions/<name>@<version>/...`` for a version's copy) and the line: a syntax error's own, else
    the innermost template frame of the traceback jinja2 rewrites."""
    def name(path: str) -> str:
        path = Path(directory) / path
        base = next((b for b in (config().content_dir / "emails", Path(directory)) if path.is_relative_to(b)), None)
        return path.relative_to(base).as_posix() if base else path.name

    if isinstance(exc, TemplateSyntaxError):
        return TemplateError(template, name(exc.filename or exc.name or f"{template}.txt.j2"), exc.lineno,
                             exc.message or "syntax error")
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".j2")]
    if isinstance(exc, TemplateNotFound):
        problem = (f"template {exc.name!r} not found" if frames
                   else f"missing: {exc.name} (every email has a text and an HTML part)")
    else:
        problem = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    file, line = (frames[-1].filename, frames[-1].lineno) if frames else (
        exc.name if isinstance(exc, TemplateNotFound) else f"{template}.txt.j2", 1)
    return TemplateError(template, name(file), line, problem)


def _block_line(tpl, block: str) -> int:
    """The line of ``{% block NAME %}`` in a template's source (1 when not found)."""
    source = tpl.environment.loader.get_source(tpl.environment, tpl.name)[0]
    match = re.search(r"{%-?\s*block\s+" + block + r"\b", source)
    return source.count("\n", 0, match.start()) + 1 if match else 1


def _in_data(text: str, at: int) -> bool:
    return text.rfind(_DATA, 0, at) > text.rfind(_END, 0, at)


def _tracked(url: str) -> bool:
    """http(s) links to other sites. Our own routes (unsubscribe, confirm) are never
    wrapped: a scanner following /c links must not unsubscribe anyone."""
    return url.lower().startswith(("http://", "https://")) and not url.startswith(config().public_url + "/")


def track(rendered: Rendered, *, contact_id: str, message_id: str,
          utm_tags: dict[str, str] | None = None) -> tuple[Rendered, list[str | dict]]:
    """Rewrite links to ``/c/{token}``, add the open pixel ``/o/{token}`` and the honeypot link.

    Returns the tracked email and its links: the message item stores them, and a click
    token carries only the index into that list, never a URL. A link opted out of the
    identity hand-off (``data-fp="off"``) is stored as ``{"url": ..., "fp": false}``. Links to
    the site get ``utm_tags`` (funnelpilot.steering.utm) where they have none of their own.
    """
    links: list[str | dict] = []

    def click_url(url: str, hand_off: bool = True) -> str:
        url = utm.tag(url, utm_tags)
        entry = url if hand_off else {"url": url, "fp": False}
        if entry not in links:
            links.append(entry)
        return tokens.url("c", "c", contact_id, message_id, str(links.index(entry)))

    def authored(m: re.Match, marked_url: str) -> bool:
        return not _in_data(m.string, m.start()) and bool(_AUTHORED.match(marked_url))

    def html_link(m: re.Match) -> str:
        marked_url = html_lib.unescape(m.group(3)).strip()
        url = _unmark(marked_url)
        tag = m.string[m.start():m.string.find(">", m.end()) + 1]
        hand_off = not _NO_FP.search(tag)
        if authored(m, marked_url) and _tracked(url):
            return f"{m.group(1)}{m.group(2)}{click_url(url, hand_off)}{m.group(2)}"
        return m.group(0)

    def text_link(m: re.Match) -> str:
        whole = _unmark(m.group(0))
        url = whole.rstrip(".,;:!?")
        return click_url(url) + whole[len(url):] if authored(m, m.group(0)) and _tracked(url) else m.group(0)

    html, text = rendered.marked or (rendered.html, rendered.text)
    body = _unmark(_NO_FP.sub("", _HREF.sub(html_link, html)))
    text = _unmark(_TEXT_URL.sub(text_link, text))
    honeypot = tokens.url("c", "c", contact_id, message_id, tokens.HONEYPOT)
    trap = (f'<a href="{honeypot}" aria-hidden="true" tabindex="-1" style="display:none;font-size:0;'
            'line-height:0;max-height:0;overflow:hidden;mso-hide:all"></a>')
    pixel = (f'<img src="{tokens.url("o", "o", contact_id, message_id)}" width="1" height="1" alt="" '
             'style="display:block;width:1px;height:1px;border:0">')
    opening = _BODY_OPEN.search(body)
    body = body[:opening.end()] + trap + body[opening.end():] if opening else trap + body
    body = body.replace("</body>", pixel + "</body>", 1) if "</body>" in body else body + pixel
    return replace(rendered, html=body, text=text, marked=None), links


def _tag(value: str) -> str:
    """An SES message tag value: ASCII letters, digits, ``_`` and ``-``, at most 256 characters."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", value)[:256] or "_"


def build_mime(*, to: str, rendered: Rendered, message_id: str, headers: dict[str, str], email: str,
               funnel: str | None = None, broadcast: str | None = None) -> bytes:
    """The raw message: From with the ``FromName`` display name, Reply-To (``ReplyTo``, else the
    sender), ``headers``, and ``X-SES-MESSAGE-TAGS`` (SES reads and removes it): ``email`` (the
    template), ``funnel`` (or ``broadcast``), and ``ses:feedback-id-a``/``-b`` (the funnel,
    ``broadcast-<id>`` or ``transactional``, and the email), which SES writes as the first two identifiers of the Feedback-ID header it adds
    for Gmail's feedback loop (one such header per message: we add none of our own)."""
    tags = {"ses:feedback-id-a": funnel or (broadcast and f"broadcast-{broadcast}") or "transactional",
            "ses:feedback-id-b": email, "email": email, **({"funnel": funnel} if funnel else {}),
            **({"broadcast": broadcast} if broadcast else {})}
    extra = {"Reply-To": config().reply_to, "X-SES-MESSAGE-TAGS": ", ".join(f"{k}={_tag(v)}" for k, v in tags.items())}
    return mime.build(sender=config().sender, from_name=config().from_name, to=to, subject=rendered.subject,
                      message_id=message_id, headers={**extra, **headers}, text=rendered.text, html=rendered.html,
                      date=clock.now())


def _ses():
    return aws.client("ses")


def send_raw(to: str, raw: bytes, *, priority: str | None) -> str:
    """Send through SES after the rate gate (funnelpilot.sending.pace) granted a slot to ``priority``
    (None: the caller took its slots already, a broadcast worker's ``pace.acquire(BROADCAST, n)``);
    returns SES's MessageId. ``SendRateExceeded`` when the gate refuses (a funnel's Task retries it);
    ``RecipientRejected`` when SES refuses this message for good (``MessageRejected``, e.g. an
    unverified recipient in the sandbox); a rejection naming our own sender is the stack's
    configuration, not the message's: raised as is."""
    from botocore.exceptions import ClientError

    from funnelpilot.sending import pace

    if priority is not None:
        pace.take(priority)
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
