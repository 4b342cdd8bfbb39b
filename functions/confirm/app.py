"""GET /confirm/{token}: double opt-in confirmation (expiring link)."""
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response

from funnelpilot import consent, http

logger = Logger()
app = http.resolver()


@app.get("/confirm/<token>")
def confirm(token: str) -> Response:
    request = app.current_event.request_context.http
    cid = consent.confirm(token, ip=request.source_ip, user_agent=request.user_agent)
    logger.info("confirm", extra={"contact_id": cid})
    if cid is None:
        return http.page(404, "Link not valid", "<p>This confirmation link is not valid or has expired. "
                                                  "Sign up again to get a new one.</p>")
    return http.page(200, "You are subscribed", "<p>Thanks for confirming. Our first email is on its way.</p>")


handler = http.lambda_handler(app, logger)
