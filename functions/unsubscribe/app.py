"""GET /u/{token}: the preference centre, a plain HTML form (no JavaScript): a checkbox per list the
person joined, "Save my choices" and "Unsubscribe from everything". POST /u/{token}: that form
(or, for someone sunset, its "Send me your emails again", consent.reactivate), or a mail client's RFC 8058 one-click (``List-Unsubscribe=One-Click``), which opts out of the list
the email belongs to (of everything for an email of no list). A POST with no choice (the old
page's button) unsubscribes from everything.

A GET never changes anything (link scanners and prefetchers follow GETs); the signed token
is the authority for the POST (funnelpilot.preferences)."""
from html import escape
from urllib.parse import parse_qs

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response

from funnelpilot import consent, http, preferences, tokens

logger = Logger()
app = http.resolver()
NOT_FOUND = ("Link not found", "<p>This unsubscribe link is not valid.</p>")


def _fields(token: str) -> list[str] | None:
    return tokens.verify("u", token, 2)


def _choices(cid: str) -> str:
    """The form's checkboxes: every list the person joined, ticked unless opted out of; for someone
    sunset (no longer mailed for want of response, funnelpilot.consent) the button that re-subscribes."""
    now = preferences.state(cid)
    if now is not None and now["status"] == "sunset":
        return ("<p>We stopped sending you our emails because you had not opened any for a while.</p>"
                '<p><button type="submit" name="action" value="resubscribe">Send me your emails again</button></p>')
    if now is None or now["status"] not in ("active", "pending"):
        return ""
    boxes = []
    for name in sorted(now["lists"]):
        about = consent.list_settings(name).get("description")
        boxes.append(f'<p><label><input type="checkbox" name="list" value="{escape(name)}"'
                     f'{"" if name in now["opted_out"] else " checked"}> {escape(preferences.title(name))}</label>'
                     + (f"<br><small>{escape(str(about))}</small>" if about else "") + "</p>")
    return ('<fieldset><legend>Keep getting</legend>' + "".join(boxes) + "</fieldset>"
            '<p><button type="submit" name="action" value="save">Save my choices</button></p>')


@app.get("/u/<token>")
def page(token: str) -> Response:
    fields = _fields(token)
    if fields is None:
        return http.page(404, *NOT_FOUND)
    # no action attribute: the form posts back to this very URL, whatever the API's base path
    return http.page(200, "Your email preferences", '<form method="post">' + _choices(fields[0])
                     + '<p><button type="submit" name="action" value="all">Unsubscribe from everything</button></p>'
                       "</form>")


@app.post("/u/<token>")
def unsubscribe(token: str) -> Response:
    fields = _fields(token)
    if fields is None:
        return http.page(404, *NOT_FOUND)
    cid, message_id = fields
    body = app.current_event.decoded_body or ""
    form = parse_qs(body, keep_blank_values=True)
    if "One-Click" in body:  # RFC 8058 clients post List-Unsubscribe=One-Click, form-encoded or multipart
        source, list_name = "one_click", preferences.message_list(cid, message_id)
        outcome = (preferences.choose(cid, drop={list_name}, source=source, message_id=message_id) if list_name
                   else "unsubscribed" if consent.unsubscribe(cid, message_id, source) else "inactive")
    elif form.get("action") == ["resubscribe"]:  # fresh consent from the owner of the signed link
        source = "preference_centre"
        outcome = "updated" if consent.reactivate(cid, source) else "unchanged"
    elif form.get("action") == ["save"]:
        source = "preference_centre"
        outcome = preferences.choose(cid, keep=set(form.get("list", [])), source=source, message_id=message_id)
    else:
        source = "unsubscribe_page"
        outcome = "unsubscribed" if consent.unsubscribe(cid, message_id, source) else "inactive"
    logger.info("unsubscribe", extra={"contact_id": cid, "outcome": outcome, "source": source})
    if outcome in ("updated", "unchanged"):
        kept = _choices(cid)
        return http.page(200, "Your choices are saved", "<p>You will only get the emails of the lists ticked below."
                         "</p>" + (f'<form method="post">{kept}</form>' if kept else ""))
    return http.page(200, "You are unsubscribed", "<p>You will not receive any more emails from us.</p>")


handler = http.lambda_handler(app, logger)
