"""Broadcast admin routes (IAM auth on AWS; ``x-api-key`` with the local admin key on the local runtime):
POST /broadcasts (create), GET /broadcasts, GET|PUT /broadcasts/{id}, POST /broadcasts/{id}/preview
(``{email?}``), /test (``{to}``), /schedule (``{now}`` | ``{at}`` | ``{local, date, fallback_zone}``),
/pause, /resume, /cancel, and GET /broadcasts/{id}/report. The domain (``funnelpilot.broadcasts``) does
the work: bad input is its ``InvalidField`` (400 naming the field), an unknown id 404, a change the
broadcast's status does not allow 409."""
import json
import os

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response

from funnelpilot import broadcasts, http
from funnelpilot.config import config
from funnelpilot.errors import RecipientRejected, SendRateExceeded

logger = Logger()
app = http.resolver()
MAX_SPEC = 256 * 1024  # a newsletter's content travels in the spec (the item's limit is 400 KB)


def _json(status: int, body) -> Response:
    return Response(status_code=status, content_type="application/json",
                    headers={"cache-control": "no-store"}, body=json.dumps(body))


class Unknown(Exception):
    """No broadcast has this id: 404."""


@app.exception_handler(Unknown)
def _unknown(exc: Unknown) -> Response:
    return http.error(404, f"no broadcast named {str(exc)[:64]!r}", "id")


@app.exception_handler(broadcasts.NotAllowed)
def _not_allowed(exc: broadcasts.NotAllowed) -> Response:
    return http.error(409, str(exc), "status")


@app.exception_handler(RecipientRejected)
def _rejected(exc: RecipientRejected) -> Response:
    return http.error(400, f"SES refused the address: {exc.message} (in the SES sandbox, verify it first)", "to")


@app.exception_handler(SendRateExceeded)
def _busy(exc: SendRateExceeded) -> Response:
    return Response(status_code=429, content_type="application/json", headers={"retry-after": "1"},
                    body=json.dumps({"error": "the send rate is used up this second: try again", "retry_after": 1}))


def _known(bid: str) -> None:
    if broadcasts.get(bid) is None:
        raise Unknown(bid)


@app.post("/broadcasts")
def create() -> Response:
    made = broadcasts.create(http.fields(app.current_event, limit=MAX_SPEC))
    logger.info("created", extra={"broadcast": made["id"]})
    return _json(201, made)


@app.get("/broadcasts")
def list_all() -> Response:
    return _json(200, {"broadcasts": broadcasts.list_all()})


@app.get("/broadcasts/<bid>")
def show(bid: str) -> Response:
    found = broadcasts.get(bid)
    if found is None:
        raise Unknown(bid)
    return _json(200, found)


@app.put("/broadcasts/<bid>")
def update(bid: str) -> Response:
    _known(bid)
    return _json(200, broadcasts.update(bid, http.fields(app.current_event, limit=MAX_SPEC)))


@app.post("/broadcasts/<bid>/preview")
def preview(bid: str) -> Response:
    _known(bid)
    return _json(200, broadcasts.preview(bid, http.fields(app.current_event).get("email") or None))


@app.post("/broadcasts/<bid>/test")
def send_test(bid: str) -> Response:
    _known(bid)
    to = http.fields(app.current_event).get("to")
    if not to:
        return http.error(400, "the address to send the test to is required", "to")
    return _json(200, broadcasts.send_test(bid, to))


@app.post("/broadcasts/<bid>/schedule")
def schedule(bid: str) -> Response:
    _known(bid)
    done = broadcasts.schedule(bid, http.fields(app.current_event))
    logger.info("scheduled", extra={"broadcast": bid, "status": done.get("status")})
    return _json(200, done)


def _change(bid: str, action) -> Response:
    _known(bid)
    done = action(bid)
    logger.info(action.__name__, extra={"broadcast": bid, "status": done.get("status")})
    return _json(200, done)


@app.post("/broadcasts/<bid>/pause")
def pause(bid: str) -> Response:
    return _change(bid, broadcasts.pause)


@app.post("/broadcasts/<bid>/resume")
def resume(bid: str) -> Response:
    return _change(bid, broadcasts.resume)


@app.post("/broadcasts/<bid>/cancel")
def cancel(bid: str) -> Response:
    return _change(bid, broadcasts.cancel)


@app.get("/broadcasts/<bid>/report")
def report(bid: str) -> Response:
    _known(bid)
    return _json(200, broadcasts.report(bid))


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    # Defence in depth: API Gateway already refused requests without a valid SigV4 signature.
    if not (event.get("requestContext", {}).get("authorizer") or {}).get("iam"):
        return {"statusCode": 403, "headers": {"content-type": "application/json"},
                "body": json.dumps({"error": "IAM authorisation required"})}
    if not os.environ.get("PUBLIC_URL") and event["requestContext"].get("domainName"):
        os.environ["PUBLIC_URL"] = f"https://{event['requestContext']['domainName']}"  # template.yaml: no cycle
        config.cache_clear()
    return app.resolve(event, context)
