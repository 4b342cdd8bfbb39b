"""GET/HEAD /c/{token}: 302 to the link stored with the message (never to a URL taken from
the request); a tampered or unknown token gets a 404 page and records nothing.
Hot path: no pynamodb, no powertools resolver."""
from funnelpilot import engagement

_HEADERS = {"content-type": "text/html; charset=utf-8", "cache-control": "no-store",
            "x-robots-tag": "noindex"}
NOT_FOUND = {"statusCode": 404, "headers": _HEADERS,
             "body": "<!doctype html><title>Link not found</title><h1>Link not found</h1>"
                     "<p>This link is not valid. Please check the email it came from.</p>"}
HONEYPOT = {"statusCode": 200, "headers": _HEADERS, "body": "<!doctype html><title>OK</title>"}


def handler(event: dict, context) -> dict:
    request = event["requestContext"]["http"]
    result = engagement.hit("click", (event.get("pathParameters") or {}).get("token", ""),
                            method=request["method"], user_agent=request.get("userAgent", ""),
                            ip=request.get("sourceIp", ""))
    if result.honeypot:
        return HONEYPOT
    if not result.url:
        return NOT_FOUND
    return {"statusCode": 302, "headers": {"location": result.url, "cache-control": "no-store"}, "body": ""}
