"""The HTTP API's OpenAPI 3.0.3 document (``infra/openapi.json``, ``make openapi``).

Routes come from template.yaml, the single source of truth: every ``HttpApi`` event of
every ``AWS::Serverless::Function`` is one operation (method, path, IAM auth). Request
bodies come from the code that validates them: ``contacts.parse_signup`` (fields),
``ingest`` (pydantic models) and ``visitors.parse`` (``/collect``). Responses follow
ARCHITECTURE §3. The document describes the API; nothing serves it.
"""
import json
import re
from pathlib import Path

from pydantic import TypeAdapter

from funnelpilot import contacts, ingest, visitors
from funnelpilot_local.template import Template

PATH = "infra/openapi.json"
FUNCTION = "AWS::Serverless::Function"
REF = "#/components/schemas/{model}"
ERROR = {"$ref": "#/components/schemas/Error"}
JSON_ERROR = {"application/json": {"schema": ERROR}}


def routes(root: Path) -> list[dict]:
    """Every HttpApi event of template.yaml: method, path, function, event id, authorizer."""
    template = Template.load(root)
    out = []
    for lid in sorted(template.of_type(FUNCTION)):
        props = template.properties(lid)
        for event_id, event in sorted((props.get("Events") or {}).items()):
            if event.get("Type") != "HttpApi":
                continue
            p = event.get("Properties", {})
            out.append({"method": str(p.get("Method", "ANY")).upper(), "path": p["Path"], "function": lid,
                        "event": event_id, "auth": (p.get("Auth") or {}).get("Authorizer"),
                        "description": props.get("Description", "")})
    return out


def _oas30(schema):
    """A pydantic (JSON Schema 2020-12) schema as an OpenAPI 3.0 schema: ``nullable``
    instead of a null type, ``enum`` instead of ``const``, ``additionalProperties`` instead
    of ``patternProperties`` and ``propertyNames`` (the key pattern goes to the description)."""
    if isinstance(schema, list):
        return [_oas30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: _oas30(v) for k, v in schema.items() if k != "propertyNames"}
    if "patternProperties" in schema:
        (pattern, value), = schema.pop("patternProperties").items()
        schema["additionalProperties"] = value
        schema["description"] = f"keys match {pattern}"
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if options and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            del schema[key]
            schema.update(rest[0] if len(rest) == 1 and "$ref" not in rest[0] else {key: rest})
            schema["nullable"] = True
    return schema


def _string(description: str = "", **extra) -> dict:
    return {"type": "string", **({"description": description} if description else {}), **extra}


def _signup_schema() -> dict:
    props = {
        "email": _string("the subscriber's address", maxLength=254),
        "consent": {"description": "must be true (form: true, on, yes or 1)",
                    "oneOf": [{"type": "boolean"}, {"type": "string", "enum": ["true", "on", "yes", "1"]}]},
        "list": _string(f"list to join, declared in infra/lists.yaml (default {contacts.DEFAULT_LIST})",
                        pattern=contacts._SLUG.pattern),
        "first_name": _string(maxLength=100),
        "lead_magnet": _string("a lead magnet slug", maxLength=64),
        "timezone": _string("IANA time zone, e.g. Europe/Berlin", maxLength=64),
        "phone": _string("mobile number in E.164 form, e.g. +14155550123 (spaces, dashes, dots and parentheses "
                         "are ignored); 400 naming phone otherwise", maxLength=32),
        "sms_consent": {"description": "true: the person also agrees to receive SMS (needs phone); given apart from "
                                       "consent, never implied by it",
                        "oneOf": [{"type": "boolean"}, {"type": "string", "enum": ["true", "on", "yes", "1"]}]},
        "redirect": _string("http(s) URL on an allowed host: answer 303 to it", maxLength=2000),
        "website": _string("honeypot: leave empty (filled: 202 and nothing stored)"),
        **{k: _string(maxLength=200) for k in contacts.UTM_KEYS},
    }
    return {"type": "object", "required": ["email", "consent"], "properties": props}


def _collect_schema() -> dict:
    flat = {"type": "object", "additionalProperties": {"type": "string", "maxLength": 200}}
    props = {
        "event": _string("page.viewed or a custom event name", pattern=visitors._EVENT.pattern),
        "path": _string(pattern="^/", maxLength=512),
        "token": _string("the fp token naming the contact", maxLength=256),
        "title": _string(maxLength=300),
        "referrer": _string(maxLength=2048),
        "utm": {**flat, "maxProperties": 5, "description": "utm_* keys"},
        "props": {"type": "object", "maxProperties": 10,
                  "additionalProperties": {"oneOf": [{"type": "string", "maxLength": 200}, {"type": "number"},
                                                     {"type": "boolean"}]}},
    }
    assert set(props) == visitors.FIELDS
    return {"type": "object", "required": ["event", "path"], "additionalProperties": False, "properties": props}


def _broadcast_schema() -> dict:
    """A broadcast spec, from the code that checks it (``funnelpilot.broadcasts.spec``); the CLI inlines
    the content files (README "Broadcasts")."""
    from funnelpilot.broadcasts import spec

    names = {"type": "array", "items": _string()}
    part = {"type": "string", "maxLength": spec.MAX_CONTENT}
    props = {
        "name": _string("the broadcast's id", pattern=spec.SLUG.pattern),
        "subject": _string("the subject (jinja, like the content); or ab.subjects", maxLength=998),
        "ab": {"type": "object", "required": ["subjects"], "additionalProperties": False, "properties": {
            "subjects": {"type": "object", "minProperties": 2, "additionalProperties": _string(maxLength=998),
                         "description": f"variant name ({spec.VARIANT.pattern}) -> subject"},
            "sample_percent": {"type": "integer", "minimum": 2, "maximum": 50, "default": 20,
                               "description": "share of the audience that gets the test, split evenly"},
            "wait_hours": {"type": "number", "minimum": 1, "maximum": 72, "default": 4,
                           "description": "then the winner goes to the rest"},
            "metric": _string(enum=list(spec.METRICS), default="clicks")}},
        "preheader": _string("the line an inbox shows after the subject", maxLength=300),
        "content": {"type": "object", "required": ["html", "text"], "additionalProperties": False, "properties": {
            "html": {**part, "description": "jinja extending layout.html.j2"},
            "text": {**part, "description": "jinja extending layout.txt.j2"}}},
        "list": _string("the declared list it belongs to (infra/lists.yaml): footer reason, List-Id, one-click "
                        "unsubscribe"),
        "audience": {"type": "object", "additionalProperties": False, "description": "at least one segment or list",
                     "properties": {k: names for k in spec.AUDIENCE}},
        "frequency_cap": _string("someone who got a marketing email within the cap", enum=list(spec.CAPS),
                                 default="skip"),
        "priority": _string("against funnel emails in the send pipeline", enum=list(spec.PRIORITIES),
                            default="broadcast")}
    assert set(props) == set(spec.FIELDS)
    return {"type": "object", "required": ["name", "content", "list", "audience"], "additionalProperties": False,
            "properties": props}


def _schedule_schema() -> dict:
    return {"type": "object", "description": "exactly one of now, at, local (with date and fallback_zone)",
            "properties": {
                "now": {"type": "boolean", "enum": [True]},
                "at": _string("an instant in the future, ISO 8601 (UTC without an offset)", format="date-time"),
                "local": _string("HH:MM in each recipient's time zone (not with an A/B test)",
                                 pattern="^([01][0-9]|2[0-3]):[0-5][0-9]$"),
                "date": _string("the day of local", format="date"),
                "fallback_zone": _string("IANA zone of people without one")}}


def _schemas() -> dict:
    """Component schemas: Error, Signup, Collect, the /events models, Broadcast and Schedule."""
    events = TypeAdapter(ingest.PageViewed | ingest.OrderPlaced | ingest.Custom).json_schema(ref_template=REF)
    schemas = {name: _oas30(s) for name, s in events.pop("$defs").items()}
    schemas["Event"] = {"oneOf": _oas30(events["anyOf"]),  # disjoint: told apart by `type`
                        "description": "one event: page.viewed, order.placed or custom.<name>; "
                                       "exactly one of contact_id or email"}
    schemas["Error"] = {"type": "object", "required": ["error"], "properties": {
        "error": _string("what is wrong"), "field": _string("the field, header or body at fault", nullable=True)}}
    schemas["Signup"] = _signup_schema()
    schemas["Collect"] = _collect_schema()
    schemas["Broadcast"] = _broadcast_schema()
    schemas["Schedule"] = _schedule_schema()
    return schemas


def _json(status_description: str, schema: dict | None = None) -> dict:
    return {"description": status_description,
            "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def _html(description: str) -> dict:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def _error(description: str) -> dict:
    return {"description": description, "content": JSON_ERROR}


FORM = "application/x-www-form-urlencoded"
BODIES = {
    "POST /signup": {"required": True, "content": {"application/json": {"schema": {"$ref": REF.format(model="Signup")}},
                                                   FORM: {"schema": {"$ref": REF.format(model="Signup")}}}},
    "POST /events": {"required": True, "content": {"application/json": {"schema": {"$ref": REF.format(model="Event")}}}},
    "POST /collect": {"required": True, "description": "JSON; the snippet sends it as text/plain (no preflight)",
                      "content": {"application/json": {"schema": {"$ref": REF.format(model="Collect")}},
                                  "text/plain": {"schema": {"$ref": REF.format(model="Collect")}}}},
    "POST /contacts/lookup": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["email"], "properties": {"email": _string("the address, any case")}}}}},
    "PATCH /contacts/{id}": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "additionalProperties": False, "properties": {
            "tag": {"type": "array", "items": _string()}, "untag": {"type": "array", "items": _string()},
            "set": {"type": "object", "description": "properties (custom fields) to set"}}}}}},
    "POST /broadcasts": {"required": True, "content": {"application/json": {"schema": {"$ref": REF.format(
        model="Broadcast")}}}},
    "PUT /broadcasts/{id}": {"required": True, "content": {"application/json": {"schema": {"$ref": REF.format(
        model="Broadcast")}}}},
    "POST /broadcasts/{id}/preview": {"required": False, "content": {"application/json": {"schema": {
        "type": "object", "properties": {"email": _string("render for this person (default: the sample contact)")}}}}},
    "POST /broadcasts/{id}/test": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["to"], "properties": {"to": _string("the address the test goes to")}}}}},
    "POST /broadcasts/{id}/schedule": {"required": True, "content": {"application/json": {"schema": {
        "$ref": REF.format(model="Schedule")}}}},
    "POST /u/{token}": {"required": False, "content": {FORM: {"schema": {"type": "object", "properties": {
        "List-Unsubscribe": _string("RFC 8058 one-click: opts out of the email's list", enum=["One-Click"]),
        "action": _string("the preference centre's button (resubscribe: a sunset person's 'Send me your emails "
                          "again')", enum=["save", "all", "resubscribe"]),
        "list": {"type": "array", "items": _string(), "description": "save: the lists to keep (repeated)"}}}}}},
}
GIF = {"description": "a 1x1 transparent GIF (also for an unknown or tampered token)",
       "content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}}}
CLICK = {"302": {"description": "to the link stored with the message"},
         "200": _html("a honeypot link, followed by a machine"), "404": _html("tampered or unknown token or link index")}
RESPONSES = {
    "POST /signup": {"202": _json("accepted (also when the honeypot is filled)", {
                         "type": "object", "properties": {"contact_id": _string(), "fp": _string("site tracker token")}}),
                     "303": {"description": "redirect to the allow-listed redirect URL"},
                     "400": _error("invalid field (also an undeclared list)"),
                     "429": _error("over the signup limit per source IP or per address (Retry-After)")},
    "GET /o/{token}": {"200": GIF}, "HEAD /o/{token}": {"200": GIF},
    "GET /c/{token}": CLICK, "HEAD /c/{token}": CLICK,
    "GET /u/{token}": {"200": _html("the preference centre: a form with a checkbox per list joined"),
                       "404": _html("invalid token")},
    "POST /u/{token}": {"200": _html("choices saved, re-subscribed, or unsubscribed from everything"),
                        "404": _html("invalid token")},
    "GET /segments/{name}/members": {"200": _json("a page of members: columns, rows, next (cursor)"),
                                     "400": _error("invalid cursor"), "404": _error("unknown segment")},
    "GET /lists/{name}/members": {"200": _json("a page of the list's members: columns, rows, next (cursor)"),
                                  "400": _error("invalid cursor"), "404": _error("unknown list")},
    "GET /confirm/{token}": {"200": _html("confirmed"), "404": _html("invalid or expired link")},
    "POST /events": {"202": _json("accepted, duplicate or unknown contact", {"type": "object", "properties": {
                         "status": _string(enum=["accepted", "duplicate", "unknown_contact"]), "event_id": _string()}}),
                     "400": _error("invalid field"), "401": _error("missing or wrong x-api-key")},
    "GET /contacts/{id}": {"200": _json("the contact profile"), "404": _error("no such contact")},
    "GET /contacts/{id}/export": {"200": _json("every item about the person, grouped"),
                                  "404": _error("no such contact")},
    "DELETE /contacts/{id}": {"204": {"description": "erased"}, "404": _error("no such contact")},
    "POST /contacts/lookup": {"200": _json("the contact card: profile, fields, lists, consent, scores, segments, "
                                           "funnels (state, console link), timeline of emails"),
                              "400": _error("not an address"), "404": _error("no contact with this email")},
    "PATCH /contacts/{id}": {"200": _json("the contact card after the change"), "400": _error("invalid tag or property"),
                             "404": _error("no such contact")},
    "GET /funnels/{id}/report": {"200": _json("per-step metrics"), "404": _error("no such funnel")},
    "POST /broadcasts": {"201": _json("the draft"), "400": _error("invalid field (unknown list or segment, bad "
                                                                  "subject, template error with its line)"),
                         "409": _error("a broadcast of this name exists")},
    "GET /broadcasts": {"200": _json("every broadcast: id, status, schedule, created_at")},
    "GET /broadcasts/{id}": {"200": _json("the broadcast: spec, status, schedule"), "404": _error("no such broadcast")},
    "PUT /broadcasts/{id}": {"200": _json("the broadcast after the change"), "400": _error("invalid field"),
                             "404": _error("no such broadcast"), "409": _error("sending or done: no more edits")},
    "POST /broadcasts/{id}/preview": {"200": _json("subject, preheader, html, text, audience size"),
                                      "400": _error("invalid email"), "404": _error("no such broadcast")},
    "POST /broadcasts/{id}/test": {"200": _json("sent: '[Test]' subject, untracked, not counted"),
                                   "400": _error("invalid address"), "404": _error("no such broadcast")},
    "POST /broadcasts/{id}/schedule": {"200": _json("scheduled or sending"), "400": _error(
        "invalid schedule (past instant, bad zone, bad date or time)"), "404": _error("no such broadcast"),
        "409": _error("not a draft or scheduled broadcast")},
    **{f"POST /broadcasts/{{id}}/{action}": {"200": _json(f"{done}"), "404": _error("no such broadcast"),
                                            "409": _error(f"the broadcast's status does not allow {action}")}
       for action, done in (("pause", "paused"), ("resume", "sending again"), ("cancel", "cancelled"))},
    "GET /broadcasts/{id}/report": {"200": _json("audience, sent, blocked by reason, deferred, skipped, delivered, "
                                                 "human and machine opens and clicks, unsubscribes, conversions, "
                                                 "revenue, bounces, complaints; per A/B variant"),
                                    "404": _error("no such broadcast")},
    "GET /t.js": {"200": {"description": "the site tracker snippet",
                          "content": {"text/javascript": {"schema": {"type": "string"}}}},
                  "304": {"description": "not modified (If-None-Match)"}},
    "POST /collect": {"204": {"description": "recorded"}, "400": _error("invalid body"),
                      "403": _error("origin, user agent or token refused"), "413": _error("body too large"),
                      "429": _error("rate limited")},
}
SUMMARIES = {
    "POST /signup": "Sign up from a landing-page form", "GET /o/{token}": "Open pixel",
    "HEAD /o/{token}": "Open pixel (HEAD)", "GET /c/{token}": "Tracked link", "HEAD /c/{token}": "Tracked link (HEAD)",
    "GET /u/{token}": "Preference centre", "POST /u/{token}": "Choose lists, or unsubscribe (also RFC 8058 one-click)",
    "GET /segments/{name}/members": "Export a segment (admin)", "GET /lists/{name}/members": "Export a list (admin)",
    "GET /confirm/{token}": "Double opt-in confirmation", "POST /events": "Site and shop events",
    "GET /contacts/{id}": "Contact profile (admin)", "GET /contacts/{id}/export": "Everything about a person (admin)",
    "DELETE /contacts/{id}": "GDPR erasure (admin)", "GET /funnels/{id}/report": "Per-step funnel report (admin)",
    "POST /contacts/lookup": "Find a person by email (admin)", "PATCH /contacts/{id}": "Tag, untag, set (admin)",
    "POST /broadcasts": "Create a broadcast (admin)", "GET /broadcasts": "Every broadcast (admin)",
    "GET /broadcasts/{id}": "A broadcast (admin)", "PUT /broadcasts/{id}": "Change a draft broadcast (admin)",
    "POST /broadcasts/{id}/preview": "Preview a broadcast (admin)", "POST /broadcasts/{id}/test": "Test send (admin)",
    "POST /broadcasts/{id}/schedule": "Send now or schedule (admin)", "POST /broadcasts/{id}/pause": "Pause (admin)",
    "POST /broadcasts/{id}/resume": "Resume (admin)", "POST /broadcasts/{id}/cancel": "Cancel (admin)",
    "GET /broadcasts/{id}/report": "Broadcast report (admin)",
    "GET /t.js": "Site tracker snippet", "POST /collect": "Page views and custom events from the snippet",
}
PREFLIGHT = {"204": {"description": "CORS preflight for an allowed origin"}}
QUERY = {"GET /funnels/{id}/report": [
    {"name": name, "in": "query", "required": False, "schema": _string(format="date")} for name in ("from", "to")],
    **{f"GET /{kind}/{{name}}/members": [{"name": "cursor", "in": "query", "required": False, "schema": _string()}]
       for kind in ("segments", "lists")}}


def _operation(route: dict, operation_id: str) -> dict:
    key = f"{route['method']} {route['path']}"
    summary = "CORS preflight" if route["method"] == "OPTIONS" else SUMMARIES.get(key, key)
    op = {"operationId": operation_id, "summary": summary, "description": route["description"],
          "tags": [route["function"]]}
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in re.findall(r"{(\w+)}", route["path"])] + QUERY.get(key, [])
    if params:
        op["parameters"] = params
    if route["auth"] == "AWS_IAM":
        op["security"] = [{"sigv4": []}]
    elif key == "POST /events":
        op["security"] = [{"eventsApiKey": []}]
    if key in BODIES:
        op["requestBody"] = BODIES[key]
    responses = PREFLIGHT if route["method"] == "OPTIONS" else RESPONSES.get(key, {"200": {"description": "OK"}})
    if key == "OPTIONS /collect":
        responses = {**responses, "403": _error("origin not allowed")}
    if route["auth"] == "AWS_IAM":
        responses = {**responses, "403": _error("request not signed (locally: wrong x-api-key)")}
    if QUERY.get(key):  # a query parameter the function validates: a bad one is a 400 with the field
        responses = {**responses, "400": _error("invalid query parameter")}
    op["responses"] = responses
    return op


def document(root: Path) -> dict:
    """The OpenAPI 3.0.3 document for the project at ``root``."""
    paths: dict[str, dict] = {}
    all_routes = routes(root)
    for r in all_routes:
        same = [o for o in all_routes if (o["function"], o["method"]) == (r["function"], r["method"])]
        operation_id = f"{r['function']}_{r['method'].lower()}" + (f"_{r['event']}" if len(same) > 1 else "")
        paths.setdefault(r["path"], {})[r["method"].lower()] = _operation(r, operation_id)
    return {
        "openapi": "3.0.3",
        "info": {"title": "funnelpilot HTTP API", "version": "1.0.0",
                 "description": "Generated from template.yaml by `make openapi`; do not edit."},
        "servers": [{"url": "http://127.0.0.1:3000", "description": "local runtime (make serve)"}],
        "paths": paths,
        "components": {"schemas": _schemas(), "securitySchemes": {
            "sigv4": {"type": "apiKey", "in": "header", "name": "Authorization",
                      "description": "SigV4 on AWS; x-api-key: local-admin-key locally",
                      "x-amazon-apigateway-authtype": "awsSigv4"},
            "eventsApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                             "description": "the EventsApiKey write key (SSM /<stack>/events-api-key)"}}},
    }


def render(root: Path) -> str:
    """The document as ``infra/openapi.json`` holds it: sorted keys, indented, a final newline."""
    return json.dumps(document(root), indent=2, sort_keys=True) + "\n"
