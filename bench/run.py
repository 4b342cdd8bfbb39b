"""``make bench``: speed and cost figures of funnelpilot, written to bench/RESULTS.md.

Everything is read from template.yaml through the local runtime: new functions, routes,
EventBridge consumers and funnels are measured without changes here. Two kinds of figures:

* counts (AWS calls, capacity units, invocations, events, state transitions, executions):
  every one from runtimes on the stepped clock (time moves only by ``rt.advance``) with
  seeded audiences, so they are the same on every run and machine load;
  ``--check-determinism`` runs the counting part again in a fresh interpreter and diffs;
* times, as ratios to a baseline measured in the same interleaved run (medians), because
  the machine is shared and noisy; a ratio whose baseline is a near-zero time (a request
  making no AWS call) is not printed. ``TIMES`` lists them; RESULTS.md says so too.

    .venv/bin/python bench/run.py [--check-determinism] [--counts-only [--json FILE]]
"""
import argparse
import contextlib
import itertools
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import meter  # noqa: E402  (hooks must be in place before any botocore session exists)

meter.install()

import broadcast_scaling  # noqa: E402
import coldstart  # noqa: E402
import raw_handlers  # noqa: E402
import spam_scores  # noqa: E402
import traffic  # noqa: E402
from funnelpilot import clock  # noqa: E402
from funnelpilot_local import aws_rules  # noqa: E402
from funnelpilot_local.runtime import LambdaContext, Runtime  # noqa: E402

from funnelpilot_local.demo import START  # noqa: E402

HOT = ("SignupFunction", "TrackOpenFunction", "TrackClickFunction")  # logical ids in template.yaml
HOT_ROUTES = {"POST /signup": "signup", "GET /o/{token}": "open pixel", "GET /c/{token}": "click redirect"}
COLD_GOAL, WARM_GOAL = 1.3, 1.2
SFN_PRICE_PER_TRANSITION = 0.000025  # USD, Standard workflows
# issue 17: (figure, usage total divided by SES emails, goal per email)
PER_EMAIL = [("Step Functions state transitions", "stepfunctions_transitions", 2.5),
             ("DynamoDB write units (usage meter)", "dynamodb_wru", 8),
             ("Lambda invocations", "lambda_requests", 6),
             ("custom bus events (PutEvents entries)", "eventbridge_events", 3)]
TIMES = ("the warm ratios (CPU time of the thread running the handler and its baseline, interleaved, AWS answered "
         "from the recording, strict mode off)", "the cold starts (wall time of fresh interpreters, shuffled rounds)",
         "the bulk runs' CPU seconds per 1,000 members", "the import's rows/s and its USD per 1,000 rows (Lambda GB-s are "
         "measured durations)", "this run's minutes")
PER_REQUEST_GOAL = {"POST /signup": 2, "GET /o/{token}": 2, "GET /c/{token}": 2}  # AWS calls on the request path
BULK_MEMBERS = "1000,5000"  # segment sizes of the bulk runs (BENCH_BULK_MEMBERS); 150,000 would take half an hour
IMPORT_ROWS = "100000"  # CSV sizes of the import runs (BENCH_IMPORT_ROWS, comma-separated: the per-row trend)


_STARTED = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _STARTED:4.0f} s] {msg}", file=sys.stderr, flush=True)


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
    """CPU seconds of this thread per call (the handler runs in it): the other processes of a shared machine
    delay it but do not count."""
    with meter.replay(calls):
        start = time.thread_time()
        for _ in range(n):
            handler(event, ctx)
        return (time.thread_time() - start) / n


def warm_ratio(handler, raw, inv: Invocation, rounds: int = 15, n: int = 20) -> float:
    """Median time of the handler ÷ median time of ``raw``, interleaved, AWS answered from the
    recording (AssertionError when either does not make the calls the handler made)."""
    ctx = LambdaContext(inv.function)
    for fn in (handler, raw):
        _per_call(fn, inv.payload, ctx, inv.calls, 3)
    real, base = [], []
    for i in range(rounds):
        pair = [(handler, real), (raw, base)]
        for fn, out in (pair if i % 2 else pair[::-1]):
            out.append(_per_call(fn, inv.payload, ctx, inv.calls, n))
    return statistics.median(real) / statistics.median(base)


class BaselineDrift(RuntimeError):
    """bench/raw_handlers.py no longer does what the handler does on the same request."""


def drift(fn, inv: Invocation) -> str | None:
    """How ``fn`` on the invocation's request, AWS answered from its recording, does not make the calls
    recorded (``meter.drift``: the same operations on the same items, attributes and events); None if it does."""
    made = []
    try:
        with meter.replay(inv.calls, made=made):
            fn(inv.payload, LambdaContext(inv.function))
    except AssertionError as exc:
        return str(exc)
    return meter.drift(inv.calls, made)


@contextlib.contextmanager
def as_on_aws():
    """Calls go straight to botocore, without the local runtime's strict-mode checks (funnelpilot_local.aws_rules):
    AWS makes none in the function, and the same time added to the handler and its baseline would pull their
    ratio towards 1 (about 0.5 ms a DynamoDB call here)."""
    rules = aws_rules.active()
    aws_rules.install([])
    try:
        yield
    finally:
        aws_rules.install(rules)


def warm_route(rt: MeteredRuntime, key: str, inv: Invocation) -> dict:
    """The route's warm ratio to its raw boto3 handler; None (with the reason) where the baseline would be a
    near-zero time (the request made no AWS call). Timed at the instant of the sample (``exercise``: the
    handler's caches and verdicts depend on the clock), without strict mode (``as_on_aws``); a handler that
    does not make its recorded calls again, or a hand-written baseline that does not make them
    (``BaselineDrift``: tests/test_bench_baselines.py checks them on every benchmarked path), stops the bench
    rather than compare different work."""
    if raw_handlers.clock is not clock.now:  # the first sample: the raw handlers' cold start
        raw_handlers.init()
        raw_handlers.clock = clock.now
    raw = raw_handlers.raw_for(key)
    kind = "hand-written" if raw else "replay only"
    if not inv.calls:
        return {"ratio": None, "baseline": kind, "note": "no AWS call: the baseline is a near-zero time"}
    handler = rt.functions[inv.function].handler
    with as_on_aws():
        if why := drift(handler, inv):
            raise RuntimeError(f"{key}: the handler replayed does not make its recorded calls: {why}")
        if raw and (why := drift(raw, inv)):
            raise BaselineDrift(f"{key}: bench/raw_handlers.py does not make the handler's calls: {why}")
        size = {} if key in HOT_ROUTES else {"rounds": 5, "n": 10}  # the goals are on the hot routes
        ratio = warm_ratio(handler, raw or raw_handlers.replay_only(inv.calls), inv, **size)
    return {"ratio": ratio, "baseline": kind, "note": ""}


# ---------------------------------------------------------------- scenario
def exercise(rt: MeteredRuntime, contacts: int, on_sample=None) -> dict:
    """The bench's audience (``traffic.audience``), then two requests to every route, a minute after the
    previous route's; ``on_sample(key, invocation)`` is called with each route's second at its instant."""
    ids = traffic.audience(rt, contacts)
    contact = next(iter(ids.values()))
    samples = {}
    for route in sorted(rt.routes, key=lambda r: r.method == "DELETE"):  # erasure last
        if not rt.advance(60):  # a route's samples are no burst of the previous route's hits on a message
            raise RuntimeError(f"bench scenario: {route.method} {route.path} did not settle")
        for n in range(2):  # the second is a warm request
            request = traffic.sample_request(rt, route, contact, n)
            if request is None:
                break
            rt.http(request.pop("method"), request.pop("path"), **request)
        else:
            key = f"{route.method} {route.path}"
            samples[key] = next(i for i in reversed(rt.invocations) if i.payload.get("routeKey") == key)
            if on_sample:
                on_sample(key, samples[key])
        rt.settle()
    return {"contacts": ids, "routes": samples}


def route_rows(samples: dict) -> list[dict]:
    return [{"route": key, "calls": len(inv.calls), "capacity": round(sum(c.capacity for c in inv.calls), 3),
             "ops": [c.name for c in inv.calls]} for key, inv in samples.items()]


def per_request(rt: MeteredRuntime) -> dict:
    """For the hot routes, how many requests made how many AWS calls on the request path (every
    request of the bench's audience: new and repeated opens, clicks, signups)."""
    out: dict[str, dict[str, int]] = {}
    for inv in rt.invocations:
        key = inv.payload.get("routeKey")
        if key in HOT_ROUTES:
            by_calls = out.setdefault(key, {})
            by_calls[str(len(inv.calls))] = by_calls.get(str(len(inv.calls)), 0) + 1
    return {k: dict(sorted(v.items(), key=lambda kv: int(kv[0]))) for k, v in out.items()}


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
                     "calls": round(statistics.mean(len(i.calls) for i in warm), 3),
                     "capacity": round(statistics.mean(sum(c.capacity for c in i.calls) for i in warm), 3),
                     "ops": ops})
    return rows


def demo_run(contacts: int) -> dict:
    """The demo's seeded audience through 60 days of every funnel (stepped time), measured as
    issue 17 measured it: the usage meter (funnelpilot_local.costs.Meter) and, per funnel,
    transitions and Lambda tasks per contact from the execution histories."""
    from funnelpilot_local import demo

    with tempfile.TemporaryDirectory() as tmp:
        result = demo.simulate(seed=7, contacts=contacts, days=60, state_dir=Path(tmp), with_journeys=True)
    if result["errors"]:
        raise RuntimeError(f"the funnel simulation had errors: {result['errors'][:3]}")
    totals = result["usage"]["totals"]
    usage = {k: totals[k] for k in ("ses_emails", "stepfunctions_transitions", "dynamodb_wru", "dynamodb_rru",
                                    "lambda_requests", "eventbridge_events", "http_requests")}
    journeys = [{k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()} for row in result["journeys"]]
    return {"contacts": contacts, "usage": usage, "journeys": journeys}


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
    """Init plus the first request or event (AWS answered from this run's recording) of every
    function the scenario invoked, in a fresh interpreter, against ``import boto3`` + one client
    + one GetItem answered the same way; and for routes with a hand-written raw handler, against
    that handler's first request."""
    pool = [c for inv in rt.invocations for c in inv.calls]
    extra = {c.name: c for c in pool}
    first: dict[str, Invocation] = {}
    for inv in rt.invocations:
        first.setdefault(inv.function, inv)
    get_item = next((c for c in pool if c.name == "dynamodb:GetItem"), None)
    jobs = {}
    for lid, fn in rt.functions.items():
        if lid not in first:
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


def bulk_runs() -> list[dict]:
    """Bulk tags over segments of growing size with the shipped page, batch and history budget
    (bench/bulk_scaling.py), then the smallest again with pages of 250 and a history budget of
    two pages per execution, so that the run continues in new executions."""
    import bulk_scaling
    from funnelpilot import bulk

    sizes = [int(m) for m in os.environ.get("BENCH_BULK_MEMBERS", BULK_MEMBERS).split(",")]
    two_pages = bulk.EXECUTION_EVENTS + 2 * (bulk.PAGE_EVENTS + 2 * bulk.BATCH_EVENTS)  # pages of 2 batches
    runs = [(m, bulk.PAGE_SIZE, bulk.BATCH_SIZE, bulk.HISTORY_BUDGET) for m in sizes] + [(min(sizes), 250, 125, two_pages)]
    rows = []
    for members, page_size, batch_size, budget in runs:
        log(f"bulk: a tag over {members} members (page {page_size}, batch {batch_size}, history budget {budget})")
        rows.append(bulk_scaling.measure(members, page_size, batch_size, budget, log=log))
    return rows


def import_runs() -> list[dict]:
    """Importing CSV files of ``BENCH_IMPORT_ROWS`` rows (bench/import_scaling.py): validation, a first
    import, a re-run that changes nothing. Rows/s and the Lambda GB-seconds in the cost are times, so
    the timed part runs them once (not the determinism run)."""
    import import_scaling

    rows = []
    for n in (int(r) for r in os.environ.get("BENCH_IMPORT_ROWS", IMPORT_ROWS).split(",")):
        log(f"import: a CSV file of {n} rows")
        rows.append(import_scaling.measure(n, log=log))
    return rows


# ---------------------------------------------------------------- the two parts
def counting(work: Path, contacts: int, funnel_contacts: int, timed: bool, rounds: int) -> tuple[dict, dict]:
    """(counts, times): the counts from stepped runtimes only; times (ratios) when ``timed``."""
    counts, times = {}, {}
    with open(os.devnull, "w") as devnull:
        with contextlib.redirect_stdout(devnull), MeteredRuntime(stepped=True, start=START, state_dir=work / "local",
                                                                 log_level="INFO") as rt:
            log(f"scenario: {contacts} contacts through 60 days on the stepped runtime"
                + (", then every route timed warm against its raw boto3 baseline" if timed else ""))
            warm = times["routes"] = {}
            seen = exercise(rt, contacts, (lambda key, inv: warm.__setitem__(key, warm_route(rt, key, inv))) if timed
                            else None)  # warm requests: each route's handler vs raw boto3 (replayed AWS, interleaved)
            counts |= {"audience": contacts, "routes": route_rows(seen["routes"]), "per_request": per_request(rt),
                       "consumers": consumers(rt)}
            if timed:
                log("cold start: init + first request")
                times["cold_first"] = cold_first_request(rt, seen["routes"], work, rounds)
            functions = dict(rt.functions)
        if timed:
            log("cold start: where the import time goes")
            times["imports"] = coldstart.breakdowns(functions)
        # all inside `devnull`: the handlers' loggers were created writing to it
        log(f"funnels: the demo's seeded audience ({funnel_contacts} contacts) through 60 days of every funnel")
        counts["demo"] = demo_run(funnel_contacts)
        counts["scaling"] = scaling()
        log("broadcast at scale: engagement measured, then the quota simulation (bench/broadcast_scaling.py)")
        counts["broadcast_scaling"] = broadcast_scaling.run(broadcast_scaling.measure())
        bulk = bulk_runs()
        if timed:
            times["import"] = import_runs()
    counts["bulk"] = [{k: v for k, v in row.items() if k != "cpu_seconds"} for row in bulk]
    times["bulk_cpu_seconds"] = [row["cpu_seconds"] for row in bulk]
    return counts, times


def _flat(value, path: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{path}/{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{path}[{i}]").items()}
    return {path: value}


def differences(a: dict, b: dict) -> list[str]:
    fa, fb = _flat(a), _flat(b)
    return [f"{k}: {fa.get(k, '(absent)')} vs {fb.get(k, '(absent)')}" for k in sorted(fa.keys() | fb.keys())
            if fa.get(k) != fb.get(k)]


@contextlib.contextmanager
def second_run(env: dict):
    """The counting part again, in a fresh interpreter running alongside this one (its counts
    do not depend on the load; it shortens the bench); yields a function returning its counts."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "counts.json", Path(tmp) / "stderr"
        with open(err, "w") as stderr:
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--counts-only", "--json", str(out)],
                                    env=env, stdout=subprocess.DEVNULL, stderr=stderr)

        def counts() -> dict:
            if proc.wait():
                raise RuntimeError(f"the second run failed: {err.read_text().strip()[-2000:]}")
            return json.loads(out.read_text())

        try:
            yield counts
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------- report
def _fmt(x, digits=2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _verdict(value, goal) -> str:
    return "–" if value is None else ("pass" if value <= goal else "**miss**")


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render_import(runs: list[dict]) -> list[str]:
    """The import's section of RESULTS.md (``runs``: ``import_runs()``)."""
    from import_scaling import TRANSITIONS_PER_BATCH

    out = ["", "## Import (a CSV file, `funnelpilot contacts import`; stepped runtime, strict mode; measured once)", "",
            "Validation of the whole file, then ContactImportFunction 100 rows an invocation (one BatchGetItem, "
            "TransactWriteItems); the re-run changes nothing. USD at infra/prices.yaml's list prices: DynamoDB "
            "on-demand units, Lambda requests and GB-seconds (this machine's time), and the Distributed Map's "
            f"{TRANSITIONS_PER_BATCH} state transitions per batch of 100 on AWS.", "",
            "| rows | validation rows/s | run | rows/s | AWS calls per 1,000 rows | write / read units per 1,000 rows | "
            "USD per 1,000 rows | written |", "|---|---|---|---|---|---|---|---|"]
    for row in runs:
        for run in ("first", "again"):
            r = row[run]
            written = ", ".join(f"{v} {k}" for k, v in r["counts"].items() if v)
            out.append(f"| {row['rows']:,} | {row['validate_rows_per_s']:,} | {run} | {r['rows_per_s']:,} | "
                       f"{r['aws_calls_per_1000_rows']:g} | {r['wru_per_1000_rows']:,} / {r['rru_per_1000_rows']:,} | "
                       f"{r['usd_per_1000_rows']:.5f} | {written} |")
    if len(runs) > 1:
        first, last = runs[0], runs[-1]
        out.append(f"\nPer-row trend from {first['rows']:,} to {last['rows']:,} rows: first import "
                   f"{first['first']['rows_per_s']:,} → {last['first']['rows_per_s']:,} rows/s, AWS calls per 1,000 rows "
                   f"{first['first']['aws_calls_per_1000_rows']:g} → {last['first']['aws_calls_per_1000_rows']:g}.")
    return out


def render(c: dict, t: dict, check: list[str] | None, n_counts: int) -> str:
    d, usage = c["demo"], c["demo"]["usage"]
    emails = usage["ses_emails"] or None
    if check is None:
        same = "Not checked on this run (`bench/run.py --check-determinism` runs the counting part twice)."
    elif not check:
        same = (f"**Two runs gave the same counts**: `--check-determinism` ran the counting part a second time in a "
                f"fresh interpreter (alongside this one) and all {n_counts} counts matched.")
    else:
        same = (f"**Two runs differed** in {len(check)} of {n_counts} counts (`--check-determinism`): "
                + "; ".join(check[:10]))
    out = ["# funnelpilot benchmarks", "",
           f"`make bench`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {_commit()}, Python "
           f"{sys.version.split()[0]}, {os.cpu_count()} CPUs. Counts come from runtimes on the stepped clock with "
           "seeded audiences: they do not depend on the machine or its load. The figures that are times: "
           + "; ".join(TIMES) + ". Every other figure is a count. Times are ratios to a baseline measured in the same "
           "run (medians), noisy on a loaded machine. What each figure means: README.md, \"Performance and cost\".",
           "", same, ""]
    out += ["## Issue 17: per email and per request (counts), then the hot handlers' times", "",
            f"Per email: the usage meter (`funnelpilot_local.costs.Meter`) over the demo's seeded audience "
            f"(`demo.simulate(seed=7, contacts={d['contacts']}, days=60)`: {usage['ses_emails']} emails sent, "
            "confirmations included), each total divided by the emails. Per request: every request of the bench's "
            f"own audience ({c['audience']} contacts, 60 days) to the route (first and repeated opens and clicks, new "
            "signups), AWS calls on the request "
            "path (what follows on the bus is counted per event below). Then the hot handlers' times: warm (CPU time against "
            "the raw handler making the same calls) and cold, init + first request (sections below).", "",
            "| figure | measured | goal | |", "|---|---|---|---|"]
    for label, key, goal in PER_EMAIL:
        value = usage[key] / emails if emails else None
        out.append(f"| {label} per email | {_fmt(value)} ({usage[key]:g} / {usage['ses_emails']}) | ≤ {goal} | "
                   f"{_verdict(value, goal)} |")
    for key, goal in PER_REQUEST_GOAL.items():
        by_calls = c["per_request"].get(key, {})
        n = sum(by_calls.values())
        mean = sum(int(k) * v for k, v in by_calls.items()) / n if n else None
        spread = ", ".join(f"{v} with {k}" for k, v in by_calls.items())
        out.append(f"| AWS calls per {HOT_ROUTES[key]} (`{key}`) | {_fmt(mean)} ({n} requests: {spread or 'none'}) | "
                   f"{goal} | {_verdict(mean, goal)} |")
    for key, name in HOT_ROUTES.items():
        w = t["routes"].get(key, {})
        out.append(f"| {name} warm ÷ raw boto3 handler (CPU time, interleaved) | {_fmt(w.get('ratio'))}"
                   f"{'×' if w.get('ratio') else ''} {w.get('note', '')} | ≤ {WARM_GOAL}× | "
                   f"{_verdict(w.get('ratio'), WARM_GOAL)} |")
    first = t["cold_first"]
    for lid, name in zip(HOT, HOT_ROUTES.values()):  # the headline of a cold start: init + first request
        f = first.get("functions", {}).get(lid, {})
        vs_raw = f" ({_fmt(f['vs_raw'])}× the raw handler's)" if f.get("vs_raw") else ""
        out.append(f"| {name} cold start, init + first request ÷ `import boto3` + client + GetItem (time) | "
                   f"{_fmt(f.get('ratio'))}{'×' if f.get('ratio') else ''}{vs_raw} | ≤ {COLD_GOAL}× | "
                   f"{_verdict(f.get('ratio'), COLD_GOAL)} |")
    out += ["", "## Cold start (fresh interpreter; times)", "",
            "Init + first request (or first event) of each function, AWS answered from the recording: deferring an "
            "import moves its cost to the first request, it does not remove it, so init alone is not a figure here. "
            "Baseline in the same shuffled rounds: `import boto3` + one client + one GetItem answered the same way = "
            f"{first.get('baseline_ms', 0):.0f} ms on this run. Goal ≤ {COLD_GOAL}× for signup, track_open, "
            "track_click.", "",
            "| function | init + first request ÷ baseline | ÷ raw boto3 handler's | goal | heaviest imports (share of "
            "import time) |", "|---|---|---|---|---|"]
    for lid, breakdown in sorted(t["imports"].items()):
        f = first.get("functions", {}).get(lid, {})
        fr, vs_raw = f.get("ratio"), f.get("vs_raw")
        goal = _verdict(fr, COLD_GOAL) if lid in HOT else "–"
        heavy = ", ".join(f"{pkg} {share:.0%}" for pkg, share in breakdown)
        out.append(f"| {lid} | {_fmt(fr)}{'×' if fr else ''} | {_fmt(vs_raw)}{'×' if vs_raw else ''} | {goal} | "
                   f"{heavy} |")
    failed = first.get("failed", {})
    for lid, why in sorted(failed.items()):
        out.append(f"\n{lid}: first request not measured (its recorded calls could not be replayed: {why}).")
    idle = sorted(set(t["imports"]) - set(first.get("functions", {})) - set(failed))
    if idle:
        out.append(f"\nNot invoked by the bench's scenario: {', '.join(idle)}.")
    out += ["", "## HTTP routes (second request of each route: counts; warm time ratio)", "",
            "| route | AWS calls | DynamoDB capacity units (estimated per KB and index) | calls | handler ÷ raw boto3 (CPU time) "
            "| baseline |", "|---|---|---|---|---|---|"]
    for row in c["routes"]:
        w = t["routes"].get(row["route"], {})
        ratio = f"{_fmt(w['ratio'])}× ({_verdict(w['ratio'], WARM_GOAL)})" if w.get("ratio") else f"– ({w.get('note')})"
        out.append(f"| `{row['route']}` | {row['calls']} | {_fmt(row['capacity'], 1)} | {', '.join(row['ops']) or '–'} | "
                   f"{ratio} | {w.get('baseline', '–')} |")
    out += ["", "## Per event and per funnel step (async consumers, Step Functions tasks; counts)", "",
            "| function | trigger | invocations | AWS calls per event | DynamoDB capacity units per event | calls |",
            "|---|---|---|---|---|---|"]
    for row in c["consumers"]:
        out.append(f"| {row['function']} | `{row['trigger']}` | {row['count']} | {_fmt(row['calls'], 1)} | "
                   f"{_fmt(row['capacity'], 1)} | {', '.join(row['ops'])} |")
    out += ["", f"## Funnels ({d['contacts']} demo contacts, 60 days, every shipped funnel; per execution = "
            "per contact and entry; counts)", "",
            "| funnel | executions | state transitions per contact (mean / max) | Lambda tasks per contact | "
            "Step Functions USD per 1,000 contacts |", "|---|---|---|---|---|"]
    for row in d["journeys"]:
        cost = None if row["transitions"] is None else row["transitions"] * SFN_PRICE_PER_TRANSITION * 1000
        out.append(f"| {row['funnel']} | {row['executions']} | {_fmt(row['transitions'], 1)} / {row['max'] or '–'} | "
                   f"{_fmt(row['tasks'], 1)} | {_fmt(cost, 3)} |")
    out += ["", "## Bulk actions (a tag over a segment; stepped runtime with the 25,000-event history limit)", "",
            "| members | page / batch | history budget (pages per execution) | executions | max history events per "
            "execution | Lambda invocations | CPU s per 1,000 members (time) |", "|---|---|---|---|---|---|---|"]
    for row, cpu in zip(c["bulk"], t["bulk_cpu_seconds"]):
        out.append(f"| {row['members']:,} | {row['page_size']} / {row['batch_size']} | {row['history_budget']:,} "
                   f"({row['pages_per_execution']}) | {row['executions']} | {row['max_history']:,} | "
                   f"{row['invocations']} | {cpu / row['members'] * 1000:.1f} |")
    out += ["", "Invocations grow with the members (one per batch and per page read, plus a start and a hand-on call "
            "per execution and the report); history events per execution stay under the budget whatever the size "
            "(the last row: a budget of two pages, so the run continues in new executions). The shipped budget fits "
            f"{c['bulk'][0]['pages_per_execution'] * c['bulk'][0]['page_size']:,} members in one execution. "
            "CPU seconds are this machine's moto (one TransactWriteItems per member), not AWS's."]
    out += render_import(t.get("import", []))
    out += broadcast_scaling.render(c["broadcast_scaling"])
    out += ["", "## Growth with the number of contacts (counts)", ""]
    if c["scaling"]:
        out += ["| job | contacts | figure | value | per contact |", "|---|---|---|---|---|"]
        for row in c["scaling"]:
            per = row["value"] / row["contacts"] if row.get("contacts") else None
            out.append(f"| {row['job']} | {row['contacts']} | {row['figure']} | {row['value']} | {_fmt(per, 3)} |")
    else:
        out.append("No scaling benchmark yet (bench/*_scaling.py).")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-determinism", action="store_true",
                        help="run the counting part again in a fresh interpreter and diff the counts")
    parser.add_argument("--counts-only", action="store_true", help="only the counting part; print its counts as JSON")
    parser.add_argument("--json", type=Path, help="with --counts-only: write the counts to this file")
    args = parser.parse_args(argv)
    started = time.monotonic()
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    contacts = int(os.environ.get("BENCH_CONTACTS", "12"))
    funnel_contacts = int(os.environ.get("BENCH_FUNNEL_CONTACTS", "40"))
    keep = os.environ.get("BENCH_KEEP")  # a directory to keep the recordings in, for debugging
    check = None
    with contextlib.ExitStack() as stack:
        other = stack.enter_context(second_run(dict(os.environ))) if args.check_determinism else None
        if other:
            log("determinism: the counting part also runs in a fresh interpreter alongside")
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        counts, times = counting(Path(keep or tmp), contacts, funnel_contacts, not args.counts_only, rounds)
        if args.counts_only:
            text = json.dumps(counts, indent=1, sort_keys=True)
            args.json.write_text(text) if args.json else print(text)
            log(f"counts done in {time.monotonic() - started:.0f} s")
            return 0
        if other:
            log("determinism: waiting for the second run")
            check = differences(counts, other())
    cpu = sum(os.times()[:4])  # user + system, this process and the fresh interpreters it ran
    report = render(counts, times, check, len(_flat(counts)))
    log("spam scores: every shipped email through SpamAssassin (bench/spam_scores.py)")
    report += "\n".join(spam_scores.render(spam_scores.measure())) + "\n"
    report += (f"\nThis run: {(time.monotonic() - started) / 60:.0f} minutes wall clock, {cpu / 60:.0f} CPU minutes "
               f"(load average {os.getloadavg()[0]:.1f} at the end).\n")
    (HERE / "RESULTS.md").write_text(report)
    print(report)
    log(f"bench done in {time.monotonic() - started:.0f} s, {cpu:.0f} CPU s; written to bench/RESULTS.md")
    return 1 if check else 0


if __name__ == "__main__":
    sys.exit(main())
