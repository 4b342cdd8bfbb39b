"""Admin routes (IAM auth on AWS; ``x-api-key`` with the local admin key on the local runtime):
GET /contacts/{id}, GET /contacts/{id}/export, DELETE /contacts/{id} (GDPR erasure),
POST /contacts/lookup (find by email: the address in the body, never in a URL or a log),
PATCH /contacts/{id} (tag, untag, set), GET /segments/{name}/members and GET /lists/{name}/members
(a page of members; ``?cursor=`` the next)."""
import json

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response

from funnelpilot import gdpr, http
from funnelpilot.audience import export, lookup

logger = Logger()
app = http.resolver()


def _json(status: int, body) -> Response:
    return Response(status_code=status, content_type="application/json",
                    headers={"cache-control": "no-store"}, body=json.dumps(body))


@app.get("/contacts/<contact_id>")
def get_contact(contact_id: str) -> Response:
    item = gdpr.profile(contact_id)
    return _json(200, item) if item else http.error(404, "no such contact", "id")


@app.post("/contacts/lookup")
def find_contact() -> Response:
    cid = lookup.contact_id(http.fields(app.current_event).get("email"))
    found = lookup.card(cid)
    logger.info("lookup", extra={"contact_id": cid, "found": found is not None})
    return _json(200, found) if found else http.error(404, "no contact with this email", "email")


@app.patch("/contacts/<contact_id>")
def change_contact(contact_id: str) -> Response:
    changed = lookup.change(contact_id, http.fields(app.current_event))
    logger.info("change", extra={"contact_id": contact_id, "found": changed is not None})
    return _json(200, changed) if changed else http.error(404, "no such contact", "id")


@app.get("/segments/<name>/members")
def segment_members(name: str) -> Response:
    found = export.page(name, app.current_event.get_query_string_value("cursor"))
    return _json(200, found) if found else http.error(404, f"unknown segment {name[:64]!r}", "name")


@app.get("/lists/<name>/members")
def list_members(name: str) -> Response:
    found = export.page(f"list:{name}", app.current_event.get_query_string_value("cursor"))
    return _json(200, found) if found else http.error(404, f"unknown list {name[:64]!r}", "name")


@app.get("/contacts/<contact_id>/export")
def export_contact(contact_id: str) -> Response:
    data = gdpr.export(contact_id)
    logger.info("export", extra={"contact_id": contact_id, "found": data is not None})
    return _json(200, data) if data else http.error(404, "no such contact", "id")


@app.delete("/contacts/<contact_id>")
def erase_contact(contact_id: str) -> Response:
    erased = gdpr.erase(contact_id)
    logger.info("erase", extra={"contact_id": contact_id, "items": erased})
    return Response(status_code=204, body="") if erased else http.error(404, "no such contact", "id")


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    # Defence in depth: API Gateway already refused requests without a valid SigV4 signature.
    if not (event.get("requestContext", {}).get("authorizer") or {}).get("iam"):
        return {"statusCode": 403, "headers": {"content-type": "application/json"},
                "body": json.dumps({"error": "IAM authorisation required"})}
    return app.resolve(event, context)
