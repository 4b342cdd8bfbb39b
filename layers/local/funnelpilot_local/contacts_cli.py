"""``funnelpilot contacts import FILE.csv``: import a list (the other ``contacts`` commands: audience_cli).

Locally the commands run on the local runtime, whose contacts table is kept in
``.local/contacts-table.json`` between commands (``local_runtime``); with ``--stack NAME`` they
act on a deployed stack.
"""
import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from funnelpilot_local.cli import UserError

ROOT = Path(__file__).resolve().parents[3]  # runtime.ROOT, without importing moto to check a file
LOCAL = ROOT / ".local"  # the local runtime's, as `make serve` uses it
BATCH = 100  # rows per invocation of ContactImportFunction (the Distributed Map's MaxItemsPerBatch)

IMPORT_EXAMPLE = """examples:
  funnelpilot contacts import members.csv
  funnelpilot contacts import export.csv --list insiders --map "Email Address=email" --map "MEMBER_RATING=-"
  funnelpilot contacts import members.csv --enter welcome --stack my-funnelpilot

columns (header names, any case): email (required), first_name, lists and tags (separated by ; , or |),
timezone (IANA), consent_date (YYYY-MM-DD or ISO date and time), consent_source,
status (subscribed, unsubscribed, bounced, complained), and the fields declared in infra/fields.yaml."""


def register(commands) -> None:
    """Add ``import`` to the ``contacts`` sub-parsers."""
    imp = commands.add_parser("import", help="import a CSV file (validated whole before anything is written)",
                              epilog=IMPORT_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("file", type=Path, help="the CSV file (UTF-8, a header line)")
    imp.add_argument("--list", default="newsletter", help="list for rows whose lists cell is empty (default newsletter)")
    imp.add_argument("--map", action="append", default=[], metavar="HEADER=COLUMN",
                     help="read the file's HEADER as COLUMN (or `-`: ignore it); repeatable")
    imp.add_argument("--enter", metavar="FUNNEL", help="hand each new subscribed person to this funnel (default: none)")
    imp.add_argument("--stack", help="a deployed stack's name: upload to its import bucket and run its import state machine")
    imp.add_argument("--state-dir", type=Path, default=LOCAL, help=argparse.SUPPRESS)
    imp.set_defaults(contacts_run=import_command)


def batch_input(args, name: str) -> dict:
    from funnelpilot import clock

    mapping = {}
    for pair in args.map:
        header, sep, column = pair.partition("=")
        if not sep or not header or not column:
            raise UserError(f"--map {pair!r}: write HEADER=COLUMN (or HEADER=- to ignore a column)")
        mapping[header] = column.strip().lower()
    if args.enter:
        from funnelpilot.report import known_funnels

        if args.enter not in (known := known_funnels(ROOT / "infra")):
            raise UserError(f"--enter {args.enter!r}: no such funnel (funnels: {', '.join(known)})")
    imported_at = datetime.fromtimestamp(clock.now(), timezone.utc).date().isoformat()
    return {"file": name, "imported_at": imported_at, "list": args.list.lower(), "mapping": mapping,
            "enter": args.enter}


def read_and_validate(path: Path, batch: dict):
    """The file's validation (``importer.Validation``), printed when it has errors."""
    from funnelpilot.audience import importer
    from funnelpilot.consent import require_list
    from funnelpilot.errors import InvalidField

    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 (byte {exc.start}); save it as UTF-8 CSV") from None
    try:
        require_list(batch["list"])
    except InvalidField as exc:
        raise UserError(f"--list: {exc.message}") from None
    return importer.validate(text, batch["mapping"], batch["list"])


class Progress:
    """A progress bar with rate and ETA on stderr (redrawn in place on a terminal, a line every
    10% otherwise)."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.stream, self.start, self.last = max(total, 1), stream, time.monotonic(), -1
        self.tty = stream.isatty()

    def update(self, done: int) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate else 0
        tenth = done * 10 // self.total
        if not self.tty and tenth == self.last and done < self.total:
            return
        self.last = tenth
        bar = "#" * (done * 30 // self.total)
        line = f"[{bar:<30}] {done}/{self.total} rows  {rate:,.0f} rows/s  ETA {eta:.0f} s"
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        if self.tty and done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def import_rows(invoke, rows: list[dict], batch: dict, progress: Progress | None = None) -> dict:
    """Invoke ContactImportFunction (``invoke(function, payload)``) with ``BATCH`` rows at a time, as
    the import state machine's Distributed Map does on AWS; the summed counts."""
    batches = []
    for i in range(0, len(rows), BATCH):
        batches.append(invoke("ContactImportFunction", {"Items": rows[i:i + BATCH], "BatchInput": batch}))
        if progress:
            progress.update(min(i + BATCH, len(rows)))
    return summed(batches)


def summed(batches: list[dict]) -> dict:
    """The counts of every batch added up."""
    totals: dict[str, int] = {}
    for counts in batches:
        for key, n in counts.items():
            totals[key] = totals.get(key, 0) + n
    return totals


def import_command(args) -> int:
    from funnelpilot.config import config

    os.environ.setdefault("CONTENT_DIR", str(ROOT / "infra"))
    config.cache_clear()  # read when funnelpilot.models was imported, maybe without CONTENT_DIR
    batch = batch_input(args, args.file.name)
    validation = read_and_validate(args.file, batch)
    if validation.errors:
        from funnelpilot.audience.importer import MAX_ERRORS_SHOWN

        for line in validation.errors[:MAX_ERRORS_SHOWN]:
            print(line, file=sys.stderr)
        if len(validation.errors) > MAX_ERRORS_SHOWN:
            print(f"... and {len(validation.errors) - MAX_ERRORS_SHOWN} more", file=sys.stderr)
        print(f"{args.file.name}: {validation.summary()}", file=sys.stderr)
        return 1
    print(f"{args.file.name}: {validation.summary()}", file=sys.stderr)
    if args.stack:
        counts = import_to_stack(args.stack, args.file, validation.total, batch)
    else:
        with local_runtime(args.state_dir) as rt:
            counts = import_rows(rt.invoke, validation.rows, batch, Progress(len(validation.rows)))
            rt.settle()
    print(format_counts(counts, batch))
    return 0


def import_to_stack(stack: str, path: Path, rows: int, batch: dict) -> dict:
    """Upload the file to the stack's import bucket and run its import state machine (a Distributed
    Map over the file); progress from the map run's item counts. The summed counts."""
    import uuid

    import boto3

    outputs = {o["OutputKey"]: o["OutputValue"] for o in boto3.client("cloudformation").describe_stacks(
        StackName=stack)["Stacks"][0].get("Outputs", [])}
    if "ImportStateMachineArn" not in outputs:
        raise UserError(f"--stack {stack}: no ImportStateMachineArn output (deploy this version first: sam deploy)")
    run = f"import-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    key = f"imports/{run}/{path.name}"
    boto3.client("s3").upload_file(str(path), outputs["ImportBucketName"], key)
    sfn = boto3.client("stepfunctions")
    execution = sfn.start_execution(stateMachineArn=outputs["ImportStateMachineArn"], name=run, input=json.dumps(
        {"bucket": outputs["ImportBucketName"], "key": key, **batch}))["executionArn"]
    print(f"execution: {execution}", file=sys.stderr)
    progress = Progress(rows)
    while True:
        done = sfn.describe_execution(executionArn=execution)
        for map_run in sfn.list_map_runs(executionArn=execution).get("mapRuns", [])[:1]:
            progress.update(sfn.describe_map_run(mapRunArn=map_run["mapRunArn"])["itemCounts"]["succeeded"])
        if done["status"] != "RUNNING":
            break
        time.sleep(2)
    if done["status"] != "SUCCEEDED":
        raise UserError(f"the import execution {done['status'].lower()}: {done.get('error')}: {done.get('cause')} "
                        f"({execution}); re-running the file writes only what is missing")
    return summed(json.loads(done["output"]))


def format_counts(counts: dict, batch: dict) -> str:
    line = (f"imported {batch['file']}: {counts.get('created', 0)} created, {counts.get('updated', 0)} updated, "
            f"{counts.get('unchanged', 0)} unchanged")
    if counts.get("skipped"):
        line += f", {counts['skipped']} skipped (erased people are not re-created)"
    if batch.get("enter"):
        line += f"; {counts.get('entered', 0)} handed to the {batch['enter']} funnel"
    else:
        line += "; no funnel entered, nothing sent (--enter FUNNEL to start one)"
    return line


TABLE_FILE = "contacts-table.json"


@contextmanager
def local_runtime(state_dir: Path = LOCAL):
    """The local runtime with the contacts table of ``state_dir`` (``load_table``), saved back when
    the block ends. Refused while `funnelpilot serve` runs: it holds the table in memory and saves
    it when it stops."""
    import socket

    from funnelpilot_local.runtime import Runtime

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 3000)) == 0:
            raise UserError("`funnelpilot serve` is running on port 3000: stop it first (it keeps the local table in "
                            "memory and saves it when it stops), then import, then start it again")
    with Runtime(ROOT, state_dir=state_dir, speed=1.0) as rt:  # real time: dates on record are today's
        saved = load_table(rt, state_dir)
        yield rt
        save_table(rt, saved)


def load_table(rt, state_dir: Path) -> Path:
    """Load the contacts table saved in ``state_dir`` (the local stand-in for a deployed stack's
    table, shared by `contacts import` and `serve`) into the runtime; the file's path."""
    from funnelpilot.config import config

    saved = Path(state_dir) / TABLE_FILE
    ddb, table = rt.client("dynamodb"), config().table
    items = json.loads(saved.read_text()) if saved.exists() else []
    for i in range(0, len(items), 25):
        request = {table: [{"PutRequest": {"Item": item}} for item in items[i:i + 25]]}
        while request:
            request = ddb.batch_write_item(RequestItems=request).get("UnprocessedItems") or None
    return saved


def save_table(rt, saved: Path) -> None:
    from funnelpilot.config import config

    pages = rt.client("dynamodb").get_paginator("scan").paginate(TableName=config().table)
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps([item for page in pages for item in page["Items"]]))
