"""What the stack costs on AWS each month: every billed line of template.yaml, at steady state.

``Meter`` counts, while the demo runs on the local runtime, what AWS would bill: Lambda
invocations and their duration (GB-s at the function's configured memory), Step Functions
state transitions (from the execution histories), DynamoDB request units, custom
EventBridge events, SES emails, HTTP API requests, SSM reads (each a KMS decrypt), Scheduler
schedules, SQS messages, API destination calls (webhooks, each attempt), the log lines the functions write at the deployed level (INFO) plus
Lambda's own START/END/REPORT lines, the EMF metrics the metrics consumer would emit with
``CustomMetrics=true``, and, at the end, what the tables store. Only calls made by the
functions count (not the simulator's own look-ups).

``estimate`` turns that into a monthly bill that does not depend on the demo's window:
everything a run measures is divided by the emails it sent to contacts (per-email counts:
the work behind an email, its opens, clicks, feedback and events), and a steady-state model
says how many emails a contact gets a month: a share ``new_per_month`` of the list is in its
first month (the run's first-month emails per contact, from contacts observed 30 days or
more), the rest gets the rate the run measured in days 30-45 of contacts' lives. Broadcasts are apart:
the steady state counts funnel emails only, and ``broadcasts`` a month each reach the share of
the list the measured broadcast reached, costed per email at the broadcast functions' work plus
what follows any email (``ENGAGEMENT_FUNCTIONS``). The fixed
lines come from the template itself (``template_lines``: alarms, dashboard, keys, secrets,
schedules, log retention, table storage and backups, X-Ray and custom metrics when their
parameters turn them on), every resource type of template.yaml is either billed there or
listed as free in ``RESOURCE_BILLING``. Prices: ``infra/prices.yaml`` (us-east-1, dated,
no free tier unless a line says so).

Approximations, stated in the output: DynamoDB units assume items under 1 KB (writes) and
4 KB (reads): 1 WRU per write, 2 per item of a transaction, 0.5 RRU per eventually
consistent read or query page, 1 if strongly consistent; durations are this machine's
in-process times against moto (of the order of DynamoDB's own latency), billed per ms; log
storage is counted uncompressed (CloudWatch bills it compressed: an upper bound).
"""
import json
import logging
import os
import re
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import botocore.client
import yaml

ROOT = Path(__file__).resolve().parents[3]
PRICES = ROOT / "infra" / "prices.yaml"
DAY, MONTH_DAYS = 86_400, 30
# Lambda writes START, END and REPORT lines for every invocation (text format), about this many bytes.
PLATFORM_LOG_BYTES = 330
USAGE_VERSION = 4  # 3: sms_message_parts, api_destination_invocations; 4: per function, broadcasts apart
# What exists to send broadcasts (their work is a broadcast email's), and what follows any email
# (delivery feedback, opens, clicks, unsubscribes, the scoring and segments they cause): ``estimate``
# costs a broadcast email at the first's measured work per broadcast email plus the second's per email.
BROADCAST_FUNCTIONS = frozenset({"BroadcastFunction", "BroadcastSendFunction", "BroadcastsAdminFunction"})
ENGAGEMENT_FUNCTIONS = frozenset({"SesFeedbackFunction", "TrackOpenFunction", "TrackClickFunction",
                                  "UnsubscribeFunction", "ScoreFunction", "SegmentFunction", "MetricsFunction"})
# usage totals -> Meter.units keys (the per-function part of a usage)
_UNIT_KEYS = {"dynamodb_wru": "wru", "dynamodb_rru": "rru", "eventbridge_events": "events", "ses_emails": "emails",
              "ssm_reads": "ssm_reads", "secrets_calls": "secrets_calls", "scheduler_invocations": "schedules",
              "sqs_requests": "sqs_requests", "sms_message_parts": "sms_parts"}


class Meter:
    """Counts billable operations of a local Runtime; use as a context manager around the run."""

    def __init__(self, rt):
        self.rt = rt
        self.calls: Counter = Counter()
        self.units: Counter = Counter()
        self.invocations: Counter = Counter()
        self.ms: dict[str, float] = defaultdict(float)
        self.http_requests = 0
        self.signups: dict[str, float] = {}  # address -> first signup (simulated clock)
        self.sends: list[tuple[float, str]] = []  # (simulated time, recipient) of every funnel email sent
        self.broadcast_sends: list[tuple[float, str]] = []  # those the broadcast functions sent
        self.function_units: defaultdict = defaultdict(Counter)  # function -> the units of its calls
        self.log_bytes = 0
        self.emf_names: set[str] = set()
        self.emf_bytes = 0
        self._local = threading.local()
        self._lock = threading.Lock()  # calls come from several threads (a send worker's pool)
        self._restore: list = []

    def __enter__(self):
        from funnelpilot import clock

        meter = self
        original = botocore.client.BaseClient._make_api_call

        def counted(client, operation, params):
            if getattr(meter._local, "depth", 0):
                with meter._lock:
                    function = getattr(meter._local, "function", None)
                    meter.count(client.meta.service_model.service_name, operation, params, function)
                    if operation in ("SendRawEmail", "SendEmail"):
                        sends = [(clock.now(), to.lower()) for to in params.get("Destinations", [])]
                        (meter.broadcast_sends if function in BROADCAST_FUNCTIONS else meter.sends).extend(sends)
            return original(client, operation, params)

        start = threading.Thread.start

        def start_inside(thread):  # a thread an invocation starts (a send worker's pool) counts as the invocation
            depth, function = getattr(meter._local, "depth", 0), getattr(meter._local, "function", None)
            if depth:
                run = thread.run

                def run_inside():
                    meter._local.depth, meter._local.function = depth, function
                    run()

                thread.run = run_inside
            start(thread)

        self._patch(botocore.client.BaseClient, "_make_api_call", counted)
        self._patch(threading.Thread, "start", start_inside)
        self.rt.invoke_hook = self._invoked
        original_http = self.rt.http

        def http(method, path, **kwargs):
            self.http_requests += 1
            fields = kwargs.get("form") or kwargs.get("json_body") or {}
            if method.upper() == "POST" and path.startswith("/signup") and isinstance(fields.get("email"), str):
                self.signups.setdefault(fields["email"].strip().lower(), clock.now())
            return original_http(method, path, **kwargs)

        self._patch(self.rt, "http", http)
        self._capture_logs()
        self._capture_emf()
        return self

    def __exit__(self, *exc):
        self.rt.invoke_hook = None
        for undo in reversed(self._restore):
            undo()
        self._restore.clear()

    def _patch(self, owner, name: str, value) -> None:
        old = owner.__dict__.get(name, _MISSING) if isinstance(owner, type) else getattr(owner, name)
        setattr(owner, name, value)
        self._restore.append(lambda: delattr(owner, name) if old is _MISSING else setattr(owner, name, old))

    def _capture_logs(self) -> None:
        """The functions' logger at the deployed level (INFO, template.yaml sets none), its output
        counted instead of printed: what CloudWatch Logs would ingest."""
        from aws_lambda_powertools import Logger

        service = os.environ.get("POWERTOOLS_SERVICE_NAME", "service_undefined")
        Logger(service=service)  # configures the shared logger now if no handler module did yet
        logger = logging.getLogger(service)
        level = logger.level
        logger.setLevel(logging.INFO)
        meter = self

        class Sink:
            def write(self, text):
                meter.log_bytes += len(text.encode())

            def flush(self):
                pass

        streams = [(h, h.stream) for h in logger.handlers if isinstance(h, logging.StreamHandler)]
        for handler, _ in streams:
            handler.stream = Sink()

        def undo():
            logger.setLevel(level)
            for handler, stream in streams:
                handler.stream = stream

        self._restore.append(undo)

    def _capture_emf(self) -> None:
        """What the EMF metrics would be with CustomMetrics=true: their names and log bytes."""
        from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

        meter = self

        def flush_metrics(provider, raise_on_empty_metrics: bool = False) -> None:
            if provider.metric_set:
                meter.emf_names |= set(provider.metric_set)
                meter.emf_bytes += len(json.dumps(provider.serialize_metric_set())) + 1
            provider.clear_metrics()

        self._patch(AmazonCloudWatchEMFProvider, "flush_metrics", flush_metrics)
        disabled = os.environ.get("POWERTOOLS_METRICS_DISABLED")
        os.environ["POWERTOOLS_METRICS_DISABLED"] = "false"
        self._restore.append(lambda: os.environ.__setitem__("POWERTOOLS_METRICS_DISABLED", disabled)
                             if disabled is not None else os.environ.pop("POWERTOOLS_METRICS_DISABLED", None))

    def _invoked(self, function: str, call):
        self._local.depth = getattr(self._local, "depth", 0) + 1
        caller, self._local.function = getattr(self._local, "function", None), function
        started = time.perf_counter()
        try:
            return call()
        finally:
            self.ms[function] += max(1.0, -(-(time.perf_counter() - started) * 1000 // 1))  # billed per ms
            self.invocations[function] += 1
            self._local.depth -= 1
            self._local.function = caller

    def count(self, service: str, operation: str, params: dict, function: str | None = None) -> None:
        self.calls[(service, operation)] += 1
        self._tally(self.units, service, operation, params)
        if function:
            self._tally(self.function_units[function], service, operation, params)

    @staticmethod
    def _tally(units: Counter, service: str, operation: str, params: dict) -> None:
        if service == "dynamodb":
            if operation in ("PutItem", "UpdateItem", "DeleteItem"):
                units["wru"] += 1
            elif operation == "BatchWriteItem":
                units["wru"] += sum(len(v) for v in params.get("RequestItems", {}).values())
            elif operation == "TransactWriteItems":
                units["wru"] += 2 * len(params.get("TransactItems", []))
            elif operation == "TransactGetItems":
                units["rru"] += 2 * len(params.get("TransactItems", []))
            elif operation in ("GetItem", "Query"):
                units["rru"] += 1 if params.get("ConsistentRead") else 0.5
            elif operation == "BatchGetItem":
                units["rru"] += 0.5 * sum(len(v.get("Keys", [])) for v in params.get("RequestItems", {}).values())
        elif service == "events" and operation == "PutEvents":
            units["events"] += len(params.get("Entries", []))
        elif service == "ses" and operation in ("SendRawEmail", "SendEmail"):
            units["emails"] += max(1, len(params.get("Destinations", [])))
        elif service == "sesv2" and operation == "SendEmail":
            units["emails"] += 1
        elif service == "ssm" and operation in ("GetParameter", "GetParameters"):
            units["ssm_reads"] += 1
        elif service == "secretsmanager":
            units["secrets_calls"] += 1
        elif service == "scheduler" and operation == "CreateSchedule":
            units["schedules"] += 1  # a one-time schedule: one invocation
        elif service == "sqs" and operation.startswith("SendMessage"):
            units["sqs_requests"] += 1
        elif service == "pinpoint-sms-voice-v2" and operation == "SendTextMessage":
            from funnelpilot.channels.sms import measure

            units["sms_parts"] += measure(params.get("MessageBody", ""))["segments"]  # billed per part

    def transitions(self) -> int:
        from funnelpilot_local import moto_adapter
        from funnelpilot_local.template import ACCOUNT, REGION

        return sum(1 for arn in self.rt.state_machine_arns()
                   for types in moto_adapter.execution_event_types(ACCOUNT, REGION, arn)
                   for t in types if t.endswith("StateEntered"))

    def stored_bytes(self) -> dict[str, int]:
        """Billable bytes per table as DynamoDB measures storage: each item's size plus 100 bytes,
        again in every global secondary index that projects it (ALL projections here)."""
        from funnelpilot_local.aws_rules.dynamodb import item_size

        ddb = self.rt.client("dynamodb")
        sizes = {}
        for lid in self.rt.template.of_type("AWS::DynamoDB::Table"):
            name = self.rt.template.physical[lid]
            keys = [{k["AttributeName"] for k in g["KeySchema"]}
                    for g in ddb.describe_table(TableName=name)["Table"].get("GlobalSecondaryIndexes", [])]
            total = 0
            for page in ddb.get_paginator("scan").paginate(TableName=name):
                for item in page["Items"]:
                    size = item_size(item) + 100
                    total += size * (1 + sum(1 for k in keys if k <= item.keys()))
            sizes[lid] = total
        return sizes

    def usage(self, *, contacts: int, days: int) -> dict:
        from funnelpilot import clock

        memory = {name: self.rt.template.resolve(self.rt.template.properties(name)).get("MemorySize", 256)
                  for name in self.invocations}
        gb_s = {f: self.ms[f] / 1000 * memory[f] / 1024 for f in self.invocations}
        requests = sum(self.invocations.values())
        totals = {"lambda_requests": requests, "lambda_gb_seconds": round(sum(gb_s.values()), 3),
                  "stepfunctions_transitions": self.transitions(), "http_requests": self.http_requests,
                  **{key: self.units[unit] for key, unit in _UNIT_KEYS.items()},
                  "log_bytes": self.log_bytes + PLATFORM_LOG_BYTES * requests, "emf_bytes": self.emf_bytes,
                  "api_destination_invocations": len(self.rt.api_destinations.attempts)}
        functions = {f: {"lambda_requests": n, "lambda_gb_seconds": round(gb_s[f], 3),
                         "log_bytes": PLATFORM_LOG_BYTES * n, "http_requests": n if self._http(f) else 0,
                         **{key: self.function_units[f][unit] for key, unit in _UNIT_KEYS.items()}}
                     for f, n in sorted(self.invocations.items())}
        end = clock.now()
        return {"version": USAGE_VERSION, "contacts": contacts, "days": days, "totals": totals,
                "emails": self.email_ages(end), "functions": functions,
                "broadcast_emails": sum(1 for _, to in self.broadcast_sends if to in self.signups),
                "stored_bytes": self.stored_bytes(),
                "emf_metrics": sorted(self.emf_names), "invocations": dict(sorted(self.invocations.items()))}

    def _http(self, function: str) -> bool:
        """Whether the function's invocations are HTTP API requests (each of its events is one)."""
        events = (self.rt.template.properties(function).get("Events") or {}).values()
        return bool(events) and all(e.get("Type") == "HttpApi" for e in events)

    def email_ages(self, end: float) -> dict:
        """Per contact: how many days the run saw them (signup to the end), and the age in days
        of every email they got."""
        ages = defaultdict(list)
        for t, to in self.sends:
            if to in self.signups:
                ages[to].append(round((t - self.signups[to]) / DAY, 4))
        contacts = [[round((end - at) / DAY, 4), sorted(ages[a])] for a, at in sorted(self.signups.items())]
        return {"to_contacts": sum(len(v) for v in ages.values()), "contacts": contacts}


_MISSING = object()


def load_prices(path: Path = PRICES) -> dict:
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------- steady state
LATER = (30, 45)  # the age band (days) whose rate later months are costed at


def emails_per_contact_month(usage: dict, new_per_month: float) -> tuple[float, float, float]:
    """(steady-state emails per contact a month, first-month emails per new contact, emails per
    contact-month after the first month). A share ``new_per_month`` of the list is in its first
    month: the emails of contacts' first 30 days, from the contacts the run saw that long. The
    rest is costed at the rate of days 30-45 (emails per contact-day over the days the run saw
    in that band): every run of 60 days or more sees most contacts through it, while later ages
    depend on the window; an upper bound for an established list, whose later months send less
    (contacts who never engage are sunset). Raises ValueError when the run cannot tell."""
    contacts = usage["emails"]["contacts"]
    full = [ages for seen, ages in contacts if seen >= MONTH_DAYS]
    lo, hi = LATER
    exposure = sum(min(hi, seen) - lo for seen, _ in contacts if seen > lo)
    if not full or not exposure:
        raise ValueError(f"a {usage['days']}-day run observes no contact for more than a month: "
                         "measure with a longer window (funnelpilot demo --days 60)")
    first = sum(1 for ages in full for a in ages if a < MONTH_DAYS) / len(full)
    later = sum(1 for _, ages in contacts for a in ages if lo <= a < hi) / exposure * MONTH_DAYS
    return new_per_month * first + (1 - new_per_month) * later, first, later


# ---------------------------------------------------------------- the template's billed lines
# How each resource type of template.yaml is billed: "usage" = by the per-email lines below,
# "fixed" = template_lines prices it, "free" = no charge of its own (why, in the comment).
RESOURCE_BILLING = {
    "AWS::Serverless::Function": "usage",  # requests, GB-s; logs and X-Ray: template_lines
    "AWS::Serverless::StateMachine": "usage",  # standard transitions
    "AWS::Serverless::HttpApi": "usage",  # requests
    "AWS::DynamoDB::Table": "fixed",  # requests (usage), storage, backups, SSE with KMS
    "AWS::Events::EventBus": "usage",  # custom events put
    "AWS::Events::Rule": "free",  # matching and delivery included in the event's price
    "AWS::Events::Connection": "fixed",  # its Secrets Manager secret: included in the API destination's price
    "AWS::Events::ApiDestination": "usage",  # invocations (webhooks, Slack alerts)
    "AWS::SES::EmailIdentity": "free",
    "AWS::SES::ConfigurationSet": "free",
    "AWS::SES::ConfigurationSetEventDestination": "free",  # events to the default bus: AWS service events are free
    "AWS::SQS::Queue": "usage",  # requests (dead letters only)
    "AWS::SQS::QueuePolicy": "free",
    "AWS::SNS::Topic": "free",  # alarm notifications (1,000 emails free); SMS delivery events (to Lambda: free)
    "AWS::SNS::TopicPolicy": "free",
    "AWS::SMSVOICE::ConfigurationSet": "free",  # its texts: usage (per message part); the number: template_lines
    "AWS::SNS::Subscription": "free",
    "AWS::CloudWatch::Alarm": "fixed",
    "AWS::CloudWatch::Dashboard": "fixed",
    "AWS::Logs::LogGroup": "fixed",  # ingestion (usage) and storage for the retention
    "AWS::SSM::Parameter": "fixed",  # standard tier free, advanced $0.05
    "AWS::SecretsManager::Secret": "fixed",
    "AWS::KMS::Key": "fixed",
    "AWS::Scheduler::ScheduleGroup": "free",  # its schedules: usage (one-time) and fixed (template cron)
    "AWS::Serverless::LayerVersion": "free",  # code storage within Lambda's 75 GB
    "AWS::IAM::Role": "free",
    "AWS::S3::Bucket": "fixed",  # contact imports: a few MB kept 7 days
}


def unpriced(t) -> set[str]:
    """Resource types of the template the model neither bills nor lists as free."""
    return {r["Type"] for r in t.doc["Resources"].values()} - RESOURCE_BILLING.keys()


def _occurrences_per_month(expression: str) -> float:
    """Invocations a month of a schedule expression: rate(n unit), or cron with fixed minute/hour."""
    rate = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)", expression)
    if rate:
        seconds = int(rate[1]) * {"minute": 60, "hour": 3600, "day": DAY}[rate[2].rstrip("s")]
        return MONTH_DAYS * DAY / seconds
    cron = re.fullmatch(r"cron\((\S+) (\S+) .*\)", expression)
    if cron:
        per_day = 1
        for field, size in ((cron[1], 60), (cron[2], 24)):
            per_day *= size if field == "*" else len(field.split(","))
        return MONTH_DAYS * per_day
    raise ValueError(f"schedule expression {expression!r}: not priced (add it to costs._occurrences_per_month)")


def template_lines(t, monthly: dict, prices: dict) -> list[dict]:
    """The lines the template's resources add beyond the measured usage, for the given monthly
    usage (``monthly``: quantities a month); each {item, quantity, unit, cost, note, optional}."""
    p = prices["aws"]
    lines = []

    def line(item, quantity, price_key, note="", optional=None, per=None):
        pr = p[price_key]
        lines.append({"item": item, "quantity": quantity, "unit": pr["unit"],
                      "cost": quantity * pr["price"] / (per or pr["per"]), "note": note, "optional": optional})

    alarms = t.of_type("AWS::CloudWatch::Alarm")
    metrics = sum(max(1, sum(1 for m in a["Properties"].get("Metrics", []) if "MetricStat" in m))
                  for a in alarms.values())
    line(f"CloudWatch alarms ({len(alarms)})", metrics, "cloudwatch_alarm_metric", "standard resolution")
    dashboards = len(t.of_type("AWS::CloudWatch::Dashboard"))
    line(f"CloudWatch dashboard ({dashboards})", dashboards, "cloudwatch_dashboard",
         "CreateDashboard=true; free if one of the account's first 3" if dashboards else
         "off (CreateDashboard=true: $3.00, free if one of the account's first 3)")
    emf = t.resolve(t.doc["Globals"]["Function"]["Environment"]["Variables"].get("POWERTOOLS_METRICS_DISABLED", "true"))
    names = monthly["emf_metric_names"]
    on = str(emf).lower() == "false"
    line(f"CloudWatch custom metrics ({names if on else 0})", names if on else 0, "cloudwatch_custom_metric",
         "CustomMetrics=true (EMF, dimension service)" if on else
         f"off (CustomMetrics=true: {names} metrics, ${names * p['cloudwatch_custom_metric']['price']:.2f})")
    ingest = monthly["log_bytes"] + (monthly["emf_bytes"] if on else 0)
    line("CloudWatch Logs ingestion", ingest / 1e9, "logs_ingestion_gb", "functions' INFO logs + Lambda's own lines")
    groups = t.of_type("AWS::Logs::LogGroup")
    retention = [int(t.resolve(g["Properties"].get("RetentionInDays", 3653))) for g in groups.values()]
    days = max(retention, default=3653)
    line(f"CloudWatch Logs storage ({days} days)", ingest / 1e9 * days / MONTH_DAYS, "logs_storage_gb_month",
         "LogRetentionDays; uncompressed (an upper bound)")
    tracing = str(t.resolve(t.doc["Globals"]["Function"].get("Tracing", "Disabled")))
    traces = _sampled(monthly["lambda_requests"])
    xray = p["xray_trace_recorded"]
    line("X-Ray traces", traces if tracing == "Active" else 0, "xray_trace_recorded",
         "Tracing=Active; 100,000 traces a month free" if tracing == "Active" else
         f"off (Tracing=Active: {traces:,.0f} traces, ${traces * xray['price'] / xray['per']:.2f}; 100,000 a month free)")
    keys = len(t.of_type("AWS::KMS::Key"))
    line(f"KMS customer managed keys ({keys})", keys, "kms_key_month")
    kms_tables = [lid for lid, r in t.of_type("AWS::DynamoDB::Table").items()
                  if str(t.resolve(r["Properties"].get("SSESpecification", {}).get("SSEEnabled", False))).lower() == "true"]
    # SSM decrypts every SecureString read with KMS; a table with SSEEnabled uses the AWS managed key
    # (DynamoDB caches it: about one request per 5 minutes per table, assumed).
    line("KMS requests", monthly["ssm_reads"] + len(kms_tables) * MONTH_DAYS * 288, "kms_request",
         "SSM SecureString reads" + (f"; SSE with KMS on {', '.join(kms_tables)}" if kms_tables else
                                     "; tables use the AWS owned key (no charge)"))
    connections = len(t.of_type("AWS::Events::Connection"))
    line(f"EventBridge connections ({connections})", connections, "eventbridge_connection_secret",
         "webhooks' secrets, kept by EventBridge in Secrets Manager: included in the API destination price")
    secrets = len(t.of_type("AWS::SecretsManager::Secret"))
    line(f"Secrets Manager secrets ({secrets})", secrets, "secrets_manager_secret")
    advanced = sum(1 for r in t.of_type("AWS::SSM::Parameter").values() if r["Properties"].get("Tier") == "Advanced")
    line(f"SSM parameters ({len(t.of_type('AWS::SSM::Parameter'))} + the signing key)", advanced,
         "ssm_advanced_parameter", "standard tier: free")
    stored = sum(monthly["stored_bytes"].values()) / 1e9
    line("DynamoDB storage", stored, "dynamodb_storage_gb_month", "items + 100 B each, GSI copies")
    pitr = sum(b for lid, b in monthly["stored_bytes"].items() if lid in t.of_type("AWS::DynamoDB::Table") and
               t.resolve(t.resources[lid]["Properties"]).get("PointInTimeRecoverySpecification", {})
               .get("PointInTimeRecoveryEnabled")) / 1e9
    line("DynamoDB point-in-time recovery", pitr, "dynamodb_pitr_gb_month")
    streams = [lid for lid, r in t.of_type("AWS::DynamoDB::Table").items() if "StreamSpecification" in r["Properties"]]
    line(f"DynamoDB Streams ({len(streams)})", 0, "dynamodb_stream_read", "read by Lambda triggers: free")
    buckets = t.of_type("AWS::S3::Bucket")
    line(f"S3 buckets ({len(buckets)})", 0, "s3_storage_gb_month", "contact-import CSVs, kept 7 days: cents at most")
    fixed_runs = 0.0
    for lid in t.of_type("AWS::Serverless::Function"):
        for event in t.properties(lid).get("Events", {}).values():
            if event["Type"] in ("Schedule", "ScheduleV2"):
                fixed_runs += _occurrences_per_month(t.resolve(event["Properties"]["ScheduleExpression"]))
    sms_on = t.condition("HasSms")
    line("SMS origination number", 1 if sms_on else 0, "sms_us_toll_free_number",
         "SmsOriginationIdentity: leased outside the stack (assumed a US toll-free number)" if sms_on else
         "off (SmsOriginationIdentity empty)")
    line("EventBridge Scheduler invocations", fixed_runs + monthly["scheduler_invocations"], "scheduler_invocation",
         "template schedules + one-time repurchase reminders")
    return lines


def _sampled(requests: float) -> float:
    """Traces X-Ray's default sampling rule records: the first request each second, 5% of the rest."""
    reservoir = MONTH_DAYS * DAY
    return min(requests, reservoir) + 0.05 * max(0.0, requests - reservoir)


USAGE_LINES = [  # (usage key, price key, label)
    ("lambda_requests", "lambda_request", "Lambda requests"),
    ("lambda_gb_seconds", "lambda_gb_second_arm64", "Lambda compute (GB-s, arm64)"),
    ("stepfunctions_transitions", "stepfunctions_standard_transition", "Step Functions transitions"),
    ("dynamodb_wru", "dynamodb_on_demand_write", "DynamoDB writes (WRU)"),
    ("dynamodb_rru", "dynamodb_on_demand_read", "DynamoDB reads (RRU)"),
    ("eventbridge_events", "eventbridge_custom_event", "EventBridge custom events"),
    ("http_requests", "http_api_request", "HTTP API requests"),
    ("sqs_requests", "sqs_request", "SQS requests"),
    ("secrets_calls", "secrets_manager_api_call", "Secrets Manager calls"),
    ("api_destination_invocations", "eventbridge_api_destination_invocation", "EventBridge API destination calls"),
    ("sms_message_parts", "sms_us_message_part", "SMS to the US (message parts)"),
]


def _per_email(usage: dict, functions: frozenset, emails: int) -> dict:
    """The work of ``functions`` in a usage, per one of ``emails``."""
    total: Counter = Counter()
    for name in functions & set(usage["functions"]):
        total.update(usage["functions"][name])
    return {k: v / emails for k, v in total.items()} if emails else {}


def estimate(usage: dict, contacts: int, prices: dict | None = None, *, template=None,
             new_per_month: float = 0.1, broadcasts: float = 0) -> dict:
    """The monthly bill for ``contacts`` contacts at steady state from a measured usage (see
    ``Meter.usage``) and the template's billed resources (``template``: a funnelpilot_local.template
    Template; default template.yaml with its default parameters). ``broadcasts``: a month's
    broadcasts, each reaching the share of the list the measured one reached."""
    if usage.get("version") != USAGE_VERSION:
        raise ValueError("usage measured by an older funnelpilot: run `funnelpilot demo` again")
    if contacts < 1:
        raise ValueError("contacts must be at least 1")
    prices = prices or load_prices()
    if template is None:
        from funnelpilot_local.template import Template

        template = Template.load(ROOT)
    if unpriced(template):
        raise ValueError(f"template.yaml has resources the cost model does not price: {', '.join(sorted(unpriced(template)))}"
                         " (add them to funnelpilot_local.costs.RESOURCE_BILLING)")
    per_contact, first, later = emails_per_contact_month(usage, new_per_month)
    emails = per_contact * contacts
    totals, sent, sent_b = usage["totals"], usage["emails"]["to_contacts"], usage["broadcast_emails"]
    machinery = _per_email(usage, BROADCAST_FUNCTIONS, sent_b)  # the broadcast's own work, per its email
    engagement = _per_email(usage, ENGAGEMENT_FUNCTIONS, sent + sent_b)  # what follows any email, per email
    per_broadcast_email = Counter(machinery) + Counter(engagement)
    # per-email counts of the funnel emails (the measured broadcast's share taken out), scaled to the month
    monthly = {k: (v - per_broadcast_email.get(k, 0) * sent_b) / sent * emails for k, v in totals.items()}
    reach = sent_b / usage["contacts"]
    if broadcasts and not sent_b:
        raise ValueError("the measured run sent no broadcast: run `funnelpilot demo` (it sends one) to measure one")
    broadcast_emails = broadcasts * reach * contacts
    for k, v in per_broadcast_email.items():
        monthly[k] = monthly.get(k, 0.0) + v * broadcast_emails
    monthly["emf_metric_names"] = len(usage["emf_metrics"])
    monthly["stored_bytes"] = {k: v / usage["contacts"] * contacts for k, v in usage["stored_bytes"].items()}
    p = prices["aws"]
    lines = []
    for key, price_key, label in USAGE_LINES:
        pr = p[price_key]
        quantity = monthly.get(key, 0.0)  # a usage measured before the line existed: none
        lines.append({"item": label, "quantity": quantity, "unit": pr["unit"],
                      "cost": quantity * pr["price"] / pr["per"], "note": "", "optional": None})
    if not template.condition("HasSms"):  # texts measured locally (SMS on there) cost nothing with SMS off
        texts = next(line for line in lines if line["item"].startswith("SMS"))
        texts.update(note=f"off (SmsOriginationIdentity empty: {texts['quantity']:,.0f} parts, ${texts['cost']:.2f})",
                     quantity=0.0, cost=0.0)
    lines += template_lines(template, monthly, prices)
    ses = p["ses_outbound_email"]
    ses_line = {"item": "SES emails", "quantity": monthly["ses_emails"], "unit": ses["unit"],
                "cost": monthly["ses_emails"] * ses["price"] / ses["per"]}
    aws = sum(line["cost"] for line in lines)
    return {"contacts": contacts, "emails": emails + broadcast_emails, "funnel_emails": emails,
            "broadcasts": broadcasts, "broadcast_emails": broadcast_emails, "reach": reach,
            "emails_per_contact": per_contact, "first_month": first,
            "after_first_month": later, "new_per_month": new_per_month, "lines": lines, "aws": aws,
            "ses": ses_line, "total": aws + ses_line["cost"], "measured_contacts": usage["contacts"],
            "measured_days": usage["days"], "as_of": prices.get("as_of"), "region": prices.get("region"),
            "peers": [peer_price(peer, contacts, emails + broadcast_emails) for peer in prices.get("peers", [])]}


def peer_price(peer: dict, contacts: int, emails: float) -> dict:
    """A peer's list price for this list: the smallest published tier that holds it (contacts, or
    emails a month for volume-priced ones), else None (not published: quote)."""
    size = contacts if peer["unit"] == "contacts" else emails
    tier = next((t for t in sorted(peer["tiers"], key=lambda t: t["up_to"]) if t["up_to"] >= size), None)
    return {**peer, "tier": tier}


def _money(amount: float, currency: str = "USD") -> str:
    return ("€" if currency == "EUR" else "$") + f"{amount:,.2f}"


def format_estimate(est: dict) -> str:
    news = (f"; {est['broadcasts']:g} broadcasts a month, each to {est['reach']:.0%} of the list as measured: "
            f"{est['broadcast_emails']:,.0f} emails" if est["broadcasts"] else "; no broadcasts (--broadcasts N a month)")
    out = [f"monthly cost for {est['contacts']:,} contacts at steady state: {est['emails']:,.0f} emails a month "
           f"(funnels: {est['emails_per_contact']:.2f} per contact, {est['new_per_month']:.0%} of the list in its first month "
           f"at {est['first_month']:.2f} emails, the rest at the {est['after_first_month']:.2f} a month of days 30-45{news}; "
           f"measured on {est['measured_contacts']} simulated contacts over {est['measured_days']} days; list prices "
           f"{est['region']}, {est['as_of']})"]
    for line in est["lines"]:
        note = f"  {line['note']}" if line["note"] else ""
        out.append(f"  {line['item']:<40} {line['quantity']:>14,.2f} {line['unit']:<22} ${line['cost']:>9.2f}{note}")
    out.append(f"  {'AWS total without SES':<78}${est['aws']:>9.2f}")
    ses = est["ses"]
    out.append(f"  {ses['item']:<40} {ses['quantity']:>14,.0f} {ses['unit']:<22} ${ses['cost']:>9.2f}")
    out.append(f"  {'total':<78}${est['total']:>9.2f}")
    if est["peers"]:
        out.append("  the same list elsewhere (monthly list price, billed monthly unless noted):")
        for peer in est["peers"]:
            tier = peer["tier"]
            what = "contacts" if peer["unit"] == "contacts" else "emails a month"
            price = (f"{_money(tier['monthly'], peer.get('currency', 'USD'))} (tier up to {tier['up_to']:,} {what})"
                     if tier else f"not published for this size ({peer.get('beyond', 'quote')})")
            out.append(f"    {peer['name']:<32} {price}; {peer['source']} read {peer['read']}")
    return "\n".join(out)
