"""POST /signup: landing-page forms (JSON or form-encoded) → contact + contact.subscribed or contact.pending."""
import json

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response

from funnelpilot import contacts, http, tokens, visitors

logger = Logger()
app = http.resolver(cors=http.cors())


@app.post("/signup")
def signup() -> Response:
    event = app.current_event
    signup = contacts.parse_signup(http.fields(event))
    if signup.is_bot:
        logger.info("honeypot filled; nothing stored")
        return _accepted(tokens.contact_id(signup.email))
    ip = event.request_context.http.source_ip
    cid = contacts.subscribe(signup, ip=ip, at=event.request_context.time_epoch / 1000,  # 429 over a limit
                             page=event.headers.get("referer") or event.headers.get("origin"),
                             user_agent=event.request_context.http.user_agent)
    # The same answer whatever the contact's status: it tells no one who is subscribed.
    logger.info("signup", extra={"contact_id": cid, "list": signup.list_name})
    if signup.redirect:
        return Response(status_code=303, headers={"Location": signup.redirect}, body="")
    return _accepted(cid)


def _accepted(cid: str) -> Response:
    # fp: the site tracker's contact token, for funnelpilot.identify() on the landing page.
    body = {"contact_id": cid, "fp": visitors.token(cid)}
    return Response(status_code=202, content_type="application/json", body=json.dumps(body))


handler = http.lambda_handler(app, logger)
