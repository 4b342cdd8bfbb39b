"""GET /confirm/{token}: double opt-in confirmation (expiring link)."""
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response

from funnelpilot import consent, http

logger = Logger()
app = http.resolver()

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="robots" content="noindex">
<title>{title}</title><style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}}</style>
</head><body><h1>{title}</h1><p>{text}</p></body></html>"""


@app.get("/confirm/<token>")
def confirm(token: str) -> Response:
    cid = consent.confirm(token)
    logger.info("confirm", extra={"contact_id": cid})
    if cid is None:
        body = _PAGE.format(title="Link not valid", text="This confirmation link is not valid or has expired. "
                                                         "Sign up again to get a new one.")
        return Response(status_code=404, content_type="text/html; charset=utf-8", body=body)
    body = _PAGE.format(title="You are subscribed", text="Thanks for confirming. Our first email is on its way.")
    return Response(status_code=200, content_type="text/html; charset=utf-8",
                    headers={"cache-control": "no-store"}, body=body)


handler = http.lambda_handler(app, logger)
