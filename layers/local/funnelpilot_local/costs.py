"""What the shipped funnels cost on AWS, from operations counted during a local run.

``Meter`` counts, while the demo runs on the local runtime, what AWS would bill: Lambda
invocations and their duration (GB-s at the function's configured memory), Step Functions
state transitions (from the execution histories), DynamoDB request units, custom
EventBridge events, SES emails, HTTP API requests and Secrets Manager calls. Only calls made
by the functions count (not the simulator's own look-ups). ``estimate`` scales the counts
per contact and month and multiplies by the list prices in ``infra/prices.yaml``.

Approximations, stated in the output: DynamoDB units assume items under 1 KB (writes) and
4 KB (reads): 1 WRU per write, 2 per item of a transaction, 0.5 RRU per eventually
consistent read or query page, 1 if strongly consistent; durations are this machine's
in-process times against moto (of the order of DynamoDB's own latency), billed per ms.
Every contact is costed as in their first ``days`` days, when funnels are busiest, so the
estimate is an upper bound for an established list.
"""
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import botocore.client
import yaml

PRICES = Path(__file__).resolve().parents[3] / "infra" / "prices.yaml"


class Meter:
    """Counts billable operations of a local Runtime; use as a context manager around the run."""

    def __init__(self, rt):
        self.rt = rt
        self.calls: Counter = Counter()
        self.units: Counter = Counter()
        self.invocations: Counter = Counter()
        self.ms: dict[str, float] = defaultdict(float)
        self.http_requests = 0
        self._local = threading.local()
        self._original_call = None
        self._original_http = None

    def __enter__(self):
        meter = self
        original = self._original_call = botocore.client.BaseClient._make_api_call

        def counted(client, operation, params):
            if getattr(meter._local, "depth", 0):
                meter.count(client.meta.service_model.service_name, operation, params)
            return original(client, operation, params)

        botocore.client.BaseClient._make_api_call = counted
        self.rt.invoke_hook = self._invoked
        self._original_http = self.rt.http

        def http(*args, **kwargs):
            self.http_requests += 1
            return self._original_http(*args, **kwargs)

        self.rt.http = http
        return self

    def __exit__(self, *exc):
        botocore.client.BaseClient._make_api_call = self._original_call
        self.rt.invoke_hook = None
        self.rt.http = self._original_http

    def _invoked(self, function: str, call):
        self._local.depth = getattr(self._local, "depth", 0) + 1
        started = time.perf_counter()
        try:
            return call()
        finally:
            self.ms[function] += max(1.0, -(-(time.perf_counter() - started) * 1000 // 1))  # billed per ms
            self.invocations[function] += 1
            self._local.depth -= 1

    def count(self, service: str, operation: str, params: dict) -> None:
        self.calls[(service, operation)] += 1
        if service == "dynamodb":
            if operation in ("PutItem", "UpdateItem", "DeleteItem"):
                self.units["wru"] += 1
            elif operation == "BatchWriteItem":
                self.units["wru"] += sum(len(v) for v in params.get("RequestItems", {}).values())
            elif operation == "TransactWriteItems":
                self.units["wru"] += 2 * len(params.get("TransactItems", []))
            elif operation == "TransactGetItems":
                self.units["rru"] += 2 * len(params.get("TransactItems", []))
            elif operation in ("GetItem", "Query"):
                self.units["rru"] += 1 if params.get("ConsistentRead") else 0.5
            elif operation == "BatchGetItem":
                self.units["rru"] += 0.5 * sum(len(v.get("Keys", [])) for v in params.get("RequestItems", {}).values())
        elif service == "events" and operation == "PutEvents":
            self.units["events"] += len(params.get("Entries", []))
        elif service == "ses" and operation in ("SendRawEmail", "SendEmail"):
            self.units["emails"] += max(1, len(params.get("Destinations", [])))
        elif service == "sesv2" and operation == "SendEmail":
            self.units["emails"] += 1
        elif service == "secretsmanager":
            self.units["secrets_calls"] += 1

    def transitions(self) -> int:
        sfn = self.rt.client("stepfunctions")
        total = 0
        for arn in self.rt.state_machine_arns():
            for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=arn):
                for ex in page["executions"]:
                    events = sfn.get_execution_history(executionArn=ex["executionArn"])["events"]
                    total += sum(1 for e in events if e["type"].endswith("StateEntered"))
        return total

    def usage(self, *, contacts: int, days: int) -> dict:
        memory = {name: self.rt.template.resolve(self.rt.template.properties(name)).get("MemorySize", 256)
                  for name in self.invocations}
        gb_s = sum(self.ms[f] / 1000 * memory[f] / 1024 for f in self.invocations)
        totals = {"lambda_requests": sum(self.invocations.values()), "lambda_gb_seconds": round(gb_s, 3),
                  "stepfunctions_transitions": self.transitions(), "dynamodb_wru": self.units["wru"],
                  "dynamodb_rru": self.units["rru"], "eventbridge_events": self.units["events"],
                  "ses_emails": self.units["emails"], "http_requests": self.http_requests,
                  "secrets_calls": self.units["secrets_calls"]}
        scale = 30.0 / days / contacts
        return {"contacts": contacts, "days": days, "totals": totals,
                "per_contact_month": {k: v * scale for k, v in totals.items()},
                "invocations": dict(sorted(self.invocations.items()))}


def load_prices(path: Path = PRICES) -> dict:
    return yaml.safe_load(path.read_text())


LINES = [  # (usage key, price key, label)
    ("lambda_requests", "lambda_request", "Lambda requests"),
    ("lambda_gb_seconds", "lambda_gb_second_arm64", "Lambda compute (GB-s, arm64)"),
    ("stepfunctions_transitions", "stepfunctions_standard_transition", "Step Functions transitions"),
    ("dynamodb_wru", "dynamodb_on_demand_write", "DynamoDB writes (WRU)"),
    ("dynamodb_rru", "dynamodb_on_demand_read", "DynamoDB reads (RRU)"),
    ("eventbridge_events", "eventbridge_custom_event", "EventBridge custom events"),
    ("ses_emails", "ses_outbound_email", "SES emails"),
    ("http_requests", "http_api_request", "HTTP API requests"),
    ("secrets_calls", "secrets_manager_api_call", "Secrets Manager calls"),
]


def estimate(usage: dict, contacts: int, prices: dict | None = None) -> dict:
    """Monthly cost for ``contacts`` contacts from a measured usage (see ``Meter.usage``)."""
    prices = prices or load_prices()
    lines = []
    for key, price_key, label in LINES:
        p = prices["aws"][price_key]
        quantity = usage["per_contact_month"][key] * contacts
        lines.append({"item": label, "quantity": quantity, "unit": p["unit"], "cost": quantity * p["price"] / p["per"]})
    fixed = [{"item": f"{k.replace('_', ' ')} ({v['count']})", "cost": v["price"] * v["count"]}
             for k, v in prices.get("fixed_monthly", {}).items()]
    variable = sum(line["cost"] for line in lines)
    total = variable + sum(f["cost"] for f in fixed)
    return {"contacts": contacts, "measured_contacts": usage["contacts"], "measured_days": usage["days"],
            "lines": lines, "fixed": fixed, "total": total, "per_1000_contacts": 1000 * variable / contacts,
            "anchors": prices.get("anchors", []), "as_of": prices.get("as_of"), "region": prices.get("region")}


def format_estimate(est: dict) -> str:
    out = [f"monthly AWS cost for {est['contacts']:,} contacts (list prices {est['region']}, {est['as_of']}; "
           f"measured on {est['measured_contacts']} simulated contacts over {est['measured_days']} days)"]
    for line in est["lines"]:
        out.append(f"  {line['item']:<32} {line['quantity']:>14,.0f} {line['unit']:<20} ${line['cost']:>9.2f}")
    for f in est["fixed"]:
        out.append(f"  {f['item']:<68}${f['cost']:>9.2f}")
    out.append(f"  {'total':<68}${est['total']:>9.2f}")
    out.append(f"  (${est['per_1000_contacts']:.2f} per 1,000 contacts a month before fixed costs; upper bound: "
               "every contact costed as in their first two months)")
    if est["anchors"]:
        out.append("compared with (monthly list price as published, starting tiers):")
        for a in est["anchors"]:
            out.append(f"  {a['name']:<40} ${a['monthly']:>7,.0f}  {a['includes']} ({a['note']})")
    return "\n".join(out)
