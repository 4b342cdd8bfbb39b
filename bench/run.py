"""``make bench``: speed and cost figures of funnelpilot, written to bench/RESULTS.md.

Everything is read from template.yaml through the local runtime: new functions, routes,
EventBridge consumers and funnels are measured without changes here. The machine is
shared and noisy, so the figures are ratios measured in one interleaved run and counts.
"""
import contextlib
import itertools
import os
import pickle
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import meter  # noqa: E402  (hooks must be in place before any botocore session exists)

meter.install()

import coldstart  # noqa: E402
import raw_handlers  # noqa: E402
import traffic  # noqa: E402
from funnelpilot_local.runtime import LambdaContext, Runtime  # noqa: E402

HOT = ("SignupFunction", "TrackOpenFunction", "TrackClickFunction")  # logical ids in template.yaml
COLD_GOAL, WARM_GOAL = 1.3, 1.2
SFN_PRICE_PER_TRANSITION = 0.000025  # USD, Standard workflows


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Invocation:
    function: str
    trigger: str
    payload: dict
    calls: list


def trigger_of(payload: dict) -> str:
    if "requestContext" in payload:
        return payload["routeKey"]
    if "detail-type" in payload:
        return payload["detail-type"]
    if isinstance(payload.get("event"), dict) and "detail-type" in payload["event"]:
        return payload["event"]["detail-type"]
    if "action" in payload:
        return f"step {payload['action']}"
    return "invoke"


class MeteredRuntime(Runtime):
    """The local runtime, attributing every AWS call to the invocation that made it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.invocations: list[Invocation] = []
        self._ids = itertools.count()

    def invoke(self, function: str, payload: dict):
        with meter.label(f"{function}#{next(self._ids)}") as calls:
            try:
                return super().invoke(function, payload)
            finally:
                self.invocations.append(Invocation(function, trigger_of(payload), payload, calls))


# ---------------------------------------------------------------- warm requests
def _per_call(handler, event, ctx, calls, n: int) -> float:
    with meter.replay(calls):
        start = time.perf_counter()
        for _ in range(n):
            handler(event, ctx)
        return (time.perf_counter() - start) / n


def warm_ratio(handler, raw, inv: Invocation, rounds: int = 15, n: int = 20) -> float:
    ctx = LambdaContext(inv.function)
    for fn in (handler, raw):
        _per_call(fn, inv.payload, ctx, inv.calls, 3)
    real, base = [], []
    for i in range(rounds):
        pair = [(handler, real), (raw, base)]
        for fn, out in (pair if i % 2 else pair[::-1]):
            out.append(_per_call(fn, inv.payload, ctx, inv.calls, n))
    return statistics.median(real) / statistics.median(base)


# ---------------------------------------------------------------- scenario
def exercise(rt: MeteredRuntime, contacts: int) -> dict:
    ids = traffic.audience(rt, contacts)
    contact = next(iter(ids.values()))
    samples = {}
    for route in sorted(rt.routes, key=lambda r: r.method == "DELETE"):  # erasure last
        for _ in range(2):  # the second is a warm request
            request = traffic.sample_request(rt, route, contact)
            if request is None:
                break
            rt.http(request.pop("method"), request.pop("path"), **request)
        else:
            key = f"{route.method} {route.path}"
            samples[key] = next(i for i in reversed(rt.invocations) if i.payload.get("routeKey") == key)
    rt.settle(timeout=120)
    return {"contacts": ids, "routes": samples}


def funnels() -> list[dict]:
    """Transitions per contact per funnel: a small seeded demo audience through 60 days of every
    funnel (stepped time), counted from the execution histories."""
    from funnelpilot_local import demo

    contacts = int(os.environ.get("BENCH_FUNNEL_CONTACTS", "40"))
    with tempfile.TemporaryDirectory() as tmp:
        result = demo.simulate(seed=7, contacts=contacts, days=60, state_dir=Path(tmp), with_journeys=True)
    if result["errors"]:
        raise RuntimeError(f"the funnel simulation had errors: {result['errors'][:3]}")
    return [row | {"contacts": contacts} for row in result["journeys"]]


def consumers(rt: MeteredRuntime) -> list[dict]:
    groups: dict[tuple[str, str], list[Invocation]] = {}
    for inv in rt.invocations:
        if "requestContext" not in inv.payload:
            groups.setdefault((inv.function, inv.trigger), []).append(inv)
    rows = []
    for (function, trigger), invs in sorted(groups.items()):
        warm = invs[1:] or invs
        ops = sorted({c.name for inv in warm for c in inv.calls})
        rows.append({"function": function, "trigger": trigger, "count": len(invs),
                     "calls": statistics.mean(len(i.calls) for i in warm),
                     "capacity": statistics.mean(sum(c.capacity for c in i.calls) for i in warm),
                     "ops": ops})
    return rows


# ---------------------------------------------------------------- cold starts
FIRST_REQUEST = """import pickle, sys
sys.path.insert(0, {bench!r})
import meter
meter.install()
{code}
class _Context:
    function_name = {name!r}; function_version = "$LATEST"; memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:" + function_name
    aws_request_id = "cold"; log_group_name = "/aws/lambda/cold"; log_stream_name = "cold"
    def get_remaining_time_in_millis(self): return 30000
with open({sample!r}, "rb") as fh:
    _payload, _calls = pickle.load(fh)
with meter.replay(_calls, by_operation=True):
    {call}
"""


def cold_first_request(rt: MeteredRuntime, routes: dict, workdir: Path, rounds: int) -> dict:
    """Init plus the first request (AWS answered from this run's recording) in a fresh
    interpreter, against ``import boto3`` + one client + one GetItem answered the same way,
    and for routes with a hand-written raw handler, against that handler's first request."""
    pool = [c for inv in rt.invocations for c in inv.calls]
    extra = {c.name: c for c in pool}
    first: dict[str, Invocation] = {}
    for inv in rt.invocations:
        first.setdefault(inv.function, inv)
    get_item = next((c for c in pool if c.name == "dynamodb:GetItem"), None)
    jobs = {}
    http_functions = {r.function for r in rt.routes}
    for lid, fn in rt.functions.items():
        if lid not in first or lid not in http_functions:  # latency matters on the request path
            continue
        sample = workdir / f"{lid}.pickle"
        sample.write_bytes(pickle.dumps((first[lid].payload, first[lid].calls + list(extra.values()))))
        code = coldstart.handler_code(fn) + f"_handler = {fn.module_path.stem}.{fn.handler_name}\n"
        jobs[lid] = (FIRST_REQUEST.format(bench=str(HERE), code=code, name=lid, sample=str(sample),
                                          call="_handler(_payload, _Context())"), coldstart._env(fn.env))
    for key, inv in routes.items():
        if key in raw_handlers.RAW and inv.function in jobs:
            sample = workdir / f"raw-{inv.function}.pickle"
            sample.write_bytes(pickle.dumps((inv.payload, inv.calls + list(extra.values()))))
            code = "import raw_handlers\n"
            call = f"raw_handlers.init(); raw_handlers.RAW[{key!r}](_payload, _Context())"
            jobs[f"raw:{inv.function}"] = (FIRST_REQUEST.format(bench=str(HERE), code=code, name="raw", sample=str(sample),
                                                                 call=call), coldstart._env(rt.functions[inv.function].env))
    if get_item is None or not jobs:
        return {}
    sample = workdir / "baseline.pickle"
    sample.write_bytes(pickle.dumps(({}, [get_item])))
    baseline = FIRST_REQUEST.format(bench=str(HERE), code="import boto3\n_c = boto3.client('dynamodb')\n",
                                    name="baseline", sample=str(sample),
                                    call=f"_c.get_item(**{get_item.params!r})")
    result = coldstart.compare(baseline, jobs, rounds)
    fns = result["functions"]
    for lid in [k for k in fns if k.startswith("raw:")]:
        raw = fns.pop(lid)
        if lid[4:] in fns:
            fns[lid[4:]]["vs_raw"] = fns[lid[4:]]["ratio"] / raw["ratio"]
    return result


# ---------------------------------------------------------------- scaling
def scaling() -> list[dict]:
    """How the daily inactivity job's reads grow with the base (bench/inactivity_scaling.py)."""
    import inactivity_scaling

    rows = []
    for base in (500, 5000):
        log(f"scaling: inactivity job, {base} contacts")
        r = inactivity_scaling.measure(base, 50, 7)
        rows += [{"job": "inactivity scan (50 newly inactive)", "contacts": base, "figure": figure,
                  "value": r[key]} for figure, key in (("DynamoDB read calls", "calls"),
                                                       ("items read", "items_read"))]
    return rows


def bulk_run() -> dict:
    """A bulk tag over a large segment (bench/bulk_scaling.py); BENCH_BULK_MEMBERS sets the size."""
    import bulk_scaling

    members = int(os.environ.get("BENCH_BULK_MEMBERS", "150000"))
    log(f"bulk: a tag over {members} members")
    return bulk_scaling.measure(members, log=log)


# ---------------------------------------------------------------- report
def _fmt(x, digits=2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def render(r: dict) -> str:
    out = ["# funnelpilot benchmarks", "",
           f"`make bench`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python "
           f"{sys.version.split()[0]}, {os.cpu_count()} CPUs. Ratios come from one interleaved run "
           "(medians); counts are exact for the bench's audience. What each figure means: README.md, "
           "\"Performance and cost\".", ""]
    cold, first = r["cold"], r["cold_first"]
    out += ["## Cold start (fresh interpreter)", "",
            f"Baselines: `import boto3` + one client = {cold['baseline_ms']:.0f} ms here; "
            f"the same + one GetItem = {first.get('baseline_ms', 0):.0f} ms (goal ≤ {COLD_GOAL}× for "
            "track_open, track_click, signup).", "",
            "| function | init ÷ baseline | init + first request ÷ baseline | init + first request ÷ raw boto3 handler's | goal | heaviest imports (share of import time) |",
            "|---|---|---|---|---|---|"]
    for lid, row in sorted(cold["functions"].items()):
        fr = first.get("functions", {}).get(lid, {}).get("ratio")
        vs_raw = first.get("functions", {}).get(lid, {}).get("vs_raw")
        goal = "–"
        if lid in HOT:
            goal = "init " + ("pass" if row["ratio"] <= COLD_GOAL else "**miss**")
            if fr:
                goal += ", first request " + ("pass" if fr <= COLD_GOAL else "**miss**")
        heavy = ", ".join(f"{pkg} {share:.0%}" for pkg, share in row["breakdown"])
        out.append(f"| {lid} | {_fmt(row['ratio'])}× | {_fmt(fr)}{'×' if fr else ''} | "
                   f"{_fmt(vs_raw)}{'×' if vs_raw else ''} | {goal} | {heavy} |")
    for lid, why in sorted(first.get("failed", {}).items()):
        out.append(f"\n{lid}: first request not measured (its recorded calls could not be replayed: {why}).")
    out += ["", "## HTTP routes (warm, AWS answered from a recording)", "",
            "| route | handler ÷ raw boto3 | baseline | goal ≤ 1.2× | AWS calls per request | DynamoDB capacity units | calls |",
            "|---|---|---|---|---|---|---|"]
    for row in r["routes"]:
        goal = "pass" if row["ratio"] is not None and row["ratio"] <= WARM_GOAL else "**miss**"
        out.append(f"| `{row['route']}` | {_fmt(row['ratio'])}× | {row['baseline']} | {goal} | {row['calls']} | "
                   f"{_fmt(row['capacity'], 1)} | {', '.join(row['ops']) or '–'} |")
    out += ["", "## Per event and per funnel step (async consumers, Step Functions tasks)", "",
            "| function | trigger | invocations | AWS calls per event | DynamoDB capacity units per event | calls |",
            "|---|---|---|---|---|---|"]
    for row in r["consumers"]:
        out.append(f"| {row['function']} | `{row['trigger']}` | {row['count']} | {_fmt(row['calls'], 1)} | "
                   f"{_fmt(row['capacity'], 1)} | {', '.join(row['ops'])} |")
    contacts = r["funnels"][0]["contacts"] if r["funnels"] else 0
    out += ["", f"## Funnels ({contacts} simulated contacts, 60 days, every shipped funnel; per execution = "
            "per contact and entry)", "",
            "| funnel | executions | state transitions per contact (mean / max) | Lambda tasks per contact | "
            "Step Functions USD per 1,000 contacts |", "|---|---|---|---|---|"]
    for row in r["funnels"]:
        cost = None if row["transitions"] is None else row["transitions"] * SFN_PRICE_PER_TRANSITION * 1000
        out.append(f"| {row['funnel']} | {row['executions']} | {_fmt(row['transitions'], 1)} / {row['max'] or '–'} | "
                   f"{_fmt(row['tasks'], 1)} | {_fmt(cost, 3)} |")
    b = r["bulk"]
    out += ["", f"## Bulk actions ({b['members']:,} segment members, tag, local runtime with the 25,000-event "
            "history limit)", "",
            "| members | page / batch | executions | max history events per execution | Lambda invocations | "
            "members/s |", "|---|---|---|---|---|---|",
            f"| {b['members']:,} | {b['page_size']} / {b['batch_size']} | {b['executions']} | {b['max_history']:,} | "
            f"{b['invocations']} | {b['members_per_s']:.0f} |",
            "", f"An execution reads at most {b['pages_per_execution']} pages, then continues in a new one; members/s "
            "is this machine's moto (one TransactWriteItems per member), not AWS's."]
    out += ["", "## Growth with the number of contacts", ""]
    if r["scaling"]:
        out += ["| job | contacts | figure | value | per contact |", "|---|---|---|---|---|"]
        for row in r["scaling"]:
            per = row["value"] / row["contacts"] if row.get("contacts") else None
            out.append(f"| {row['job']} | {row['contacts']} | {row['figure']} | {row['value']} | {_fmt(per, 3)} |")
    else:
        out.append("No scaling benchmark yet (bench/*_scaling.py).")
    return "\n".join(out) + "\n"


def main() -> int:
    started = time.monotonic()
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    contacts = int(os.environ.get("BENCH_CONTACTS", "12"))
    results: dict = {"contacts": contacts}
    keep = os.environ.get("BENCH_KEEP")  # a directory to keep the recordings in, for debugging
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as devnull:
        work = Path(keep or tmp)
        with contextlib.redirect_stdout(devnull), MeteredRuntime(state_dir=work / "local", log_level="INFO") as rt:
            log("scenario: audience through the local runtime")
            seen = exercise(rt, contacts)
            results["consumers"] = consumers(rt)
            raw_handlers.init()
            log("warm requests: handler vs raw boto3 (replayed AWS)")
            routes = []
            for key, inv in seen["routes"].items():
                raw = raw_handlers.raw_for(key)
                kind = "hand-written" if raw else "replay only"
                raw = raw or raw_handlers.replay_only(inv.calls)
                handler = rt.functions[inv.function].handler
                routes.append({"route": key, "ratio": warm_ratio(handler, raw, inv), "baseline": kind,
                               "calls": len(inv.calls), "capacity": sum(c.capacity for c in inv.calls),
                               "ops": [c.name for c in inv.calls]})
            results["routes"] = routes
            log("cold start: init + first request")
            results["cold_first"] = cold_first_request(rt, seen["routes"], work, rounds)
            functions = dict(rt.functions)
        log("cold start: init")
        results["cold"] = coldstart.measure(functions, rounds)
        # still inside `devnull`: the handlers' loggers were created writing to it
        log("funnels: a seeded audience through 60 days of every funnel")
        results["funnels"] = funnels()
    results["scaling"] = scaling()
    results["bulk"] = bulk_run()
    report = render(results)
    (HERE / "RESULTS.md").write_text(report)
    print(report)
    log(f"bench done in {time.monotonic() - started:.0f} s; written to bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
