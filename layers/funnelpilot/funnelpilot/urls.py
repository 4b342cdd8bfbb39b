"""URLs from requests read the way a browser reads them (WHATWG URL, via ada-url).

Python's ``urlsplit`` and browsers disagree (``https://evil.com\\@example.com`` is evil.com to
a browser, example.com to ``urlsplit``), so an allow-list must compare what the browser will
parse, and anything a browser might read differently from us is refused outright: only
printable ASCII without a backslash (no tabs, newlines, spaces, controls, zero-width or
fullwidth characters, nothing that NFKC-normalises into URL syntax, no IDN spelled in
Unicode), an http(s) scheme, no user info, and the host (with its port, when not the
default) on the allow-list, and Python's ``urlsplit`` reading the same scheme, host and
port. The caller then sends the parser's serialisation, never the raw text, so the Location
header is the URL that was checked.
"""
import re
from urllib.parse import urlsplit

from funnelpilot.errors import InvalidField

_PLAIN = re.compile(r"^[!-\[\]-~]+$")  # printable ASCII, no space, no backslash


def allowed_redirect(raw: str, hosts: tuple[str, ...], field: str = "redirect") -> str:
    """The URL to put in a Location header for ``raw``, or ``InvalidField(field)``."""
    from ada_url import URL  # only a request with a redirect pays for loading the parser

    refused = InvalidField(field, f"{field} must be an http(s) URL on an allowed host")
    if not _PLAIN.match(raw):
        raise refused
    try:
        url = URL(raw)
    except ValueError:
        raise refused from None
    allowed = {h.strip().lower() for h in hosts if h.strip()}
    if url.protocol not in ("http:", "https:") or url.username or url.password or url.host not in allowed:
        raise refused
    # Python's reader must see the same scheme, host and port in the text (so no percent-encoded
    # or numeric-shorthand host, no "https:example.com"): two readers that disagree mean ambiguity
    default = {"http:": 80, "https:": 443}[url.protocol]
    try:
        parts = urlsplit(raw)
        agree = (parts.scheme.lower() + ":", parts.hostname, parts.port or default) == (
            url.protocol, url.hostname, int(url.port or default))
    except ValueError:
        agree = False
    if not agree:
        raise refused
    return url.href
