"""GET /t.js (the browser snippet) and POST /collect (its page views and custom events).

/collect is public: the Origin must be on the allow-list (CORS_ORIGINS), automated user
agents are dropped, bodies are bounded and schema-checked, the contact token's signature
is verified, and per-IP and per-contact windows limit the rate. Every refusal is a 4xx
JSON ``{"error", "field"}`` and stores nothing; a hit answers 204.
Hot path: no pynamodb, no powertools resolver.
"""
import base64
import binascii
import hashlib
import json
import logging
from pathlib import Path

from funnelpilot import visitors
from funnelpilot.agents import AUTOMATED
from funnelpilot.config import config

logger = logging.getLogger("funnelpilot.site_tracker")
SNIPPET = Path(__file__).with_name("t.js").read_bytes()
ETAG = f'"{hashlib.sha256(SNIPPET).hexdigest()[:20]}"'
SNIPPET_HEADERS = {"content-type": "text/javascript; charset=utf-8", "etag": ETAG,
                   "cache-control": "public, max-age=3600, stale-while-revalidate=86400",
                   "cross-origin-resource-policy": "cross-origin", "x-content-type-options": "nosniff"}


def handler(event: dict, context) -> dict:
    headers = event.get("headers") or {}
    if event.get("routeKey") == "GET /t.js":
        return snippet(headers)
    origin = headers.get("origin", "")
    if origin.lower() not in config().cors_origins:
        return _json(403, "origin is not allowed to send events", "origin", {})
    cors = {"access-control-allow-origin": origin, "vary": "origin"}
    if event["requestContext"]["http"]["method"] == "OPTIONS":
        return {"statusCode": 204, "headers": {**cors, "access-control-allow-methods": "POST",
                                               "access-control-allow-headers": "content-type",
                                               "access-control-max-age": "600"}}
    try:
        return collect(event, cors)
    except visitors.Refused as refused:
        logger.info("collect refused: %s %s", refused.status, refused.field)
        extra = {"retry-after": str(visitors.WINDOW)} if refused.status == 429 else {}
        return _json(refused.status, refused.message, refused.field, {**cors, **extra})


def snippet(headers: dict) -> dict:
    if ETAG in (headers.get("if-none-match") or ""):
        return {"statusCode": 304, "headers": SNIPPET_HEADERS}
    return {"statusCode": 200, "headers": SNIPPET_HEADERS, "body": SNIPPET.decode()}


def collect(event: dict, cors: dict) -> dict:
    request = event["requestContext"]
    agent = request["http"].get("userAgent") or ""
    if not agent or AUTOMATED.search(agent):
        raise visitors.Refused(403, "automated clients are not tracked", "user-agent")
    hit = visitors.parse(_body(event))
    contact_id = visitors.contact_of(hit.token) if hit.token else None
    visitors.record(hit, contact_id=contact_id, ip=request["http"].get("sourceIp", ""),
                    at=request["timeEpoch"] / 1000)
    return {"statusCode": 204, "headers": cors}


def _body(event: dict) -> bytes:
    body = event.get("body") or ""
    if len(body) > visitors.MAX_BODY * 2:  # checked before decoding anything large
        raise visitors.Refused(413, f"body is larger than {visitors.MAX_BODY} bytes", "body")
    if not event.get("isBase64Encoded"):
        return body.encode("utf-8", "surrogatepass")
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error:
        raise visitors.Refused(400, "body is not valid base64", "body") from None


def _json(status: int, message: str, field: str | None, headers: dict) -> dict:
    body = {"error": message} | ({"field": field} if field else {})
    return {"statusCode": status, "headers": {**headers, "content-type": "application/json"},
            "body": json.dumps(body)}
