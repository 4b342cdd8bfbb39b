"""UTM tags on the links to the business's own site in funnel emails, so its analytics see
email traffic: ``utm_source=funnelpilot&utm_medium=email&utm_campaign=<funnel>&utm_content=<email>``
by default (``utm`` in infra/steering.yaml; a funnel's own ``utm:`` overrides them, ``false``
turns them off). Only links to the site's origins (SiteUrl and the CorsOrigins) get them - a
link to another site is left alone - and ``emails.track`` never passes our own routes
(unsubscribe, preferences, confirmation) nor the tracking links here. A ``utm_*`` the link
already has is kept as the template wrote it; only the missing ones are added.
"""
from urllib.parse import parse_qsl, quote, urlsplit

from funnelpilot import steering
from funnelpilot.config import config


def tags(funnel, template: str) -> dict[str, str] | None:
    """The tags of one funnel email (``funnel``: its funnel_spec.Funnel), or None when off."""
    own = funnel.utm
    base = steering.settings()["utm"]
    if own is False or (base is False and not isinstance(own, dict)):
        return None
    return {**(base or {}), "utm_campaign": funnel.id, "utm_content": template, **(own or {})}


def _site(url: str) -> bool:
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    site = urlsplit(config().site_url)
    return origin == f"{site.scheme}://{site.netloc}".lower() or origin in config().cors_origins


def tag(url: str, utm: dict[str, str] | None) -> str:
    """``url`` with the tags it does not have yet, when it points at the site; else unchanged."""
    if not utm or not _site(url):
        return url
    parts = urlsplit(url)
    present = {k for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    added = [f"{k}={quote(str(v), safe='')}" for k, v in utm.items() if k not in present]
    if not added:
        return url
    return parts._replace(query="&".join([q for q in [parts.query] if q] + added)).geturl()
