"""POST /signup: landing-page forms (JSON or form-encoded) → contact + contact.subscribed or contact.pending.
A form posted by the browser itself (no JavaScript, ``Accept: text/html``) gets HTML pages; fetch gets JSON."""
import html
import json

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response

from funnelpilot import contacts, http, tokens, visitors
from funnelpilot.config import config
from funnelpilot.consent import list_settings
from funnelpilot.errors import InvalidField, RateLimited

logger = Logger()
app = http.resolver(cors=http.cors())


@app.post("/signup")
def signup() -> Response:
    event = app.current_event
    try:
        signup = contacts.parse_signup(http.fields(event))
        if signup.is_bot:
            logger.info("honeypot filled; nothing stored")
            return _accepted(event, tokens.contact_id(signup.email), signup.list_name)
        ip = event.request_context.http.source_ip
        cid = contacts.subscribe(signup, ip=ip, at=event.request_context.time_epoch / 1000,  # 429 over a limit
                                 page=event.headers.get("referer") or event.headers.get("origin"),
                                 user_agent=event.request_context.http.user_agent)
    except (InvalidField, RateLimited) as exc:
        if not http.wants_html(event):
            raise  # the resolver's JSON 400 / 429
        return _problem_page(exc)
    # The same answer whatever the contact's status: it tells no one who is subscribed.
    logger.info("signup", extra={"contact_id": cid, "list": signup.list_name})
    if signup.redirect:
        return Response(status_code=303, headers={"Location": signup.redirect}, body="")
    return _accepted(event, cid, signup.list_name)


def _accepted(event, cid: str, list_name: str) -> Response:
    if http.wants_html(event):
        confirm = ("<p>One more step: open the email we have just sent you and click its link to confirm your "
                   "address. Nothing else arrives until you do.</p>" if list_settings(list_name)["double_opt_in"]
                   else "<p>Your first email is on its way.</p>")
        return http.page(202, "Thank you!", f"{confirm}<p><a href=\"{html.escape(config().site_url)}/\">Back to the "
                                            "site</a></p>")
    # fp: the site tracker's contact token, for funnelpilot.identify() on the landing page.
    body = {"contact_id": cid, "fp": visitors.token(cid)}
    return Response(status_code=202, content_type="application/json", body=json.dumps(body))


def _problem_page(exc: InvalidField | RateLimited) -> Response:
    back = "Please try again in a little while." if isinstance(exc, RateLimited) else \
        "Please go back, correct the form and send it again."
    resp = http.page(429 if isinstance(exc, RateLimited) else 400, "We could not sign you up",
                     f'<p data-field="{html.escape(exc.field)}">{html.escape(exc.message)}</p><p>{back}</p>')
    if isinstance(exc, RateLimited):
        resp.headers["retry-after"] = str(exc.retry_after)
    return resp


handler = http.lambda_handler(app, logger)
