"""GET/HEAD /o/{token}: the open pixel. Always a 1x1 transparent GIF, never cached; a bad
or unknown token records nothing. Hot path: no pynamodb, no powertools resolver."""
import logging

from funnelpilot import engagement

logger = logging.getLogger(__name__)
# The smallest transparent GIF (43 bytes), base64 as API Gateway wants binary bodies.
GIF = "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
RESPONSE = {"statusCode": 200, "isBase64Encoded": True, "body": GIF,
            "headers": {"content-type": "image/gif", "cache-control": "no-store, max-age=0",
                        "pragma": "no-cache"}}


def handler(event: dict, context) -> dict:
    request = event["requestContext"]["http"]
    try:
        engagement.hit("open", (event.get("pathParameters") or {}).get("token", ""), method=request["method"],
                       user_agent=request.get("userAgent", ""), ip=request.get("sourceIp", ""))
    except Exception:  # e.g. the message lookup failed: an email client still gets its image
        logger.exception("open not recorded")
    return RESPONSE
