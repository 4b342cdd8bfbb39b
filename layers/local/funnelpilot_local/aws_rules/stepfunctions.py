"""Step Functions (Standard workflows) as AWS enforces it and moto does not.

- History: an execution fails when its history reaches ``Rules.history_limit`` events
  (AWS: 25,000). The event that would be the 25,000th is an ``ExecutionFailed`` with error
  ``States.Runtime`` and cause "The execution reached the maximum number of history events
  (25000)."; the execution is FAILED.
- Payload: ``Rules.payload_limit`` UTF-8 bytes (AWS: 262,144). StartExecution ``input`` and
  SendTaskSuccess ``output`` above it are refused (``ValidationException``, the API's length
  constraint); inside an execution a state's output or a task's result above it fails the
  state with ``States.DataLimitExceeded``, which ``States.ALL`` does not catch (neither does
  it catch ``States.Runtime``).
- API actions are throttled per account and region, each by its own token bucket,
  ``Rules.sfn_api_buckets`` = {action: (size, refill per second)} on the runtime clock (AWS
  Standard, us-east-1: StartExecution 1,300 and 300/s, DescribeExecution 300 and 15/s,
  GetExecutionHistory 400 and 20/s, StopExecution 1,000 and 200/s, SendTaskSuccess and
  SendTaskFailure 3,000 and 500/s): ``ThrottlingException`` "Rate exceeded".
- A task closes once: SendTaskSuccess or SendTaskFailure with a token an earlier one closed is refused
  with ``TaskTimedOut`` ("the task associated with the token has already been closed"). moto accepts
  it again, which would let two resumers of one wait both succeed on a laptop.

The in-execution limits live in moto's interpreter, so they are set through
``moto_adapter.limit_executions`` (the one module touching moto internals).
"""
import threading

from funnelpilot import clock
from funnelpilot_local import moto_adapter
from funnelpilot_local.aws_rules import Call, Rule, Rules, error

_PAYLOADS = {"StartExecution": "input", "SendTaskSuccess": "output"}
_CLOSING = ("SendTaskSuccess", "SendTaskFailure")


class StepFunctions(Rule):
    def __init__(self, rules: Rules):
        self.payload_limit = rules.payload_limit
        self._buckets = {op: [float(size), float(refill), float(size), None]  # size, refill, tokens, at
                         for op, (size, refill) in rules.sfn_api_buckets.items()}
        self._closed: set[str] = set()  # task tokens a SendTaskSuccess/Failure closed
        self._lock = threading.Lock()
        moto_adapter.limit_executions(history=rules.history_limit, payload=rules.payload_limit)

    def before(self, call: Call) -> None:
        if call.service != "stepfunctions":
            return
        field = _PAYLOADS.get(call.operation)
        if field and len(str(call.params.get(field, "")).encode("utf-8")) > self.payload_limit:
            raise error(call.operation, "ValidationException",
                        f"1 validation error detected: Value at '{field}' failed to satisfy constraint: "
                        f"Member must have length less than or equal to {self.payload_limit}")
        if call.operation in self._buckets:
            self._take_token(call.operation)
        if call.operation in _CLOSING and call.params.get("taskToken") in self._closed:
            raise error(call.operation, "TaskTimedOut", "Task Timed Out: 'Provided task does not exist anymore'")

    def after(self, call: Call, result: dict | None, error_: Exception | None) -> None:
        if call.service == "stepfunctions" and call.operation in _CLOSING and error_ is None:
            with self._lock:
                self._closed.add(call.params["taskToken"])

    def _take_token(self, operation: str) -> None:
        with self._lock:
            bucket, now = self._buckets[operation], clock.now()
            size, refill, tokens, at = bucket
            tokens = tokens if at is None else min(size, tokens + (now - at) * refill)
            if tokens < 1:
                bucket[2:] = tokens, now
                raise error(operation, "ThrottlingException", "Rate exceeded")
            bucket[2:] = tokens - 1, now
