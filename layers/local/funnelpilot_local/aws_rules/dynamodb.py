"""DynamoDB as an account enforces it: item and transaction limits, transaction conflicts.

Limits (``Rules.dynamodb_limits``), checked before the request reaches moto so nothing is
half-written: an item is at most 400 KB (409,600 bytes, sized as DynamoDB sizes items:
names and values, numbers by significant digits, 3 bytes per list/map plus 1 per element);
a PutItem, a BatchWriteItem put or a transaction's Put over it is a ``ValidationException``
("Item size has exceeded..."), an UpdateItem whose result would be over it too ("Item size to
update has exceeded..."), a transaction's Update a cancellation with reason ``ValidationError``;
a TransactWriteItems holds at most 100 actions and 4 MB of items (``ValidationException``).

Conflicts, the three cases of "Transaction conflict handling in DynamoDB": while DynamoDB
processes a request (here: while moto does, holding moto_adapter's DynamoDB lock) its items
are busy, and a request sent meanwhile (checked in the gate's ``before``, on its way to wait
for that lock) may conflict with it. Time queued behind the lock is not counted as in flight:
it is this process's artefact (one lock for every item); counting it made a transaction's
window ~250 ms under 50 threads (measured), not the few ms of an account. A TransactWriteItems
touching an item of an in-flight TransactWriteItems, or a TransactGetItems touching an item of
any in-flight write, is cancelled: ``TransactionCanceledException`` with ``{"Code":
"TransactionConflict"}`` for that item and ``{"Code": "None"}`` for the others. A PutItem,
UpdateItem or DeleteItem on an item of an in-flight transaction fails with
``TransactionConflictException``. Single-item writes do not conflict with each other, nor
cancel a transaction sent after them (DynamoDB serialises those). botocore retries neither
error: the caller must (funnelpilot.aws.transact_write).

``Rules.conflict_rate`` also cancels that share of TransactWriteItems, chosen from
(seed, the request's hash, how many times this same request was seen): the same requests
conflict whatever the thread scheduling. :func:`hold` lets a test keep one write in flight.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import threading
from collections import Counter
from decimal import Decimal

from funnelpilot_local import aws_rules, moto_adapter
from funnelpilot_local.aws_rules import Call, Rule, Rules, error
from funnelpilot_local.template import ACCOUNT

MAX_ITEM = 400 * 1024
MAX_TRANSACTION = 4 * 1024 * 1024
MAX_ACTIONS = 100
PUT_TOO_LARGE = "Item size has exceeded the maximum allowed size"
UPDATE_TOO_LARGE = "Item size to update has exceeded the maximum allowed size"
ONGOING = "Transaction is ongoing for the item"
SINGLE_WRITES = {"PutItem", "UpdateItem", "DeleteItem"}
_CHECKED = SINGLE_WRITES | {"TransactWriteItems", "TransactGetItems", "BatchWriteItem"}


# ---------------------------------------------------------------- item size
def item_size(item: dict) -> int:
    """An item's size as DynamoDB counts it (docs: "DynamoDB item sizes and formats")."""
    return sum(_utf8(name) + _value_size(value) for name, value in item.items())


def _utf8(text: str) -> int:
    return len(text.encode("utf-8"))


def _raw(value) -> int:
    return len(value) if isinstance(value, bytes | bytearray) else len(base64.b64decode(value))


def _number(text: str) -> int:
    digits = Decimal(text).normalize().as_tuple().digits  # sign, leading and trailing zeros dropped
    return (len(digits) + 1) // 2 + 1


def _value_size(value: dict) -> int:
    (kind, v), = value.items()
    if kind == "S":
        return _utf8(v)
    if kind == "N":
        return _number(v)
    if kind == "B":
        return _raw(v)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(_utf8(s) for s in v)
    if kind == "NS":
        return sum(_number(n) for n in v)
    if kind == "BS":
        return sum(_raw(b) for b in v)
    if kind == "L":
        return 3 + sum(1 + _value_size(e) for e in v)
    if kind == "M":
        return 3 + sum(1 + _utf8(k) + _value_size(e) for k, e in v.items())
    raise ValueError(f"unknown DynamoDB type {kind!r}")


_WORD = re.compile(r"[#:]?[A-Za-z0-9_]+")


def _updated_size(region: str, params: dict) -> int:
    """The size of the item an update leaves (computed on a copy by moto's own expression code)."""
    result = moto_adapter.dynamodb_updated_item(
        ACCOUNT, region, params["TableName"], params["Key"], params["UpdateExpression"],
        params.get("ExpressionAttributeNames"), params.get("ExpressionAttributeValues"))
    return item_size(result or params["Key"])


def _update_bound(region: str, params: dict) -> int | None:
    """An upper bound of :func:`_updated_size` without applying the update (which costs as much as the
    request): every operand of an update expression is resolved against the item as it is before the
    update, so the item grows at most by each value placeholder's size, each attribute path's (a part of
    the item: at most its size; every word of the expression is counted as one), the names, and 32 bytes
    per character of the expression (a number's digits, list and map overheads, new map keys). None when
    a placeholder has no value (the exact computation reports it)."""
    expression, names, values = (params["UpdateExpression"], params.get("ExpressionAttributeNames") or {},
                                 params.get("ExpressionAttributeValues") or {})
    try:
        current = moto_adapter.dynamodb_item(ACCOUNT, region, params["TableName"], params["Key"])
    except Exception:  # noqa: BLE001 - no such table or an invalid key: the exact computation reports it
        return None
    before = item_size(current or params["Key"])
    bound = before + 32 * len(expression)
    for word in _WORD.findall(expression):
        if word[0] == ":":
            if word not in values:
                return None
            bound += _value_size(values[word])
        else:
            bound += before + (_utf8(names.get(word, "")) if word[0] == "#" else 0)
    return bound


# ---------------------------------------------------------------- the rule family
class _Hold:
    def __init__(self, item: tuple):
        self.item, self.taken = item, False
        self.entered, self.refused, self.released = threading.Event(), threading.Event(), threading.Event()

    def wait(self, timeout: float = 10.0) -> None:
        """Return once the held write is in flight (its items busy, the call not made yet)."""
        if not self.entered.wait(timeout):
            raise TimeoutError(f"no write on {self.item} came to be held")

    def release(self) -> None:
        """Let the held write go on (the end of the ``hold`` block does too). ``refused`` is set
        once another request was refused for conflicting with it."""
        self.released.set()


class DynamoDB(Rule):
    def __init__(self, rules: Rules):
        self.rules = rules
        self._lock = threading.Lock()
        self._transactions: Counter = Counter()  # item -> in-flight TransactWriteItems touching it
        self._singles: Counter = Counter()  # item -> in-flight single-item writes (and BatchWriteItem puts)
        self._seen: Counter = Counter()  # request hash -> TransactWriteItems seen with it
        self._keys: dict[tuple, tuple] = {}  # (region, table) -> key attribute names
        self._holds: list[_Hold] = []
        moto_adapter.dynamodb_observer = self

    # ------------------------------------------------------------ gate interface
    def before(self, call: Call) -> None:
        if call.service != "dynamodb" or call.operation not in _CHECKED:
            return
        actions = self._actions(call)
        if self.rules.dynamodb_limits:
            self._check_limits(call, actions)
        if call.operation == "TransactWriteItems" and self.rules.conflict_rate > 0:
            self._inject(call, actions)
        if self.rules.transaction_conflicts:
            self._enter(call, [item for _, item, _ in actions])

    def after(self, call: Call, result, error_) -> None:
        if call.service == "dynamodb":  # not left for the next request if it never reached moto
            _local.pending = None

    # ------------------------------------------------------------ what a request touches
    def _actions(self, call: Call) -> list[tuple[str, tuple, dict]]:
        """(action, item id, action params) for each item the request touches, in order."""
        p, region = call.params, call.client.meta.region_name
        if call.operation in SINGLE_WRITES:
            key = p["Item"] if call.operation == "PutItem" else p["Key"]
            return [(call.operation, self._item(region, p["TableName"], key), p)]
        if call.operation == "BatchWriteItem":
            return [("PutItem" if "PutRequest" in r else "DeleteItem",
                     self._item(region, table, (r.get("PutRequest") or {}).get("Item") or r["DeleteRequest"]["Key"]),
                     {"TableName": table, **(r.get("PutRequest") or r["DeleteRequest"])})
                    for table, requests in p.get("RequestItems", {}).items() for r in requests]
        out = []
        for entry in p.get("TransactItems", []):
            (kind, op), = entry.items()
            out.append((kind, self._item(region, op["TableName"], op["Item"] if kind == "Put" else op["Key"]), op))
        return out

    def _item(self, region: str, table: str, attributes: dict) -> tuple:
        names = self._keys.get((region, table))
        if names is None:
            try:
                names = self._keys[(region, table)] = moto_adapter.dynamodb_key_names(ACCOUNT, region, table)
            except Exception:  # noqa: BLE001 - no such table: the request itself fails
                names = tuple(sorted(attributes))
        return (region, table, tuple((n, json.dumps(attributes.get(n), sort_keys=True, default=_plain))
                                     for n in names))

    # ------------------------------------------------------------ limits
    def _check_limits(self, call: Call, actions: list) -> None:
        op = call.operation
        if op == "TransactWriteItems" and len(actions) > MAX_ACTIONS:
            raise error(op, "ValidationException", "1 validation error detected: Value at 'TransactItems' failed to "
                        f"satisfy constraint: Member must have length less than or equal to {MAX_ACTIONS}")
        if op == "TransactGetItems":
            return
        region, total, too_large, bounded = call.client.meta.region_name, 0, [], []
        for i, (kind, _, params) in enumerate(actions):
            if kind in ("PutItem", "Put"):
                size = item_size(params["Item"])
                if size > MAX_ITEM:
                    raise error(op, "ValidationException", PUT_TOO_LARGE)
            elif kind in ("UpdateItem", "Update") and params.get("UpdateExpression"):
                size = _update_bound(region, params)
                if size is None or size > MAX_ITEM:
                    size = _updated_size(region, params)
                else:
                    bounded.append((i, size))
                if size > MAX_ITEM:
                    if op == "UpdateItem":
                        raise error(op, "ValidationException", UPDATE_TOO_LARGE)
                    too_large.append(i)
            else:
                size = item_size(params["Key"])
            total += size
        if op == "TransactWriteItems" and total > MAX_TRANSACTION and bounded:  # the exact sizes decide
            total -= sum(bound - _updated_size(region, actions[i][2]) for i, bound in bounded)
        if op == "TransactWriteItems" and total > MAX_TRANSACTION:
            raise error(op, "ValidationException", "Transaction request cannot be larger than 4 MB")
        if too_large:
            raise _cancelled(op, [("ValidationError", UPDATE_TOO_LARGE) if i in too_large else None
                                  for i in range(len(actions))])

    # ------------------------------------------------------------ conflicts
    def _inject(self, call: Call, actions: list) -> None:
        request = hashlib.sha256(json.dumps(call.params, sort_keys=True, default=_plain).encode()).hexdigest()
        with self._lock:
            self._seen[request] += 1
            seen = self._seen[request]
        digest = hashlib.sha256(f"dynamodb:{self.rules.seed}:{request}:{seen}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2 ** 64 < self.rules.conflict_rate:
            victim = int.from_bytes(digest[8:12], "big") % len(actions)
            raise _cancelled(call.operation, [("TransactionConflict", ONGOING) if i == victim else None
                                              for i in range(len(actions))])

    def _enter(self, call: Call, items: list[tuple]) -> None:
        """Refuse the request if one of its items is busy; else it makes them busy once moto
        starts processing it (``entered``), or at once when a test holds it."""
        op = call.operation
        with self._lock:
            if op in ("TransactWriteItems", "TransactGetItems"):
                busy = [self._transactions[i] > 0 or (op == "TransactGetItems" and self._singles[i] > 0)
                        for i in items]
                if any(busy):
                    self._refused([i for i, b in zip(items, busy) if b])
                    raise _cancelled(op, [("TransactionConflict", ONGOING) if b else None for b in busy])
                if op == "TransactGetItems":
                    return  # a read makes nothing busy
                counter = self._transactions
            else:
                if op in SINGLE_WRITES and any(self._transactions[i] > 0 for i in items):
                    self._refused(items)
                    raise error(op, "TransactionConflictException", ONGOING)
                counter = self._singles
            holds = [h for h in self._holds if not h.taken and h.item in items]
            for h in holds:
                h.taken = True
        _local.pending = (self, counter, items)
        if holds:  # held: busy from now until released, then on like any other request
            self.entered()
            for h in holds:
                h.entered.set()
                h.released.wait(30)
            self.left()
            _local.pending = (self, counter, items)

    def _refused(self, items: list[tuple]) -> None:
        for h in self._holds:
            if h.taken and h.item in items:
                h.refused.set()

    def entered(self) -> None:
        """moto_adapter: moto starts processing this thread's request (it holds the DynamoDB lock)."""
        pending = getattr(_local, "pending", None)
        _local.pending = None
        if pending is None or pending[0] is not self:
            return
        _, counter, items = pending
        with self._lock:
            for item in items:
                counter[item] += 1
        _local.busy = (counter, items)

    def left(self) -> None:
        """moto_adapter: moto is done with this thread's request."""
        busy = getattr(_local, "busy", None)
        _local.busy = None
        if busy is None:
            return
        counter, items = busy
        with self._lock:
            for item in items:
                counter[item] -= 1
                if counter[item] <= 0:
                    del counter[item]


_local = threading.local()  # the request this thread is making: pending (checked), then busy (in moto)


def _cancelled(operation: str, reasons: list[tuple[str, str] | None]):
    codes = ", ".join(r[0] if r else "None" for r in reasons)
    return error(operation, "TransactionCanceledException",
                 f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]",
                 CancellationReasons=[{"Code": r[0], "Message": r[1]} if r else {"Code": "None"} for r in reasons])


def _plain(value):
    return value.hex() if isinstance(value, bytes | bytearray) else str(value)


@contextlib.contextmanager
def hold(table: str, key: dict, region: str = "us-east-1"):
    """Keep the next write touching ``key`` of ``table`` in flight until the block ends, so a
    test can run a second writer against it deterministically::

        with dynamodb.hold(table, key) as held:
            first = threading.Thread(target=write); first.start()
            held.wait()   # its items are busy now
            write()       # conflicts
        first.join()      # the held write then goes through
    """
    rule = next(r for r in aws_rules.active() if isinstance(r, DynamoDB))
    h = _Hold(rule._item(region, table, key))
    with rule._lock:
        rule._holds.append(h)
    try:
        yield h
    finally:
        h.released.set()
        with rule._lock:
            rule._holds.remove(h)
