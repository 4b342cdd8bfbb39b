"""Strict mode: the local runtime answers as AWS would where moto is more lenient.

moto accepts what a real account refuses (no IAM, no transaction conflicts, no quotas), so
a test that passes on moto alone can fail in a deployed stack. While a runtime runs, every
boto3 call of this process goes through :func:`gate` (``BaseClient._make_api_call`` is
wrapped once, so clients made before or after the runtime started are covered, pynamodb's
too). The gate hands the call to each enabled rule family, in this package one module per
AWS service (``iam``, ``dynamodb``, ``stepfunctions``, ``ses``, ``lambda_``, ``events``,
``apigateway``, ``sqs``); a rule refuses a call by raising the ``ClientError`` botocore would raise.

Who is calling matters for IAM: calls made while a function handler, a state machine
execution or a schedule runs carry that principal's role ARN (:mod:`.principal`); calls
of the runtime itself and of tests carry none (an operator with full rights).

The README's "Local runtime" section has the table of rules: what moto alone enforces,
and what strict mode adds.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import botocore.client
from botocore.exceptions import ClientError

from funnelpilot_local.aws_rules import principal


@dataclass
class Rules:
    """Which AWS rules the local runtime enforces. Everything is on by default, at the
    values of a standard account; a test that needs it switches a single rule off or
    tightens one (``Runtime(rules=Rules(lambda_concurrency=10))``)."""

    iam: bool = True  # every call checked against the caller's role, as SAM generates it
    seed: int = 0  # seeds every injected fault (conflicts, duplicates, PutEvents failures)
    # DynamoDB
    dynamodb_limits: bool = True  # 400 KB items; 100 actions and 4 MB per transaction
    transaction_conflicts: bool = True  # overlapping requests on an item cancel a transaction
    conflict_rate: float = 0.0  # share of TransactWriteItems cancelled (TransactionConflict), seeded
    # Step Functions
    history_limit: int = 25_000  # events per execution; the execution fails past it
    payload_limit: int = 256 * 1024  # bytes of a state's input/output, an execution's input
    # token buckets per API (size, refill per second), per account: Standard workflows, us-east-1
    sfn_api_buckets: dict = field(default_factory=lambda: {
        "StartExecution": (1300, 300), "DescribeExecution": (300, 15), "GetExecutionHistory": (400, 20),
        "StopExecution": (1000, 200), "SendTaskSuccess": (3000, 500), "SendTaskFailure": (3000, 500)})
    # SES
    ses_sandbox: bool = False  # True: verified recipients only, 200 per 24 h, 1 per second
    ses_verified: tuple[str, ...] = ()  # verified addresses/domains besides the template's identities
    ses_max_send_rate: float = 14.0  # production quota (GetSendQuota MaxSendRate)
    ses_max_24h: int = 50_000  # production quota (GetSendQuota Max24HourSend)
    # Lambda
    lambda_concurrency: int = 1000  # account concurrency (a new account can have 10)
    # EventBridge
    duplicate_rate: float = 0.0  # share of rule deliveries made twice (at-least-once), seeded
    put_events_failure_rate: float = 0.0  # share of PutEvents entries answered as failed, seeded
    # SQS (aws_rules.sqs)
    sqs_limits: bool = True  # message and batch sizes, batch entries, DelaySeconds, VisibilityTimeout
    sqs_max_message_size: int = 262_144  # a queue's MaximumMessageSize unless the template sets one (1 MiB at most)
    # API Gateway HTTP API
    api_throttling: bool = True  # the template's route throttling (429)
    # The account before the stack is created (checked as the runtime builds it: aws_rules.cloudformation)
    ses_existing_identities: tuple[str, ...] = ()  # SES identities (addresses, domains) verified already
    # SSM parameters the account holds; None: those the template names by an AWS::SSM::Parameter::Name parameter
    # (the signing key: README's one `aws ssm put-parameter` before the first deploy), created as SecureStrings
    existing_parameters: tuple[str, ...] | None = None


@dataclass
class Call:
    """One AWS API call as a rule sees it."""

    service: str  # botocore service name: dynamodb, stepfunctions, sesv2...
    operation: str  # TransactWriteItems
    params: dict
    principal: str | None  # role ARN of the caller, None for the runtime/tests
    client: Any = None
    extra: dict = field(default_factory=dict)  # what a rule's before() leaves for its after()


class Rule:
    """A rule family: ``before`` may refuse a call (raise) or answer it without AWS (put the
    response in ``call.extra["result"]``); ``after`` sees the result."""

    def before(self, call: Call) -> None:  # pragma: no cover - interface
        pass

    def after(self, call: Call, result: dict | None, error: Exception | None) -> None:
        pass


def error(operation: str, code: str, message: str, status: int = 400, **extra) -> ClientError:
    """The ``ClientError`` botocore raises for an AWS error response."""
    response = {"Error": {"Code": code, "Message": message},
                "ResponseMetadata": {"HTTPStatusCode": status}, **extra}
    return ClientError(response, operation)


_lock = threading.Lock()
_active: list[Rule] = []
_original: Callable | None = None


def install(rules: list[Rule]) -> None:
    """Route every boto3 call through ``rules`` (the runtime calls this at start)."""
    global _original
    with _lock:
        _active[:] = rules
        if _original is None:
            _original = botocore.client.BaseClient._make_api_call
            botocore.client.BaseClient._make_api_call = _gate
    principal.install()


def active() -> list[Rule]:
    """The rule families of the running runtime."""
    return list(_active)


def uninstall() -> None:
    with _lock:
        _active.clear()
    principal.uninstall()


def _gate(client, operation_name: str, api_params: dict):
    rules = list(_active)
    if not rules:
        return _original(client, operation_name, api_params)
    call = Call(client.meta.service_model.service_name, operation_name, api_params, principal.current(), client)
    passed = []
    try:
        for rule in rules:
            rule.before(call)
            passed.append(rule)
    except Exception as exc:  # refused: the rules that already let it pass see it end too
        for rule in passed:
            rule.after(call, None, exc)
        raise
    try:  # a rule may answer a call itself (events: a PutEvents whose every entry fails)
        result = call.extra["result"] if "result" in call.extra else _original(client, operation_name, api_params)
    except Exception as exc:
        for rule in rules:
            rule.after(call, None, exc)
        raise
    for rule in rules:
        rule.after(call, result, None)
    return result
