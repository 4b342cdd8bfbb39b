"""A broadcast to 100,000 and 1,000,000 recipients on modelled AWS accounts (issue 14 item 4).

A deterministic simulation, one-second steps, no wall clock and no random numbers (two runs print the
same table), of the pipeline funnelpilot/broadcasts and funnelpilot/sending/pace.py build: the launcher
pages the audience into SQS chunks of at most 50 recipients (SendMessageBatch of 10); send workers (an
SQS event source, at most the template's MaximumConcurrency at once) take rate slots of the current
second from one pace item (one UpdateItem per take), claim, send, and put the rest of a chunk back with
a 1 s delay when the second is full; funnel emails take their slots first. What follows delivery is
modelled too: Apple Mail Privacy Protection prefetches, link scanners, people, on the HTTP routes'
token buckets (template.yaml) and the account's Lambda concurrency.

It is driven by counts measured on the stepped strict runtime (``measure()``): AWS calls by
service:operation per email and per chunk attempt of the send worker, write units, bus events and the
Lambda invocations each email, open and click causes downstream. Times are modelled, not measured:
``LATENCY`` (typical in-region latencies of each call) turns the counts into worker seconds.

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
import json
import math
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from funnelpilot_local.runtime import ROOT  # noqa: E402  (the checkout whose code and template.yaml are measured)

CHUNK = 50  # recipients per SQS message (the launcher's chunks)
DEFAULT_MAX_CONCURRENCY = 10  # the send worker's MaximumConcurrency while template.yaml has no send worker
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

    @property
    def label(self) -> str:
        return f"SES {self.ses_rate}/s, Lambda {self.lambda_concurrency:,}"


ACCOUNTS = [Account(14, 10), Account(14, 1000), Account(200, 10), Account(200, 1000)]
SIZES = (100_000, 1_000_000)


@dataclass
class Counts:
    """Measured per-unit counts (``measure()``), or the design's estimate until the worker exists."""
    source: str
    send: dict  # service:Operation -> calls per email sent, in the send worker
    attempt: dict  # calls per chunk attempt that sends (receive to delete, whatever its size)
    refused: dict  # calls per chunk attempt that finds the second full (put back with a 1 s delay)
    launch: dict  # calls per chunk, in the launcher
    downstream: dict  # function -> async invocations per email sent (the bus consumers of email.sent)
    downstream_calls: dict  # service:Operation -> calls per email sent, in those invocations
    engagement: dict  # kind (mpp_open, scanner_click...) -> {"calls": {...}, "invocations": {...}}
    links: int  # tracked links of the measured email (the model's newsletter has LINKS)
    wru: dict = field(default_factory=dict)  # write units per email / attempt / refused / downstream / kind
    events: dict = field(default_factory=dict)  # bus events put per email ("send") and per request (kind)
    redelivery_sends: float = 0.0  # SES sends per recipient when a sent chunk's message comes again (0: claims)


def estimate() -> Counts:
    """The design's counts (/tmp briefs: claim, SES, mark sent, one pace UpdateItem per take, PutEvents of
    10, one counter UpdateItem per chunk), used until ``measure()`` can run a real broadcast."""
    return Counts(
        source="design estimate (no broadcast worker to measure yet)",
        send={"dynamodb:PutItem": 1, "ses:SendRawEmail": 1, "dynamodb:UpdateItem": 1, "events:PutEvents": 0.1},
        attempt={"dynamodb:GetItem": 1, "dynamodb:BatchGetItem": 1, "dynamodb:UpdateItem": 2, "sqs:SendMessage": 0.5,
                 "sqs:ReceiveMessage": 1, "sqs:DeleteMessage": 1},
        refused={"dynamodb:GetItem": 1, "dynamodb:UpdateItem": 1, "sqs:SendMessage": 1, "sqs:ReceiveMessage": 1,
                 "sqs:DeleteMessage": 1},
        launch={"dynamodb:Query": 0.05, "sqs:SendMessageBatch": 0.1},
        downstream={"MetricsFunction": 1}, downstream_calls={"dynamodb:UpdateItem": 1},
        engagement={"mpp_open": {"calls": {"dynamodb:UpdateItem": 1, "events:PutEvents": 1},
                                 "invocations": {"TrackOpenFunction": 1, "MetricsFunction": 1}},
                    "human_open": {"calls": {"dynamodb:UpdateItem": 3, "events:PutEvents": 1},
                                   "invocations": {"TrackOpenFunction": 1, "MetricsFunction": 1, "ScoreFunction": 1,
                                                   "SegmentFunction": 1, "FunnelRouterFunction": 1}},
                    "scanner_click": {"calls": {"dynamodb:UpdateItem": 1, "events:PutEvents": 1},
                                      "invocations": {"TrackClickFunction": 1, "MetricsFunction": 1}},
                    "human_click": {"calls": {"dynamodb:UpdateItem": 3, "events:PutEvents": 1},
                                    "invocations": {"TrackClickFunction": 1, "MetricsFunction": 1, "ScoreFunction": 1,
                                                    "SegmentFunction": 1, "FunnelRouterFunction": 1}}},
        links=6, wru={"send": 2, "attempt": 2, "refused": 1, "downstream": 1, "mpp_open": 1, "human_open": 3,
                      "scanner_click": 1, "human_click": 3},
        events={"send": 1, "mpp_open": 1, "human_open": 1, "scanner_click": 1, "human_click": 1})


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
    return {"calls": {f"{s}:{o}": round(v * per, 3) for (s, o), v in sorted(calls.items()) if v},
            "invocations": {f: round(v * per, 3) for f, v in sorted(invocations.items()) if v},
            "wru": round(units["wru"] * per, 3), "events": round(units["events"] * per, 3)}


def measure_engagement(per_kind: int = 8) -> dict:
    """Per request of each kind (an MPP prefetch, a scanner's click at delivery, a person's open and
    click an hour later) on the emails a real signup gets (welcome-1): the AWS calls, invocations, write
    units and bus events it causes, its downstream consumers included (usage meter, stepped strict runtime)."""
    import tempfile

    import traffic
    from funnelpilot_local.costs import Meter
    from funnelpilot_local.demo import START
    from funnelpilot_local.runtime import Runtime

    kinds = list(AGENTS)
    out, links = {}, 0
    with tempfile.TemporaryDirectory() as tmp, Runtime(ROOT, stepped=True, start=START, state_dir=Path(tmp)) as rt:
        rt.schedules.clear()
        rng, seen = __import__("random").Random(3), [0]
        for i in range(per_kind * len(kinds)):
            traffic.signup(rt, i, rng)
        rt.settle()
        for mail in traffic._new_mails(seen):  # the confirmation links (double opt-in lists)
            for url in dict.fromkeys(u for u in traffic.email_urls(rt, mail) if u.startswith("/confirm/")):
                rt.http("GET", url, headers={"user-agent": BROWSER}, source_ip="198.51.100.23")
        rt.advance(10 * 3600)  # the demo's start is midnight UTC: welcome-1 goes when quiet hours end
        mails = [list(dict.fromkeys(traffic.email_urls(rt, m))) for m in traffic._new_mails(seen)]
        mails = [urls for urls in mails if any(u.startswith("/o/") for u in urls)]
        links = round(sum(sum(1 for u in urls if u.startswith("/c/")) for urls in mails) / max(1, len(mails)))
        with Meter(rt) as m:
            elapsed = 0
            for kind in sorted(kinds, key=lambda k: AGENTS[k][2]):
                agent, ip, after = AGENTS[kind]
                if after > elapsed:
                    rt.advance(after - elapsed)
                    elapsed = after
                group = mails[kinds.index(kind)::len(kinds)][:per_kind]
                before, requests = _snapshot(m), 0
                for urls in group:
                    targets = [u for u in urls if u.startswith("/o/")][:1] if kind.endswith("open") else [
                        u for u in urls if u.startswith("/c/") and not traffic.honeypot(u)][:1]
                    for url in targets:
                        rt.http("GET", url, headers={"user-agent": agent}, source_ip=ip)
                        requests += 1
                rt.settle()
                out[kind] = _delta(m, before, requests)
    return {"engagement": out, "links": links}


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


def measure_broadcast(recipients: int = 1000, rate: int = 14) -> dict:
    """A real broadcast of ``recipients`` on the stepped strict runtime at SES ``rate``/s (usage meter,
    every invocation recorded apart): the send worker's calls per email and per chunk attempt (fitted:
    calls = a x emails + b), per attempt that found the second full, the launcher's per chunk, what the
    bus consumers do per email; then one chunk delivered again (SES sends it makes: the claims' test)."""
    import tempfile

    from funnelpilot import broadcasts, tokens
    from funnelpilot.audience import importer
    from funnelpilot_local.aws_rules import Rules
    from funnelpilot_local.costs import Meter
    from funnelpilot_local.demo import START
    from funnelpilot_local.runtime import Runtime

    settings = _template_settings()
    worker, records, payloads = settings["worker"], [], {}
    with tempfile.TemporaryDirectory() as tmp, Runtime(ROOT, stepped=True, start=START + 10 * 3600, state_dir=Path(tmp),
                                                       rules=Rules(ses_max_send_rate=rate)) as rt:
        rt.schedules.clear()
        rows = [{"email": f"reader{i}@example.com", "first_name": f"Reader{i}"} for i in range(recipients)]
        importer.apply(rows, {"file": "bench.csv", "imported_at": "2026-03-01", "list": "newsletter", "mapping": {}})
        with Meter(rt) as m:
            inner, invoke = rt.invoke_hook, rt.invoke

            def hook(function, call):
                before = (Counter(m.calls), Counter(m.units))
                try:
                    return inner(function, call)
                finally:
                    calls, units = Counter(m.calls), Counter(m.units)
                    calls.subtract(before[0]), units.subtract(before[1])
                    records.append((function, Counter({f"{s}:{o}": v for (s, o), v in calls.items() if v}),
                                    units["wru"], units["events"]))

            def recorded(function, payload):
                if function == worker:
                    payloads.setdefault("first", payload)
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
            report = broadcasts.report("bench-news")
            before = m.units["emails"]
            rt.invoke = invoke
            rt.invoke(worker, payloads["first"])  # the first chunk's message again, after it was sent
            rt.settle()
            body = json.loads(payloads["first"]["Records"][0]["body"])
            redelivery = (m.units["emails"] - before) / max(1, len(body.get("c", [])))
    sent = report["sent"]
    for _, c, w, e in records:  # write units and bus events fitted like the calls
        c["~wru"], c["~events"] = w, e
    work = [c for f, c, _, _ in records if f == worker]
    per_email, per_attempt = _fit([(c["ses:SendRawEmail"], c) for c in work if c["ses:SendRawEmail"]])
    refused = _mean([c for c in work if not c["ses:SendRawEmail"]])
    others = [(f, c) for f, c, _, _ in records if f not in (worker, "BroadcastFunction")]
    downstream = Counter()
    for _, c in others:
        downstream.update(c)
    launch = Counter()
    for f, c, _, _ in records:
        if f == "BroadcastFunction":
            launch.update(c)
    chunks = math.ceil(recipients / CHUNK)

    def split(calls: dict) -> tuple[dict, float, float]:
        calls = dict(calls)
        return calls, calls.pop("~wru", 0.0), calls.pop("~events", 0.0)

    send, wru_send, ev_send = split(per_email)
    attempt, wru_attempt, _ = split(per_attempt)
    refused, wru_refused, _ = split(refused)
    down, wru_down, ev_down = split({k: round(v / sent, 3) for k, v in sorted(downstream.items()) if v})
    launch_calls, _, _ = split({k: round(v / chunks, 3) for k, v in sorted(launch.items()) if v})
    return {"recipients": recipients, "rate": rate, "report": {k: report.get(k) for k in ("audience", "sent", "blocked")},
            "send": send, "attempt": attempt, "refused": refused, "launch": launch_calls,
            "downstream": {f: round(n / sent, 3) for f, n in sorted(Counter(f for f, _ in others).items())},
            "downstream_calls": down, "wru": {"send": wru_send, "attempt": wru_attempt, "refused": wru_refused,
                                              "downstream": wru_down},
            "events": {"send": round(ev_send + ev_down, 3)},
            "attempts": sum(1 for c in work if c["ses:SendRawEmail"]),
            "refused_attempts": sum(1 for c in work if not c["ses:SendRawEmail"]), "redelivery_sends": redelivery}


def measure() -> Counts:
    """The counts the simulation runs on: engagement measured (``measure_engagement``); the send
    worker's from the design (``estimate``) until the broadcast worker can be measured."""
    counts, measured = estimate(), measure_engagement()
    counts.engagement = {k: {"calls": v["calls"], "invocations": v["invocations"]} for k, v in measured["engagement"].items()}
    counts.wru.update({k: v["wru"] for k, v in measured["engagement"].items()})
    counts.events.update({k: v["events"] for k, v in measured["engagement"].items()})
    counts.links = measured["links"]
    counts.source = ("engagement measured (usage meter, stepped strict runtime: welcome-1's pixel and links); the send "
                     "worker's counts from the design (estimate: no broadcast worker to measure yet)")
    return counts


def seconds(calls: dict) -> float:
    """Modelled time of these calls (``LATENCY``)."""
    return sum(n * LATENCY.get(op.split(":")[0], 0.01) for op, n in calls.items())


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
    out = {"routes": routes, "max_concurrency": None, "max_receive": None, "worker": None}
    for lid in t.of_type("AWS::Serverless::Function"):
        for event in (t.properties(lid).get("Events") or {}).values():
            if event.get("Type") != "SQS":
                continue
            ev = event["Properties"]
            out["worker"] = lid
            scaling = t.resolve(ev.get("ScalingConfig") or {})
            out["max_concurrency"] = int(scaling.get("MaximumConcurrency", 1000))
            queue = ev["Queue"]["Fn::GetAtt"][0]
            redrive = t.resources[queue].get("Properties", {}).get("RedrivePolicy", {})
            out["max_receive"] = int(t.resolve(redrive.get("maxReceiveCount", 0))) or None
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
    """SQS messages of chunks, as counts: ``full`` untouched chunks, ``parts`` (size, receives) for the rest."""

    def __init__(self):
        self.full, self.parts = 0, []

    def __len__(self) -> int:
        return self.full + len(self.parts)

    def pop(self) -> tuple[int, int]:
        if self.parts:
            return self.parts.pop()
        self.full -= 1
        return CHUNK, 0

    def move(self, n: int, to: "Queue") -> None:
        """``n`` messages received and put back (delayed): they go to ``to``, as they are."""
        k = min(n, len(self.parts))
        if k:
            to.parts += self.parts[-k:]
            del self.parts[-k:]
        self.full -= n - k
        to.full += n - k

    def add(self, other: "Queue") -> None:
        self.full += other.full
        self.parts += other.parts


def simulate(counts: Counts, account: Account, recipients: int, settings: dict, fault_every: int = 0) -> dict:
    """One broadcast of ``recipients`` on ``account``, second by second until every email is sent and
    what it set off (engagement, its downstream invocations) has been served. ``fault_every``: every
    n-th chunk attempt that sends is killed halfway (its message comes back after the visibility
    timeout; the claims of what it sent make those recipients skipped, or else they would be sent twice)."""
    rate, limit = account.ses_rate, account.lambda_concurrency
    max_conc, max_receive = settings["max_concurrency"] or DEFAULT_MAX_CONCURRENCY, settings["max_receive"]
    per_email, per_attempt = seconds(counts.send) + RENDER, seconds(counts.attempt) + INVOCATION
    per_refused = seconds(counts.refused) + INVOCATION
    funnel = max(1, round(FUNNEL_SHARE * rate))  # funnel sends each second: they hold their slots first
    per_request = {k: INVOCATION + seconds(c["calls"]) / max(1, sum(c["invocations"].values()))
                   for k, c in counts.engagement.items()}  # seconds per invocation, the tracking ones alike
    downstream_each = INVOCATION + seconds(counts.downstream_calls) / max(1e-9, sum(counts.downstream.values()))
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
            visible.parts.append((recipients % CHUNK, 0))
        visible.add(delayed.pop(t, Queue()))
        for size, done, receives in redelivered.pop(t, []):
            if max_receive and receives >= max_receive:
                lost += size - done  # to the dead-letter queue: never sent
            else:
                absorbed += done  # their claims exist: skipped, no second email
                visible.parts.append((size - done, receives))
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
        async_demand += deliveries.get(t, 0.0) * sum(counts.downstream.values()) * downstream_each
        async_run = min(async_demand, max(0.0, limit - sync))
        backlog = async_demand - async_run  # Lambda keeps throttled async events and retries them (up to 6 h)
        backlog_peak = max(backlog_peak, backlog)
        workers = min(max_conc, int(max(0.0, limit - sync - async_run))) if len(visible) else 0
        # second t's pace item: the funnel sends' slots first, then the workers take what is free
        free, pace_writes, sent_now, budget = rate - funnel, funnel, 0, [1.0] * workers
        for w in range(workers):
            while free > 0 and len(visible) and budget[w] >= per_attempt + per_email:
                size, receives = visible.pop()
                budget[w] -= per_attempt
                take = min(size, free, int(budget[w] / per_email))
                budget[w] -= take * per_email
                free -= take
                attempts += 1
                pace_writes += 1 + (take < size)  # a take short of the chunk: refused, then the exact remainder
                if fault_every and attempts % fault_every == 0:  # killed halfway: back after the visibility timeout
                    faults += 1
                    redelivered[t + VISIBILITY].append((size, take // 2, receives + 1))
                    sent_now += take // 2
                    continue
                sent_now += take
                if take < size:
                    delayed[t + 1].parts.append((size - take, 0))  # the rest: a new message, DelaySeconds 1
            if free <= 0 or not len(visible):
                break
        # the rest of the workers' second: chunks received, the second found full, put back for 1 s
        churn = min(len(visible), int(sum(budget) / per_refused)) if free <= 0 else 0
        visible.move(churn, delayed[t + 1])
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
        peak["put_events"] = max(peak["put_events"], sent_now * counts.send.get("events:PutEvents", 0) + sum(
            v * counts.engagement[k]["calls"].get("events:PutEvents", 0) for k, v in arrivals.items()))
        if finish is None and sent + lost >= recipients and launched == chunks and not redelivered:
            finish = t + 1
        t += 1
    return {"recipients": recipients, "account": account.label, "finish_s": finish, "floor_s": recipients / rate,
            "ratio": round(finish / (recipients / rate), 3), "sent": sent, "lost": lost, "failed": lost,
            "duplicated": round(absorbed * counts.redelivery_sends), "attempts": attempts, "refused": refused,
            "faults": faults, "absorbed": absorbed, "max_concurrency": max_conc, "async_backlog_peak": round(backlog_peak, 1),
            "http_refused": round(http_refused), "peak": dict(peak),
            "routes": {r: {"rate": v["rate"], "burst": v["burst"], "peak": round(v["peak"], 1), "429": round(v["429"])}
                       for r, v in routes.items()}}


VISIBILITY = 6 * 60  # seconds a killed attempt's message stays invisible (the queue's visibility timeout)


def totals(counts: Counts, result: dict, prices: dict) -> dict:
    """AWS calls by service, Lambda invocations, write units and USD per 1,000 recipients of one run."""
    sent, chunks = result["sent"], math.ceil(result["recipients"] / CHUNK)
    work = [(counts.send, sent), (counts.attempt, result["attempts"]), (counts.refused, result["refused"]),
            (counts.launch, chunks), (counts.downstream_calls, sent)]
    requests = {k: result["recipients"] * sum(share for share, _, _ in ENGAGEMENT[k])
                * (LINKS if k == "scanner_click" else 1) for k in ENGAGEMENT}
    work += [(counts.engagement[k]["calls"], n) for k, n in requests.items()]
    calls = Counter()
    for per, n in work:
        for op, c in per.items():
            calls[op] += c * n
    invocations = result["attempts"] + result["refused"] + sent * sum(counts.downstream.values()) + sum(
        n * sum(counts.engagement[k]["invocations"].values()) for k, n in requests.items())
    gb_seconds = 0.25 * (result["attempts"] * (seconds(counts.attempt) + INVOCATION) + sent * (
        seconds(counts.send) + RENDER) + result["refused"] * (seconds(counts.refused) + INVOCATION) + sent * sum(
        counts.downstream.values()) * INVOCATION + sent * seconds(counts.downstream_calls) + sum(
        n * (seconds(counts.engagement[k]["calls"]) + INVOCATION * sum(counts.engagement[k]["invocations"].values()))
        for k, n in requests.items()))
    wru = (sent * counts.wru.get("send", 0) + result["attempts"] * counts.wru.get("attempt", 0) + result["refused"]
           * counts.wru.get("refused", 0) + sent * counts.wru.get("downstream", 0)
           + sum(n * counts.wru.get(k, 0) for k, n in requests.items()))
    rru = sum(c * n * (0.5 if op.endswith(("GetItem", "Query")) else 0) for per, n in work for op, c in per.items()) + sum(
        c * n * 0.5 * CHUNK for per, n in work for op, c in per.items() if op.endswith("BatchGetItem"))
    aws = prices["aws"]

    def usd(key: str, n: float) -> float:
        return n * aws[key]["price"] / aws[key]["per"]

    cost = {"Lambda": usd("lambda_request", invocations) + usd("lambda_gb_second_arm64", gb_seconds),
            "DynamoDB": usd("dynamodb_on_demand_write", wru) + usd("dynamodb_on_demand_read", rru),
            "EventBridge": usd("eventbridge_custom_event", sent * counts.events.get("send", 0) + sum(
                n * counts.events.get(k, 0) for k, n in requests.items())),
            "SQS": usd("sqs_request", sum(n for op, n in calls.items() if op.startswith("sqs:"))),
            "HTTP API": usd("http_api_request", sum(requests.values())),
            "SES": usd("ses_outbound_email", sent)}
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
             f"Driven by {c['source']}. Per email sent: {_ops(c['send'])}; per chunk attempt: {_ops(c['attempt'])}; per "
             f"attempt finding the second full (chunk put back for 1 s): {_ops(c['refused'])}; downstream per email: "
             f"{_ops(c['downstream'])} invocation(s). Send worker MaximumConcurrency {st['max_concurrency'] or DEFAULT_MAX_CONCURRENCY}"
             f"{'' if st['max_concurrency'] else ' (assumed: no send worker in template.yaml)'}, maxReceiveCount "
             f"{st['max_receive'] or '–'}. Funnel emails take {FUNNEL_SHARE:.0%} of the rate meanwhile, ahead of the "
             "broadcast. Route limits (rate / burst) from template.yaml: " + ", ".join(
                 f"`{r}` {st['routes'][r][0]:g} / {st['routes'][r][1]:g}" for r in routes) + ".", "",
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
    lines += ["", "How the model would show a loss or a duplicate: a message received maxReceiveCount times goes to the "
              "dead-letter queue (lost: its unsent recipients); a killed attempt's sent recipients come again with their "
              "message, and are sent twice unless their claims exist (duplicated = those recipients × the SES sends a "
              "redelivered chunk made in the measurement). Failed = lost (a send SES refuses is retried by the chunk). "
              "Engagement assumed (shares of recipients, uniform in each window after delivery): "
              + "; ".join(f"{k} " + ", ".join(f"{a:.0%} in {lo}–{hi} s" for a, lo, hi in v) for k, v in ENGAGEMENT.items())
              + f" (scanner clicks per link of a {LINKS}-link newsletter; the measured email had {c['links']}). Latencies assumed per call (s): "
              + ", ".join(f"{k} {v}" for k, v in LATENCY.items()) + "."]
    return lines


def _ops(calls: dict) -> str:
    return ", ".join(f"{n:g} {op}" for op, n in sorted(calls.items())) or "none"


if __name__ == "__main__":
    sys.exit(main())
