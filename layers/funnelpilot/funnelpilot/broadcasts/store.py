"""Broadcast items in ContactsTable (README "Data model").

- ``pk = BROADCAST#<id>, sk = BROADCAST``: the state - ``status`` (draft -> scheduled -> sending -> sent;
  paused, cancelled), ``digest`` of the spec, ``when`` (the schedule), ``schedules`` (names of pending
  Scheduler schedules), ``winner`` (an A/B test's) and the ``decision`` it came from. Listed through gsi1 (``gsi1pk = BROADCASTS``, no Scan).
  Small, so the send worker reads it (consistently) for every chunk at 1 read unit.
- ``sk = SPEC#<digest>``: the spec itself, content included (immutable: an edit writes a new one), read
  once per container and digest by the worker.
- ``sk = WAVE#<instant>#<n>`` (a later wave's chunk: contact ids), ``sk = HELD#<chunk>`` (a chunk
  that met the broadcast paused: resume sends it again).
"""
import hashlib
import json
from functools import lru_cache

from funnelpilot import aws, clock
from funnelpilot.config import config
from funnelpilot.errors import InvalidField

DRAFT, SCHEDULED, SENDING, SENT, PAUSED, CANCELLED = "draft", "scheduled", "sending", "sent", "paused", "cancelled"
EDITABLE = (DRAFT, SCHEDULED)
INDEX = "BROADCASTS"


def key(bid: str, sk: str = "BROADCAST") -> dict:
    return {"pk": {"S": f"BROADCAST#{bid}"}, "sk": {"S": sk}}


def digest(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _state(item: dict) -> dict:
    out = {"id": item["pk"]["S"].removeprefix("BROADCAST#")}
    for name, value in item.items():
        if name in ("pk", "sk", "gsi1pk", "gsi1sk"):
            continue
        if "S" in value:
            out[name] = json.loads(value["S"]) if name in ("when", "decision") else value["S"]
        elif "N" in value:
            out[name] = int(value["N"])
        elif "SS" in value:
            out[name] = sorted(value["SS"])
    return out


def put_spec(bid: str, spec: dict) -> str:
    """Store the spec under its digest (idempotent); returns the digest."""
    d = digest(spec)
    aws.write("put_item", Item={**key(bid, f"SPEC#{d}"), "spec": {"S": json.dumps(spec, sort_keys=True)}})
    return d


def insert(bid: str, spec: dict) -> dict:
    d = put_spec(bid, spec)
    now = clock.iso()
    item = {**key(bid), "gsi1pk": {"S": INDEX}, "gsi1sk": {"S": bid}, "status": {"S": DRAFT}, "digest": {"S": d},
            "created_at": {"S": now}, "updated_at": {"S": now}}
    if not aws.conditional("put_item", Item=item, ConditionExpression="attribute_not_exists(pk)"):
        raise InvalidField("name", f"name: a broadcast named {bid!r} exists (update it, or choose another name)")
    return _state(item)


def state(bid: str, consistent: bool = True) -> dict | None:
    """The broadcast's state item as a dict (None: no such broadcast)."""
    item = aws.dynamodb().get_item(TableName=config().table, Key=key(bid), ConsistentRead=consistent).get("Item")
    return _state(item) if item else None


@lru_cache(maxsize=64)
def spec(bid: str, d: str) -> dict:
    """The spec of digest ``d`` (immutable: cached per container)."""
    item = aws.dynamodb().get_item(TableName=config().table, Key=key(bid, f"SPEC#{d}")).get("Item")
    if item is None:
        raise LookupError(f"broadcast {bid}: no spec {d}")
    return json.loads(item["spec"]["S"])


def listing() -> list[dict]:
    """Every broadcast's state, by id (a Query of gsi1)."""
    request = {"TableName": config().table, "IndexName": "gsi1", "KeyConditionExpression": "gsi1pk = :p",
               "ExpressionAttributeValues": {":p": {"S": INDEX}}}
    out = []
    while True:
        page = aws.dynamodb().query(**request)
        out += [_state(i) for i in page["Items"]]
        if "LastEvaluatedKey" not in page:
            return out
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def transition(bid: str, to: str, allowed_from: tuple[str, ...], **fields) -> bool:
    """Set ``status`` to ``to`` (and ``fields``: strings, lists of strings, or None to remove) if it is one
    of ``allowed_from``; False when it was not (nothing written)."""
    names, values = {"#s": "status"}, {":to": {"S": to}, ":now": {"S": clock.iso()}}
    values |= {f":f{i}": {"S": s} for i, s in enumerate(allowed_from)}
    sets, removes = ["#s = :to", "updated_at = :now"], []
    for i, (name, value) in enumerate(fields.items()):
        names[f"#a{i}"] = name
        if value is None or value == []:
            removes.append(f"#a{i}")
            continue
        sets.append(f"#a{i} = :a{i}")
        values[f":a{i}"] = ({"SS": list(value)} if isinstance(value, (list, set, tuple)) else
                            {"S": json.dumps(value) if isinstance(value, dict) else str(value)})
    expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
    return aws.conditional("update_item", Key=key(bid), UpdateExpression=expression, ExpressionAttributeNames=names,
                           ExpressionAttributeValues=values,
                           ConditionExpression=f"#s IN ({', '.join(f':f{i}' for i in range(len(allowed_from)))})")


def add_schedules(bid: str, names: list[str]) -> None:
    """Remember Scheduler schedules made for the broadcast (cancel deletes those still pending)."""
    if names:
        aws.write("update_item", Key=key(bid), UpdateExpression="ADD schedules :n",
                  ExpressionAttributeValues={":n": {"SS": sorted(set(names))}})


def set_winner(bid: str, variant: str, decision: dict) -> str:
    """Record the A/B winner and the ``decision`` it came from (``metric``: the test's; ``by``: the one that decided
    it, or ``tie``; ``at``; ``sample``: per variant sent, human opens and clicks) unless a winner is recorded;
    the recorded winner."""
    return aws.write("update_item", Key=key(bid),
                     UpdateExpression="SET winner = if_not_exists(winner, :w), decision = if_not_exists(decision, :d)",
                     ExpressionAttributeValues={":w": {"S": variant}, ":d": {"S": json.dumps(decision, sort_keys=True)}},
                     ReturnValues="ALL_NEW")["Attributes"]["winner"]["S"]


# ---------------------------------------------------------------- chunks kept for later
def put_chunks(bid: str, prefix: str, chunks: dict[str, dict], expires_at: int | None = None) -> None:
    """Write chunk items ``sk = <prefix><chunk id>`` (BatchWriteItem): a re-run writes the same ids,
    so nothing is doubled. ``expires_at``: their TTL."""
    ttl = {"expires_at": {"N": str(expires_at)}} if expires_at else {}
    aws.batch_write([{"PutRequest": {"Item": {**key(bid, f"{prefix}{cid}"), "chunk": {"S": json.dumps(body)}, **ttl}}}
                     for cid, body in chunks.items()])


def hold(bid: str, name: str, body: dict) -> bool:
    """Keep ``body`` (a chunk, or a wave's ``{"due": detail}``) for ``resume`` while the broadcast is
    paused. False when it was resumed meanwhile and this caller took the item back: it goes on itself
    (the status is read after the write, and resume reads the held items after changing it)."""
    put_chunks(bid, "HELD#", {name: body})
    current = state(bid)
    return not (current and current["status"] != PAUSED and take_chunk(bid, f"HELD#{name}"))


def chunks(bid: str, prefix: str, cursor: dict | None = None, limit: int = 100) -> tuple[list[tuple[str, dict]], dict | None]:
    """One page of the chunk items under ``prefix``: ([(sk, body)], cursor of the next page or None)."""
    request = {"TableName": config().table, "KeyConditionExpression": "pk = :p AND begins_with(sk, :s)",
               "ExpressionAttributeValues": {":p": {"S": f"BROADCAST#{bid}"}, ":s": {"S": prefix}}, "Limit": limit,
               "ConsistentRead": True}
    if cursor:
        request["ExclusiveStartKey"] = cursor
    page = aws.dynamodb().query(**request)
    return ([(i["sk"]["S"], json.loads(i["chunk"]["S"])) for i in page["Items"]], page.get("LastEvaluatedKey"))


def take_chunk(bid: str, sk: str) -> bool:
    """Delete a chunk item; True for the one caller that deleted it (who then sends it)."""
    return aws.conditional("delete_item", Key=key(bid, sk), ConditionExpression="attribute_exists(pk)")
