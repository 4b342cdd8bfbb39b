"""Importing a list from a CSV file (a Mailchimp/Kit/Sendy export): validate every row, then write.

``validate`` reads the whole file and reports every problem as ``line N, column X: ...`` before
anything is written. ``apply`` writes one batch of rows, as the import Lambda receives it from a
Step Functions Distributed Map (``{"Items": [...], "BatchInput": {...}}``: rows keyed by the file's
own header names); locally the CLI invokes the same Lambda with batches of the same shape.

Re-running a file changes nothing: a row is compared with the profile it would change (one
BatchGetItem per batch) and written only where it adds something (a list, a tag, a field, a
stricter status), conditionally on the status read, so a concurrent change makes the row be read
and planned again. Statuses only ever get stricter: an unsubscribed, bounced or complained address
(from the file or from funnelpilot) is never made subscribable by an import. Imported people start
no funnel (no ``contact.subscribed``) unless the import names one to enter (``funnel.handoff``).
Their consent record says where the consent came from ("imported from FILE on DATE, source ..."),
with no IP address or user agent: the importer's are not the person's. An import emits no event, so
the rows' own writes keep the lists' segments (``list:<name>``, what an export of a list reads): a
subscribed person joins the segments of the lists the row adds, one made unsubscribed or suppressed
leaves every list segment.
"""
import csv
import io
import re
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal

from funnelpilot import aws, bus, clock, outbox, segments, tokens
from funnelpilot.audience import fields as custom_fields
from funnelpilot.channels.phone import parse_phone
from funnelpilot.config import config
from funnelpilot.consent import require_list
from funnelpilot.contacts import _NOT_A_NAME, _SLUG, check_timezone, parse_email
from funnelpilot.errors import InvalidField, TransientError
from funnelpilot.models import PROFILE, ConsentRecord

COLUMNS = ("email", "first_name", "lists", "tags", "timezone", "consent_date", "consent_source", "status", "phone",
           "sms_consent")
# Other tools' header names (after lower-casing and turning spaces and dashes into "_").
ALIASES = {"email_address": "email", "e_mail": "email", "fname": "first_name", "firstname": "first_name",
           "lname": "last_name", "lastname": "last_name", "list": "lists", "tag": "tags", "time_zone": "timezone",
           "tz": "timezone", "optin_time": "consent_date", "consent_time": "consent_date", "phone_number": "phone",
           "mobile": "phone", "sms_opt_in": "sms_consent"}
IGNORE = "-"  # ``--map "COLUMN=-"``: a column deliberately not imported
# A file's status -> (funnelpilot status, status_reason)
STATUSES = {"subscribed": ("active", None), "unsubscribed": ("unsubscribed", "imported: unsubscribed"),
            "bounced": ("suppressed", "imported: bounced"), "complained": ("suppressed", "imported: complained")}
_RANK = {"active": 0, "pending": 0, "unsubscribed": 1, "suppressed": 2}
_SPLIT = re.compile(r"[;,|]")
MAX_ITEMS = 100  # TransactWriteItems' limit of actions
MAX_ERRORS_SHOWN = 200


@dataclass(frozen=True)
class Row:
    email: str
    first_name: str | None = None
    lists: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    timezone: str | None = None
    consent_date: str | None = None
    consent_source: str | None = None
    status: str = "subscribed"
    phone: str | None = None  # E.164
    sms_consent: bool = False  # true: the SMS consent the row's phone was given (since consent_date)
    fields: dict = field(default_factory=dict)


@dataclass
class Validation:
    rows: list[dict]  # the file's rows (header -> cell), once per address
    errors: list[str]
    total: int = 0
    invalid_rows: int = 0
    duplicates: int = 0
    by_column: dict = field(default_factory=dict)

    def summary(self) -> str:
        if self.errors:
            where = ", ".join(f"{c} {n}" for c, n in sorted(self.by_column.items(), key=lambda kv: -kv[1]))
            return (f"{self.total} rows: {self.total - self.invalid_rows} valid, {self.invalid_rows} invalid "
                    f"({len(self.errors)} problems: {where}); nothing was written")
        return f"{self.total} rows valid, {len(self.rows)} people ({self.duplicates} duplicate rows of the same address)"


def column_of(header: str, mapping: dict[str, str]) -> str:
    """The column a file's header name stands for (``mapping``: header -> column, ``-`` to ignore)."""
    if header in mapping:
        return mapping[header]
    name = re.sub(r"[\s-]+", "_", header.replace("\ufeff", "").strip().lower())
    return ALIASES.get(name, name)


def check_header(headers: list[str], mapping: dict[str, str]) -> list[str]:
    """Errors of the header line: an unknown column, a column twice, no email column."""
    errors, seen = [], {}
    for header in headers:
        col = column_of(header, mapping)
        if col == IGNORE:
            continue
        if col in seen:
            errors.append(f"line 1, column {header}: the same column as {seen[col]}")
        elif col not in COLUMNS and col not in custom_fields.declared() and not custom_fields.keep_undeclared():
            errors.append(f"line 1, column {header}: unknown column; declare the field in infra/fields.yaml, map it "
                          f"(--map '{header}=COLUMN') or ignore it (--map '{header}=-'); columns: "
                          f"{', '.join(COLUMNS + tuple(custom_fields.declared()))}")
        seen[col] = header
    if "email" not in seen:
        errors.append("line 1: no email column")
    return errors


class RowProblems(InvalidField):
    """Every problem of one row (``problems``: an ``InvalidField`` per column); the first one's words."""

    def __init__(self, problems: list[InvalidField]):
        super().__init__(problems[0].field, problems[0].message)
        self.problems = problems


def parse_row(cells: dict, mapping: dict[str, str], default_list: str) -> Row:
    """One row (header -> cell text) as a ``Row``; ``RowProblems`` (an ``InvalidField``) naming every
    column that is wrong."""
    by_col = {}
    for header, value in cells.items():
        col = column_of(header, mapping)
        if col != IGNORE:
            by_col[col] = (value or "").strip()
    parsed, problems = {}, []
    checks = {"email": lambda v: parse_email(v), "first_name": _first_name, "lists": lambda v: _lists(v, default_list),
              "tags": _tags, "status": _status, "consent_source": _source, "timezone": lambda v: check_timezone(v or None),
              "consent_date": lambda v: _consent_date(v or None), "phone": parse_phone,
              "sms_consent": lambda v: bool(v) and custom_fields.boolean("sms_consent", v)}
    for column, check in checks.items():
        try:
            parsed[column] = check(by_col.get(column))
        except InvalidField as exc:
            problems.append(InvalidField(column, exc.message))
    if parsed.get("sms_consent") and not by_col.get("phone"):
        problems.append(InvalidField("sms_consent", "sms_consent needs the row's phone"))
    parsed["fields"], field_problems = custom_fields.checked({c: v for c, v in by_col.items() if c not in COLUMNS})
    problems += field_problems
    if problems:
        raise RowProblems(problems)
    return Row(**parsed)


def _first_name(text: str | None) -> str | None:
    if text and (len(text) > 100 or _NOT_A_NAME.search(text)):
        raise InvalidField("first_name", "first_name is not a name (at most 100 characters, no link or address)")
    return text or None


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(sorted({v.strip().lower() for v in _SPLIT.split(text or "") if v.strip()}))


def _lists(text: str | None, default_list: str) -> tuple[str, ...]:
    lists = _split(text) or (default_list,)
    for name in lists:
        require_list(name)
    return lists


def _tags(text: str | None) -> tuple[str, ...]:
    tags = _split(text)
    if bad := [t for t in tags if not _SLUG.match(t)]:
        raise InvalidField("tags", f"tag {bad[0][:64]!r} is not a short slug (a-z, 0-9, - and _)")
    return tags


def _status(text: str | None) -> str:
    status = (text or "subscribed").lower()
    if status not in STATUSES:
        raise InvalidField("status", f"status must be one of {', '.join(STATUSES)}")
    return status


def _source(text: str | None) -> str | None:
    if text and (len(text) > 200 or any(ord(c) < 32 for c in text)):
        raise InvalidField("consent_source", "consent_source is at most 200 characters of text")
    return text or None


def _consent_date(text: str | None) -> str | None:
    """ISO 8601 UTC; a date (YYYY-MM-DD) or a date and time (``T`` or a space, UTC if no offset)."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidField("consent_date", "consent_date must be a date (YYYY-MM-DD) or date and time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if moment.timestamp() > clock.now() + 86400:
        raise InvalidField("consent_date", "consent_date is in the future")
    if len(text) == 10:
        return date.fromisoformat(text).isoformat()
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def validate(text: str, mapping: dict[str, str], default_list: str) -> Validation:
    """Every row of a CSV file checked; ``rows`` keeps the first row of each address (a later
    identical one is a duplicate; a later different one an error naming both lines)."""
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""), restkey="\x00extra")
    headers = reader.fieldnames or []
    result = Validation(rows=[], errors=check_header(headers, mapping))
    if result.errors:
        result.by_column["header"] = len(result.errors)
        return result
    first: dict[str, tuple[int, Row]] = {}
    line = reader.line_num  # a row starts on the line after the previous one ended (cells may span lines)
    for cells in reader:
        start, line = line + 1, reader.line_num
        result.total += 1
        try:
            if "\x00extra" in cells or None in cells.values():
                raise InvalidField("-", f"{len(headers)} cells expected, as in the header")
            row = parse_row(cells, mapping, default_list)
        except InvalidField as exc:
            result.invalid_rows += 1
            for problem in getattr(exc, "problems", [exc]):
                header = _header(headers, mapping, problem.field)
                where = f"line {start}" + ("" if problem.field == "-" else f", column {header}")
                result.errors.append(f"{where}: {problem.message}")
                key = "cells" if problem.field == "-" else header
                result.by_column[key] = result.by_column.get(key, 0) + 1
            continue
        if row.email in first:
            seen_line, seen = first[row.email]
            if seen != row:
                result.invalid_rows += 1
                result.errors.append(f"line {start}, column {_header(headers, mapping, 'email')}: the same address "
                                     f"as line {seen_line}, with other values (keep one of the two)")
                result.by_column["email"] = result.by_column.get("email", 0) + 1
            else:
                result.duplicates += 1
            continue
        first[row.email] = (start, row)
        result.rows.append(cells)
    return result


def _header(headers: list[str], mapping: dict, column: str) -> str:
    return next((h for h in headers if column_of(h, mapping) == column), column)


# ------------------------------------------------------------------ writing
def apply(items: list[dict], batch: dict) -> dict:
    """Write one batch of rows; counts ``created``, ``updated``, ``unchanged``, ``skipped`` (an
    erased person is not re-created by an import), ``entered`` (handed to ``batch["enter"]``).

    ``batch``: ``file`` (its name, for the consent record), ``imported_at`` (ISO date),
    ``list`` (for rows naming none), ``mapping``, ``enter`` (a funnel, or none)."""
    mapping, default_list = batch.get("mapping") or {}, batch.get("list") or "newsletter"
    rows: dict[str, Row] = {}
    for item in items:
        row = parse_row(item, mapping, default_list)  # the file was validated: this only guards
        rows.setdefault(row.email, row)
    counts = dict.fromkeys(("created", "updated", "unchanged", "skipped", "entered"), 0)
    pending, cids = list(rows.values()), {email: tokens.contact_id(email) for email in rows}
    for _ in range(5):
        olds = _profiles([cids[r.email] for r in pending])
        planned = []
        for row in pending:
            cid = cids[row.email]
            plan = _plan(row, cid, olds.get(cid), batch)
            if plan is None:
                counts["unchanged"] += 1
            elif plan == "erased":
                counts["skipped"] += 1
            else:
                planned.append((row, cid in olds, plan))
        pending = _commit(planned, counts)
        if not pending:
            return counts
    raise TransientError(f"{len(pending)} rows kept changing while they were imported")


def _profiles(cids: list[str]) -> dict[str, dict]:
    """The profiles that exist (consistent reads, 100 keys a request)."""
    table, found = config().table, {}
    for i in range(0, len(cids), 100):
        request = {table: {"Keys": [{"pk": {"S": c}, "sk": {"S": PROFILE}} for c in cids[i:i + 100]],
                           "ConsistentRead": True}}
        while request:
            resp = aws.dynamodb().batch_get_item(RequestItems=request)
            found |= {item["pk"]["S"]: item for item in resp["Responses"].get(table, [])}
            request = resp.get("UnprocessedKeys") or None
    return found


def _same(new, old: dict | None) -> bool:
    if old is None:
        return False
    if isinstance(new, bool):
        return old.get("BOOL") is new
    if isinstance(new, (int, float)):
        return "N" in old and Decimal(old["N"]) == Decimal(str(new))
    return old.get("S") == new


def _plan(row: Row, cid: str, old: dict | None, batch: dict) -> list[dict] | str | None:
    """The transaction items that bring the profile to what the row says (None: nothing to change).
    A new person's profile is a conditional Put (the cheapest write to check), an existing one's
    an Update of what changes, conditional on the status read."""
    seen = old["status"]["S"] if old and "status" in old else None
    if seen == "erased":
        return "erased"
    target, reason = STATUSES[row.status]
    now, table, key = clock.iso(), config().table, {"pk": {"S": cid}, "sk": {"S": PROFILE}}
    if old is None:
        status, new_lists = target, list(row.lists)
        item = {**key, "email": {"S": row.email}, "status": {"S": status}, "lists": {"SS": new_lists},
                "created_at": {"S": now}, "updated_at": {"S": now}, "imported_at": {"S": now},
                "incarnation": {"S": uuid.uuid4().hex[:12]}}  # new on every new profile (funnelpilot.erasure)
        optional = {"status_reason": reason and {"S": reason}, "first_name": row.first_name and {"S": row.first_name},
                    "timezone": row.timezone and {"S": row.timezone}, "tags": row.tags and {"SS": list(row.tags)},
                    "phone": row.phone and {"S": row.phone},
                    "sms_consent_at": row.sms_consent and {"S": row.consent_date or batch["imported_at"]},
                    "properties": row.fields and {"M": {k: custom_fields.attribute(v) for k, v in row.fields.items()}}}
        joined, left = (_list_segments(new_lists) if status in segments.LIST_STATUSES else []), []
        optional["segments"] = joined and {"SS": joined}
        item |= {k: v for k, v in optional.items() if v}
        items = [{"Put": {"TableName": table, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}}]
    else:
        status = target if _RANK[target] > _RANK.get(seen, 0) else None
        update, new_lists, joined, left = _update(row, old, seen, status and (status, reason), now)
        if update is None:
            return None
        items = [{"Update": {"TableName": table, "Key": key, **update}}]
    items += [{"Put": {"TableName": table, "Item": segments.membership_item(cid, s)}} for s in joined]
    items += [{"Delete": {"TableName": table, "Key": segments.membership_key(cid, s)}} for s in left]
    source = (f"imported from {batch['file']} on {batch['imported_at']}, source: {row.consent_source or 'not given'}"
              f", status there: {row.status}")
    given = row.consent_date or batch["imported_at"]
    for name in new_lists:
        record = ConsentRecord(cid, f"CONSENT#{given}#{name}#imported", list_name=name, source=source, given_at=given,
                               ip=None, user_agent=None, confirmation="imported",
                               sms="given" if row.sms_consent else None)
        items.append({"Put": {"TableName": table, "Item": record.serialize()}})
    if batch.get("enter") and old is None and status == "active":
        items.append(outbox.put(bus.event("funnel.handoff", cid, event_id=tokens.digest_id("im", cid, batch["enter"]),
                                          to=batch["enter"], **{"from": "import"})))
    return items


def _list_segments(lists) -> list[str]:
    return [segments.list_segment(name) for name in sorted(lists)]


def _update(row: Row, old: dict, seen: str | None, status: tuple | None, now: str) -> tuple:
    """(UpdateItem arguments, the lists it adds, the list segments it joins, those it leaves) of an
    existing profile; the arguments are None when nothing changes."""
    sets, names, values = [], {"#s": "status"}, {}
    if status:
        sets.append("#s = :status")
        values[":status"] = {"S": status[0]}
        if status[1]:
            sets.append("status_reason = :reason")
            values[":reason"] = {"S": status[1]}
    if row.first_name and not _same(row.first_name, old.get("first_name")):
        sets.append("first_name = :first_name")
        values[":first_name"] = {"S": row.first_name}
    removes, new_phone = [], bool(row.phone) and not _same(row.phone, old.get("phone"))
    if new_phone:
        sets.append("phone = :phone")
        values[":phone"] = {"S": row.phone}
        if not row.sms_consent and "sms_consent_at" in old:
            removes.append("sms_consent_at")  # given for the number it replaces
    if row.sms_consent and ("sms_consent_at" not in old or new_phone):
        sets.append("sms_consent_at = :sms")
        values[":sms"] = {"S": row.consent_date or now}
    if row.timezone and not _same(row.timezone, old.get("timezone")):
        sets.append("#tz = :tz")  # a reserved word
        names["#tz"] = "timezone"
        values[":tz"] = {"S": row.timezone}
    props = old.get("properties", {}).get("M")
    changed = {k: v for k, v in row.fields.items() if not _same(v, (props or {}).get(k))}
    if changed:
        names["#p"] = "properties"
        if props is None:
            sets.append("#p = :props")
            values[":props"] = {"M": {k: custom_fields.attribute(v) for k, v in changed.items()}}
        else:
            for i, (k, v) in enumerate(changed.items()):
                sets.append(f"#p.#f{i} = :f{i}")
                names[f"#f{i}"] = k
                values[f":f{i}"] = custom_fields.attribute(v)
    new_lists = sorted(set(row.lists) - set(old.get("lists", {}).get("SS", [])))
    new_tags = sorted(set(row.tags) - set(old.get("tags", {}).get("SS", [])))
    adds = []
    if new_lists:
        adds.append("lists :lists")
        values[":lists"] = {"SS": new_lists}
    if new_tags:
        adds.append("tags :tags")
        values[":tags"] = {"SS": new_tags}
    if not sets and not adds:
        return None, [], [], []
    joined, left = [], []
    if (status[0] if status else seen) in segments.LIST_STATUSES:
        opted_out = set(old.get("unsubscribed_lists", {}).get("SS", []))
        joined = _list_segments(set(new_lists) - opted_out)
    elif status:  # stricter now: on no list's segment any more
        left = sorted(s for s in old.get("segments", {}).get("SS", []) if s.startswith(segments.list_segment("")))
    if joined:
        adds.append("#segs :joined")
        values[":joined"] = {"SS": joined}
    if left:
        values[":left"] = {"SS": left}
    if joined or left:
        names["#segs"] = "segments"
    sets.append("updated_at = :now")
    values[":now"] = {"S": now}
    condition = "#s = :seen" if seen else "attribute_not_exists(#s)"
    if seen:
        values[":seen"] = {"S": seen}
    if changed:
        condition += " AND attribute_exists(#p)" if props is not None else " AND attribute_not_exists(#p)"
    expression = (f"SET {', '.join(sets)}" + (f" ADD {', '.join(adds)}" if adds else "")
                  + (" DELETE #segs :left" if left else "") + (f" REMOVE {', '.join(removes)}" if removes else ""))
    return {"UpdateExpression": expression, "ConditionExpression": condition, "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values}, new_lists, joined, left


def _commit(planned: list[tuple[Row, bool, list[dict]]], counts: dict) -> list[Row]:
    """Write the planned rows, as many a transaction as fit in ``MAX_ITEMS`` actions; the rows of
    a transaction a condition cancelled (their profile changed since it was read), to plan again."""
    again: list[Row] = []
    chunk: list[tuple[Row, bool, list[dict]]] = []

    def flush():
        if not chunk:
            return
        try:
            aws.transact_write([item for _, _, items in chunk for item in items])
        except Exception as exc:
            if not aws.failed_conditions(exc):
                raise
            again.extend(row for row, _, _ in chunk)
        else:
            for _, existed, items in chunk:
                counts["updated" if existed else "created"] += 1
                counts["entered"] += any("Put" in i and i["Put"]["Item"]["sk"]["S"].startswith(outbox.PREFIX)
                                         for i in items)
        chunk.clear()

    size = 0
    for plan in planned:
        if size + len(plan[2]) > MAX_ITEMS:
            flush()
            size = 0
        chunk.append(plan)
        size += len(plan[2])
    flush()
    return again
