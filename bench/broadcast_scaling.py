"""A broadcast to 100,000 and 1,000,000 recipients on modelled AWS accounts (issue 14 item 4).

A deterministic simulation, one-second steps, no wall clock and no random numbers (two runs print the
same table), of the pipeline funnelpilot/broadcasts and funnelpilot/sending/pace.py build: the launcher
makes chunk k of at most 50 recipients visible k x 50 / rate seconds after the start (SQS DelaySeconds);
send workers (the SQS event source, at most BroadcastConcurrency at once) take rate slots of the
current second from one pace item (one UpdateItem per take), claim, send, and put the rest of a chunk
back with a 1 s delay when the second is full; funnel emails take their slots first. What follows
delivery is modelled too: Apple Mail Privacy Protection prefetches, link scanners and people on the
HTTP routes' token buckets (template.yaml), and every invocation on the account's Lambda concurrency.

It is driven by counts measured on the stepped strict runtime (``measure()``: a real broadcast, then
opens and clicks of its emails): AWS calls by service:operation, write and read units and bus events
per email, per chunk attempt and per attempt that found the second full, the launcher's per chunk, and
the invocations each email, open and click sets off. Times are modelled, not measured: ``LATENCY``
(typical in-region latencies of each call) turns the counts into worker seconds.

Quotas modelled (defaults, us-east-1; checked 2026-12-01):
- SES production: MaxSendRate 14/s (a new production account) and 200/s (raised).
- Lambda account concurrency 10 (some new accounts) and 1,000 (the default).
- EventBridge PutEvents 10,000 requests/s in us-east-1 (2,400 in us-east-2, fewer elsewhere), target
  invocations 18,750/s (docs.aws.amazon.com/eventbridge/latest/userguide/eb-quota.html).
- Step Functions StartExecution: token bucket of 1,300, refilled 300/s (us-east-1, us-west-2, eu-west-1;
  800 and 150/s elsewhere; docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html); a broadcast
  starts no execution per email (a click's hand-off may: its count is measured).
- API Gateway: 10,000 requests/s per account and region with a 5,000 burst (2,500/1,250 in newer
  regions: docs.aws.amazon.com/apigateway/latest/developerguide/limits.html), the routes' own limits
  from template.yaml; over a route's bucket the client gets 429.
- DynamoDB: 1,000 write units/s on one item (a partition's ceiling): the pace item of a second and
  the broadcast's counter item take every take and every chunk's counters.

    .venv/bin/python bench/broadcast_scaling.py [--json]
"""
import argparse
import contextlib
import json
import math
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from funnelpilot.broadcasts.worker import SEND_THREADS, backoff  # noqa: E402  (the worker modelled)
from funnelpilot_local.runtime import ROOT  # noqa: E402  (the checkout whose code and template.yaml are measured)

CHUNK = 50  # recipients per SQS message (the launcher's chunks)
LATENCY = {"dynamodb": 0.006, "ses": 0.030, "sesv2": 0.030, "events": 0.015, "sqs": 0.010, "scheduler": 0.020,
           "stepfunctions": 0.020, "ssm": 0.010}  # seconds per call: typical in-region latencies (assumed)
RENDER = 0.004  # seconds of CPU per email rendered (assumed)
INVOCATION = 0.002  # seconds of Lambda overhead per invocation (assumed)
DELIVERY_DELAY = 2  # seconds from SES accepting an email to the recipient's server taking it (assumed)
FUNNEL_SHARE = 0.05  # funnel emails wanting slots meanwhile, as a share of the SES rate (priority)
LINKS = 6  # tracked links of a newsletter, each fetched by a link scanner (the measured email's own count is shown)
FAULT_EVERY = 200  # the fault run: every 200th chunk attempt that sends is killed halfway

# What follows delivery, as shares of recipients, with when it comes: uniform over (start, end) seconds
# after delivery. Apple Mail Privacy Protection prefetches the images of every email to an Apple Mail
# user with MPP on, whether read or not, mostly within minutes of delivery while the device is online:
# Litmus counted MPP at 52.7% of all opens in July 2022 (litmus.com/apple-mail-privacy-protection-resources;
# Apple clients 57%); taken here as 45% of recipients. Link scanners (Microsoft Defender Safe Links,
# Mimecast, Proofpoint) fetch every link of a message as it is delivered: 10% of recipients, each link once
# (an assumption for a list with business addresses; no public share found). People: 15% open in other
# clients over two days, 2% click one link (assumptions, typical newsletter rates).
ENGAGEMENT = {
    "mpp_open": [(0.25, 1, 60), (0.15, 60, 900), (0.05, 3600, 43200)],
    "scanner_click": [(0.10, 1, 20)],  # per link of the email (``links``)
    "human_open": [(0.05, 60, 3600), (0.05, 3600, 6 * 3600), (0.05, 6 * 3600, 48 * 3600)],
    "human_click": [(0.01, 60, 3600), (0.01, 3600, 48 * 3600)],
}
ROUTE_OF = {"mpp_open": "GET /o/{token}", "human_open": "GET /o/{token}", "scanner_click": "GET /c/{token}",
            "human_click": "GET /c/{token}"}


@dataclass(frozen=True)
class Account:
    ses_rate: int
    lambda_concurrency: int
    workers: int | None = None  # BroadcastConcurrency set for this account (None: the template's default)

    def label(self, default: int) -> str:
        return (f"SES {self.ses_rate}/s, Lambda {self.lambda_concurrency:,}, BroadcastConcurrency "
                f"{self.workers or default}{'' if self.workers else ' (default)'}")


# A worker sends SEND_THREADS recipients at once (about 8 x 19 emails/s), so the default BroadcastConcurrency
# keeps up with 200/s even on a new account of 10 concurrent Lambdas; at 14/s 3 workers send as fast with
# fewer chunks received and put back.
ACCOUNTS = [Account(14, 10), Account(14, 10, 3), Account(14, 1000), Account(200, 10), Account(200, 1000)]
SIZES = (100_000, 1_000_000)


@dataclass
class Counts:
    """Per-unit counts measured on the stepped strict runtime (``measure()``). Each ``calls`` dict maps
    service:Operation to calls, with ``~wru``, ``~rru`` (DynamoDB units, the usage meter's) and ``~events``
    (bus events put) beside them."""
    source: str
    send: dict  # per email sent, in the send worker
    attempt: dict  # per chunk attempt that sends, whatever its size (receive to delete)
    refused: dict  # per chunk attempt that finds the second full (put back, backing off)
    launch: dict  # per chunk, in the launcher (``~invocations``: its invocations per chunk)
    downstream: dict  # per email sent, on the bus: {"calls": {...}, "invocations": {function: n}}
    engagement: dict  # per request of each kind (mpp_open, scanner_click...): {"calls", "invocations"}
    links: int  # tracked links of the measured email (the model's newsletter has LINKS)
    redelivery_sends: float  # SES sends per recipient when a sent chunk's message comes again (0: the claims hold)


BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15"
AGENTS = {  # (user agent, source IP, seconds after the send) of each kind of request, as the tracking code sees them
    "mpp_open": ("Mozilla/5.0", "17.58.63.9", 30),  # Apple's proxy: no browser, an Apple address
    "scanner_click": ("Mozilla/5.0 (compatible; Mimecast URL Protect)", "198.51.100.7", 2),
    "human_open": (BROWSER, "198.51.100.23", 3600),
    "human_click": (BROWSER, "198.51.100.23", 3600),
}


def _snapshot(m) -> tuple[Counter, Counter, Counter]:
    return Counter(m.calls), Counter(m.units), Counter(m.invocations)


def _delta(m, before, n: int) -> dict:
    calls, units, invocations = (Counter(x) for x in _snapshot(m))
    calls.subtract(before[0]), units.subtract(before[1]), invocations.subtract(before[2])
    per = 1 / max(1, n)
    out = {f"{s}:{o}": round(v * per, 3) for (s, o), v in sorted(calls.items()) if v}
    out |= {"~wru": round(units["wru"] * per, 3), "~rru": round(units["rru"] * per, 3),
            "~events": round(units["events"] * per, 3)}
    return {"calls": out, "invocations": {f: round(v * per, 3) for f, v in sorted(invocations.items()) if v}}


def _engage(rt, m, mails: list[list[str]], per_kind: int = 8) -> dict:
    """Per request of each kind (an MPP prefetch, a scanner's click at delivery, a person's open and
    click an hour later) on ``mails`` (each one's tracked paths): the AWS calls, invocations, write units
    and bus events it causes, its consumers included."""
    import traffic

    kinds, out, elapsed = list(AGENTS), {}, 0
    for kind in sorted(kinds, key=lambda k: AGENTS[k][2]):
        agent, ip, after = AGENTS[kind]
        if after > elapsed:
            rt.advance(after - elapsed)
            elapsed = after
        before, requests = _snapshot(m), 0
        for urls in mails[kinds.index(kind)::len(kinds)][:per_kind]:
            targets = [u for u in urls if u.startswith("/o/")][:1] if kind.endswith("open") else [
                u for u in urls if u.startswith("/c/") and not traffic.honeypot(u)][:1]
            for url in targets:
                rt.http("GET", url, headers={"user-agent": agent}, source_ip=ip)
                requests += 1
        rt.settle()
        out[kind] = _delta(m, before, requests)
    return out


HTML = """{% extends "layout.html.j2" %}
{% block title %}March news{% endblock %}
{% block body %}
<p>Hi {{ first_name }},</p>
<p><a href="{{ site_url }}/blog/three-habits">Read the three habits</a> or <a href="{{ site_url }}/pricing">see the plans</a>.</p>
{% endblock %}
"""
TEXT = """{% extends "layout.txt.j2" %}
{% block body %}
Hi {{ first_name }}, read the three habits: {{ site_url }}/blog/three-habits
{% endblock %}
"""


def _fit(points: list[tuple[int, Counter]]) -> tuple[dict, dict]:
    """Least squares of each operation's calls per invocation against its emails sent: (per email, per
    invocation); ``points``: (emails, calls by operation) of the worker invocations that sent."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    per_email, per_attempt = {}, {}
    for op in sorted({op for _, c in points for op in c}):
        my = sum(c[op] for _, c in points) / n
        slope = sum((x - mx) * (c[op] - my) for x, c in points) / sxx if sxx else 0.0
        slope = max(0.0, slope)
        intercept = max(0.0, my - slope * mx)
        if slope > 1e-3:
            per_email[op] = round(slope, 3)
        if intercept > 1e-3:
            per_attempt[op] = round(intercept, 3)
    return per_email, per_attempt


def _mean(rows: list[Counter]) -> dict:
    total = Counter()
    for r in rows:
        total.update(r)
    return {k: round(v / len(rows), 3) for k, v in sorted(total.items()) if v} if rows else {}


@contextlib.contextmanager
def _full_timeouts(rt):
    """Each invocation's context has its function's whole Timeout left (the local one says 30 s): the
    launcher's time budget is wall-clock, and at 30 s a loaded machine would make it hand off, so its
    counts would depend on the load."""
    from funnelpilot_local.runtime import LambdaContext

    timeouts = {lid: int(rt.template.resolve(rt.template.properties(lid)).get("Timeout", 3)) for lid in rt.functions}
    original = LambdaContext.get_remaining_time_in_millis
    LambdaContext.get_remaining_time_in_millis = lambda context: timeouts.get(context.function_name, 3) * 1000
    try:
        yield
    finally:
        LambdaContext.get_remaining_time_in_millis = original


def measure(recipients: int = 500, rate: int = 14) -> Counts:
    """A real broadcast of ``recipients`` (imported as the importer writes them) on the stepped strict
    runtime at SES ``rate``/s, every invocation's calls recorded apart (usage meter): the send worker's
    per email and per chunk attempt (fitted: calls = a x emails + b over the attempts that sent), per
    attempt that found the second full, the launcher's per chunk, the bus consumers' per email; one chunk
    delivered again after it was sent (the SES sends it makes: the claims' test); then opens and clicks
    of its emails (``_engage``)."""
    import tempfile

    import traffic
    from funnelpilot import broadcasts
    from funnelpilot.audience import importer
    from funnelpilot_local.aws_rules import Rules
    from funnelpilot_local.costs import Meter
    from funnelpilot_local.demo import START
    from funnelpilot_local.runtime import Runtime

    worker, records, first = _template_settings()["worker"], [], {}
    with tempfile.TemporaryDirectory() as tmp, Runtime(ROOT, stepped=True, start=START + 10 * 3600, state_dir=Path(tmp),
                                                       rules=Rules(ses_max_send_rate=rate)) as rt, _full_timeouts(rt):
        rt.schedules.clear()
        rows = [{"email": f"reader{i}@example.com", "first_name": f"Reader{i}"} for i in range(recipients)]
        importer.apply(rows, {"file": "bench.csv", "imported_at": "2026-03-01", "list": "newsletter", "mapping": {}})
        with Meter(rt) as m:
            inner, invoke = rt.invoke_hook, rt.invoke

            def hook(function, call):  # each invocation's own calls and units
                before = (Counter(m.calls), Counter(m.units))
                try:
                    return inner(function, call)
                finally:
                    calls, units = Counter(m.calls), Counter(m.units)
                    calls.subtract(before[0]), units.subtract(before[1])
                    c = Counter({f"{s}:{o}": v for (s, o), v in calls.items() if v})
                    c["~wru"], c["~rru"], c["~events"] = units["wru"], units["rru"], units["events"]
                    records.append((function, c))

            def recorded(function, payload):
                if function == worker:
                    first.setdefault("payload", payload)
                return invoke(function, payload)

            rt.invoke_hook, rt.invoke = hook, recorded
            broadcasts.create({"name": "bench-news", "subject": "March news for {{ first_name }}", "preheader": "Two reads",
                               "content": {"html": HTML, "text": TEXT}, "list": "newsletter",
                               "audience": {"lists": ["newsletter"]}})
            broadcasts.schedule("bench-news", {"now": True})
            for _ in range(4 * recipients // rate + 60):
                rt.advance(1)
                if broadcasts.report("bench-news")["sent"] >= recipients:
                    break
            rt.settle()
            sent = broadcasts.report("bench-news")["sent"]
            rt.invoke = invoke
            measured, before = list(records), m.units["emails"]
            rt.invoke(worker, first["payload"])  # the first chunk's message again, after it was sent
            rt.settle()
            chunk = json.loads(first["payload"]["Records"][0]["body"])["c"]
            redelivery = (m.units["emails"] - before) / len(chunk)
            mails = [list(dict.fromkeys(traffic.email_urls(rt, mail))) for mail in traffic._new_mails([0])]
            engagement = _engage(rt, m, [urls for urls in mails if any(u.startswith("/o/") for u in urls)])
    work = [c for f, c in measured if f == worker]
    per_email, per_attempt = _fit([(c["ses:SendRawEmail"], c) for c in work if c["ses:SendRawEmail"]])
    others = [(f, c) for f, c in measured if f not in (worker, "BroadcastFunction")]
    launch = Counter({"~invocations": sum(1 for f, _ in measured if f == "BroadcastFunction")})
    for f, c in measured:
        if f == "BroadcastFunction":
            launch.update(c)
    chunks = math.ceil(recipients / CHUNK)
    downstream = Counter()
    for _, c in others:
        downstream.update(c)
    links = round(sum(sum(1 for u in urls if u.startswith("/c/")) for urls in mails) / max(1, len(mails)))
    return Counts(
        source=(f"a real broadcast of {recipients:,} imported contacts at SES {rate}/s on the stepped strict runtime "
                f"({sum(1 for c in work if c['ses:SendRawEmail'])} chunk attempts that sent, "
                f"{sum(1 for c in work if not c['ses:SendRawEmail'])} that found the second full; {sent:,} sent), "
                "then opens and clicks of its emails"),
        send=per_email, attempt=per_attempt, refused=_mean([c for c in work if not c["ses:SendRawEmail"]]),
        launch={k: round(v / chunks, 3) for k, v in sorted(launch.items()) if v},
        downstream={"calls": {k: round(v / sent, 3) for k, v in sorted(downstream.items()) if v},
                    "invocations": {f: round(n / sent, 3) for f, n in sorted(Counter(f for f, _ in others).items())}},
        engagement=engagement, links=links, redelivery_sends=redelivery)


def seconds(calls: dict) -> float:
    """Modelled time of these calls (``LATENCY``; the ``~`` counts take none)."""
    return sum(n * LATENCY.get(op.split(":")[0], 0.01) for op, n in calls.items() if not op.startswith("~"))


def _template_settings() -> dict:
    """The routes' throttling, the send worker's MaximumConcurrency and its queue's maxReceiveCount, read
    from template.yaml (with the parameters' defaults)."""
    from funnelpilot_local.template import Template

    t = Template.load(ROOT)
    props = t.resolve(t.properties(next(iter(t.of_type("AWS::Serverless::HttpApi")))))
    default = props.get("DefaultRouteSettings", {})
    routes = {}
    for route in sorted(set(ROUTE_OF.values())):
        s = {**default, **props.get("RouteSettings", {}).get(route, {})}
        routes[route] = [float(s["ThrottlingRateLimit"]), float(s["ThrottlingBurstLimit"])]
    out = {"routes": routes, "max_concurrency": None, "max_receive": None, "worker": None, "visibility": None}
    for lid in t.of_type("AWS::Serverless::Function"):
        for event in (t.properties(lid).get("Events") or {}).values():
            if event.get("Type") != "SQS":
                continue
            ev = event["Properties"]
            out["worker"] = lid
            out["max_concurrency"] = int(t.resolve((ev.get("ScalingConfig") or {}).get("MaximumConcurrency", 1000)))
            queue = t.resources[ev["Queue"]["Fn::GetAtt"][0]].get("Properties", {})
            out["max_receive"] = int(t.resolve(queue.get("RedrivePolicy", {}).get("maxReceiveCount", 0))) or None
            out["visibility"] = int(t.resolve(queue.get("VisibilityTimeout", 30)))
    return out


def _arrivals(kind_shares, cumulative, t: int) -> float:
    """Requests of one kind arriving in second ``t`` (fluid): each (share, start, end) component spreads
    the deliveries uniformly over (start, end] seconds after them; ``cumulative[i]``: deliveries before i."""
    total = 0.0
    for share, start, end in kind_shares:
        hi, lo = cumulative[max(0, min(len(cumulative) - 1, t - start))], cumulative[max(0, min(len(cumulative) - 1, t - end))]
        total += share * (hi - lo) / (end - start)
    return total


class Queue:
    """SQS messages of chunks, as counts: ``full`` untouched chunks, ``parts`` (size, receives, refusals in a
    row) for the rest."""

    def __init__(self):
        self.full, self.parts = 0, []

    def __len__(self) -> int:
        return self.full + len(self.parts)

    def pop(self) -> tuple[int, int]:
        if self.parts:
            return self.parts.pop()
        self.full -= 1
        return CHUNK, 0, 0

    def add(self, other: "Queue") -> None:
        self.full += other.full
        self.parts += other.parts


def simulate(counts: Counts, account: Account, recipients: int, settings: dict, fault_every: int = 0) -> dict:
    """One broadcast of ``recipients`` on ``account``, second by second until every email is sent and
    what it set off (engagement, its downstream invocations) has been served. ``fault_every``: every
    n-th chunk attempt that sends is killed halfway (its message comes back after the visibility
    timeout; the claims of what it sent make those recipients skipped, or else they would be sent twice)."""
    rate, limit = account.ses_rate, account.lambda_concurrency
    max_conc, max_receive = account.workers or settings["max_concurrency"], settings["max_receive"]
    per_email, per_attempt = seconds(counts.send) + RENDER, seconds(counts.attempt) + INVOCATION
    per_refused = seconds(counts.refused) + INVOCATION
    funnel = max(1, round(FUNNEL_SHARE * rate))  # funnel sends each second: they hold their slots first
    per_request = {k: INVOCATION + seconds(c["calls"]) / max(1, sum(c["invocations"].values()))
                   for k, c in counts.engagement.items()}  # seconds per invocation, the tracking ones alike
    per_email_downstream = sum(counts.downstream["invocations"].values())
    downstream_each = INVOCATION + seconds(counts.downstream["calls"]) / max(1e-9, per_email_downstream)
    chunks = math.ceil(recipients / CHUNK)
    visible, delayed, redelivered = Queue(), defaultdict(Queue), defaultdict(list)
    launched = sent = attempts = refused = faults = absorbed = lost = 0
    deliveries, cumulative = defaultdict(float), [0.0]
    routes = {r: {"rate": lim[0], "burst": lim[1], "tokens": lim[1], "peak": 0.0, "429": 0.0}
              for r, lim in settings["routes"].items()}
    peak = Counter()
    backlog = backlog_peak = http_refused = 0.0
    t, finish = 0, None
    while finish is None or t < finish + 3600 or backlog > 0:
        # the launcher's pacing: chunk k becomes visible k * CHUNK / rate seconds after the start (DelaySeconds;
        # it keeps WINDOW seconds of sending queued ahead, continuing later), so workers find work at the rate
        n = min(chunks, (t + 1) * rate // CHUNK + 1) - launched
        launched += n
        visible.full += n
        if n and launched == chunks and recipients % CHUNK:
            visible.full -= 1
            visible.parts.append((recipients % CHUNK, 0, 0))
        visible.add(delayed.pop(t, Queue()))
        for size, done, receives in redelivered.pop(t, []):
            if max_receive and receives >= max_receive:
                lost += size - done  # to the dead-letter queue: never sent
            else:
                absorbed += done  # their claims exist: skipped, no second email
                visible.parts.append((size - done, receives, 0))
        # what the emails delivered so far set off in this second: requests, their invocations
        arrivals = {k: _arrivals(ENGAGEMENT[k], cumulative, t) * (LINKS if k == "scanner_click" else 1)
                    for k in ENGAGEMENT}
        for route, r in routes.items():
            load = sum(v for k, v in arrivals.items() if ROUTE_OF[k] == route)
            r["tokens"] = min(r["burst"], r["tokens"] + r["rate"])
            r["peak"], r["429"] = max(r["peak"], load), r["429"] + max(0.0, load - r["tokens"])
            r["tokens"] = max(0.0, r["tokens"] - load)
        sync = sum(v * per_request[k] for k, v in arrivals.items())  # concurrency of the tracking functions
        if sync > limit:
            http_refused += (sync - limit) / sync * sum(arrivals.values())
        async_demand = backlog + sum(
            v * (sum(counts.engagement[k]["invocations"].values()) - 1) * downstream_each for k, v in arrivals.items())
        async_demand += deliveries.get(t, 0.0) * per_email_downstream * downstream_each
        async_run = min(async_demand, max(0.0, limit - sync))
        backlog = async_demand - async_run  # Lambda keeps throttled async events and retries them (up to 6 h)
        backlog_peak = max(backlog_peak, backlog)
        workers = min(max_conc, int(max(0.0, limit - sync - async_run))) if len(visible) else 0
        # second t's pace item: the funnel sends' slots first, then the workers take what is free
        free, pace_writes, sent_now, budget = rate - funnel, funnel, 0, [1.0] * workers
        for w in range(workers):
            while free > 0 and len(visible) and budget[w] >= per_attempt + per_email:
                size, receives, _refusals = visible.pop()
                budget[w] -= per_attempt
                take = min(size, free, int(budget[w] * SEND_THREADS / per_email))  # sent SEND_THREADS at once
                budget[w] -= take * per_email / SEND_THREADS
                free -= take
                attempts += 1
                pace_writes += 1 + (take < size)  # a take short of the chunk: refused, then the exact remainder
                if fault_every and attempts % fault_every == 0:  # killed halfway: back after the visibility timeout
                    faults += 1
                    redelivered[t + settings["visibility"]].append((size, take // 2, receives + 1))
                    sent_now += take // 2
                    continue
                sent_now += take
                if take < size:
                    delayed[t + 1].parts.append((size - take, 0, 0))  # the rest: a new message, DelaySeconds 1
            if free <= 0 or not len(visible):
                break
        # the rest of the workers' second: chunks received, the second found full, put back (backing off)
        churn = min(len(visible), int(sum(budget) / per_refused)) if free <= 0 else 0
        for _ in range(churn):  # each backs off: 1, 2, 4 ... BACKOFF_MAX s after its n-th refusal in a row
            size, receives, refusals = visible.pop()
            delayed[t + backoff(refusals + 1)].parts.append((size, receives, refusals + 1))
        refused += churn
        pace_writes += churn
        sent += sent_now
        deliveries[t + DELIVERY_DELAY] += sent_now
        cumulative.append(cumulative[-1] + deliveries.get(t, 0.0))
        peak["concurrency"] = max(peak["concurrency"], sync + async_run + workers)
        peak["workers"] = max(peak["workers"], workers)
        peak["pace_writes"] = max(peak["pace_writes"], pace_writes)
        peak["start_executions"] = max(peak["start_executions"], sum(
            v * counts.engagement[k]["calls"].get("stepfunctions:StartExecution", 0) for k, v in arrivals.items()))
        peak["put_events"] = max(peak["put_events"], sent_now * (counts.send.get("events:PutEvents", 0) + counts.downstream[
            "calls"].get("events:PutEvents", 0)) + sum(v * counts.engagement[k]["calls"].get("events:PutEvents", 0)
                                                       for k, v in arrivals.items()))
        if finish is None and sent + lost >= recipients and launched == chunks and not redelivered:
            finish = t + 1
        t += 1
    return {"recipients": recipients, "account": account.label(settings["max_concurrency"]), "finish_s": finish, "floor_s": recipients / rate,
            "ratio": round(finish / (recipients / rate), 3), "sent": sent, "lost": lost, "failed": lost,
            "duplicated": round(absorbed * counts.redelivery_sends), "attempts": attempts, "refused": refused,
            "faults": faults, "absorbed": absorbed, "max_concurrency": max_conc, "async_backlog_peak": round(backlog_peak, 1),
            "http_refused": round(http_refused), "peak": dict(peak),
            "routes": {r: {"rate": v["rate"], "burst": v["burst"], "peak": round(v["peak"], 1), "429": round(v["429"])}
                       for r, v in routes.items()}}



def totals(counts: Counts, result: dict, prices: dict) -> dict:
    """AWS calls by service, Lambda invocations, write units and USD per 1,000 recipients of one run."""
    sent, chunks = result["sent"], math.ceil(result["recipients"] / CHUNK)
    requests = {k: result["recipients"] * sum(share for share, _, _ in ENGAGEMENT[k]) * (LINKS if k == "scanner_click" else 1)
                for k in ENGAGEMENT}
    esm = {"sqs:ReceiveMessage": 1, "sqs:DeleteMessage": 1}  # the event source mapping's, per message handled
    work = [(counts.send, sent), (counts.attempt, result["attempts"]), (counts.refused, result["refused"]),
            (esm, result["attempts"] + result["refused"]), (counts.launch, chunks), (counts.downstream["calls"], sent)]
    work += [(counts.engagement[k]["calls"], n) for k, n in requests.items()]
    calls = Counter()
    for per, n in work:
        for op, c in per.items():
            calls[op] += c * n
    invocations = (result["attempts"] + result["refused"] + calls.pop("~invocations", 0)
                   + sent * sum(counts.downstream["invocations"].values())
                   + sum(n * sum(counts.engagement[k]["invocations"].values()) for k, n in requests.items()))
    busy = (result["attempts"] * (seconds(counts.attempt) + INVOCATION) + sent * (seconds(counts.send) + RENDER)
            + result["refused"] * (seconds(counts.refused) + INVOCATION) + sent * (
                seconds(counts.downstream["calls"]) + INVOCATION * sum(counts.downstream["invocations"].values()))
            + sum(n * (seconds(counts.engagement[k]["calls"]) + INVOCATION * sum(counts.engagement[k]["invocations"].values()))
                  for k, n in requests.items()))
    wru, rru, events = calls.pop("~wru", 0), calls.pop("~rru", 0), calls.pop("~events", 0)
    aws = prices["aws"]

    def usd(key: str, n: float) -> float:
        return n * aws[key]["price"] / aws[key]["per"]

    cost = {"Lambda": usd("lambda_request", invocations) + usd("lambda_gb_second_arm64", busy * 0.25),  # 256 MB
            "DynamoDB": usd("dynamodb_on_demand_write", wru) + usd("dynamodb_on_demand_read", rru),
            "EventBridge": usd("eventbridge_custom_event", events),
            "SQS": usd("sqs_request", sum(n for op, n in calls.items() if op.startswith("sqs:"))),
            "HTTP API": usd("http_api_request", sum(requests.values())), "SES": usd("ses_outbound_email", sent)}
    per = 1000 / result["recipients"]
    by_service = Counter()
    for op, n in calls.items():
        by_service[op.split(":")[0]] += n
    return {"calls": {k: round(v * per, 1) for k, v in sorted(by_service.items())},
            "calls_total": round(sum(calls.values()) * per), "invocations": round(invocations * per),
            "wru": round(wru * per), "usd": {k: round(v * per, 4) for k, v in cost.items()},
            "usd_aws": round(sum(v for k, v in cost.items() if k != "SES") * per, 4)}


def run(counts: Counts, sizes=SIZES, accounts=ACCOUNTS) -> dict:
    """Every scenario on ``counts`` (``measure()``)."""
    from funnelpilot_local.costs import load_prices

    settings, prices = _template_settings(), load_prices()
    rows = []
    for account in accounts:
        for n in sizes:
            result = simulate(counts, account, n, settings)
            faulty = simulate(counts, account, n, settings, FAULT_EVERY)
            rows.append({**result, "per_1000": totals(counts, result, prices),
                         "faults": {k: faulty[k] for k in ("ratio", "faults", "absorbed", "lost", "duplicated")}})
    return {"counts": counts.__dict__, "settings": settings, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    out = run(measure())
    print(json.dumps(out, indent=1, default=str) if args.json else "\n".join(render(out)))
    return 0


def render(out: dict) -> list[str]:
    """bench/RESULTS.md's section."""
    c, st = out["counts"], out["settings"]
    routes = sorted(st["routes"])
    lines = ["", "## Broadcast at scale: a simulation of AWS quotas (bench/broadcast_scaling.py; counts, no wall clock)", "",
             f"Driven by {c['source']}. Send worker ({st['worker']}), per email sent: {_ops(c['send'])}; per chunk "
             f"attempt: {_ops(c['attempt'])}; per attempt finding the second full (the chunk put back, backing off): "
             f"{_ops(c['refused'])}; launcher per chunk: {_ops(c['launch'])}; on the bus per email: "
             + (f"{_ops(c['downstream']['invocations'])} invocations, {_ops(c['downstream']['calls'])}"
                if c["downstream"]["invocations"] else "no invocation") + ". A chunk's message "
             f"delivered again after it was sent made {c['redelivery_sends']:g} SES sends per recipient. Per open/click: "
             + "; ".join(f"{k} {_ops(v['calls'])} ({_ops(v['invocations'])})" for k, v in c["engagement"].items())
             + f". MaximumConcurrency: BroadcastConcurrency (default {st['max_concurrency']}), maxReceiveCount "
             f"{st['max_receive']}, visibility timeout {st['visibility']} s. Funnel emails take {FUNNEL_SHARE:.0%} of "
             "the rate meanwhile, ahead of the broadcast. Route limits (rate / burst) from template.yaml: "
             + ", ".join(f"`{r}` {st['routes'][r][0]:g} / {st['routes'][r][1]:g}" for r in routes) + ".", "",
             "| account | recipients | finish ÷ floor (recipients ÷ SES rate) | failed / lost / duplicated | worker attempts "
             "(second full) | peak Lambda concurrency (workers) | pace item writes/s (peak) | "
             + " | ".join(f"`{r}` peak rps, 429s" for r in routes)
             + " | AWS calls per 1,000 | AWS USD per 1,000 (SES alone) | 1 in 200 attempts killed: ÷ floor, lost / duplicated |",
             "|---|---|---|---|---|---|---|" + "---|" * len(routes) + "---|---|---|"]
    for r in out["rows"]:
        p, f = r["per_1000"], r["faults"]
        lines.append(
            f"| {r['account']} | {r['recipients']:,} | {r['ratio']:.3f} ({r['finish_s']:,} s ÷ {r['floor_s']:,.0f} s) | "
            f"{r['failed']} / {r['lost']} / {r['duplicated']} | {r['attempts']:,} ({r['refused']:,}) | "
            f"{r['peak']['concurrency']:.1f} ({r['peak']['workers']}) | {r['peak']['pace_writes']:,} | "
            + " | ".join(f"{r['routes'][x]['peak']:.0f}, {r['routes'][x]['429']:,}" for x in routes)
            + f" | {p['calls_total']:,} | {p['usd_aws']:.4f} ({p['usd']['SES']:.2f}) | "
              f"{f['ratio']:.3f}, {f['lost']} / {f['duplicated']} ({f['faults']} killed, {f['absorbed']} skipped by claims) |")
    peak = max(out["rows"], key=lambda r: r["peak"]["put_events"])["peak"]
    lines += ["", f"Other quotas at the peak of every scenario: PutEvents {peak['put_events']:.0f} entries/s (10,000 "
              f"requests/s in us-east-1), StartExecution {peak['start_executions']:.1f}/s (bucket 1,300, 300/s), the "
              "pace item's writes (column) and the broadcast's counter item (one UpdateItem per chunk attempt) under "
              "1,000 write units/s. Tracking requests refused for lack of Lambda concurrency (HTTP 500): "
              + ", ".join(str(r["http_refused"]) for r in out["rows"]) + ".", "",
              "How the model would show a loss or a duplicate: a message received maxReceiveCount times goes to the "
              "dead-letter queue (lost: its unsent recipients); a killed attempt's sent recipients come again with their "
              "message and would be sent twice without their claims (duplicated = those recipients × the SES sends a "
              "redelivered chunk made in the measurement). Failed = lost (a send SES refuses goes back with its chunk). "
              "Engagement assumed (shares of recipients, uniform in each window after delivery): "
              + "; ".join(f"{k} " + ", ".join(f"{a:.0%} in {lo}–{hi} s" for a, lo, hi in v) for k, v in ENGAGEMENT.items())
              + f" (scanner clicks per link of a {LINKS}-link newsletter; the measured email had {c['links']}). "
              "Latencies assumed per call (s): " + ", ".join(f"{k} {v}" for k, v in LATENCY.items())
              + f"; {RENDER} s to render an email, {INVOCATION} s per invocation; the SQS event source's receive and "
              "delete of each message are counted, its idle long polls are not."]
    return lines


def _ops(calls: dict) -> str:
    return ", ".join(f"{n:g} {op}" for op, n in sorted(calls.items())) or "none"


if __name__ == "__main__":
    sys.exit(main())
