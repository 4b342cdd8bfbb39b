"""The daily inactivity job's DynamoDB reads grow with the contacts becoming inactive that
day, not with the size of the base. Seeds two base sizes on the local runtime (moto) with the
same number of newly inactive contacts, runs the job, and prints what it read (stepped clock
from a fixed start: the same counts every run).

    .venv/bin/python bench/inactivity_scaling.py [--bases 1000,10000] [--inactive 50]
"""
import argparse
import random
import sys
import tempfile
from pathlib import Path

from funnelpilot import aws, clock, inactivity
from funnelpilot_local.demo import START
from funnelpilot_local.runtime import ROOT, Runtime

DAY = 86_400


def seed(rt: Runtime, base: int, newly_inactive: int, rng: random.Random) -> None:
    """``base`` contacts' activity items: ``newly_inactive`` of them become inactive ``today``,
    the rest engaged at random times within the window (so they sit in other buckets)."""
    after = inactivity.scoring.settings().inactive_after_days
    today_ts = clock.utcnow().replace(hour=12, minute=0, second=0).timestamp()
    ddb = rt.client("dynamodb")
    table = inactivity.config().table
    batch = []
    for i in range(base):
        if i < newly_inactive:
            last_at = today_ts - after * DAY
        else:
            last_at = today_ts - rng.uniform(0, after - 1) * DAY
        cid = f"bench{i:07d}"
        batch.append({"PutRequest": {"Item": {
            "pk": {"S": cid}, "sk": {"S": "ACTIVITY"}, "last_at": {"N": str(last_at)},
            "gsi1pk": {"S": f"INACTIVE#{inactivity.inactive_on(last_at)}"}, "gsi1sk": {"S": cid}}}})
        if len(batch) == 25:
            ddb.batch_write_item(RequestItems={table: batch})
            batch = []
    if batch:
        ddb.batch_write_item(RequestItems={table: batch})


def measure(base: int, newly_inactive: int, seed_value: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp, Runtime(ROOT, stepped=True, start=START, state_dir=Path(tmp)) as rt:
        rt.schedules.clear()
        today = clock.iso()[:10]
        seed(rt, base, newly_inactive, random.Random(seed_value))
        stats = {"calls": 0, "items_read": 0, "capacity": 0.0}
        client = aws.dynamodb()

        def ask_capacity(params, **_):
            params.setdefault("ReturnConsumedCapacity", "TOTAL")

        def count(parsed, model, **_):
            if model.name in ("Query", "GetItem", "Scan", "BatchGetItem"):
                stats["calls"] += 1
                stats["items_read"] += parsed.get("ScannedCount", 1 if parsed.get("Item") else 0)
                cap = parsed.get("ConsumedCapacity") or {}
                stats["capacity"] += float(cap.get("CapacityUnits", 0)) if isinstance(cap, dict) else 0

        client.meta.events.register("provide-client-params.dynamodb.Query", ask_capacity)
        client.meta.events.register("provide-client-params.dynamodb.GetItem", ask_capacity)
        client.meta.events.register("after-call.dynamodb", count)
        try:
            result = inactivity.scan(today)
        finally:
            client.meta.events.unregister("provide-client-params.dynamodb.Query", ask_capacity)
            client.meta.events.unregister("provide-client-params.dynamodb.GetItem", ask_capacity)
            client.meta.events.unregister("after-call.dynamodb", count)
        return {"base": base, "newly_inactive": result["inactive"], **stats}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", default="1000,10000")
    parser.add_argument("--inactive", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rows = [measure(int(b), args.inactive, args.seed) for b in args.bases.split(",")]
    print(f"{'base contacts':>14} {'newly inactive':>15} {'read calls':>11} {'items read':>11} {'read units':>11}")
    for r in rows:
        print(f"{r['base']:>14} {r['newly_inactive']:>15} {r['calls']:>11} {r['items_read']:>11} {r['capacity']:>11.1f}")
    same = len({(r["calls"], r["items_read"]) for r in rows}) == 1
    print("reads independent of base size:", "yes" if same else "NO")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
