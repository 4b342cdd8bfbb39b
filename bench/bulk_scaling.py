"""A bulk action over a segment on the stepped local runtime (strict mode: the 25,000-event
history limit applies): executions used, the most history events in one execution, Lambda
invocations (counts), and the CPU seconds this machine's moto took (one TransactWriteItems per
member: about 10 ms each here, so 150,000 members would take half an hour; the bench runs
sizes that show the trend and, with a small history budget, the continuation in new executions).

    .venv/bin/python bench/bulk_scaling.py [--members 4000] [--page-size N] [--batch-size N] [--history-budget N]
"""
import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from funnelpilot import bulk
from funnelpilot_local.demo import START
from funnelpilot_local.runtime import ROOT, Runtime

SEGMENT = "customers"


def seed(rt: Runtime, members: int) -> None:
    """``members`` contacts in the segment: a profile and the gsi1 membership item each."""
    ddb, batch = rt.client("dynamodb"), []
    for i in range(members):
        cid = f"bench{i:07d}"
        batch += [{"PutRequest": {"Item": {"pk": {"S": cid}, "sk": {"S": "PROFILE"}, "status": {"S": "active"},
                                           "segments": {"SS": [SEGMENT]}}}},
                  {"PutRequest": {"Item": {"pk": {"S": cid}, "sk": {"S": f"SEG#{SEGMENT}"},
                                           "gsi1pk": {"S": f"SEG#{SEGMENT}"}, "gsi1sk": {"S": cid}}}}]
        if len(batch) >= 24 or i == members - 1:
            request = {"ContactsTable": batch}
            while request:
                request = ddb.batch_write_item(RequestItems=request).get("UnprocessedItems") or None
            batch = []


def history_length(sfn, arn: str) -> int:
    n, kwargs = 0, {"executionArn": arn, "maxResults": 1000}
    while True:
        page = sfn.get_execution_history(**kwargs)
        n += len(page["events"])
        if not page.get("nextToken"):
            return n
        kwargs["nextToken"] = page["nextToken"]


def measure(members: int, page_size: int = bulk.PAGE_SIZE, batch_size: int = bulk.BATCH_SIZE,
            history_budget: int = bulk.HISTORY_BUDGET, log=print) -> dict:
    with tempfile.TemporaryDirectory() as tmp, Runtime(ROOT, stepped=True, start=START, state_dir=Path(tmp)) as rt:
        rt.schedules.clear()
        started = time.monotonic()
        seed(rt, members)
        log(f"bulk: seeded {members} members in {time.monotonic() - started:.0f} s")
        invocations = Counter()

        def count(function, call):
            invocations[function] += 1
            return call()

        rt.invoke_hook = count
        machine = next(a for a in rt.state_machine_arns() if a.endswith("-bulk"))
        started, cpu = time.monotonic(), time.process_time()
        run = bulk.start(machine, SEGMENT, {"tag": "bench"}, run_id="bench", page_size=page_size,
                         batch_size=batch_size, history_budget=history_budget)
        sfn = rt.client("stepfunctions")
        while True:  # the run's current execution, until the one that reports has ended
            idle = rt.scheduler.wait_idle(60)  # no interpreter thread can run (or a minute passed)
            p = bulk.progress(run["run_id"])
            d = sfn.describe_execution(executionArn=p["execution"] if p else run["execution_arn"])
            if d["status"] not in ("RUNNING", "SUCCEEDED"):
                raise RuntimeError(f"bulk execution {d['status']}: {d.get('error')} {d.get('cause')}")
            if d["status"] == "SUCCEEDED" and "changed" in json.loads(d.get("output") or "{}"):
                break
            if idle:
                raise RuntimeError(f"bulk run stalled at {p}: an execution waits on the stepped clock (a Retry?)")
            log(f"bulk: {p and p['members_done']} members done, {p and p['executions']} executions")
        cpu = time.process_time() - cpu
        runs = sfn.list_executions(stateMachineArn=machine)["executions"]
        report = json.loads(d["output"])
        if report["changed"] != members:
            raise RuntimeError(f"bulk changed {report['changed']} of {members} members")
        return {"members": members, "page_size": page_size, "batch_size": batch_size, "history_budget": history_budget,
                "executions": len(runs), "max_history": max(history_length(sfn, r["executionArn"]) for r in runs),
                "invocations": invocations["BulkFunction"], "cpu_seconds": cpu,
                "pages_per_execution": bulk.pages_per_execution(page_size, batch_size, history_budget)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=4000)
    parser.add_argument("--page-size", type=int, default=bulk.PAGE_SIZE)
    parser.add_argument("--batch-size", type=int, default=bulk.BATCH_SIZE)
    parser.add_argument("--history-budget", type=int, default=bulk.HISTORY_BUDGET)
    args = parser.parse_args()
    print(json.dumps(measure(args.members, args.page_size, args.batch_size, args.history_budget,
                             log=lambda m: print(m, file=sys.stderr))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
