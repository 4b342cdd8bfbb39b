"""Importing a large CSV file on the local runtime (strict mode), the way `funnelpilot contacts import`
does: validation of the whole file, then ContactImportFunction 100 rows at a time. Rows per second
(validation, first import, a re-run that changes nothing), AWS calls and DynamoDB capacity per
1,000 rows, and the AWS cost per 1,000 rows at infra/prices.yaml's list prices.

    .venv/bin/python bench/import_scaling.py [--rows 100000]

``measure(rows)`` returns the figures (for bench/run.py). On AWS the rows reach the Lambda through
the import state machine's Distributed Map (ItemReader, batches of 100): its Step Functions cost
is counted from the state transitions of that shape (the local runtime invokes the Lambda directly).
"""
import argparse
import csv
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
import meter  # noqa: E402

from funnelpilot import clock  # noqa: E402
from funnelpilot_local.aws_rules import lambda_  # noqa: E402
from funnelpilot_local.runtime import ROOT, Runtime  # noqa: E402

# Distributed Map, per child execution of one batch (Standard): the child's start, its Task state
# entered and exited, its end; plus the parent's Map state. Priced as state transitions.
TRANSITIONS_PER_BATCH = 4
LAMBDA_GB = 0.25  # MemorySize 256 (template.yaml Globals)


def write_file(path: Path, rows: int) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["email", "first_name", "last_name", "company", "lists", "tags", "timezone", "consent_date",
                      "consent_source", "status"])
        for i in range(rows):
            out.writerow([f"person{i}@example.com", f"Name{i}", "Lee", "Acme" if i % 3 else "",
                          "newsletter" if i % 4 else "newsletter;insiders", "vip" if i % 7 == 0 else "",
                          "Europe/Paris", "2024-05-01", "old form", "unsubscribed" if i % 10 == 7 else "subscribed"])


def measure(rows: int = 100_000, log=print) -> dict:
    from funnelpilot_local import contacts_cli

    meter.install()
    prices = yaml.safe_load((ROOT / "infra" / "prices.yaml").read_text())["aws"]
    with tempfile.TemporaryDirectory() as tmp, Runtime(ROOT, stepped=True, state_dir=Path(tmp)) as rt:
        meter._schema(meter._ddb(), "ContactsTable")  # read now: inside a handler its role may not DescribeTable
        path = Path(tmp) / "members.csv"
        write_file(path, rows)
        args = type("Args", (), {"map": [], "enter": None, "list": "newsletter", "file": path})
        batch = contacts_cli.batch_input(args, path.name)
        started = time.monotonic()
        validation = contacts_cli.read_and_validate(path, batch)
        validate_s = time.monotonic() - started
        assert not validation.errors, validation.errors[:3]
        log(f"import: validated {rows} rows in {validate_s:.1f} s")
        runs = {}
        for run in ("first", "again"):
            invocations, lambda_s = Counter(), [0.0]

            def timed(function, call):
                invocations[function] += 1
                t = time.monotonic()
                try:
                    return call()
                finally:
                    lambda_s[0] += time.monotonic() - t
                    # one batch after the other, as the CLI invokes them: on the stepped clock they would all
                    # overlap at one instant, and past 1,000 (the account's concurrency) be throttled
                    clock.advance_to(clock.now() + lambda_.HOLD)

            rt.invoke_hook = timed
            with meter.label(f"import-{run}") as calls:
                started = time.monotonic()
                counts = contacts_cli.import_rows(rt.invoke, validation.rows, batch)
                seconds = time.monotonic() - started
            ops = Counter(f"{c.service}:{c.operation}" for c in calls)
            reads = sum(c.capacity for c in calls if c.operation in ("BatchGetItem", "GetItem", "Query"))
            writes = sum(c.capacity for c in calls) - reads
            per_k = 1000 / rows
            batches = invocations["ContactImportFunction"]
            cost = (writes * prices["dynamodb_on_demand_write"]["price"] / prices["dynamodb_on_demand_write"]["per"]
                    + reads * prices["dynamodb_on_demand_read"]["price"] / prices["dynamodb_on_demand_read"]["per"]
                    + batches * prices["lambda_request"]["price"] / prices["lambda_request"]["per"]
                    + lambda_s[0] * LAMBDA_GB * prices["lambda_gb_second_arm64"]["price"]
                    + batches * TRANSITIONS_PER_BATCH * prices["stepfunctions_standard_transition"]["price"]
                    / prices["stepfunctions_standard_transition"]["per"])
            runs[run] = {"counts": counts, "seconds": round(seconds, 1), "rows_per_s": round(rows / seconds),
                         "aws_calls_per_1000_rows": round(len(calls) * per_k, 1),
                         "calls": dict(ops), "wru_per_1000_rows": round(writes * per_k), "rru_per_1000_rows": round(reads * per_k),
                         "usd_per_1000_rows": round(cost * per_k, 5)}
            log(f"import ({run}): {counts} in {seconds:.0f} s, {rows / seconds:.0f} rows/s, "
                f"{len(calls) * per_k:.1f} AWS calls and ${cost * per_k:.5f} per 1,000 rows")
        return {"rows": rows, "validate_rows_per_s": round(rows / validate_s), **runs}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    print(json.dumps(measure(parser.parse_args().rows), indent=2))
