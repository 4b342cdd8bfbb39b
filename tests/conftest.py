"""Shared fixtures: a fresh local runtime (template.yaml on moto) per test."""
import hashlib
import io
import json
import logging
import os
import threading
from pathlib import Path

import botocore.client
import pytest

from funnelpilot_local.runtime import ROOT, Runtime


class EventTap:
    """Every event on the bus, captured through a real rule with an SQS target."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.sqs = rt.client("sqs")
        self.url = self.sqs.create_queue(QueueName="test-tap")["QueueUrl"]
        events = rt.client("events")
        events.put_rule(Name="test-tap", EventBusName="funnelpilot",
                        EventPattern=json.dumps({"source": ["funnelpilot"]}))
        events.put_targets(Rule="test-tap", EventBusName="funnelpilot",
                           Targets=[{"Id": "tap", "Arn": "arn:aws:sqs:us-east-1:123456789012:test-tap"}])
        self.seen: list[dict] = []

    def events(self, detail_type: str | None = None) -> list[dict]:
        self.rt.pump()
        while True:
            msgs = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10).get("Messages", [])
            if not msgs:
                break
            for m in msgs:
                self.seen.append(json.loads(m["Body"]))
                self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=m["ReceiptHandle"])
        return [e for e in self.seen if detail_type in (None, e["detail-type"])]


def ip_for(email: str) -> str:
    """A source IP of its own per person (10.0.0.0/8), so that tests signing up many people stay
    under the per-IP signup limit unless they test it."""
    h = hashlib.sha256(email.encode()).digest()
    return f"10.{h[0]}.{h[1]}.{h[2] or 1}"


SINGLE = "test-single"  # a single opt-in list, declared for the tests only (infra/lists.yaml ships none)


@pytest.fixture(autouse=True)
def test_lists(monkeypatch) -> dict:
    """Declare ``test-single`` (single opt-in) next to the lists of infra/lists.yaml, whose default
    is double opt-in: tests about something else than the confirmation sign up to it. A test may
    declare more in the dict this returns."""
    from funnelpilot import consent

    shipped = consent._lists  # read when a handler asks, once the runtime has set CONTENT_DIR
    extra = {SINGLE: {"double_opt_in": False}}

    def declared() -> dict:
        doc = shipped()
        return {**doc, "lists": {**(doc.get("lists") or {}), **extra}}

    monkeypatch.setattr(consent, "_lists", declared)
    return extra


# Files holding a test of 2 CPU-seconds or more, the longest first (CPU per test, measured with process_time
# on 2026-12-02, main 314136c): they run first, so that neither xdist worker is left alone with one at the
# end (worksteal spreads the rest behind them). The 10,000-recipient broadcast alone is about a third of the
# suite: it starts first, on a worker of its own, while the other takes everything else.
LONG_FIRST = ("test_broadcast_scale.py", "test_demo.py", "test_reliability_input.py", "test_live_edits.py", "test_import.py",
              "test_broadcast_flow.py", "test_funnel_compiler.py", "test_outbox.py", "test_sending.py",
              "test_browser_redirects.py", "test_costs.py", "test_ses_rules.py", "test_stack_reuse.py", "test_scoring.py",
              "test_browser_emails.py", "test_bulk.py", "test_abuse.py", "test_strict_lambda_events.py",
              "test_email_design.py", "test_loyalty.py", "test_reliability_delivery.py", "test_browser.py", "test_cycle.py",
              "test_diagrams.py", "test_sunset.py", "test_webhooks.py", "test_strict_dynamodb.py")


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))  # stable: collection order otherwise


START = 1_772_445_600.0  # Monday 2026-03-02, 10:00 UTC: inside working hours (funnels' quiet hours)


@pytest.fixture
def rt(tmp_path: Path):
    """Stepped time: the clock moves only by rt.advance(seconds), so rt.settle() returns as soon as
    every execution waits (a funnel's 2-day Wait does not run in a test unless it asks)."""
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local", log_level="INFO") as runtime:
        yield runtime
        # Strict IAM over the whole suite: a call a role does not allow fails the test that made
        # it, even when the code under test caught the error (a test expecting one clears the list).
        assert not runtime.denied, "template.yaml does not allow:\n" + "\n".join(map(str, runtime.denied))


@pytest.fixture
def tap(rt) -> EventTap:
    return EventTap(rt)


@pytest.fixture
def aws_calls(monkeypatch) -> list[str]:
    """``service:Operation`` of every AWS call the test's own thread makes from now on (the handlers
    rt.http runs), but the signing key's read (once per cold start: each runtime is a new stack);
    clear it before the request under test."""
    calls, original, thread = [], botocore.client.BaseClient._make_api_call, threading.get_ident()

    def record(client, operation, params):
        service = client.meta.service_model.service_name
        signing_key = service == "ssm" and params.get("Name") == os.environ.get("SIGNING_KEY_PARAMETER")
        if threading.get_ident() == thread and not signing_key:
            calls.append(f"{service}:{operation}")
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    return calls


def executions(rt: Runtime, machine: str = "welcome") -> list[dict]:
    sfn = rt.client("stepfunctions")
    arn = next(a for a in rt.state_machine_arns() if a.endswith(f"-{machine}"))
    return sfn.list_executions(stateMachineArn=arn)["executions"]


def history(rt: Runtime, execution_arn: str) -> list[dict]:
    return rt.client("stepfunctions").get_execution_history(executionArn=execution_arn)["events"]


def entered_states(rt: Runtime, execution_arn: str) -> list[str]:
    return [e["stateEnteredEventDetails"]["name"] for e in history(rt, execution_arn)
            if "stateEnteredEventDetails" in e]


class Capture(logging.Handler):
    """Every record, formatted as the function's powertools logger writes it, plus its raw fields."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        formatter = next((h.formatter for h in logging.getLogger("funnelpilot").handlers
                          if h is not self and h.formatter), None) or logging.Formatter()
        self.lines.append(formatter.format(record))
        self.lines.append(json.dumps(record.__dict__, default=str))


@pytest.fixture
def logs(rt):
    """Every log line written while the test runs: each stream handler of every logger is
    pointed at a buffer (the handlers stay as configured), and every record is captured."""
    for function in rt.functions.values():
        function.handler  # noqa: B018 - import every handler: their loggers exist from now on
    capture, buffer = Capture(), io.StringIO()
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict))]
    streams, levels = {}, {logger: logger.level for logger in loggers}
    for logger in loggers:
        logger.setLevel(logging.INFO)  # the functions' level (INFO), whatever an earlier runtime left on the logger
        logger.addHandler(capture)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler not in streams:
                streams[handler] = handler.setStream(buffer)
    try:
        yield lambda: capture.lines + buffer.getvalue().splitlines()
    finally:
        for logger in loggers:
            logger.removeHandler(capture)
            logger.setLevel(levels[logger])
        for handler, stream in streams.items():
            handler.setStream(stream)


def funnel_counts(rt: Runtime, funnel: str) -> dict[str, int]:
    """The funnel row's counters in MetricsTable (entered, completed, ...), summed over its days."""
    items = rt.client("dynamodb").query(TableName="MetricsTable", KeyConditionExpression="pk = :p",
                                        ExpressionAttributeValues={":p": {"S": f"FUNNEL#{funnel}"}})["Items"]
    totals: dict[str, int] = {}
    for item in items:
        if item["sk"]["S"].endswith("#FUNNEL"):
            for name, value in item.items():
                if "N" in value:
                    totals[name] = totals.get(name, 0) + int(value["N"])
    return totals
