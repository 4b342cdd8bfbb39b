"""Every AWS call a handler makes, seen through botocore's event hooks.

``install()`` appends hooks to botocore's built-in handlers (as moto does), so every
session created afterwards (boto3's default session, each pynamodb connection) reports
to it. Calls are attributed to the thread's current label (the local runtime runs each
handler in the calling thread, Step Functions tasks in the interpreter's thread).

* recording: ``with meter.label("SignupFunction POST /signup") as calls`` collects
  (service, operation, API params, parsed response, HTTP status) for that label.
* replaying: ``with meter.replay(calls)`` answers the same operations, in order, from a
  recording without any I/O (botocore still validates and serialises each request),
  which is how handlers are timed with their AWS I/O stubbed; ``made=[]`` collects the
  requests answered, which ``drift`` compares, by ``shape``, with the recording.
* capacity: DynamoDB capacity units are estimated from item sizes with DynamoDB's
  on-demand rules (moto reports fixed constants and nothing for updates/transactions).
"""
import itertools
import json
import math
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

from botocore import handlers
from botocore.awsrequest import AWSResponse

_local = threading.local()
_lock = threading.Lock()
_installed = False
RECORDS: dict[str, list["Call"]] = {}  # label -> calls (all threads)


@dataclass
class Call:
    service: str
    operation: str
    params: dict
    parsed: dict = field(default_factory=dict)
    status: int = 200
    capacity: float = 0.0  # DynamoDB read + write units (estimated)

    @property
    def name(self) -> str:
        return f"{self.service}:{self.operation}"


def install() -> None:
    """Call before any botocore session exists (before the runtime starts)."""
    global _installed
    if _installed:
        return
    handlers.BUILTIN_HANDLERS.append(("before-parameter-build", _before_parameter_build))
    handlers.BUILTIN_HANDLERS.append(("before-call", _before_call))
    handlers.BUILTIN_HANDLERS.append(("after-call", _after_call))
    _installed = True


def uninstall() -> None:
    """Take the hooks out again (sessions created from now on do not report; existing ones still do)."""
    global _installed
    for hook in (("before-parameter-build", _before_parameter_build), ("before-call", _before_call),
                 ("after-call", _after_call)):
        if hook in handlers.BUILTIN_HANDLERS:
            handlers.BUILTIN_HANDLERS.remove(hook)
    _installed = False


@contextmanager
def label(name: str):
    """Attribute the calls this thread makes to ``name``; yields the list they go to."""
    previous = getattr(_local, "label", None)
    _local.label = name
    with _lock:
        calls = RECORDS.setdefault(name, [])
    try:
        yield calls
    finally:
        _local.label = previous


@contextmanager
def suspended():
    """Calls made inside are neither recorded nor replayed (the meter's own reads), and are the
    runtime's own (strict IAM: not the role of the handler whose call is being measured)."""
    from funnelpilot_local.aws_rules import principal

    _local.suspended = True
    try:
        with principal.acting_as(None):
            yield
    finally:
        _local.suspended = False


@contextmanager
def replay(calls: list[Call], by_operation: bool = False, made: list[Call] | None = None):
    """Answer this thread's calls from ``calls``, in order and cycling (raises if the
    handler's sequence differs), or ``by_operation``: each operation from the recorded calls
    of that operation in turn (the last one repeating), so a cold handler may make calls the
    recording did not (e.g. fetch its secret) as long as one of that operation was recorded.
    ``made``: a list that receives each request answered (its params, the recorded answer)."""
    _local.made = made
    if by_operation:
        queues: dict[str, list[Call]] = {}
        for call in calls:
            queues.setdefault(call.name, []).append(call)
        _local.replay = (queues, {})
    else:
        _local.replay = (calls, [0])
    try:
        yield
    finally:
        _local.replay = _local.made = None


def _active() -> bool:
    return not getattr(_local, "suspended", False)


def _before_parameter_build(params, model, **_):
    if _active():
        _local.pending = dict(params)


def _before_call(model, params, **_):
    state = getattr(_local, "replay", None)
    if state is None or not _active():
        return None
    calls, pos = state
    got = f"{model.service_model.service_name}:{model.name}"
    if isinstance(calls, dict):
        if got not in calls:
            raise AssertionError(f"replay has no recorded {got}")
        used = pos.get(got, 0)
        call = calls[got][min(used, len(calls[got]) - 1)]
        pos[got] = used + 1
    else:
        call = calls[pos[0] % len(calls)]
        pos[0] += 1
    if got != call.name:
        raise AssertionError(f"replay expected {call.name}, handler called {got}")
    if getattr(_local, "made", None) is not None:
        _local.made.append(Call(call.service, call.operation, getattr(_local, "pending", {}), call.parsed, call.status))
    return AWSResponse("https://replay.invalid/", call.status, {}, None), call.parsed


def _after_call(http_response, parsed, model, **_):
    name = getattr(_local, "label", None)
    if name is None or not _active() or getattr(_local, "replay", None) is not None:
        return
    call = Call(model.service_model.service_name, model.name, getattr(_local, "pending", {}),
                parsed, http_response.status_code)
    if call.service == "dynamodb":
        with suspended():
            call.capacity = dynamodb_capacity(call)
    with _lock:
        RECORDS.setdefault(name, []).append(call)


# ---------------------------------------------------------------- what a call does
_WORDS = re.compile(r"#?[A-Za-z_][A-Za-z0-9_]*")


def _split(text: str) -> list[str]:
    """``text`` split at its commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def _updated(expression: str, names: dict) -> dict[str, list[str]]:
    """Clause (SET, ADD, REMOVE, DELETE) -> the attributes it writes, sorted, ``#names`` resolved."""
    out = {}
    for clause, body in re.findall(r"\b(SET|ADD|REMOVE|DELETE)\b(.*?)(?=\b(?:SET|ADD|REMOVE|DELETE)\b|$)", expression,
                                   flags=re.S):
        targets = [_WORDS.search(part.partition("=")[0]).group() for part in _split(body)]
        out[clause] = sorted(names.get(t, t) for t in targets)
    return out


def _key(key: dict) -> dict:
    """A key's attributes and values, each ``#`` segment holding a digit (an id, a time, a window) as ``0``:
    the comparison keeps the item's kind (``MSG``, ``OUTBOX``, ``DAY``, ``signup-ip``), not which one."""
    return {k: "#".join("0" if any(c.isdigit() for c in seg) else seg for seg in str(next(iter(v.values()))).split("#"))
            for k, v in sorted(key.items())}


def _write(kind: str, spec: dict) -> tuple:
    names = spec.get("ExpressionAttributeNames") or {}
    if kind == "Put":
        what = {"key": _key({k: spec["Item"][k] for k in ("pk", "sk") if k in spec["Item"]}),
                "attributes": sorted(spec["Item"])}
    else:
        what = {"key": _key(spec["Key"])}
        if "UpdateExpression" in spec:
            what["updates"] = _updated(spec["UpdateExpression"], names)
    for option in ("ReturnValues", "ReturnValuesOnConditionCheckFailure"):
        if option in spec:
            what[option] = spec[option]
    return (kind, spec["TableName"], what, "ConditionExpression" in spec)


def shape(call: Call) -> tuple:
    """What a call does, without the values that change from run to run: the operation; for DynamoDB each
    item's table, key (``_key``), the attributes written and by which clause, whether it is
    conditional and what it returns; for PutEvents each entry's source, bus, type and detail fields;
    for any other call its parameters' names."""
    p, op = call.params, call.operation
    if call.service == "dynamodb" and op in ("PutItem", "UpdateItem", "DeleteItem"):
        return (call.name, _write(op[:-4], p))
    if call.service == "dynamodb" and op == "TransactWriteItems":
        return (call.name, tuple(_write(*next(iter(entry.items()))) for entry in p["TransactItems"]))
    if call.service == "dynamodb" and op == "GetItem":
        return (call.name, p["TableName"], _key(p["Key"]), bool(p.get("ConsistentRead")))
    if call.name == "events:PutEvents":
        return (call.name, tuple((e["Source"], e.get("EventBusName"), e["DetailType"], sorted(json.loads(e["Detail"])))
                                 for e in p["Entries"]))
    return (call.name, tuple(sorted(p)))


def drift(recorded: list[Call], made: list[Call]) -> str | None:
    """Where ``made`` (a baseline's requests, answered by ``replay``) does not do what ``recorded`` did
    (``shape``); None when every call matches."""
    for i, (a, b) in enumerate(itertools.zip_longest(recorded, made)):
        if a is None or b is None or shape(a) != shape(b):
            return (f"call {i + 1}: the handler made {shape(a) if a else 'no call'}, "
                    f"the baseline {shape(b) if b else 'no call'}")
    return None


# ---------------------------------------------------------------- DynamoDB capacity
def _size(value: dict) -> int:
    (kind, v), = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        return len(v.lstrip("-").replace(".", "")) // 2 + 2
    if kind == "B":
        return len(v)
    if kind in ("SS", "NS", "BS"):
        return sum(_size({kind[0]: x}) for x in v)
    if kind == "M":
        return 3 + sum(len(k.encode()) + _size(x) + 1 for k, x in v.items())
    if kind == "L":
        return 3 + sum(_size(x) + 1 for x in v)
    return 1  # BOOL, NULL


def item_size(item: dict | None) -> int:
    return sum(len(k.encode()) + _size(v) for k, v in (item or {}).items())


_schemas: dict[str, tuple[list[str], list[str]]] = {}


def _schema(client, table: str) -> tuple[list[str], list[str]]:
    """(key attribute names, GSI hash key names) of a table."""
    if table not in _schemas:
        desc = client.describe_table(TableName=table)["Table"]
        _schemas[table] = ([k["AttributeName"] for k in desc["KeySchema"]],
                           [g["KeySchema"][0]["AttributeName"] for g in desc.get("GlobalSecondaryIndexes", [])])
    return _schemas[table]


_client = None


def _ddb():
    global _client
    if _client is None:
        import boto3

        _client = boto3.client("dynamodb")
    return _client


def _write_units(table: str, key: dict | None, item: dict | None = None) -> float:
    """1 unit per KB of the item (as written), plus the same again for each GSI it is in."""
    if item is None and key is not None:
        item = _ddb().get_item(TableName=table, Key=key).get("Item") or key
    _keys, gsi_hashes = _schema(_ddb(), table)
    units = max(1, math.ceil(item_size(item) / 1024))
    return units * (1 + sum(1 for g in gsi_hashes if g in (item or {})))


def _read_units(size: int, consistent: bool) -> float:
    return max(1, math.ceil(size / 4096)) * (1.0 if consistent else 0.5)


def dynamodb_capacity(call: Call) -> float:
    p, op = call.params, call.operation
    if op == "GetItem":
        return _read_units(item_size(call.parsed.get("Item")), p.get("ConsistentRead", False))
    if op in ("Query", "Scan"):
        return _read_units(sum(item_size(i) for i in call.parsed.get("Items", [])), p.get("ConsistentRead", False))
    if op == "PutItem":
        return _write_units(p["TableName"], None, p["Item"])
    if op in ("UpdateItem", "DeleteItem"):
        return _write_units(p["TableName"], p["Key"])
    if op == "TransactWriteItems":
        total = 0.0
        for entry in p["TransactItems"]:
            (kind, spec), = entry.items()
            total += 2 * (_write_units(spec["TableName"], None, spec["Item"]) if kind == "Put"
                          else _write_units(spec["TableName"], spec["Key"]))
        return total
    if op == "TransactGetItems":
        return sum(2 * _read_units(item_size(r.get("Item")), True) for r in call.parsed.get("Responses", []))
    if op == "BatchWriteItem":
        return sum(_write_units(t, None, r["PutRequest"]["Item"]) if "PutRequest" in r else 1.0
                   for t, reqs in p["RequestItems"].items() for r in reqs)
    if op == "BatchGetItem":
        return sum(_read_units(item_size(i), False) for items in call.parsed.get("Responses", {}).values()
                   for i in items)
    return 0.0
