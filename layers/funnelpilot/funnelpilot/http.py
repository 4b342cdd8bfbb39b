"""Shared pieces of the HTTP handlers: the resolver and Lambda entry point, body
decoding, JSON errors, CORS.

Only the powertools-resolver handlers import this module (it costs what
``aws_lambda_powertools.event_handler`` costs anyway); the hot pixel, click and site
tracker handlers answer raw API Gateway events without it.
"""
import base64
import binascii
import json
from collections.abc import Callable
from urllib.parse import parse_qsl

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, CORSConfig, Response

from funnelpilot.config import config
from funnelpilot.errors import InvalidField, RateLimited

MAX_BODY = 16 * 1024


def error(status: int, message: str, field: str | None = None) -> Response:
    body = {"error": message} | ({"field": field} if field else {})
    return Response(status_code=status, content_type="application/json", body=json.dumps(body))


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="robots" content="noindex">
<title>{title}</title><style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}}
button{{padding:.6rem 1.2rem;font-size:1rem}}</style></head><body><h1>{title}</h1>{body}</body></html>"""


def page(status: int, title: str, body_html: str) -> Response:
    """A small HTML page for people (unsubscribe, confirmation): not indexed, not cached.
    ``title`` and ``body_html`` are our own text (configuration values escaped), never request data."""
    return Response(status_code=status, content_type="text/html; charset=utf-8",
                    headers={"cache-control": "no-store"}, body=_PAGE.format(title=title, body=body_html))


def wants_html(event) -> bool:
    """A browser's own form POST (no JavaScript: ``Accept: text/html,…``) rather than ``fetch`` or an
    API client, which ask for JSON (or anything, ``*/*``)."""
    accept = (event.headers.get("accept") or "").lower()
    return "text/html" in accept and "application/json" not in accept


def _invalid_field(exc: InvalidField) -> Response:
    return error(400, exc.message, exc.field)


def _rate_limited(exc: RateLimited) -> Response:
    body = {"error": exc.message, "field": exc.field, "retry_after": exc.retry_after}
    return Response(status_code=429, content_type="application/json", headers={"retry-after": str(exc.retry_after)},
                    body=json.dumps(body))


def resolver(**kwargs) -> APIGatewayHttpResolver:
    """An HTTP API (v2) resolver that answers ``InvalidField`` with a 400
    ``{"error", "field"}`` JSON body and ``RateLimited`` with a 429 (and ``Retry-After``).
    ``kwargs`` go to ``APIGatewayHttpResolver`` (``cors=http.cors()`` for routes that
    browsers call cross-origin)."""
    app = APIGatewayHttpResolver(**kwargs)
    app.exception_handler(InvalidField)(_invalid_field)
    app.exception_handler(RateLimited)(_rate_limited)
    return app


def lambda_handler(app: APIGatewayHttpResolver, logger: Logger) -> Callable[[dict, object], dict]:
    """The function's entry point: ``handler = http.lambda_handler(app, logger)``."""

    @logger.inject_lambda_context
    def handler(event: dict, context) -> dict:
        return app.resolve(event, context)

    return handler


def cors() -> CORSConfig | None:
    origins = config().cors_origins
    if not origins:
        return None
    return CORSConfig(allow_origin=origins[0], extra_origins=list(origins[1:]), max_age=600)


def fields(event, limit: int = MAX_BODY) -> dict:
    """The request's fields from a JSON or form-encoded body (HTTP API v2 event) of at most ``limit`` bytes."""
    body = event.body or ""
    try:
        data = base64.b64decode(body, validate=True) if event.is_base64_encoded else body.encode("utf-8", "surrogatepass")
    except binascii.Error:
        raise InvalidField("body", "body is not valid base64") from None
    if len(data) > limit:
        raise InvalidField("body", f"body is larger than {limit} bytes")
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidField("body", "body is not valid UTF-8") from None
    content_type = (event.headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            data = json.loads(raw or "{}")
        except ValueError:
            raise InvalidField("body", "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise InvalidField("body", "body must be a JSON object")
        return data
    if content_type in ("application/x-www-form-urlencoded", ""):
        return dict(parse_qsl(raw, keep_blank_values=True))
    raise InvalidField("content-type", "send application/json or application/x-www-form-urlencoded")
