"""GET /u/{token}: a page with a confirm button. POST /u/{token}: unsubscribe, from that
button or from a mail client's RFC 8058 one-click (``List-Unsubscribe=One-Click``).

A GET never unsubscribes (link scanners and prefetchers follow GETs); the signed token
is the authority for the POST, so its body is not needed."""
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response

from funnelpilot import consent, http, tokens

logger = Logger()
app = http.resolver()


def _fields(token: str) -> list[str] | None:
    return tokens.verify("u", token, 2)


@app.get("/u/<token>")
def page(token: str) -> Response:
    if _fields(token) is None:
        return http.page(404, "Link not found", "<p>This unsubscribe link is not valid.</p>")
    # no action attribute: the form posts back to this very URL, whatever the API's base path
    return http.page(200, "Unsubscribe", '<p>Stop receiving our emails?</p><form method="post">'
                                          '<button type="submit">Unsubscribe</button></form>')


@app.post("/u/<token>")
def unsubscribe(token: str) -> Response:
    fields = _fields(token)
    if fields is None:
        return http.page(404, "Link not found", "<p>This unsubscribe link is not valid.</p>")
    cid, message_id = fields
    body = app.current_event.decoded_body or ""
    # RFC 8058 clients post List-Unsubscribe=One-Click, form-encoded or multipart
    source = "one_click" if "One-Click" in body else "unsubscribe_page"
    changed = consent.unsubscribe(cid, message_id, source)
    logger.info("unsubscribe", extra={"contact_id": cid, "changed": changed, "source": source})
    return http.page(200, "You are unsubscribed", "<p>You will not receive any more emails from us.</p>")


handler = http.lambda_handler(app, logger)
