"""POST /events: page views, orders and custom events from sites and shops (``x-api-key``).

The key is an SSM parameter (read once, cached for 5 minutes of funnelpilot.clock: ``aws.parameter``).
It is a *write key* that a site's JavaScript carries, not a secret: it keeps out noise, while the event
schema and the ``custom.*`` namespace keep anyone from forging funnelpilot's own events."""
import hmac
import json
import os

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response

from funnelpilot import aws, http, ingest

logger = Logger()
app = http.resolver(cors=http.cors())


@app.post("/events")
def events() -> Response:
    key = app.current_event.headers.get("x-api-key") or ""
    expected = aws.parameter(os.environ["EVENTS_API_KEY_PARAMETER"], max_age=300)
    if not hmac.compare_digest(key.encode(), expected.encode()):
        return http.error(401, "a valid x-api-key header is required", "x-api-key")
    event = ingest.parse(http.fields(app.current_event))
    status, cid = ingest.accept(event)
    logger.info("event", extra={"contact_id": cid, "type": event.type, "status": status})
    return Response(status_code=202, content_type="application/json",
                    body=json.dumps({"status": status, "event_id": event.event_id}))


handler = http.lambda_handler(app, logger)
