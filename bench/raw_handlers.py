"""Hand-written raw-boto3 handlers: the floor each funnelpilot HTTP handler is compared to.

Each makes the same AWS calls as the real handler for the same request (the replay
checks the sequence) with the least code that still validates its input: no powertools,
no pynamodb, no jinja2. A route without a hand-written handler here is compared to
``replay_only`` (decode the body, make the recorded calls, answer), a lower floor.
"""
import base64
import hashlib
import hmac
import json
import os
import re
import time
import uuid
from urllib.parse import parse_qsl

import boto3

_EMAIL = re.compile(r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9-]+(\.[a-z0-9-]+)+$")
_clients: dict = {}
_key: bytes = b""


def _client(service: str):
    if service not in _clients:
        _clients[service] = boto3.client(service)
    return _clients[service]


def init() -> None:
    """Module-level work of a raw handler (secret fetched once per cold start)."""
    global _key
    _key = _client("ssm").get_parameter(Name=os.environ["SIGNING_KEY_PARAMETER"],
                                        WithDecryption=True)["Parameter"]["Value"].encode()
    _client("dynamodb"), _client("events")


def _fields(event: dict) -> dict:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    if event["headers"].get("content-type", "").startswith("application/json"):
        return json.loads(body or "{}")
    return dict(parse_qsl(body))


def _response(status: int, body: dict) -> dict:
    print(json.dumps({"level": "INFO", "message": "request", "status": status}))
    return {"statusCode": status, "headers": {"content-type": "application/json"}, "body": json.dumps(body)}


def _keyed(purpose: str, value: str, size: int) -> str:
    digest = hmac.new(_key, f"{purpose}:{value}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:size]).decode().rstrip("=").lower()


def _counter(scope: str, key: str, limit: int, window: int, at: float) -> dict:
    index = int(at // window)
    return {"Update": {"TableName": os.environ["METRICS_TABLE_NAME"],
                       "Key": {"pk": {"S": f"RATE#{scope}#{key}#{index}"}, "sk": {"S": "RATE"}},
                       "UpdateExpression": "ADD hits :one SET expires_at = :x",
                       "ConditionExpression": "attribute_not_exists(hits) OR hits < :l",
                       "ExpressionAttributeValues": {":one": {"N": "1"}, ":l": {"N": str(limit)},
                                                     ":x": {"N": str((index + 2) * window)}}}}


def signup(event: dict, context=None) -> dict:
    """A new person on a double opt-in list: one transaction (the IP's and the address's rate
    windows, profile, consent record, outbox item of contact.pending)."""
    fields = _fields(event)
    email = str(fields.get("email", "")).strip().lower()
    if not _EMAIL.match(email):
        return _response(400, {"error": "email is not a valid address", "field": "email"})
    if str(fields.get("consent", "")).lower() not in ("true", "on", "yes", "1"):
        return _response(400, {"error": "consent must be given (true)", "field": "consent"})
    list_name = str(fields.get("list") or "newsletter").lower()
    http = event["requestContext"]["http"]
    at = event["requestContext"]["timeEpoch"] / 1000
    limits = [_counter(f"signup-{name}", _keyed(name, value, 10), limit, window, at)
              for name, value, limit, window in (("ip", http["sourceIp"], 20, 3600), ("email", email, 5, 86400))]
    cid = _keyed("contact", email, 16)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    table = os.environ["TABLE_NAME"]
    event_id = uuid.uuid4().hex
    entry = {"Source": "funnelpilot", "DetailType": "contact.pending", "EventBusName": os.environ["BUS_NAME"],
             "Detail": json.dumps({"event_id": event_id, "contact_id": cid, "occurred_at": now, "list": list_name})}
    ddb = _client("dynamodb")
    try:
        ddb.transact_write_items(TransactItems=limits + [
            {"Update": {"TableName": table, "Key": {"pk": {"S": cid}, "sk": {"S": "PROFILE"}},
                        "UpdateExpression": "SET email = :e, created_at = if_not_exists(created_at, :n), updated_at = :n, "
                                            "incarnation = if_not_exists(incarnation, :i), #s = :p ADD lists :l",
                        "ConditionExpression": "attribute_not_exists(#s)", "ExpressionAttributeNames": {"#s": "status"},
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                        "ExpressionAttributeValues": {":e": {"S": email}, ":n": {"S": now}, ":p": {"S": "pending"},
                                                      ":i": {"S": uuid.uuid4().hex[:12]}, ":l": {"SS": [list_name]}}}},
            {"Put": {"TableName": table, "Item": {
                "pk": {"S": cid}, "sk": {"S": f"CONSENT#{now}#{list_name}"}, "list_name": {"S": list_name},
                "source": {"S": "signup"}, "given_at": {"S": now}, "confirmation": {"S": "unconfirmed"},
                "ip": {"S": http["sourceIp"]}, "user_agent": {"S": http["userAgent"]}}}},
            {"Put": {"TableName": table, "Item": {"pk": {"S": cid}, "sk": {"S": f"OUTBOX#{event_id}"},
                                                  "entry": {"S": json.dumps(entry)},
                                                  "expires_at": {"N": str(int(time.time()) + 86400)}}}}])
    except ddb.exceptions.TransactionCanceledException as exc:
        if any(r.get("Code") == "ConditionalCheckFailed" for r in exc.response["CancellationReasons"][:2]):
            return _response(429, {"error": "too many signups"})
        raise
    return _response(202, {"contact_id": cid})


def preflight(event: dict, context=None) -> dict:
    origin = event["headers"].get("origin", "")
    allowed = os.environ.get("CORS_ORIGINS", "").split(",")
    headers = {"access-control-allow-methods": "POST,OPTIONS", "access-control-max-age": "600",
               "access-control-allow-headers": "content-type"}
    if origin in allowed:
        headers["access-control-allow-origin"] = origin
    return {"statusCode": 204, "headers": headers, "body": ""}


GIF = "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _verify(kind: str, token: str, arity: int) -> list[str] | None:
    try:
        body, mac = token.split(".", 1)
        payload = _unb64(body)
        if not hmac.compare_digest(_unb64(mac), hmac.new(_key, payload, hashlib.sha256).digest()[:16]):
            return None
        parts = payload.decode().split("|")
    except ValueError:
        return None
    return parts[1:] if parts[0] == kind and len(parts) == arity + 1 else None


def _hit(kind: str, event: dict) -> str | None:
    """Verify, append the hit (the message as it was comes back), publish a person's or count a
    machine's: the URL a click goes to."""
    fields = _verify("o" if kind == "open" else "c", event["pathParameters"]["token"], 2 if kind == "open" else 3)
    if fields is None:
        return None
    request = event["requestContext"]["http"]
    key = {"pk": {"S": fields[0]}, "sk": {"S": f"MSG#{fields[1]}"}}
    agent = request.get("userAgent", "")
    human = request["method"] != "HEAD" and bool(agent) and "bot" not in agent.lower()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    hit = {"M": {"at": {"S": now}, "kind": {"S": kind}, "human": {"BOOL": human}}}
    ddb = _client("dynamodb")
    try:
        item = ddb.update_item(
            TableName=os.environ["TABLE_NAME"], Key=key, ReturnValues="ALL_OLD",
            UpdateExpression="SET hits = list_append(if_not_exists(hits, :empty), :h), last_hit_at = :n",
            ConditionExpression="#s = :sent", ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":h": {"L": [hit]}, ":empty": {"L": []}, ":n": {"S": now},
                                       ":sent": {"S": "sent"}})["Attributes"]
    except ddb.exceptions.ConditionalCheckFailedException:
        return None
    url = json.loads(item.get("links", {}).get("S", "[]"))[int(fields[2])] if kind == "click" else None
    url = url["url"] if isinstance(url, dict) else url
    if not human:
        row = {"pk": {"S": f"FUNNEL#{item['funnel']['S']}"}, "sk": {"S": f"DAY#{now[:10]}#STEP#{item['step']['S']}"}}
        ddb.update_item(TableName=os.environ["METRICS_TABLE_NAME"], Key=row, UpdateExpression="ADD #m :one",
                        ExpressionAttributeNames={"#m": f"machine_{kind}s"}, ExpressionAttributeValues={":one": {"N": "1"}})
        return url
    detail = {"event_id": uuid.uuid4().hex, "contact_id": fields[0], "occurred_at": now, "message_id": fields[1],
              "human": human, "unique": not any(h["M"]["human"]["BOOL"] for h in item.get("hits", {}).get("L", []))}
    kinds = ["email.opened"] + (["email.clicked"] if kind == "click" else [])
    _client("events").put_events(Entries=[{"Source": "funnelpilot", "DetailType": k, "Detail": json.dumps(detail),
                                           "EventBusName": os.environ["BUS_NAME"]} for k in kinds])
    return url


def track_open(event: dict, context=None) -> dict:
    _hit("open", event)
    return {"statusCode": 200, "isBase64Encoded": True, "body": GIF,
            "headers": {"content-type": "image/gif", "cache-control": "no-store"}}


def track_click(event: dict, context=None) -> dict:
    url = _hit("click", event)
    if not url:
        return {"statusCode": 404, "headers": {"content-type": "text/html"}, "body": "<h1>Link not found</h1>"}
    return {"statusCode": 302, "headers": {"location": url, "cache-control": "no-store"}, "body": ""}


RAW = {"POST /signup": signup, "GET /o/{token}": track_open, "HEAD /o/{token}": track_open,
       "GET /c/{token}": track_click, "HEAD /c/{token}": track_click}


def raw_for(route_key: str):
    """The hand-written handler for a route ('METHOD /path'), if there is one."""
    if route_key.startswith("OPTIONS "):
        return preflight
    return RAW.get(route_key)


def replay_only(calls):
    """A handler that decodes the body and makes exactly the recorded calls."""
    def handler(event: dict, context=None) -> dict:
        if event.get("body"):
            try:
                _fields(event)
            except ValueError:
                pass
        for call in calls:
            try:
                getattr(_client(call.service), _snake(call.operation))(**call.params)
            except _client(call.service).exceptions.ClientError:
                pass
        return _response(200, {})
    return handler


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
