"""Hand-written raw-boto3 handlers: the floor each funnelpilot HTTP handler is compared to.

Each makes the same AWS calls as the real handler for the same request, with the same items,
attributes and events (``meter.shape``: bench/run.py stops when one does not, and
tests/test_bench_baselines.py checks every benchmarked path), and gives the same answer, with the
least code that still validates its input: no powertools, no pynamodb, no jinja2. A route without a
hand-written handler here is compared to ``replay_only`` (decode the body, make the recorded calls,
answer), a lower floor.
"""
import base64
import calendar
import hashlib
import hmac
import json
import os
import re
import time
import uuid
from urllib.parse import parse_qsl, urlsplit

import boto3

from funnelpilot.agents import AUTOMATED  # the one list of machine user agents: a regex, nothing else imported

_EMAIL = re.compile(r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9-]+(\.[a-z0-9-]+)+$")
_clients: dict = {}
_key: bytes = b""
clock = time.time  # the bench sets the runtime's clock (funnelpilot.clock.now): the instant the real handler saw


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


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


def signup(event: dict, context=None) -> dict:
    """A new person on a double opt-in list: one transaction (the IP's rate window; the profile, which
    counts the address's window; the consent record, new only, carrying contact.pending for the outbox relay)."""
    fields = _fields(event)
    email = str(fields.get("email", "")).strip().lower()
    if not _EMAIL.match(email):
        return _response(400, {"error": "email is not a valid address", "field": "email"})
    if str(fields.get("consent", "")).lower() not in ("true", "on", "yes", "1"):
        return _response(400, {"error": "consent must be given (true)", "field": "consent"})
    list_name = str(fields.get("list") or "newsletter").lower()
    http = event["requestContext"]["http"]
    at = event["requestContext"]["timeEpoch"] / 1000
    ip_window, address_window = int(at // 3600), int(at // 86400)
    cid = _keyed("contact", email, 16)
    ts = clock()
    now = _iso(ts)
    table = os.environ["TABLE_NAME"]
    event_id = uuid.uuid4().hex
    detail = {"event_id": event_id, "contact_id": cid, "occurred_at": now, "list": list_name, "lead_magnet": None,
              "resubscribe": False}
    entry = {"Source": "funnelpilot", "DetailType": "contact.pending", "Detail": json.dumps(detail),
             "EventBusName": os.environ["BUS_NAME"]}
    sets = "SET email = :email, created_at = if_not_exists(created_at, :now), updated_at = :now, " \
           "incarnation = if_not_exists(incarnation, :inc), #s = :status"
    values = {":email": {"S": email}, ":now": {"S": now}, ":list": {"SS": [list_name]}, ":one": {"N": "1"},
              ":inc": {"S": uuid.uuid4().hex[:12]}, ":status": {"S": "pending"}, ":limit": {"N": "5"}}
    if fields.get("first_name"):
        sets += ", first_name = :first_name"
        values[":first_name"] = {"S": str(fields["first_name"])}
    utm = {k: {"S": str(v)} for k, v in fields.items() if k.startswith("utm_") and v}
    if utm:
        sets += ", utm = if_not_exists(utm, :utm)"
        values[":utm"] = {"M": utm}
    ddb = _client("dynamodb")
    try:
        ddb.transact_write_items(TransactItems=[
            {"Update": {"TableName": os.environ["METRICS_TABLE_NAME"],
                        "Key": {"pk": {"S": f"RATE#signup-ip#{_keyed('ip', http['sourceIp'], 10)}#{ip_window}"},
                                "sk": {"S": "RATE"}},
                        "UpdateExpression": "ADD hits :one SET expires_at = :expires",
                        "ConditionExpression": "attribute_not_exists(hits) OR hits < :limit",
                        "ExpressionAttributeValues": {":one": {"N": "1"}, ":limit": {"N": "20"},
                                                      ":expires": {"N": str((ip_window + 2) * 3600)}}}},
            {"Update": {"TableName": table, "Key": {"pk": {"S": cid}, "sk": {"S": "PROFILE"}},
                        "UpdateExpression": sets + " ADD lists :list, #w :one",
                        "ConditionExpression": "attribute_not_exists(#s) AND (attribute_not_exists(#w) OR #w < :limit)",
                        "ExpressionAttributeNames": {"#s": "status", "#w": f"signups_{address_window}"},
                        "ExpressionAttributeValues": values, "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
            {"Put": {"TableName": table, "Item": {
                "pk": {"S": cid}, "sk": {"S": f"CONSENT#{now}#{list_name}"}, "list_name": {"S": list_name},
                "source": {"S": "signup"}, "given_at": {"S": now}, "confirmation": {"S": "unconfirmed"},
                "ip": {"S": http["sourceIp"]}, "user_agent": {"S": http["userAgent"]},
                "entries": {"S": json.dumps([entry])}}, "ConditionExpression": "attribute_not_exists(pk)"}}])
    except ddb.exceptions.TransactionCanceledException as exc:
        if any(r.get("Code") == "ConditionalCheckFailed" for r in exc.response["CancellationReasons"][:2]):
            return _response(429, {"error": "too many signups"})
        raise
    return _response(202, {"contact_id": cid, "fp": _sign("fp", cid, str(int(ts // 86400) + 365), "s")})


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


def _sign(kind: str, *fields: str) -> str:
    payload = "|".join((kind, *fields)).encode()
    mac = hmac.new(_key, payload, hashlib.sha256).digest()[:16]
    return f"{base64.urlsafe_b64encode(payload).rstrip(b'=').decode()}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


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


def _epoch(iso: str) -> float:
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


def _human(at: float, sent_at: float | None, honeypots: list[float], earlier: list[tuple[float, bool]]) -> bool:
    """The rules of a hit's history: machine near a honeypot hit or after a machine hit (a burst of 10 s),
    or within 10 s of the delivery."""
    return not (any(abs(at - h) <= 10 for h in honeypots) or any(not human and abs(at - t) <= 10 for t, human in earlier)
                or sent_at is None or at - sent_at < 10)


def _hit(kind: str, event: dict) -> str | None:
    """Verify, append the hit (the message as it was comes back), judge it with the message's earlier
    hits, publish a person's or count a machine's: the URL a click goes to."""
    fields = _verify("o" if kind == "open" else "c", event["pathParameters"]["token"], 2 if kind == "open" else 3)
    if fields is None or (kind == "click" and not fields[2].isdigit()):
        return None
    request = event["requestContext"]["http"]
    key = {"pk": {"S": fields[0]}, "sk": {"S": f"MSG#{fields[1]}"}}
    agent = request.get("userAgent", "").strip()
    label = request["method"] != "HEAD" and bool(agent) and not AUTOMATED.search(agent) and \
        not (kind == "open" and (agent.lower() == "mozilla/5.0" or request.get("sourceIp", "").startswith("17.")))
    reason = None if label else "head_request" if request["method"] == "HEAD" else "scanner"  # stored, not published
    ts = clock()
    now = _iso(ts)
    hit = {"M": {"at": {"S": now}, "kind": {"S": kind}, "link": {"S": fields[2]} if kind == "click" else {"NULL": True},
                 "human": {"BOOL": label}, "reason": {"S": reason} if reason else {"NULL": True}}}
    ddb = _client("dynamodb")
    try:
        item = ddb.update_item(
            TableName=os.environ["TABLE_NAME"], Key=key, ExpressionAttributeNames={"#s": "status"}, ReturnValues="ALL_OLD",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
            UpdateExpression="SET last_hit_at = :now, hits = list_append(if_not_exists(hits, :empty), :hit)",
            ConditionExpression="#s IN (:sent, :sending) AND (attribute_not_exists(hits) OR size(hits) < :max)",
            ExpressionAttributeValues={":now": {"S": now}, ":sent": {"S": "sent"}, ":sending": {"S": "sending"},
                                       ":empty": {"L": []}, ":hit": {"L": [hit]}, ":max": {"N": "100"}})["Attributes"]
    except ddb.exceptions.ConditionalCheckFailedException:
        return None
    url, hand_off = None, False
    if kind == "click":
        links = json.loads(item.get("links", {}).get("S", "[]"))
        if int(fields[2]) >= len(links):
            return None
        url = links[int(fields[2])]
        url, hand_off = (url["url"], False) if isinstance(url, dict) else (url, True)
    sent = item.get("delivered_at", item.get("sent_at", {})).get("S")
    sent_at = _epoch(sent) if sent else None
    stored = [h["M"] for h in item.get("hits", {}).get("L", [])]
    honeypots = [_epoch(h["at"]["S"]) for h in stored if h.get("reason", {}).get("S") == "honeypot"]
    earlier: list[tuple[float, bool]] = []
    for h in stored:
        t = _epoch(h["at"]["S"])
        earlier.append((t, h["human"]["BOOL"] and _human(t, sent_at, honeypots, earlier)))
    honeypot_at = [_epoch(item["honeypot_at"]["S"])] if "honeypot_at" in item else []
    human = label and _human(ts, sent_at, honeypot_at, earlier)
    funnel, step, template, variant = (item.get(a, {}).get("S") for a in ("funnel", "step", "template", "variant"))
    if not human:
        labels = {k: v for k, v in (("template", template), ("variant", variant)) if v}
        if funnel and step:
            ddb.update_item(TableName=os.environ["METRICS_TABLE_NAME"],
                            Key={"pk": {"S": f"FUNNEL#{funnel}"}, "sk": {"S": f"DAY#{now[:10]}#STEP#{step}"}},
                            UpdateExpression="ADD #m0 :v0" + (" SET " + ", ".join(f"#{k} = :{k}" for k in labels) if labels else ""),
                            ExpressionAttributeNames={"#m0": f"machine_{kind}s", **{f"#{k}": k for k in labels}},
                            ExpressionAttributeValues={":v0": {"N": "1"}, **{f":{k}": {"S": v} for k, v in labels.items()}})
        return url
    common = {"message_id": fields[1], "funnel": funnel, "step": step, "template": template, "human": True,
              **({"variant": variant} if variant else {})}
    first_open = not any(h for _, h in earlier)
    entries = []
    if kind == "open" or first_open:
        entries.append(("email.opened", {"unique": first_open, **({"via": "click"} if kind == "click" else {})}))
    if kind == "click":
        first_click = not any(h and s["kind"]["S"] == "click" for (_, h), s in zip(earlier, stored))
        entries.append(("email.clicked", {"link": fields[2], "url": url, "unique": first_click}))
    _client("events").put_events(Entries=[
        {"Source": "funnelpilot", "DetailType": kind_, "EventBusName": os.environ["BUS_NAME"],
         "Detail": json.dumps({"event_id": uuid.uuid4().hex, "contact_id": fields[0], "occurred_at": now, **extra, **common})}
        for kind_, extra in entries])
    return _hand_off(url, fields[0], ts) if hand_off else url


def _hand_off(url: str, cid: str, ts: float) -> str:
    """A person's click to one of the sites lands with their ``fp`` token."""
    parts = urlsplit(url)
    if f"{parts.scheme}://{parts.netloc}" not in os.environ.get("CORS_ORIGINS", "").split(","):
        return url
    kept = [p for p in parts.query.split("&") if p and p.split("=", 1)[0] != "fp"]
    token = _sign("fp", cid, str(int(ts // 86400) + 365), "e")
    return parts._replace(query="&".join([*kept, f"fp={token}"])).geturl()


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
