"""Email templates checked before anything is deployed (``make funnels``), with the sample contacts and
link rules that ``funnelpilot preview`` uses too.

Every template a funnel sends, the confirmation and the sales alert are rendered as the send path
renders them (``funnelpilot.channels.emails``: the same sandboxed environment, undefined variables are errors)
for two sample contacts, one with every field and one with nothing but an address, and every problem
is a ``infra/emails/NAME.html.j2:LINE: ...`` line: a syntax error, an undefined variable, no subject,
an empty part, a link to nowhere (empty, ``#``, relative, a path of the API that is no public route,
a path of the site that ``infra/site.yaml`` does not declare).
"""
import itertools
import os
import re
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

from funnelpilot_local.template import LOCAL_VALUES

# Templates sent outside funnels, with the context their sender gives them (``context``).
OWN = ("confirm", "sales-alert")
SAMPLE_ID, SAMPLE_MESSAGE = "c_sample", "m_sample"
SAMPLE_KEY = b"sample key: links in a check or a preview are for reading"
SAMPLE_ACTIVITY = [{"at": "2026-03-02T10:00:00Z", "kind": "page.viewed", "summary": {"path": "/pricing"}},
                   {"at": "2026-03-01T09:30:00Z", "kind": "email.clicked", "summary": {"template": "welcome-1"}}]
_TEXT_URL = re.compile(r"""https?://[^\s<>"'()\[\]]+""")
_MARKS = re.compile("[\x02\x03]")  # funnelpilot.channels.emails' data marks, in a traced render's raw output


@contextmanager
def content(root: Path, env: dict | None = None, key: bytes = SAMPLE_KEY):
    """The layer on ``root``'s content while the block runs: ``CONTENT_DIR`` (and ``env``) set, links
    signed with ``key`` (no SSM), and the layer's caches of content and settings emptied on the way
    in and out, so nothing read here outlives the block."""
    from funnelpilot import tokens

    values = {"CONTENT_DIR": str(Path(root) / "infra"), "FROM_NAME": LOCAL_VALUES["FromName"],
              "POSTAL_ADDRESS": LOCAL_VALUES["PostalAddress"], **(env or {})}  # the sender's, as locally
    saved = {k: os.environ.get(k) for k in values}
    signing = tokens._key  # the one function that reads the signing key
    os.environ.update(values)
    tokens._key = lambda: key
    _clear_caches()
    try:
        yield
    finally:
        tokens._key = signing
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _clear_caches()


def _clear_caches() -> None:
    from funnelpilot import consent, funnel_spec, visitors
    from funnelpilot.channels import emails
    from funnelpilot.audience import fields
    from funnelpilot.channels import alerts
    from funnelpilot.config import config

    for cached in (config, emails.environment, fields._doc, consent._lists, alerts.settings, funnel_spec.load, visitors.site):
        getattr(cached, "cache_clear", lambda: None)()  # (a test may have replaced one with a plain function)


def sample_contacts() -> list:
    """Ada, with a first name, a lead magnet and every declared field; and a person with an address only."""
    from funnelpilot.audience import fields
    from funnelpilot.models import PROFILE, Contact

    examples = {"number": 12, "boolean": True, "date": "2026-01-15"}
    values = {name: spec["allowed"][0] if spec["type"] == "choice" else examples.get(spec["type"], f"Sample {name}")
              for name, spec in fields.declared().items()}
    full = Contact(SAMPLE_ID, PROFILE, email="ada@example.com", first_name="Ada", lead_magnets={"starter-guide"},
                   properties=values, tags={"sample"}, segments={"sample"}, orders=2, spend=120, lists={"newsletter"})
    return [full, Contact(SAMPLE_ID, PROFILE, email="sam@example.com")]


def context(template: str, contact, message_id: str = SAMPLE_MESSAGE, lead_magnet: str | None = None) -> dict:
    """What ``template`` is rendered with for ``contact``: by its sender's own function, over what
    ``emails.render`` adds (the sender's: site_url, public_url, from_name, postal_address)."""
    from funnelpilot import consent, sequence
    from funnelpilot.channels import emails
    from funnelpilot.channels import alerts

    if template == "confirm":
        own = consent.confirmation_context(contact, consent.declared_lists()[0], lead_magnet)
    elif template == "sales-alert":
        own = alerts.alert_context(contact, "viewed /pricing", SAMPLE_ACTIVITY)
    else:
        own = sequence.template_context(contact, message_id, lead_magnet)
    return {**emails.sender_context(), **own}


def used_templates(funnels: dict) -> list[str]:
    """Every template a funnel sends, then the ones sent outside funnels."""
    return sorted({t for funnel in funnels.values() for t in funnel.sends()}) + list(OWN)


def check(root: Path, funnels: dict) -> tuple[dict[str, str], list[str]]:
    """Render every template in use for each sample contact: (the subject of each for Ada, every
    problem as ``infra/emails/FILE:LINE: problem``, each once)."""
    from funnelpilot.errors import TemplateError

    directory = Path(root) / "infra" / "emails"
    where = directory.relative_to(root) if directory.is_relative_to(root) else directory
    subjects, problems = {}, {}
    with content(root):
        rules = LinkRules(root)
        for template in used_templates(funnels):
            for contact in sample_contacts():
                ctx = context(template, contact)
                try:
                    rendered, spans = traced(directory, template, ctx)
                except TemplateError as exc:
                    problems.setdefault(f"{where}/{exc.file}:{exc.line}: {exc.problem}", None)
                    continue
                subjects.setdefault(template, rendered.subject)
                for file, line, problem in rules.problems(template, rendered, spans, ctx):
                    problems.setdefault(f"{where}/{file}:{line}: {problem}", None)
    return subjects, list(problems)


def traced(directory: Path, template: str, ctx: dict, stored: tuple | None = None):
    """``emails.render`` of ``template`` (``stored``: its two files as text over ``directory``, a
    broadcast's content), and for its html and text parts the spans of output each template line
    wrote: ``[(start offset, file, line)]``, to name the line a link was written on."""
    from funnelpilot.channels import emails

    rendered = emails.render(template, ctx, directory=str(directory), sources=stored)
    spans = {}
    for part, tpl in zip(("text", "html"), emails.templates(template, str(directory), stored)):
        env, out, at = tpl.environment, [], 0
        names, lines, starts = {}, {}, {}  # per template file and line: the same answers, looked up once
        chunks = tpl.root_render_func(tpl.new_context(dict(ctx)))
        for chunk in chunks:
            inner = chunks
            while getattr(inner, "gi_yieldfrom", None) is not None:
                inner = inner.gi_yieldfrom
            frame = getattr(inner, "gi_frame", None)
            text = _MARKS.sub("", chunk)
            if frame is not None and frame.f_code.co_filename.endswith(".j2"):
                filename = frame.f_code.co_filename
                name = names.get(filename)
                if name is None:
                    path = Path(filename)  # a stored template's is its name
                    name = names[filename] = (path.relative_to(directory) if path.is_absolute() else path).as_posix()
                    source = env.loader.get_source(env, name)[0]
                    starts[name] = (source, [0, *itertools.accumulate(len(s) for s in source.splitlines(keepends=True))])
                line = lines.get((name, frame.f_lineno))
                if line is None:
                    line = lines[name, frame.f_lineno] = env.get_template(name).get_corresponding_lineno(frame.f_lineno)
                out.append((at, name, _written_at(*starts[name], line, text)))
            at += len(text)
        spans[part] = out if at == len(getattr(rendered, part)) else []  # unmapped: line 1
    return rendered, spans


def _written_at(source: str, starts: list[int], line: int, text: str) -> int:
    """The line template text starts on: jinja2 maps an output to the line of the statement before
    it (``{% block body %}``), and trim_blocks drops the line break in between (``starts``: the
    offset of each line of ``source``, and its length last)."""
    start = starts[min(line - 1, len(starts) - 1)]
    found = source.find(text, start) if len(text) > 1 else -1
    if found >= 0 and source.count("\n", start, found) == 1:
        return line + 1
    return line


def line_at(spans: list, text: str, offset: int, fallback: str) -> tuple[str, int]:
    """The template file and line that wrote ``text[offset]``: the span's line plus the line breaks
    of the span's output before it (a span of template text is copied as written)."""
    start, file, line = next(((s, f, n) for s, f, n in reversed(spans) if s <= offset), (0, fallback, 1))
    return file, line + text.count("\n", start, offset)


class _Tags(HTMLParser):
    """``<a href>`` and ``<img>`` of an HTML part, with their offsets."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.starts = [0] + [m.end() for m in re.finditer("\n", html)]
        self.links, self.images = [], []  # (offset, attributes)
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        line, col = self.getpos()
        at = self.starts[line - 1] + col
        if tag == "a" and any(k == "href" for k, _ in attrs):
            self.links.append((at, dict(attrs)))
        elif tag == "img":
            self.images.append((at, dict(attrs)))


def tags(html: str) -> _Tags:
    return _Tags(html)


class LinkRules:
    """Where a link in an email may go: anywhere on the web, but on our own site only to a page
    ``infra/site.yaml`` declares, and on the API (``PublicUrl``) only to a public GET route."""

    def __init__(self, root: Path):
        from funnelpilot_local import openapi

        self.routes = [re.compile("^" + re.sub(r"\\{\w+\\}", "[^/]+", re.escape(r["path"])) + "$")
                       for r in openapi.routes(root) if r["method"] == "GET" and not r["auth"]]

    def nowhere(self, url: str, ctx: dict) -> str | None:
        """Why ``url`` (an href, or a URL of the text part) goes nowhere, else None."""
        from funnelpilot import visitors

        url = url.strip()
        if not url:
            return "empty link (href=\"\")"
        if url.startswith("#"):
            return f"link to nowhere ({url}): an email has no anchors to jump to"
        parts = urlsplit(url)
        if parts.scheme.lower() in ("mailto", "tel"):
            return None
        if not parts.scheme:
            return f"relative link {url!r}: an email has no page it is relative to (write {{{{ site_url }}}}/...)"
        if parts.scheme.lower() not in ("http", "https"):
            return f"link {url!r}: an email links with http(s), mailto: or tel:"
        for base, what in ((ctx.get("public_url"), "api"), (ctx.get("site_url"), "site")):
            if not base or not (url == base or url.startswith(base.rstrip("/") + "/")):
                continue
            path = "/" + urlsplit(url).path[len(urlsplit(base).path.rstrip("/")):].lstrip("/")
            if what == "api" and not any(r.match(path) for r in self.routes):
                return f"link {url}: {path} is no public route of the HTTP API (template.yaml)"
            if what == "site" and visitors.page_row(path) == visitors.OTHER:
                return f"link {url}: {path} is not a page of the site (add it to infra/site.yaml's pages)"
            return None
        return None

    def problems(self, template: str, rendered, spans: dict, ctx: dict) -> list[tuple[str, int, str]]:
        """(file, line, problem) of every empty part and every link to nowhere of a rendered email."""
        found = []

        def at(part: str, text: str, offset: int) -> tuple[str, int]:
            return line_at(spans.get(part) or [], text, offset, f"{template}.{'txt' if part == 'text' else part}.j2")

        for part, text in (("text", rendered.text), ("html", rendered.html)):
            if not text.strip():
                found.append((*at(part, text, 0), f"the {part} part is empty"))
        for offset, attrs in tags(rendered.html).links:
            if problem := self.nowhere(attrs.get("href") or "", ctx):
                found.append((*at("html", rendered.html, offset), problem))
        for m in _TEXT_URL.finditer(rendered.text):
            if problem := self.nowhere(m.group(0).rstrip(".,;:!?"), ctx):
                found.append((*at("text", rendered.text, m.start()), problem))
        return found
